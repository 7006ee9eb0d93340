package runner

import (
	"context"
	"net"
	"net/netip"
	"strconv"

	"github.com/changeover-dev/changeover/reuseport"
)

// intendedSocket returns the socket that net.ListenConfig.Listen binds for
// network ("tcp", "tcp4" or "tcp6") and address, as sock_diag would list it
// (no inode or uid yet), and the address to bind so that the check and the
// bind agree: a host name is resolved once, here. ok is false when there is
// nothing to check before binding: port 0 (the kernel then picks a port
// that no listener holds: inet_csk_find_open_port does not share a port
// even with SO_REUSEPORT), or an address that Listen itself will refuse or
// that cannot be resolved (Listen then says why).
//
// It follows Go's rules (net/ipsock_posix.go favoriteAddrFamily, and
// ListenConfig.Listen taking the first IPv4 address of a name): "tcp4" is an
// AF_INET socket; "tcp6" is AF_INET6 with IPV6_V6ONLY set, for IPv6
// addresses only; "tcp" on a wildcard (no host, 0.0.0.0 or ::) is a
// dual-stack AF_INET6 socket on [::], on an IPv4 address (v4-mapped
// included) an AF_INET socket, and on an IPv6 address an AF_INET6 socket
// without IPV6_V6ONLY. Listen checks the group again once it has listened,
// so a host where Go would choose otherwise (no IPv6 at all) is still
// caught, later.
func intendedSocket(ctx context.Context, network, address string) (s reuseport.Socket, bindAddress string, ok bool) {
	host, service, err := net.SplitHostPort(address)
	if err != nil {
		return s, address, false
	}
	port, err := net.DefaultResolver.LookupPort(ctx, "tcp", service)
	if err != nil || port == 0 {
		return s, address, false
	}
	bindAddress = address
	var ip netip.Addr // invalid: no host
	if host != "" {
		if ip, err = netip.ParseAddr(host); err != nil {
			ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
			if err != nil {
				return s, address, false
			}
			ip, ok = pickListenAddr(network, ips)
			if !ok {
				return s, address, false
			}
			bindAddress = net.JoinHostPort(ip.String(), strconv.Itoa(port))
		}
		ip = ip.WithZone("") // sock_diag reports no zone
	}
	switch network {
	case "tcp4":
		switch {
		case !ip.IsValid():
			ip = netip.IPv4Unspecified()
		case ip.Unmap().Is4():
			ip = ip.Unmap()
		default:
			return s, address, false // Listen says "no suitable address"
		}
	case "tcp6":
		switch {
		case !ip.IsValid():
			ip = netip.IPv6Unspecified()
		case ip.Unmap().Is4():
			return s, address, false // Listen says "no suitable address"
		}
		s.V6Only = true
	case "tcp":
		switch {
		case !ip.IsValid() || ip.IsUnspecified():
			ip = netip.IPv6Unspecified()
		case ip.Unmap().Is4():
			ip = ip.Unmap()
		}
	default:
		return s, address, false
	}
	s.Addr = netip.AddrPortFrom(ip, uint16(port))
	return s, bindAddress, true
}

// pickListenAddr picks, among the addresses of a name, the one that
// net.ListenConfig.Listen would bind: for "tcp" the first IPv4 address, or
// else the first; for "tcp4" and "tcp6" the first of that version.
func pickListenAddr(network string, ips []netip.Addr) (netip.Addr, bool) {
	for _, ip := range ips {
		v4 := ip.Unmap().Is4()
		if (network == "tcp" || network == "tcp4") && v4 || network == "tcp6" && !v4 {
			return ip.Unmap(), true
		}
	}
	if network == "tcp" && len(ips) > 0 {
		return ips[0], true
	}
	return netip.Addr{}, false
}
