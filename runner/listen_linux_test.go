//go:build linux

package runner_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"

	"github.com/changeover-dev/changeover/runner"
)

func quietRunner(opts runner.Options) *runner.Runner {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return runner.New(opts)
}

// TestListenTwiceOnOneAddressRefused: two listeners of one Runner on one
// address would be two members of one reuseport group in one process. The
// handover counts members by join order (the old instance is member 0, the
// new one member 1), so the old instance would steer the group to its own
// sibling, which it then closes: every connection queued there is reset.
func TestListenTwiceOnOneAddressRefused(t *testing.T) {
	r := quietRunner(runner.Options{})
	ctx := context.Background()
	ln, err := r.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().String()
	ln2, err := r.Listen(ctx, "tcp", addr)
	if err == nil {
		ln2.Close()
		t.Fatalf("a second Listen on %s succeeded; want it refused", addr)
	}
	if !errors.Is(err, runner.ErrAlreadyListening) || !strings.Contains(err.Error(), addr) {
		t.Fatalf("err = %v, want ErrAlreadyListening naming %s", err, addr)
	}
	t.Logf("refused: %v", err)
	if n := groupSize(t, addr); n != 1 {
		t.Fatalf("after the refusal the group has %d members, want 1 (the refused socket closed)", n)
	}
	// The first listener still works.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}
