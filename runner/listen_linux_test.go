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

	"github.com/changeover-dev/changeover/reuseport"
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

// TestListenRefusesOverlappingListener: listeners on one port whose
// addresses overlap but differ are separate reuseport groups, and the
// kernel picks among groups before any steering program runs: it prefers
// the more specific address, and an AF_INET listener to a dual-stack [::]
// one for IPv4 clients. A new instance on such an address is not dark, and
// an old one believes it is alone and closes, resetting its queue. Both
// directions are refused, naming both addresses, unless the option says
// otherwise; addresses that do not overlap are not refused.
func TestListenRefusesOverlappingListener(t *testing.T) {
	for _, tc := range []struct {
		name            string
		holder, holderN string // the listener already there
		ours, oursN     string // what Runner.Listen is asked for (port appended)
		overlap         bool
	}{
		{"specific beside wildcard", "tcp4", "0.0.0.0", "tcp", "127.0.0.1", true},
		{"wildcard beside specific", "tcp", "127.0.0.1", "tcp4", "0.0.0.0", true},
		{"tcp4 wildcard beside dual-stack", "tcp", "[::]", "tcp4", "0.0.0.0", true},
		{"dual-stack beside tcp4 wildcard", "tcp4", "0.0.0.0", "tcp", "[::]", true},
		{"loopback beside dual-stack", "tcp", "[::]", "tcp", "127.0.0.1", true},
		{"two loopback addresses", "tcp", "127.0.0.1", "tcp", "127.0.0.2", false},
		{"IPv6 loopback beside IPv4 loopback", "tcp", "127.0.0.1", "tcp6", "[::1]", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			holder, err := reuseport.Listen(context.Background(), tc.holder, tc.holderN+":0")
			if err != nil {
				t.Fatal(err)
			}
			defer holder.Close()
			_, port, _ := net.SplitHostPort(holder.Addr().String())
			addr := tc.oursN + ":" + port
			for _, allow := range []bool{false, true} {
				r := quietRunner(runner.Options{AllowOverlappingListeners: allow})
				ln, err := r.Listen(context.Background(), tc.ours, addr)
				if ln != nil {
					ln.Close()
				}
				switch {
				case !tc.overlap || allow:
					if err != nil {
						t.Errorf("allow=%v: Listen(%s %s) beside %s: %v; want it bound", allow, tc.ours, addr, holder.Addr(), err)
					}
				case err == nil:
					t.Errorf("Listen(%s %s) beside %s succeeded; want ErrOverlappingListener", tc.ours, addr, holder.Addr())
				default:
					if !errors.Is(err, runner.ErrOverlappingListener) {
						t.Errorf("err = %v, want ErrOverlappingListener", err)
					}
					for _, want := range []string{holder.Addr().String(), strings.Trim(tc.oursN, "[]")} {
						if !strings.Contains(err.Error(), want) {
							t.Errorf("error %q does not name %s", err, want)
						}
					}
					t.Logf("%v", err)
				}
			}
		})
	}
}
