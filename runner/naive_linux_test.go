//go:build linux

package runner_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/changeover-dev/changeover/internal/netnstest"
	"github.com/changeover-dev/changeover/reuseport"
)

// gatedListener is a listener whose server has stopped accepting (busy, or
// between accepts): Accept blocks until Close.
type gatedListener struct {
	net.Listener
	once   sync.Once
	closed chan struct{}
}

func (g *gatedListener) Accept() (net.Conn, error) {
	<-g.closed
	return nil, net.ErrClosed
}

func (g *gatedListener) Close() error {
	g.once.Do(func() { close(g.closed) })
	return g.Listener.Close()
}

// TestNaiveHandoverLoses is the control of the handover tests: the design
// without runner (SO_REUSEPORT, a new instance beside, and http.Server's
// Shutdown in the old one as soon as it is told to stop) resets every
// connection that waits in the old listener's accept queue when Shutdown
// closes it. With tcp_migrate_req=0 (the default; also every kernel before
// 5.14, which has no such sysctl), it runs here in the host namespace
// without root; where the host has 1, in a namespace of its own (root).
func TestNaiveHandoverLoses(t *testing.T) {
	on, err := reuseport.MigrateReq()
	if err != nil {
		t.Fatal(err)
	}
	if on && !netnstest.Run(t) { // skips when not root
		return
	}
	const n = 16
	l, err := reuseport.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	old := l.(*net.TCPListener)
	addr := old.Addr().String()
	newer, err := reuseport.Listen(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer newer.Close()
	newSrv := &http.Server{Handler: text("new")}
	go newSrv.Serve(newer)
	defer newSrv.Close()
	// Every new connection to the old instance (member 0), as while it
	// served alone.
	if err := reuseport.Dark(old); err != nil {
		t.Fatal(err)
	}
	oldSrv := &http.Server{Handler: text("old")}
	served := make(chan error, 1)
	go func() { served <- oldSrv.Serve(&gatedListener{Listener: old, closed: make(chan struct{})}) }()

	conns := make([]net.Conn, n)
	for i := range conns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	deadline := time.Now().Add(10 * time.Second)
	q := 0
	for q != n {
		if q, err = reuseport.AcceptQueueLen(old); err != nil {
			t.Fatal(err)
		}
		if q != n && time.Now().After(deadline) {
			t.Fatalf("TCP_INFO shows %d connections in the old listener's queue, want %d", q, n)
		}
		time.Sleep(5 * time.Millisecond)
	}

	// The naive handover: Shutdown at once, which closes the listener.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := oldSrv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	<-served
	resets, answered := 0, 0
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := c.Read(make([]byte, 1))
		switch {
		case errors.Is(err, unix.ECONNRESET):
			resets++
		case err == nil:
			answered++
		}
	}
	t.Logf("naive handover, tcp_migrate_req=0: %d connections queued (TCP_INFO), %d reset at Shutdown, %d answered", n, resets, answered)
	if resets != n {
		t.Fatalf("%d of %d queued connections were reset (%d answered); want all %d", resets, n, answered, n)
	}
}
