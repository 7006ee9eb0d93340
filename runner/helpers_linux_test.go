//go:build linux

package runner_test

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/changeover-dev/changeover/reuseport"
	"github.com/changeover-dev/changeover/runner"
)

// startOn starts a Runner on an address that another one already serves.
func startOn(t *testing.T, addr string, h http.Handler) *started {
	t.Helper()
	r := runner.New(runner.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	ctx, cancel := context.WithCancel(context.Background())
	ln, err := r.Listen(ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	r.ServeHTTP(&http.Server{Handler: h}, ln)
	st := &started{r: r, ln: ln, addr: ln.Addr().String(), stop: cancel, done: make(chan error, 1)}
	go func() { st.done <- r.Run(ctx) }()
	t.Cleanup(func() { cancel(); st.wait(t) })
	select {
	case <-r.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("not ready in 10s")
	}
	return st
}

func groupSize(t *testing.T, addr string) int {
	n, err := reuseport.GroupSize(netip.MustParseAddrPort(addr))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestNewInstanceStaysDark: a second runner on the same address gets no
// connection until the first one drains; then it gets them all, and once
// alone it takes the steering back, so that a third listener (one without
// a program of its own, and that never accepts) gets nothing either.
func TestNewInstanceStaysDark(t *testing.T) {
	old := start(t, runner.Options{}, text("old"))
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	ask := func(n int) map[string]int {
		seen := map[string]int{}
		for range n {
			body, _ := get(t, c, "http://"+old.addr+"/")
			seen[body]++
		}
		return seen
	}
	newer := startOn(t, old.addr, text("new"))
	if runner.IsLeader(newer.r, newer.ln) {
		t.Fatal("the new instance thinks it is member 0 while the old one listens")
	}
	if seen := ask(50); seen["old"] != 50 {
		t.Fatalf("with a new instance listening: answers %v, want all 50 from the old one", seen)
	}
	old.stop()
	if err := old.wait(t); err != nil {
		t.Fatal(err)
	}
	if seen := ask(50); seen["new"] != 50 {
		t.Fatalf("after the handover: answers %v, want all 50 from the new one", seen)
	}
	waitFor(t, func() bool { return runner.IsLeader(newer.r, newer.ln) })
	plain, err := reuseport.Listen(context.Background(), "tcp", old.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if seen := ask(50); seen["new"] != 50 {
		t.Fatalf("with a third listener: answers %v, want all 50 from the serving one", seen)
	}
	if q, _ := reuseport.AcceptQueueLen(plain.(*net.TCPListener)); q != 0 {
		t.Fatalf("the third listener got %d connections", q)
	}
}

// TestDarkInstanceStopsWithoutStealing: a new instance stopped before it
// took over (SIGTERM to a deploy that is abandoned) answers nothing and
// costs nothing: it does not steer the group to itself on the way out.
func TestDarkInstanceStopsWithoutStealing(t *testing.T) {
	old := start(t, runner.Options{}, text("old"))
	newer := startOn(t, old.addr, text("new"))
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	stop := make(chan struct{})
	type tally struct{ old, other, failed int }
	res := make(chan tally, 1)
	var sent atomic.Int64
	go func() {
		var n tally
		defer func() { res <- n }()
		for i := 0; i < 100000; i++ {
			sent.Add(1)
			select {
			case <-stop:
				return
			default:
			}
			resp, err := c.Get("http://" + old.addr + "/")
			if err != nil {
				n.failed++
				continue
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(b) == "old" {
				n.old++
			} else {
				n.other++
			}
		}
	}()
	waitFor(t, func() bool { return sent.Load() >= 20 })
	newer.stop()
	if err := newer.wait(t); err != nil {
		t.Fatal(err)
	}
	after := sent.Load()
	waitFor(t, func() bool { return sent.Load() >= after+20 })
	close(stop)
	n := <-res
	t.Logf("while the dark instance stopped: %d answers from the old one, %d from the dark one, %d failed", n.old, n.other, n.failed)
	if n.other != 0 || n.failed != 0 || n.old == 0 {
		t.Fatalf("answers: old %d, dark instance %d, failed %d; want only the old one", n.old, n.other, n.failed)
	}
}

// TestHalfOpenConnectionServed: a connection still half-open on the old
// instance when it hands over is waited for and served by it. The old
// listener has TCP_DEFER_ACCEPT, which keeps a connection in SYN_RECV until
// its first data: the client connects, the old instance starts draining,
// and only then the client sends its request.
func TestHalfOpenConnectionServed(t *testing.T) {
	old := start(t, runner.Options{}, text("old"))
	rc, _ := old.ln.(*net.TCPListener).SyscallConn()
	var serr error
	rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_DEFER_ACCEPT, 10)
	})
	if serr != nil {
		t.Fatal(serr)
	}
	startOn(t, old.addr, text("new"))
	conn, err := net.Dial("tcp", old.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	peer := netip.MustParseAddrPort(conn.LocalAddr().String())
	ap := netip.MustParseAddrPort(old.addr)
	waitFor(t, func() bool { ho, _ := reuseport.HalfOpen(ap); _, ok := ho[peer]; return ok })

	old.stop()
	<-old.r.Draining()
	// The client's think time: without the half-open tracking the old
	// instance would have closed its listener (resetting this connection)
	// within a few milliseconds of the steering.
	time.Sleep(200 * time.Millisecond)
	if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("the half-open connection was not served: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	if string(b) != "old" || !resp.Close {
		t.Fatalf("answer %q (close=%v), want %q with Connection: close", b, resp.Close, "old")
	}
	if err := old.wait(t); err != nil {
		t.Fatal(err)
	}
}
