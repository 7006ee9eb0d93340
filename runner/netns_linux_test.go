//go:build linux

package runner_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"github.com/changeover-dev/changeover/runner"
)

// startAt starts a Runner with opts on addr, which another one may serve.
func startAt(t *testing.T, addr string, opts runner.Options, h http.Handler) *started {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	r := runner.New(opts)
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
	case err := <-st.done:
		st.done <- err
		t.Fatalf("Run returned before ready: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("not ready in 10s")
	}
	return st
}
