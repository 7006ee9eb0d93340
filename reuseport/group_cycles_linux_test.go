//go:build linux

package reuseport

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
)

// TestGroupRepeatedHandovers drives a Group as the supervisor does, over
// many handovers in a row: Dark on the serving generation, the next one
// joins, Compact while it is dark and last, Cutover, PrepareDepartures,
// the old generation leaves, Compact. After every step each new
// connection must land on the generation that serves (landing fails on a
// placeholder's queue).
func TestGroupRepeatedHandovers(t *testing.T) {
	for _, size := range []int{1, 3} {
		t.Run(fmt.Sprintf("%d listeners per generation", size), func(t *testing.T) {
			first := listen(t, "127.0.0.1:0")
			addr := first.Addr().String()
			gen := []*net.TCPListener{first}
			for range size - 1 {
				gen = append(gen, listen(t, addr))
			}
			g := NewGroup(netip.MustParseAddrPort(addr), GroupOptions{})
			defer g.Close()
			lo := netip.MustParseAddr("127.0.0.1")
			check := func(step string, serving []*net.TCPListener, all ...*net.TCPListener) {
				t.Helper()
				counts := landing(t, g, lo, addr, 4*len(serving), all...)
				onlyOn(t, step, counts, indices(0, len(serving))...)
			}
			for cycle := range 8 {
				if err := g.Dark(inodes(t, gen)); err != nil {
					t.Fatalf("cycle %d: Dark: %v", cycle, err)
				}
				var next []*net.TCPListener
				for range size {
					next = append(next, listen(t, addr))
				}
				check(fmt.Sprintf("cycle %d dark", cycle), gen, append(append([]*net.TCPListener{}, gen...), next...)...)
				if err := g.Compact(); err != nil {
					t.Fatalf("cycle %d: Compact before the cutover: %v", cycle, err)
				}
				check(fmt.Sprintf("cycle %d compacted", cycle), gen, append(append([]*net.TCPListener{}, gen...), next...)...)
				if err := g.Cutover(inodes(t, next)); err != nil {
					t.Fatalf("cycle %d: Cutover: %v", cycle, err)
				}
				check(fmt.Sprintf("cycle %d cut over", cycle), next, append(append([]*net.TCPListener{}, next...), gen...)...)
				if err := g.PrepareDepartures(len(gen)); err != nil {
					t.Fatalf("cycle %d: PrepareDepartures: %v", cycle, err)
				}
				for _, l := range gen {
					l.Close()
				}
				check(fmt.Sprintf("cycle %d old gone", cycle), next, next...)
				if err := g.Compact(); err != nil {
					t.Fatalf("cycle %d: Compact: %v", cycle, err)
				}
				check(fmt.Sprintf("cycle %d compacted after", cycle), next, next...)
				gen = next
			}
		})
	}
}

// TestCompactWhileOldMemberStillListens: the supervisor learns that the old
// generation's listeners are gone from /proc, but the kernel may release a
// socket a moment after its last process let go of it (the old member is
// still in the group when Compact runs). Compact must not close the
// placeholders that its departure will move: when the old member then
// leaves, the new one's slot must not move.
func TestCompactWhileOldMemberStillListens(t *testing.T) {
	old := listen(t, "127.0.0.1:0")
	addr := old.Addr().String()
	g := NewGroup(netip.MustParseAddrPort(addr), GroupOptions{})
	defer g.Close()
	if err := g.Dark(inodes(t, []*net.TCPListener{old})); err != nil {
		t.Fatal(err)
	}
	next := listen(t, addr)
	if err := g.Cutover(inodes(t, []*net.TCPListener{next})); err != nil {
		t.Fatal(err)
	}
	if err := g.PrepareDepartures(1); err != nil {
		t.Fatal(err)
	}
	if err := g.Compact(); err != nil { // too early: old still listens
		t.Fatal(err)
	}
	old.Close()
	lo := netip.MustParseAddr("127.0.0.1")
	onlyOn(t, "after the old member left", landing(t, g, lo, addr, 8, next), 0)
	if err := g.Compact(); err != nil {
		t.Fatal(err)
	}
	onlyOn(t, "compacted", landing(t, g, lo, addr, 8, next), 0)
}
