//go:build linux

package supervisor

import (
	"errors"
	"net/netip"

	"golang.org/x/sys/unix"
)

// reusePortShared reports whether the TCP listener on addr is shared with
// SO_REUSEPORT: a socket of ours with SO_REUSEPORT can be bound to it.
//
// Kernel facts this relies on: bind(2) of a TCP socket with SO_REUSEPORT
// to an address another listener holds succeeds only if that listener has
// SO_REUSEPORT too and the same effective uid (else EADDRINUSE). A socket
// that is bound but never listens does not join the listener's reuseport
// group (a socket joins it in listen(2)), so it receives no connection, and
// closing it at once changes nothing for the listener. sock_diag does not
// report SO_REUSEPORT itself.
func reusePortShared(addr netip.AddrPort) bool {
	family := unix.AF_INET6
	if addr.Addr().Unmap().Is4() {
		family = unix.AF_INET
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return true // cannot tell: compare it
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		return true
	}
	var sa unix.Sockaddr
	if family == unix.AF_INET {
		sa = &unix.SockaddrInet4{Port: int(addr.Port()), Addr: addr.Addr().Unmap().As4()}
	} else {
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0)
		sa = &unix.SockaddrInet6{Port: int(addr.Port()), Addr: addr.Addr().As16()}
	}
	err = unix.Bind(fd, sa)
	return !errors.Is(err, unix.EADDRINUSE)
}
