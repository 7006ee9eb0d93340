package reuseport_test

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/changeover-dev/changeover/reuseport"
)

// peers are the connections half-open on one address, by peer.
type peers = map[netip.AddrPort]reuseport.HalfOpenConn

// dump is what the injected half-open source returns for one address.
type dump struct {
	conns map[netip.AddrPort]reuseport.HalfOpenConn
	err   error
}

// poll is one DrainWatch.Poll and what it must report.
type poll struct {
	at       time.Duration           // since the switch (Start)
	dumps    map[netip.AddrPort]dump // what a dump of each address returns; a dump of an address not here fails the test
	queued   int
	queueErr error

	wantHalfOpen int
	wantErr      bool // a dump failed, and Poll says so
	wantQuiet    bool
}

// TestDrainWatch drives the quiet rule with injected half-open snapshots
// and an explicit clock: no sockets, no sleeps.
func TestDrainWatch(t *testing.T) {
	a := netip.MustParseAddrPort("127.0.0.1:8080")
	b := netip.MustParseAddrPort("[::1]:8080")
	p1 := netip.MustParseAddrPort("192.0.2.1:40001")
	p2 := netip.MustParseAddrPort("192.0.2.2:40002")
	fresh := reuseport.HalfOpenConn{}                // its SYN-ACK not retransmitted (yet)
	resent := reuseport.HalfOpenConn{Retransmits: 1} // the kernel sent its SYN-ACK again
	injected := errors.New("sock_diag: no buffer space available (injected)")
	conns := func(half peers) dump { return dump{conns: half} }
	none := conns(nil)
	failed := dump{err: injected}
	ms := time.Millisecond

	for _, tc := range []struct {
		name         string
		start        map[netip.AddrPort]dump
		wantStartErr bool
		polls        []poll
	}{
		{
			name:  "completed",
			start: map[netip.AddrPort]dump{a: conns(peers{p1: fresh})},
			polls: []poll{
				{at: 5 * ms, dumps: map[netip.AddrPort]dump{a: conns(peers{p1: fresh})}, wantHalfOpen: 1},
				{at: 10 * ms, dumps: map[netip.AddrPort]dump{a: none}}, // quiet once
				{at: 15 * ms, wantQuiet: true},                         // nothing left to dump for
			},
		},
		{
			name:  "never-retransmitted-is-waited-for",
			start: map[netip.AddrPort]dump{a: conns(peers{p1: fresh})},
			polls: []poll{
				{at: 5 * ms, dumps: map[netip.AddrPort]dump{a: conns(peers{p1: fresh})}, wantHalfOpen: 1},
				{at: time.Second, dumps: map[netip.AddrPort]dump{a: conns(peers{p1: fresh})}, wantHalfOpen: 1},
				{at: time.Minute, dumps: map[netip.AddrPort]dump{a: conns(peers{p1: fresh})}, wantHalfOpen: 1},
			},
		},
		{
			name:  "retransmitted-then-grace-expires",
			start: map[netip.AddrPort]dump{a: conns(peers{p1: fresh})},
			polls: []poll{
				{at: 5 * ms, dumps: map[netip.AddrPort]dump{a: conns(peers{p1: fresh})}, wantHalfOpen: 1},
				{at: 1005 * ms, dumps: map[netip.AddrPort]dump{a: conns(peers{p1: resent})}, wantHalfOpen: 1}, // the grace starts
				{at: 1254 * ms, dumps: map[netip.AddrPort]dump{a: conns(peers{p1: resent})}, wantHalfOpen: 1},
				{at: 1255 * ms, dumps: map[netip.AddrPort]dump{a: conns(peers{p1: resent})}}, // given up on
				{at: 1260 * ms, wantQuiet: true},
			},
		},
		{
			name:  "retransmitted-at-the-switch-gets-the-grace-from-start",
			start: map[netip.AddrPort]dump{a: conns(peers{p1: resent})},
			polls: []poll{
				{at: 249 * ms, dumps: map[netip.AddrPort]dump{a: conns(peers{p1: resent})}, wantHalfOpen: 1},
				{at: 250 * ms, dumps: map[netip.AddrPort]dump{a: conns(peers{p1: resent})}},
				{at: 255 * ms, wantQuiet: true},
			},
		},
		{
			name:  "diag-error-is-not-quiet",
			start: map[netip.AddrPort]dump{a: conns(peers{p1: fresh})},
			polls: []poll{
				{at: 5 * ms, dumps: map[netip.AddrPort]dump{a: failed}, wantHalfOpen: 1, wantErr: true},
				{at: 10 * ms, dumps: map[netip.AddrPort]dump{a: failed}, wantHalfOpen: 1, wantErr: true},
				{at: 15 * ms, dumps: map[netip.AddrPort]dump{a: none}},
				{at: 20 * ms, wantQuiet: true},
			},
		},
		{
			name:         "diag-error-at-the-switch-is-retried",
			start:        map[netip.AddrPort]dump{a: failed},
			wantStartErr: true,
			polls: []poll{
				{at: 5 * ms, dumps: map[netip.AddrPort]dump{a: failed}, wantErr: true},
				// The first dump that works tells who is half-open at the switch.
				{at: 10 * ms, dumps: map[netip.AddrPort]dump{a: conns(peers{p1: fresh})}, wantHalfOpen: 1},
				// p2 came after it: not waited for.
				{at: 15 * ms, dumps: map[netip.AddrPort]dump{a: conns(peers{p2: fresh})}},
				{at: 20 * ms, wantQuiet: true},
			},
		},
		{
			name:  "quiet-twice-in-a-row",
			start: map[netip.AddrPort]dump{a: none},
			polls: []poll{
				{at: 5 * ms}, // quiet once
				{at: 10 * ms, queued: 3},
				{at: 15 * ms}, // quiet once
				{at: 20 * ms, queueErr: injected},
				{at: 25 * ms}, // quiet once
				{at: 30 * ms, wantQuiet: true},
			},
		},
		{
			name: "several-addresses",
			start: map[netip.AddrPort]dump{
				a: conns(peers{p1: fresh}),
				b: conns(peers{p2: resent}),
			},
			polls: []poll{
				{at: 5 * ms, dumps: map[netip.AddrPort]dump{
					a: conns(peers{p1: fresh}),
					b: conns(peers{p2: resent}),
				}, wantHalfOpen: 2},
				{at: 10 * ms, dumps: map[netip.AddrPort]dump{a: none, b: failed}, wantHalfOpen: 1, wantErr: true},
				{at: 250 * ms, dumps: map[netip.AddrPort]dump{b: conns(peers{p2: resent})}}, // b's grace, from the switch, is over
				{at: 255 * ms, wantQuiet: true},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			switchedAt := time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)
			dumps, step := tc.start, "Start"
			source := func(addr netip.AddrPort) (map[netip.AddrPort]reuseport.HalfOpenConn, error) {
				d, ok := dumps[addr]
				if !ok {
					t.Errorf("%s dumped %s; want no dump of it there", step, addr)
					return nil, errors.New("unexpected dump")
				}
				return d.conns, d.err
			}
			addrs := make([]netip.AddrPort, 0, len(tc.start))
			for _, addr := range []netip.AddrPort{a, b} {
				if _, ok := tc.start[addr]; ok {
					addrs = append(addrs, addr)
				}
			}
			watch := reuseport.NewDrainWatch(addrs, source)
			if err := watch.Start(switchedAt); (err != nil) != tc.wantStartErr {
				t.Fatalf("Start: %v; want an error: %v", err, tc.wantStartErr)
			}
			for _, p := range tc.polls {
				dumps, step = p.dumps, "Poll at "+p.at.String()
				quiet, err := watch.Poll(switchedAt.Add(p.at), p.queued, p.queueErr)
				queued, halfOpen := watch.Waiting()
				t.Logf("%s: quiet %v, queued %d, half-open %d, err %v", step, quiet, queued, halfOpen, err)
				if quiet != p.wantQuiet || halfOpen != p.wantHalfOpen {
					t.Errorf("%s: quiet %v with %d half-open; want quiet %v with %d", step, quiet, halfOpen, p.wantQuiet, p.wantHalfOpen)
				}
				if p.queueErr == nil && queued != p.queued {
					t.Errorf("%s: Waiting says %d queued; want %d", step, queued, p.queued)
				}
				if (err != nil) != p.wantErr {
					t.Errorf("%s: error %v; want one: %v", step, err, p.wantErr)
				}
				if err != nil && !errors.Is(err, injected) {
					t.Errorf("%s: error %q; want it to wrap the dump's error", step, err)
				}
				for addr, d := range p.dumps {
					if d.err != nil && (err == nil || !strings.Contains(err.Error(), addr.String())) {
						t.Errorf("%s: error %v; want it to name %s, whose dump failed", step, err, addr)
					}
				}
			}
		})
	}
}
