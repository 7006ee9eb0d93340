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
