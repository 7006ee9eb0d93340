//go:build linux

package supervisor

import (
	"context"
	"net"
	"testing"

	"github.com/changeover-dev/changeover/reuseport"
)

// TestSocketsClosed: socketsClosed answers true once the listening sockets
// it watches are closed, and false (leaving the answer to the full check)
// while one still listens after handoverWatch, or when ctx is done.
func TestSocketsClosed(t *testing.T) {
	listen := func() (*net.TCPListener, uint64) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		s, err := reuseport.Describe(ln.(*net.TCPListener))
		if err != nil {
			t.Fatal(err)
		}
		return ln.(*net.TCPListener), s.Inode
	}
	a, inoA := listen()
	b, inoB := listen()
	defer b.Close()

	got := make(chan bool, 1)
	go func() { got <- socketsClosed(context.Background(), map[uint64]bool{inoA: true}) }()
	select {
	case v := <-got:
		t.Fatalf("socketsClosed returned %v while the socket still listens", v)
	default:
	}
	a.Close()
	if !<-got {
		t.Error("socketsClosed = false after the socket closed")
	}

	if socketsClosed(context.Background(), map[uint64]bool{inoB: true}) {
		t.Error("socketsClosed = true for a socket that still listens")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if socketsClosed(ctx, map[uint64]bool{inoB: true}) {
		t.Error("socketsClosed = true with ctx done and the socket listening")
	}
}
