//go:build linux

package runner_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/changeover-dev/changeover/reuseport"
	"github.com/changeover-dev/changeover/runner"
)

// startOn starts a Runner on an address that another one already serves.
func startOn(t *testing.T, addr string, h http.Handler) *runner.Runner {
	t.Helper()
	r := runner.New(runner.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	ctx, cancel := context.WithCancel(context.Background())
	ln, err := r.Listen(ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	r.ServeHTTP(&http.Server{Handler: h}, ln)
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-r.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("not ready in 10s")
	}
	return r
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
// connection until the first one drains; then it gets them all, and it
// keeps a third one dark in turn.
func TestNewInstanceStaysDark(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	old := start(t, runner.Options{Logger: quiet}, text("old"))
	ask := func(n int) map[string]int {
		c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
		seen := map[string]int{}
		for range n {
			body, _ := get(t, c, "http://"+old.addr+"/")
			seen[body]++
		}
		return seen
	}
	startOn(t, old.addr, text("new"))
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
	// The survivor re-attaches its own program once alone; the stale one of
	// the old instance would send everything to the next newcomer.
	waitFor(t, func() bool { n := groupSize(t, old.addr); return n == 1 })
	startOn(t, old.addr, text("third"))
	if seen := ask(50); seen["new"] != 50 {
		t.Fatalf("with a third instance listening: answers %v, want all 50 from the serving one", seen)
	}
}
