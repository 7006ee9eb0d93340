//go:build linux

package healthcheck

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"
)

// TestProbeSource: HTTP and TCP probes with a Source connect from that
// address (on Linux every 127/8 address is local), so a steering program
// that reads the source can route them.
func TestProbeSource(t *testing.T) {
	src := netip.MustParseAddr("127.0.0.77")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	seen := make(chan string, 4)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		seen <- host
	})}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := (HTTP{URL: "http://" + ln.Addr().String() + "/", Source: src}).Check(ctx); err != nil {
		t.Fatal(err)
	}
	if got := <-seen; got != src.String() {
		t.Errorf("HTTP probe came from %s, want %s", got, src)
	}
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tl.Close()
	if err := (TCP{Addr: tl.Addr().String(), Source: src}).Check(ctx); err != nil {
		t.Fatal(err)
	}
	c, err := tl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr(); got != src {
		t.Errorf("TCP probe came from %s, want %s", got, src)
	}
}
