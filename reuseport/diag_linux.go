//go:build linux

package reuseport

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The sock_diag netlink interface (linux/inet_diag.h) lists sockets with the
// kernel doing the filtering by state, so that looking for the few half-open
// connections of a busy port does not read every TIME_WAIT socket, as
// /proc/net/tcp would. golang.org/x/sys/unix has the constants but not these
// structures.

const (
	tcpSynRecv    = 3
	tcpListen     = 10
	tcpNewSynRecv = 12 // request sockets; the kernel reports them as SYN_RECV

	sizeofInetDiagReqV2 = 56
	sizeofInetDiagMsg   = 72
)

// diagSocket is the part of struct inet_diag_msg that we use.
type diagSocket struct {
	State   uint8
	Retrans uint8 // idiag_retrans; for a request socket, the SYN-ACKs sent again
	Local   netip.AddrPort
	Remote  netip.AddrPort
	RQueue  uint32 // for a listener: the accept-queue length
	UID     uint32
	Inode   uint32

	groupKey // which reuseport group a listener can be in (group_diag_linux.go)
}

// diagTCP dumps the TCP sockets of this network namespace whose state is in
// states (a bit mask of 1<<state), IPv4 then IPv6.
func diagTCP(states uint32) ([]diagSocket, error) {
	var out []diagSocket
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		socks, err := diagFamily(family, states)
		if err != nil {
			return nil, fmt.Errorf("reuseport: sock_diag dump (family %d, states %#x): %w", family, states, err)
		}
		out = append(out, socks...)
	}
	return out, nil
}

func diagFamily(family uint8, states uint32) ([]diagSocket, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)

	req := make([]byte, unix.NLMSG_HDRLEN+sizeofInetDiagReqV2)
	hdr := (*unix.NlMsghdr)(unsafe.Pointer(&req[0]))
	hdr.Len = uint32(len(req))
	hdr.Type = unix.SOCK_DIAG_BY_FAMILY
	hdr.Flags = unix.NLM_F_REQUEST | unix.NLM_F_DUMP
	hdr.Seq = 1
	body := req[unix.NLMSG_HDRLEN:]
	body[0] = family
	body[1] = unix.IPPROTO_TCP
	binary.NativeEndian.PutUint32(body[4:], states)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, err
	}

	var out []diagSocket
	buf := make([]byte, 1<<16)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return nil, err
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return out, nil
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if errno := -int32(binary.NativeEndian.Uint32(m.Data)); errno != 0 {
						return nil, syscall.Errno(errno)
					}
				}
				return out, nil
			}
			if len(m.Data) < sizeofInetDiagMsg {
				continue
			}
			out = append(out, withGroupKey(parseDiagMsg(m.Data), m.Data))
		}
	}
}

func parseDiagMsg(b []byte) diagSocket {
	// struct inet_diag_msg: family, state, timer, retrans (one byte each).
	family := b[0]
	// struct inet_diag_sockid at offset 4: sport, dport (big endian), src[4], dst[4].
	id := b[4:]
	sport := binary.BigEndian.Uint16(id[0:])
	dport := binary.BigEndian.Uint16(id[2:])
	src, dst := diagAddr(family, id[4:20]), diagAddr(family, id[20:36])
	return diagSocket{
		State:   b[1],
		Retrans: b[3],
		Local:   netip.AddrPortFrom(src, sport),
		Remote:  netip.AddrPortFrom(dst, dport),
		RQueue:  binary.NativeEndian.Uint32(b[56:]),
		UID:     binary.NativeEndian.Uint32(b[64:]),
		Inode:   binary.NativeEndian.Uint32(b[68:]),
	}
}

func diagAddr(family uint8, b []byte) netip.Addr {
	if family == unix.AF_INET {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16([16]byte(b[:16]))
}
