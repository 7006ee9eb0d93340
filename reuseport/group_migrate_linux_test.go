//go:build linux

package reuseport

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/changeover-dev/changeover/internal/netnstest"
)

// TestMigrateReqWithPlaceholders measures what tcp_migrate_req=1 does to a
// steered group: the queue of a member that closes is spread by the
// kernel's hash over the remaining members, the placeholders included (the
// kernel asks no classic program where to migrate), and a placeholder
// never accepts. This is why the supervisor stops an old generation only
// once its accept queues are empty: then there is nothing to migrate.
func TestMigrateReqWithPlaceholders(t *testing.T) {
	if !netnstest.Run(t) {
		return
	}
	if err := EnableMigrateReq(); err != nil {
		t.Fatal(err)
	}
	old := listen(t, "127.0.0.1:0")
	addr := old.Addr().String()
	g := NewGroup(netip.MustParseAddrPort(addr), GroupOptions{})
	defer g.Close()
	if err := g.Dark(inodes(t, []*net.TCPListener{old})); err != nil {
		t.Fatal(err)
	}
	const n = 40
	for range n {
		dialFrom(t, netip.Addr{}, addr)
	}
	deadline := time.Now().Add(5 * time.Second)
	for q, _ := AcceptQueueLen(old); q < n; q, _ = AcceptQueueLen(old) {
		if time.Now().After(deadline) {
			t.Fatalf("the old member has %d of %d connections queued", q, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	next := listen(t, addr)
	if err := g.Cutover(inodes(t, []*net.TCPListener{next})); err != nil {
		t.Fatal(err)
	}
	if err := g.PrepareDepartures(1); err != nil {
		t.Fatal(err)
	}
	base := map[uint64]int{}
	for ino, p := range g.phs {
		base[ino], _ = queueLen(p.fd)
	}
	old.Close() // with n connections still queued on it
	onPlaceholders, onNext := 0, 0
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		onPlaceholders = 0
		for ino, p := range g.phs {
			q, _ := queueLen(p.fd)
			onPlaceholders += q - base[ino]
		}
		onNext, _ = AcceptQueueLen(next)
		if onPlaceholders+onNext == n || time.Now().After(deadline) {
			break
		}
	}
	t.Logf("tcp_migrate_req=1: of %d connections queued on a member that closed, %d moved to the new member and %d to the %d placeholders (which never accept)",
		n, onNext, onPlaceholders, len(g.phs))
	if onPlaceholders+onNext != n || onPlaceholders == 0 {
		t.Fatalf("moved %d to the new member and %d to placeholders; want all %d moved, some to placeholders", onNext, onPlaceholders, n)
	}
}
