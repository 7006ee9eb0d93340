//go:build linux

package runner

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/changeover-dev/changeover/reuseport"
)

var discardLog = slog.New(slog.NewTextHandler(io.Discard, nil))

func plainListen(t *testing.T, addr string) *net.TCPListener {
	t.Helper()
	l, err := reuseport.Listen(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l.(*net.TCPListener)
}

// dialQueued dials n connections to addr (nobody accepts them) and waits
// until the accept queues of the group hold them all; it returns the queue
// of l. The connections are closed at the end of the test.
func dialQueued(t *testing.T, addr string, n int, l *net.TCPListener) int {
	t.Helper()
	ap := netip.MustParseAddrPort(addr)
	base := 0
	if socks, err := reuseport.ListeningSockets(); err == nil {
		for _, s := range socks {
			if s.Addr == ap {
				base += s.Queue
			}
		}
	}
	for range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		socks, err := reuseport.ListeningSockets()
		if err != nil {
			t.Fatal(err)
		}
		total := 0
		for _, s := range socks {
			if s.Addr == ap {
				total += s.Queue
			}
		}
		if total >= base+n || time.Now().After(deadline) {
			q, err := reuseport.AcceptQueueLen(l)
			if err != nil {
				t.Fatal(err)
			}
			return q
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestListenSteersBeforeLookingAtTheGroup: Listen attaches "return 0" right
// after listen, before it reads the group through sock_diag (two netlink
// dumps, which take a while on a host with many sockets). Here the group
// still has the "return 1" that an old instance left behind (the survivor
// has not re-attached its own program yet), so until "return 0" is
// attached every new connection goes to the new listener (member 1).
func TestListenSteersBeforeLookingAtTheGroup(t *testing.T) {
	survivor := plainListen(t, "127.0.0.1:0")
	addr := survivor.Addr().String()
	if err := reuseport.Steer(survivor, 1); err != nil {
		t.Fatal(err)
	}
	r := New(Options{Logger: discardLog})
	onSurvivor := -1
	r.listSockets = func() ([]reuseport.Socket, error) {
		socks, err := reuseport.ListeningSockets()
		members := 0
		for _, s := range socks {
			if s.Addr == survivor.Addr().(*net.TCPAddr).AddrPort() {
				members++
			}
		}
		// Listen also reads the port's listeners before it binds; dial
		// during the first dump made once the new listener listens.
		if members == 2 && onSurvivor < 0 {
			onSurvivor = dialQueued(t, addr, 10, survivor)
		}
		return socks, err
	}
	ln, err := r.Listen(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if onSurvivor < 0 {
		t.Fatal("Listen read no listeners once it had listened")
	}
	if onSurvivor != 10 {
		t.Fatalf("of 10 connections made while Listen read the group, %d went to the serving member 0; want 10 (the new listener must be dark before the sock_diag dumps)", onSurvivor)
	}
}

// TestWatchOlderRetriesAfterDiagError: a failed sock_diag dump (ENOBUFS,
// a netlink hiccup) must not end the watch for good: the survivor would
// then never take the steering back, and the "return 1" left behind would
// send the next version's connections to it before it is ready.
func TestWatchOlderRetriesAfterDiagError(t *testing.T) {
	old := plainListen(t, "127.0.0.1:0")
	r := New(Options{Logger: discardLog})
	ln, err := r.Listen(context.Background(), "tcp", old.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	l := r.listeners[ln]
	var calls atomic.Int32
	l.listSockets = func() ([]reuseport.Socket, error) {
		if calls.Add(1) <= 3 {
			return nil, fmt.Errorf("sock_diag dump: %w", errors.New("no buffer space available (injected)"))
		}
		return reuseport.ListeningSockets()
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { defer close(done); l.watchOlder(ctx, make(chan struct{}), discardLog) }()
	old.Close()
	deadline := time.Now().Add(10 * time.Second)
	for !l.leader.Load() {
		if time.Now().After(deadline) {
			t.Fatalf("after 3 failed dumps (%d calls) the watch never saw the older member leave", calls.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
}

// TestWatchOlderDoesNotUndoOwnHandover: the watch sees the older member
// leave just as this instance's own drain starts and steers the group to
// the next version. Its "return 0" must not come after the drain's
// "return 1": that would send every new connection back to the draining
// instance, which closes its listener soon after and resets them.
func TestWatchOlderDoesNotUndoOwnHandover(t *testing.T) {
	old := plainListen(t, "127.0.0.1:0")
	addr := old.Addr().String()
	r := New(Options{Logger: discardLog})
	ln, err := r.Listen(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	l := r.listeners[ln]

	// The watch's dump that sees the old member gone is held until the
	// drain has steered the group (the drain's own dump passes).
	sawGone, release := make(chan struct{}), make(chan struct{})
	var held atomic.Bool
	l.listSockets = func() ([]reuseport.Socket, error) {
		socks, err := reuseport.ListeningSockets()
		gone := true
		for _, s := range socks {
			if l.older[s.Inode] {
				gone = false
			}
		}
		if gone && held.CompareAndSwap(false, true) {
			close(sawGone)
			<-release
		}
		return socks, err
	}
	draining := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.watchOlder(context.Background(), draining, discardLog)
	}()
	old.Close()
	select {
	case <-sawGone:
	case <-time.After(10 * time.Second):
		t.Fatal("the watch did not see the old member leave")
	}
	// We are member 0 now (the last member moves into a leaving one's
	// slot); the next version joins as member 1.
	next := plainListen(t, addr)
	// Our own drain starts: it steers the group to the next version.
	close(draining)
	l.steerAway(time.Now().Add(5*time.Second), discardLog)
	close(release)
	<-done
	if q := dialQueued(t, addr, 10, next); q != 10 {
		t.Fatalf("after the drain steered to the next version, %d of 10 new connections went to it; want 10 (the watch re-darkened the group)", q)
	}
}

// TestListenRefusesNonTCP: the handover is for TCP listeners; any other
// network is an error, not a panic.
func TestListenRefusesNonTCP(t *testing.T) {
	for _, tc := range []struct{ network, addr string }{
		{"unix", t.TempDir() + "/sock"},
		{"udp", "127.0.0.1:0"},
		{"ip4:icmp", "127.0.0.1"},
	} {
		t.Run(tc.network, func(t *testing.T) {
			r := New(Options{Logger: discardLog})
			var ln net.Listener
			var err error
			func() {
				defer func() {
					if p := recover(); p != nil {
						err = fmt.Errorf("panic: %v", p)
						t.Errorf("Listen(%q, %q) panicked: %v", tc.network, tc.addr, p)
					}
				}()
				ln, err = r.Listen(context.Background(), tc.network, tc.addr)
			}()
			if ln != nil {
				ln.Close()
			}
			if err == nil {
				t.Fatalf("Listen(%q, %q) succeeded; want an error", tc.network, tc.addr)
			}
			// The refusal itself, not whatever fails first without it: on
			// 6.18, setsockopt(SO_REUSEPORT) on "unix" (EOPNOTSUPP), and
			// net.ListenConfig.Listen on "udp" and "ip4:icmp" ("unexpected
			// address type"), which any error would have accepted.
			const want = "only TCP listeners (tcp, tcp4, tcp6) are handed over"
			if !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), tc.network) {
				t.Fatalf("Listen(%q, %q): %v; want the error to say %q and name %q", tc.network, tc.addr, err, want, tc.network)
			}
			t.Logf("%v", err)
		})
	}
}

// TestListenChecksOverlapAgainAfterListening: Listen refuses an
// overlapping address before binding, from a sock_diag dump; a neighbour
// that binds between that dump and our listen is still refused by the
// check after listening (here the first dump does not show it).
func TestListenChecksOverlapAgainAfterListening(t *testing.T) {
	holder := plainListen(t, "0.0.0.0:0")
	_, port, _ := net.SplitHostPort(holder.Addr().String())
	r := New(Options{Logger: discardLog})
	var calls atomic.Int32
	r.listSockets = func() ([]reuseport.Socket, error) {
		if calls.Add(1) == 1 {
			return nil, nil // the neighbour is not there yet
		}
		return reuseport.ListeningSockets()
	}
	ln, err := r.Listen(context.Background(), "tcp", "127.0.0.1:"+port)
	if ln != nil {
		ln.Close()
	}
	if !errors.Is(err, ErrOverlappingListener) {
		t.Fatalf("Listen beside %s with the neighbour missing from the first dump: %v; want ErrOverlappingListener", holder.Addr(), err)
	}
	if calls.Load() < 2 {
		t.Fatalf("%d sock_diag dumps; want one before binding and one after", calls.Load())
	}
}

// TestWaitQuietDiagErrorIsNotQuiet: while the sock_diag dump of half-open
// connections fails, the listener is not known to be quiet: the drain keeps
// accepting until the dump works again or the deadline passes, and says
// once that it cannot see them (a failed dump used to count as "no
// connection half-open", and the listener closed on a client mid-handshake).
func TestWaitQuietDiagErrorIsNotQuiet(t *testing.T) {
	peer := netip.MustParseAddrPort("192.0.2.7:40000") // half-open at the steering
	for _, tc := range []struct {
		name     string
		failures int // dumps that fail after the first; -1: all of them
	}{
		{"failing-until-the-deadline", -1},
		{"failing-then-working", 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := New(Options{Logger: discardLog})
			ln, err := r.Listen(context.Background(), "tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			plainListen(t, ln.Addr().String()) // the next version, member 1
			l := r.listeners[ln]
			var calls atomic.Int32
			l.halfOpen = func(netip.AddrPort) (map[netip.AddrPort]reuseport.HalfOpenConn, error) {
				n := int(calls.Add(1))
				switch {
				case n == 1:
					return map[netip.AddrPort]reuseport.HalfOpenConn{peer: {}}, nil
				case tc.failures < 0 || n <= 1+tc.failures:
					return nil, fmt.Errorf("sock_diag dump: %w", errors.New("no buffer space available (injected)"))
				}
				return map[netip.AddrPort]reuseport.HalfOpenConn{}, nil // it completed
			}
			var logs bytes.Buffer
			const budget = 400 * time.Millisecond
			begin := time.Now()
			l.steerAway(begin.Add(budget), slog.New(slog.NewTextHandler(&logs, nil)))
			took := time.Since(begin)
			warned := strings.Count(logs.String(), "cannot list half-open connections")
			t.Logf("%d dumps, steerAway returned after %v (budget %v), %d warnings:\n%s", calls.Load(), took.Round(time.Millisecond), budget, warned, logs.String())
			if warned != 1 {
				t.Errorf("%d warnings about the failed dump, want 1", warned)
			}
			if tc.failures < 0 && took < budget {
				t.Errorf("steerAway returned after %v with every dump failing: a failed dump counted as quiet (budget %v)", took, budget)
			}
			if tc.failures >= 0 && calls.Load() < int32(2+tc.failures) {
				t.Errorf("%d dumps: steerAway did not wait for a working one", calls.Load())
			}
		})
	}
}

// TestClosedListenerIsForgotten: a listener from Listen that the caller
// closed is not handed over: handOffUnowned does not steer its group (the
// steering would fail on the closed socket, or steer a group that is no
// longer ours), and the next Listen on its address is not refused.
func TestClosedListenerIsForgotten(t *testing.T) {
	var logs strings.Builder
	var mu sync.Mutex
	r := New(Options{Logger: slog.New(slog.NewTextHandler(&lockedWriter{w: &logs, mu: &mu}, nil))})
	ln, err := r.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	// Two newer members: with ours gone the group still has two, so a
	// handover would think there is someone to steer to.
	plainListen(t, addr)
	plainListen(t, addr)
	ln.Close()
	r.handOffUnowned(2 * time.Second)
	r.mu.Lock()
	n := len(r.listeners)
	r.mu.Unlock()
	mu.Lock()
	out := logs.String()
	mu.Unlock()
	if n != 0 || strings.Contains(out, "steer") {
		t.Fatalf("after Close the Runner keeps %d listeners, and handing over logged %q; want none, and nothing steered", n, out)
	}
}

type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// TestListenWhenDiagFails: the overlap check reads the port's listeners
// through sock_diag. A failed dump is tried once more; if that fails too,
// Listen returns the error and binds nothing, rather than bind beside a
// listener it could not see, unless AllowOverlappingListeners says the
// check does not matter.
func TestListenWhenDiagFails(t *testing.T) {
	holder := plainListen(t, "0.0.0.0:0") // [::]:P, dual-stack
	_, port, _ := net.SplitHostPort(holder.Addr().String())
	addr := "127.0.0.1:" + port
	diagErr := errors.New("sock_diag: no buffer space available")
	for _, tc := range []struct {
		name     string
		failures int32 // dumps that fail before they work again
		allow    bool
		want     error // nil: bound
	}{
		{"every dump fails", 1 << 30, false, diagErr},
		{"every dump fails, overlap allowed", 1 << 30, true, nil},
		{"one dump fails", 1, false, ErrOverlappingListener},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := New(Options{Logger: discardLog, AllowOverlappingListeners: tc.allow})
			var calls atomic.Int32
			r.listSockets = func() ([]reuseport.Socket, error) {
				if calls.Add(1) <= tc.failures {
					return nil, diagErr
				}
				return reuseport.ListeningSockets()
			}
			ln, err := r.Listen(context.Background(), "tcp", addr)
			if ln != nil {
				ln.Close()
			}
			switch {
			case tc.want == nil && err != nil:
				t.Fatalf("Listen(%s) beside %s: %v; want it bound", addr, holder.Addr(), err)
			case tc.want != nil && !errors.Is(err, tc.want):
				t.Fatalf("Listen(%s) beside %s, %d sock_diag dumps: err = %v; want %v", addr, holder.Addr(), calls.Load(), err, tc.want)
			}
			t.Logf("%d dumps: %v", calls.Load(), err)
		})
	}
}
