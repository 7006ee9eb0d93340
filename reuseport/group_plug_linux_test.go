//go:build linux

package reuseport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/changeover-dev/changeover/internal/netnstest"
)

// TestGroupBesideNarrowerListener: a group on a wildcard address beside a
// listener on a more specific address of the same port (nginx's "listen
// 80; listen 127.0.0.1:80;", a tcp4 0.0.0.0 beside a dual-stack [::]).
// The kernel's listener lookup prefers the specific one (Socket.Shadows),
// so a plug connection to that address never reaches the group: Dark,
// Cutover, PrepareDepartures and Compact must plug their placeholders
// through an address that the narrower listener does not take. The
// narrower listener gets no connection of the group's, also when it is
// held (its SYNs dropped, as the supervisor holds a refused generation's
// address), and each call returns well before the plug's 2 s wait.
func TestGroupBesideNarrowerListener(t *testing.T) {
	if !netnstest.Run(t) {
		return
	}
	for _, tc := range []struct {
		name          string
		wideNet, wide string // the group's members
		narrowNet     string
		narrow        []string // listeners beside it, on the same port
		held          bool     // the first narrow address is held by a Group of its own
		dial          string   // where clients of the group connect
	}{
		{"0.0.0.0 beside 127.0.0.1", "tcp4", "0.0.0.0", "tcp4", []string{"127.0.0.1"}, false, "127.0.0.5"},
		{"0.0.0.0 beside 127.0.0.1 and 127.0.0.2", "tcp4", "0.0.0.0", "tcp4", []string{"127.0.0.1", "127.0.0.2"}, false, "127.0.0.5"},
		{"0.0.0.0 beside a held 127.0.0.1", "tcp4", "0.0.0.0", "tcp4", []string{"127.0.0.1"}, true, "127.0.0.5"},
		{"dual-stack [::] beside tcp4 0.0.0.0", "tcp", "[::]", "tcp4", []string{"0.0.0.0"}, false, "[::1]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			listenOn := func(network, addr string) *net.TCPListener {
				t.Helper()
				l, err := Listen(context.Background(), network, addr)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { l.Close() })
				return l.(*net.TCPListener)
			}
			old := []*net.TCPListener{listenOn(tc.wideNet, tc.wide+":0")}
			port := old[0].Addr().(*net.TCPAddr).Port
			wide := fmt.Sprintf("%s:%d", tc.wide, port)
			old = append(old, listenOn(tc.wideNet, wide))
			var narrow []*net.TCPListener
			for _, a := range tc.narrow {
				narrow = append(narrow, listenOn(tc.narrowNet, fmt.Sprintf("%s:%d", a, port)))
			}
			if tc.held {
				h := NewGroup(netip.AddrPortFrom(netip.MustParseAddr(tc.narrow[0]), uint16(port)), GroupOptions{})
				t.Cleanup(func() { h.Close() })
				if err := h.Hold(inodes(t, narrow[:1])); err != nil {
					t.Fatal(err)
				}
			}
			// A call that plugged a placeholder through the narrower
			// listener's address fails after its 2 s wait: each must
			// succeed, and well before that.
			quick := func(what string, f func() error) {
				t.Helper()
				start := time.Now()
				if err := f(); err != nil {
					t.Fatalf("%s: %v", what, err)
				}
				if d := time.Since(start); d > 1500*time.Millisecond {
					t.Fatalf("%s took %v: a plug waited for a connection that went elsewhere", what, d)
				}
				for i, l := range narrow {
					if q, err := AcceptQueueLen(l); err != nil || q != 0 {
						t.Fatalf("%s: %d connections queued on the narrower listener %s (%v), want none of the group's", what, q, tc.narrow[i], err)
					}
				}
			}
			g := NewGroup(netip.MustParseAddrPort(wide), GroupOptions{})
			t.Cleanup(func() { g.Close() })
			dial := fmt.Sprintf("%s:%d", tc.dial, port)
			quick("Dark", func() error { return g.Dark(inodes(t, old)) })
			onlyOn(t, "dark", landing(t, g, netip.Addr{}, dial, 4, old...), 0, 1)

			next := []*net.TCPListener{listenOn(tc.wideNet, wide), listenOn(tc.wideNet, wide)}
			all := append(append([]*net.TCPListener{}, old...), next...)
			quick("Sync", g.Sync)
			onlyOn(t, "dark, new joined", landing(t, g, netip.Addr{}, dial, 4, all...), 0, 1)
			quick("Cutover", func() error { return g.Cutover(inodes(t, next)) })
			onlyOn(t, "cut over", landing(t, g, netip.Addr{}, dial, 4, all...), 2, 3)
			quick("PrepareDepartures", func() error { return g.PrepareDepartures(len(old)) })
			for _, l := range old {
				l.Close()
			}
			onlyOn(t, "old gone", landing(t, g, netip.Addr{}, dial, 4, next...), 0, 1)
			quick("Sync after the departures", g.Sync)
			quick("Compact", g.Compact)
			onlyOn(t, "compacted", landing(t, g, netip.Addr{}, dial, 4, next...), 0, 1)
		})
	}
}

// TestGroupPlugAddressTaken: a v6only [::] group beside a listener on
// [::1] of its port has no address to plug a placeholder through (every
// connection it could make reaches the other listener first): Dark says
// so at once, instead of waiting for a plug that goes elsewhere.
func TestGroupPlugAddressTaken(t *testing.T) {
	if !netnstest.Run(t) {
		return
	}
	l, err := Listen(context.Background(), "tcp6", "[::]:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	port := l.Addr().(*net.TCPAddr).Port
	lo, err := Listen(context.Background(), "tcp6", fmt.Sprintf("[::1]:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lo.Close() })
	if s, err := Describe(l.(*net.TCPListener)); err != nil || !s.V6Only {
		t.Skipf("the tcp6 listener is not v6only (%+v, %v)", s, err)
	}
	g := NewGroup(netip.MustParseAddrPort(l.Addr().String()), GroupOptions{})
	t.Cleanup(func() { g.Close() })
	start := time.Now()
	err = g.Dark(inodes(t, []*net.TCPListener{l.(*net.TCPListener)}))
	if err == nil || errors.Is(err, ErrSlotsUnknown) || !strings.Contains(err.Error(), "takes every address") {
		t.Fatalf("Dark: %v, want an error that no address reaches the group", err)
	}
	if d := time.Since(start); d > 1500*time.Millisecond {
		t.Fatalf("Dark took %v: it waited for a plug", d)
	}
	if q, err := AcceptQueueLen(lo.(*net.TCPListener)); err != nil || q != 0 {
		t.Fatalf("%d connections queued on [::1] (%v), want none", q, err)
	}
}
