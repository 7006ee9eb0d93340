//go:build linux

package runner_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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

// TestRefusedOverlappingListenLosesNothing: a refused Listen must not have
// listened. A socket on 127.0.0.1:P beside a listener on 0.0.0.0:P is a
// group of its own that the kernel prefers for connections to 127.0.0.1,
// so for as long as it listens it takes them all, and closing it resets
// those it has not accepted. Clients connect to 127.0.0.1:P while a loop
// of 200 Listens on that address is refused; every connection must be
// answered by the listener on 0.0.0.0:P.
func TestRefusedOverlappingListenLosesNothing(t *testing.T) {
	const attempts = 200
	holder, err := reuseport.Listen(context.Background(), "tcp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	go func() {
		for {
			c, err := holder.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("x"))
			c.Close()
		}
	}()
	_, port, _ := net.SplitHostPort(holder.Addr().String())
	addr := "127.0.0.1:" + port

	var answered, lost atomic.Int64
	var firstLoss atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				c, err := net.DialTimeout("tcp", addr, 2*time.Second)
				if err == nil {
					c.SetReadDeadline(time.Now().Add(2 * time.Second))
					_, err = c.Read(make([]byte, 1))
					c.Close()
				}
				if err != nil {
					lost.Add(1)
					firstLoss.CompareAndSwap(nil, err.Error())
					continue
				}
				answered.Add(1)
			}
		})
	}
	refused := 0
	for range attempts {
		r := quietRunner(runner.Options{})
		ln, err := r.Listen(context.Background(), "tcp", addr)
		if ln != nil {
			ln.Close()
		}
		if errors.Is(err, runner.ErrOverlappingListener) {
			refused++
		}
		time.Sleep(2 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	t.Logf("%d of %d Listens refused; clients: %d answered, %d lost", refused, attempts, answered.Load(), lost.Load())
	if refused != attempts {
		t.Errorf("%d of %d Listens refused; want all", refused, attempts)
	}
	if answered.Load() == 0 {
		t.Errorf("no client was answered: the load did not run")
	}
	if lost.Load() > 0 {
		t.Errorf("%d connections lost while Listens were refused (first: %v); want 0", lost.Load(), firstLoss.Load())
	}
}

// TestListenAgainAfterClose: a listener that was closed no longer counts
// as this Runner's: listening on its address again is allowed.
func TestListenAgainAfterClose(t *testing.T) {
	r := quietRunner(runner.Options{})
	ctx := context.Background()
	ln, err := r.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ln2, err := r.Listen(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("Listen on %s after closing the first listener there: %v; want it bound", addr, err)
	}
	ln2.Close()
}
