package reuseport

import (
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// retransmitGrace is how long a DrainWatch keeps waiting for a connection
// half-open at the switch once it has seen its SYN-ACK retransmitted: one
// generous round trip, for a client whose first SYN-ACK was lost and that
// answers the retransmitted one.
const retransmitGrace = 250 * time.Millisecond

// quietPollsNeeded is how many polls in a row must find the listeners
// quiet: a connection leaves SYN_RECV a moment before it enters the accept
// queue, so one poll can fall between the two and see neither.
const quietPollsNeeded = 2

// DrainWatch decides when listeners that new connections were steered away
// from are quiet, so that closing them loses no connection: their accept
// queues are empty and every connection half-open on their addresses at
// the switch has either completed or been given up on, at two polls in a
// row. It does no waiting and reads no queue of its own: the caller takes
// the connections half-open at the switch with Start, then, at each poll,
// reads the accept queues and hands them to Poll, until Poll reports quiet
// or the caller's deadline passes (Waiting then says what was left).
//
// A half-open connection is waited for until it completes (it leaves
// SYN_RECV, for the accept queue), or until retransmitGrace (250 ms) after
// a poll first sees that the kernel has retransmitted its SYN-ACK, whichever
// is first; one already retransmitted at the switch gets the same grace from
// Start. A peer that has not sent the final ACK one retransmission timeout
// (1 s, see [HalfOpenConn]) after the SYN-ACK is most likely never going
// to: a port scanner, a spoofed source, a client that vanished. Such
// request sockets live for about a minute (five retransmissions), there is
// nearly always one on a host that faces the Internet, and sock_diag does
// not say which listener of the group holds them (no inode), so waiting for
// them would hold every drain to its deadline. A real client whose first
// SYN-ACK was lost answers the retransmitted one a round trip later, within
// the grace. The cost: a client that answers later still (its final ACK
// lost too, or a round trip over about 250 ms) is reset when the listener
// closes, unless net.ipv4.tcp_migrate_req=1 moves its request to another
// member.
//
// A read that fails makes the poll not quiet, since nobody knows then what
// is waiting: a failed read of the queues (the caller's), or a failed dump
// of the half-open connections (a netlink hiccup, ENOBUFS). The
// connections half-open at the switch are those of the first dump of an
// address that works, so an address whose dump fails at Start is dumped
// again at each poll until one works.
//
// A DrainWatch is used by one goroutine.
type DrainWatch struct {
	addrs    []netip.AddrPort
	halfOpen func(netip.AddrPort) (map[netip.AddrPort]HalfOpenConn, error)

	// waiting maps each address whose half-open connections at the switch
	// are known to those of them still waited for, each with the time its
	// SYN-ACK was first seen retransmitted (zero: not yet). An address
	// that is missing has had no dump that worked yet.
	waiting map[netip.AddrPort]map[netip.AddrPort]time.Time

	queued, halfOpenLeft int // what the last poll found waiting
	quietPolls           int // polls in a row that found nothing waiting
}

// NewDrainWatch returns a DrainWatch for the listeners on addrs, steered
// away from just now. halfOpen lists the connections half-open on an
// address; nil means [HalfOpen] (tests pass their own).
func NewDrainWatch(addrs []netip.AddrPort, halfOpen func(netip.AddrPort) (map[netip.AddrPort]HalfOpenConn, error)) *DrainWatch {
	if halfOpen == nil {
		halfOpen = HalfOpen
	}
	return &DrainWatch{
		addrs:    addrs,
		halfOpen: halfOpen,
		waiting:  map[netip.AddrPort]map[netip.AddrPort]time.Time{},
	}
}

// Start reads, at now (the switch), which connections are half-open on the
// watched addresses. It returns the failed dumps, joined; the addresses
// they were for are dumped again at the next polls.
func (w *DrainWatch) Start(now time.Time) error {
	var errs []error
	for _, addr := range w.addrs {
		if _, err := w.dump(addr, now); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Poll evaluates one poll at now. queued is the number of connections in
// the accept queues of the listeners, as the caller read them just now;
// queueErr, if not nil, is why that read failed (queued is then ignored,
// and the poll is not quiet). Poll reports whether the listeners are quiet:
// this poll and the one before it found nothing waiting and every read
// worked. The error joins the dumps of half-open connections that failed.
func (w *DrainWatch) Poll(now time.Time, queued int, queueErr error) (quiet bool, err error) {
	known := queueErr == nil
	if known {
		w.queued = queued
	}
	w.halfOpenLeft = 0
	var errs []error
	for _, addr := range w.addrs {
		left, err := w.pollAddr(addr, now)
		if err != nil {
			errs = append(errs, err)
			known = false
		}
		w.halfOpenLeft += left
	}
	if known && w.queued == 0 && w.halfOpenLeft == 0 {
		w.quietPolls++
	} else {
		w.quietPolls = 0
	}
	return w.quietPolls >= quietPollsNeeded, errors.Join(errs...)
}

// Waiting returns what the last poll found waiting: the connections in the
// accept queues (as of the last read that worked) and those half-open at
// the switch that are still waited for.
func (w *DrainWatch) Waiting() (queued, halfOpen int) {
	return w.queued, w.halfOpenLeft
}

// pollAddr returns how many of the connections half-open on addr at the
// switch are still waited for at now. While the dump fails, all those
// known are counted (none if the switch's are not known yet).
func (w *DrainWatch) pollAddr(addr netip.AddrPort, now time.Time) (left int, err error) {
	waiting, known := w.waiting[addr]
	if known && len(waiting) == 0 {
		return 0, nil // nothing was half-open, or all of it is done with
	}
	current, err := w.dump(addr, now)
	if err != nil {
		return len(waiting), err
	}
	waiting = w.waiting[addr] // set by dump if this was the first that worked
	for peer, retransmitted := range waiting {
		c, ok := current[peer]
		switch {
		case !ok:
			delete(waiting, peer) // completed (or given up on by the kernel)
		case c.Retransmits == 0:
			left++
		case retransmitted.IsZero():
			waiting[peer] = now // the grace starts
			left++
		case now.Sub(retransmitted) < retransmitGrace:
			left++
		default:
			delete(waiting, peer) // given up on: no answer within the grace
		}
	}
	return left, nil
}

// dump lists the connections half-open on addr. The first that works
// records them as those half-open at the switch, at now.
func (w *DrainWatch) dump(addr netip.AddrPort, now time.Time) (map[netip.AddrPort]HalfOpenConn, error) {
	current, err := w.halfOpen(addr)
	if err != nil {
		return nil, fmt.Errorf("reuseport: dump the half-open connections to %s: %w", addr, err)
	}
	if _, known := w.waiting[addr]; !known {
		waiting := make(map[netip.AddrPort]time.Time, len(current))
		for peer, c := range current {
			var retransmitted time.Time
			if c.Retransmits > 0 {
				retransmitted = now
			}
			waiting[peer] = retransmitted
		}
		w.waiting[addr] = waiting
	}
	return current, nil
}
