package reuseport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"

	libp2p "github.com/libp2p/go-reuseport"
)

// ErrNotSupported is returned (wrapped) by the functions that need Linux.
var ErrNotSupported = errors.New("reuseport: not supported on this platform")

// Socket is one TCP listening socket of the network namespace.
type Socket struct {
	// Addr is the local address as the kernel has it: 4 bytes for an
	// AF_INET socket, 16 for an AF_INET6 one (a v4-mapped address stays in
	// its 16-byte form), without a zone.
	Addr   netip.AddrPort
	V6Only bool   // AF_INET6 only: IPV6_V6ONLY is set (the socket takes no IPv4)
	Dev    int    // the interface index of SO_BINDTODEVICE; 0 for none
	UID    int    // owner's UID
	Inode  uint64 // socket inode, as in /proc/PID/fd/N -> socket:[Inode]
	Queue  int    // accept-queue length
}

// SameAddr is the one comparison of addresses in this module: equal ports,
// and equal addresses once the zone is dropped (sock_diag reports none) and
// a v4-mapped IPv6 address is taken as its IPv4 address.
func SameAddr(a, b netip.AddrPort) bool {
	return a.Port() == b.Port() && a.Addr().WithZone("").Unmap() == b.Addr().WithZone("").Unmap()
}

// SameGroup reports whether the kernel puts s and o in one reuseport group
// (the UID aside): the same family, address and port, the same
// IPV6_V6ONLY and the same device. An AF_INET socket on 127.0.0.1 and an
// AF_INET6 one on ::ffff:127.0.0.1 take the same connections but are two
// groups.
func (s Socket) SameGroup(o Socket) bool {
	return SameAddr(s.Addr, o.Addr) && s.Addr.Addr().Is4() == o.Addr.Addr().Is4() &&
		s.V6Only == o.V6Only && s.Dev == o.Dev
}

// Overlaps reports whether a connection could be for either s or o: the same
// port, a device that both take (or no device on one), and an IP version
// and address both take. The kernel then picks by specificity before any
// steering program runs: a specific address over a wildcard, and an
// AF_INET socket over a dual-stack AF_INET6 one for an IPv4 client.
func (s Socket) Overlaps(o Socket) bool {
	if s.Addr.Port() != o.Addr.Port() || (s.Dev != 0 && o.Dev != 0 && s.Dev != o.Dev) {
		return false
	}
	s4, s6 := s.reach()
	o4, o6 := o.reach()
	meet := func(a, b netip.Addr) bool {
		return a.IsValid() && b.IsValid() && (a.IsUnspecified() || b.IsUnspecified() || a == b)
	}
	return meet(s4, o4) || meet(s6, o6)
}

// Shadows reports whether the kernel gives s, a listener of another
// reuseport group, some of the connections that o would otherwise take:
// its listener lookup picks a group before any steering program runs, so
// a program attached to o's group never sees them. For a connection both
// take, s comes first if its address is specific and o's a wildcard, or
// both have the same IPv4 address and s is AF_INET while o is a
// dual-stack AF_INET6 socket, or both have the same address and s is
// bound to a device and o is not (for that device's connections).
// A wider s (0.0.0.0 beside o's 127.0.0.1, a dual-stack [::] beside o's
// 0.0.0.0) does not shadow o: it takes only connections o never gets.
func (s Socket) Shadows(o Socket) bool {
	if s.SameGroup(o) || !s.Overlaps(o) {
		return false
	}
	s4, s6 := s.reach()
	o4, o6 := o.reach()
	first := func(a, b netip.Addr) bool { // a's lookup comes before b's: a specific address in b's wildcard
		return a.IsValid() && b.IsValid() && !a.IsUnspecified() && b.IsUnspecified()
	}
	same := func(a, b netip.Addr) bool { return a.IsValid() && a == b }
	switch {
	case first(s4, o4), first(s6, o6):
		return true
	case same(s4, o4) && s.Addr.Addr().Is4() && !o.Addr.Addr().Is4():
		return true
	case s.Dev != 0 && o.Dev == 0 && (same(s4, o4) || same(s6, o6)):
		return true
	}
	return false
}

// reach returns the local addresses of the IPv4 and of the IPv6
// connections the socket takes: an unspecified address for any, the zero
// Addr for none.
func (s Socket) reach() (v4, v6 netip.Addr) {
	a := s.Addr.Addr().WithZone("")
	switch {
	case a.Is4():
		return a, netip.Addr{}
	case a.Is4In6():
		return a.Unmap(), netip.Addr{}
	case a.IsUnspecified() && !s.V6Only:
		return netip.IPv4Unspecified(), a
	}
	return netip.Addr{}, a
}

// HalfOpenConn is a connection in SYN_RECV, as [HalfOpen] reports it.
type HalfOpenConn struct {
	// Retransmits counts the SYN-ACKs the kernel has sent again for want of
	// the final ACK (idiag_retrans). The first is sent when the initial
	// retransmission timeout (1 s, TCP_TIMEOUT_INIT) has passed since the
	// SYN-ACK, the next ones after 2, 4, 8 and 16 s more
	// (net.ipv4.tcp_synack_retries, 5 by default, then the request is
	// dropped). A peer that has not answered one RTO after the SYN-ACK is
	// likely never to: a scanner, a spoofed source, a vanished client.
	Retransmits int
}

// Control sets SO_REUSEPORT (and SO_REUSEADDR) on a socket before it binds.
// Its signature is that of [net.ListenConfig.Control] and
// [net.Dialer.Control]; a failed setsockopt is returned, never ignored.
func Control(network, address string, c syscall.RawConn) error {
	if err := libp2p.Control(network, address, c); err != nil {
		return fmt.Errorf("reuseport: set SO_REUSEPORT on %s %s: %w", network, address, err)
	}
	return nil
}

// ListenConfig returns a copy of lc whose Control hook runs lc's own Control
// first (if any) and then [Control], with Multipath TCP turned off.
//
// Go (1.24 and later) makes MPTCP sockets for listeners by default where the
// kernel has it, and an MPTCP socket refuses SO_ATTACH_REUSEPORT_CBPF with
// EOPNOTSUPP: the handover's steering needs plain TCP.
func ListenConfig(lc net.ListenConfig) net.ListenConfig {
	lc.SetMultipathTCP(false)
	prev := lc.Control
	lc.Control = func(network, address string, c syscall.RawConn) error {
		if prev != nil {
			if err := prev(network, address, c); err != nil {
				return err
			}
		}
		return Control(network, address, c)
	}
	return lc
}

// Listen announces on a TCP address with SO_REUSEPORT set. network is
// "tcp", "tcp4" or "tcp6". A port held by a socket that cannot share it is
// an [*AddrInUseError].
func Listen(ctx context.Context, network, address string) (net.Listener, error) {
	lc := ListenConfig(net.ListenConfig{})
	l, err := lc.Listen(ctx, network, address)
	if err != nil {
		return nil, explain(network, address, err)
	}
	return l, nil
}

// ListenPacket is Listen for "udp", "udp4" and "udp6". Datagram sockets
// share the port, but nothing is handed over between them: see the README.
func ListenPacket(ctx context.Context, network, address string) (net.PacketConn, error) {
	lc := ListenConfig(net.ListenConfig{})
	pc, err := lc.ListenPacket(ctx, network, address)
	if err != nil {
		return nil, explain(network, address, err)
	}
	return pc, nil
}

// AddrInUseError says why a port could not be shared. It unwraps to the
// bind error (syscall.EADDRINUSE).
type AddrInUseError struct {
	Network string
	Addr    string
	// Reason says who holds the port, as far as could be seen.
	Reason string
	Err    error
}

func (e *AddrInUseError) Error() string {
	return fmt.Sprintf("reuseport: cannot bind %s %s: %s: %v", e.Network, e.Addr, e.Reason, e.Err)
}

func (e *AddrInUseError) Unwrap() error { return e.Err }

// explain turns a bare EADDRINUSE into an error that says who holds the port.
func explain(network, address string, err error) error {
	if !errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("reuseport: listen %s %s: %w", network, address, err)
	}
	reason := "a UDP socket without SO_REUSEPORT, or one of another effective uid, holds the port"
	if !strings.HasPrefix(network, "udp") {
		reason = holder(address) // the listening sockets are visible through sock_diag
	}
	return &AddrInUseError{Network: network, Addr: address, Reason: reason, Err: err}
}
