//go:build linux

package reuseport

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// AcceptQueueLen returns the number of connections waiting in a listener's
// accept queue: established by the kernel, not yet returned by accept(2).
// On a listening socket TCP_INFO's tcpi_unacked holds that number.
func AcceptQueueLen(l syscall.Conn) (int, error) {
	var n int
	err := withFD(l, "read TCP_INFO", func(fd int) error {
		info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			return err
		}
		n = int(info.Unacked)
		return nil
	})
	return n, err
}

// Steer attaches to the reuseport group of l a classic BPF program that
// returns index: every new connection to the group goes to the member that
// joined index-th (from 0), or, if there is no such member, to the one the
// hash picks. The program replaces any earlier one and stays with the group
// after l is closed.
func Steer(l syscall.Conn, index uint32) error {
	prog := []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: index}}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	return withFD(l, fmt.Sprintf("attach reuseport program \"ret #%d\"", index), func(fd int) error {
		return unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF, &fprog)
	})
}

// Dark steers the group of l to member 0 (the serving instance, when
// handovers are serialised). A new instance
// calls it right after it listens, so that it receives no connection until
// the old instance hands the port over (see runner).
func Dark(l syscall.Conn) error { return Steer(l, 0) }

// Detach removes the group's program: connections are spread by hash again.
func Detach(l syscall.Conn) error {
	return withFD(l, "detach reuseport program", func(fd int) error {
		err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DETACH_REUSEPORT_BPF, 0)
		if err == unix.ENOENT { // no program attached: nothing to do
			return nil
		}
		return err
	})
}

// MigrateReq reports whether net.ipv4.tcp_migrate_req is 1 in this network
// namespace: then the kernel moves the queued and half-open connections of a
// closing listener to the other members of its group (spread by hash,
// whatever classic program the group has) instead of resetting them. A
// kernel without the sysctl (before 5.14) reads as false: it resets them.
func MigrateReq() (bool, error) { return readMigrateReq(migrateReqPath) }

const migrateReqPath = "/proc/sys/net/ipv4/tcp_migrate_req"

func readMigrateReq(path string) (bool, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil // before Linux 5.14: no migration, as with 0
	}
	if err != nil {
		return false, fmt.Errorf("reuseport: read tcp_migrate_req: %w", err)
	}
	return strings.TrimSpace(string(b)) == "1", nil
}

// EnableMigrateReq sets net.ipv4.tcp_migrate_req=1 in this network
// namespace. It needs root (CAP_NET_ADMIN over the namespace); the handover
// does not need it, it is a second line of defence (see the package doc).
func EnableMigrateReq() error {
	const path = "/proc/sys/net/ipv4/tcp_migrate_req"
	if err := os.WriteFile(path, []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("reuseport: set net.ipv4.tcp_migrate_req=1 (needs root; Linux 5.14 or later): %w", err)
	}
	return nil
}

// Inode returns the socket inode of l, as ListeningSockets reports it.
func Inode(l syscall.Conn) (uint64, error) {
	var ino uint64
	err := withFD(l, "fstat", func(fd int) error {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return err
		}
		ino = st.Ino
		return nil
	})
	return ino, err
}

func withFD(l syscall.Conn, what string, f func(fd int) error) error {
	rc, err := l.SyscallConn()
	if err != nil {
		return fmt.Errorf("reuseport: %s: %w", what, err)
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = f(int(fd)) }); err != nil {
		return fmt.Errorf("reuseport: %s: %w", what, err)
	}
	if ferr != nil {
		return fmt.Errorf("reuseport: %s: %w", what, ferr)
	}
	return nil
}

// ListeningSockets lists every TCP listening socket of this network
// namespace, IPv4 and IPv6 (through sock_diag).
func ListeningSockets() ([]Socket, error) {
	socks, err := diagTCP(1 << tcpListen)
	if err != nil {
		return nil, err
	}
	out := make([]Socket, 0, len(socks))
	for _, s := range socks {
		out = append(out, Socket{Addr: s.Local, V6Only: s.V6Only, Dev: int(s.Ifindex), UID: int(s.UID), Inode: uint64(s.Inode), Queue: int(s.RQueue)})
	}
	return out, nil
}

// GroupSize returns how many listening sockets are bound to exactly addr,
// in its family (a 4-byte addr counts AF_INET sockets, a 16-byte one
// AF_INET6 sockets; IPV6_V6ONLY and devices aside): the members of its
// reuseport group.
func GroupSize(addr netip.AddrPort) (int, error) {
	socks, err := ListeningSockets()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, s := range socks {
		if SameAddr(s.Addr, addr) && s.Addr.Addr().Is4() == addr.Addr().Is4() {
			n++
		}
	}
	return n, nil
}

// Describe returns l as ListeningSockets lists it (Queue aside), read from
// the socket itself.
func Describe(l syscall.Conn) (Socket, error) {
	var s Socket
	err := withFD(l, "describe socket", func(fd int) error {
		sa, err := unix.Getsockname(fd)
		if err != nil {
			return err
		}
		switch sa := sa.(type) {
		case *unix.SockaddrInet4:
			s.Addr = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
		case *unix.SockaddrInet6:
			s.Addr = netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port))
			only, err := unix.GetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY)
			if err != nil {
				return err
			}
			s.V6Only = only == 1
		default:
			return fmt.Errorf("not an IP socket: %T", sa)
		}
		if s.Dev, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_BINDTOIFINDEX); err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return err
		}
		s.Inode, s.UID = st.Ino, os.Geteuid()
		return nil
	})
	return s, err
}

// HalfOpen returns the connections to addr that are still in SYN_RECV, by
// peer: the SYN arrived and was answered, the final ACK has not (or, on a
// listener with TCP_DEFER_ACCEPT, no data has). Each is bound to the listener
// the group chose when its SYN arrived. For a listener on a wildcard address,
// every local address of that port counts.
//
// sock_diag reports request sockets with neither inode nor uid, so which
// listener of the group holds one cannot be told from here.
func HalfOpen(addr netip.AddrPort) (map[netip.AddrPort]HalfOpenConn, error) {
	socks, err := diagTCP(1<<tcpSynRecv | 1<<tcpNewSynRecv)
	if err != nil {
		return nil, err
	}
	out := map[netip.AddrPort]HalfOpenConn{}
	for _, s := range socks {
		if s.Local.Port() == addr.Port() && (addr.Addr().IsUnspecified() || SameAddr(s.Local, addr)) {
			out[s.Remote] = HalfOpenConn{Retransmits: int(s.Retrans)}
		}
	}
	return out, nil
}

// holder says who, as far as this namespace shows, holds address.
func holder(address string) string {
	ta, err := net.ResolveTCPAddr("tcp", address)
	if err != nil {
		return "the port is in use"
	}
	want := netip.AddrPortFrom(ta.AddrPort().Addr().Unmap(), ta.AddrPort().Port())
	socks, err := ListeningSockets()
	if err != nil {
		return "the port is in use"
	}
	euid := os.Geteuid()
	for _, s := range socks {
		if s.Addr.Port() != want.Port() {
			continue
		}
		if !(SameAddr(s.Addr, want) || s.Addr.Addr().IsUnspecified() || want.Addr().IsUnspecified()) {
			continue
		}
		if s.UID != euid {
			return fmt.Sprintf("%s is held by a socket of uid %d, and the kernel lets only sockets of the same effective uid (here %d) share a port", s.Addr, s.UID, euid)
		}
		return fmt.Sprintf("%s is held by a socket without SO_REUSEPORT (a process that cannot share the port)", s.Addr)
	}
	return "the port is held by a socket that is not listening or not visible here"
}
