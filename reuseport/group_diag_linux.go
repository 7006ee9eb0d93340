//go:build linux

package reuseport

import (
	"encoding/binary"

	"golang.org/x/sys/unix"
)

// groupKey is what, besides the address and the owner's uid, decides
// whether two listeners can be in one reuseport group: the kernel
// (inet_reuseport_add_sock) groups a listener with another only if both
// have the same family, the same IPV6_V6ONLY and the same bound device.
type groupKey struct {
	Family  uint8
	V6Only  bool
	Ifindex uint32 // SO_BINDTODEVICE; 0: none
}

// inetDiagSKV6Only is INET_DIAG_SKV6ONLY (linux/inet_diag.h): an attribute
// that the kernel adds, without being asked, for every IPv6 socket in
// LISTEN or CLOSE (inet_diag_msg_attrs_fill).
const inetDiagSKV6Only = 11

// withGroupKey fills s.groupKey from the struct inet_diag_msg b and the
// attributes that follow it.
func withGroupKey(s diagSocket, b []byte) diagSocket {
	s.Family = b[0]
	// idiag_if: struct inet_diag_sockid at offset 4, after sport, dport,
	// src[16] and dst[16].
	s.Ifindex = binary.NativeEndian.Uint32(b[4+36:])
	if s.Family != unix.AF_INET6 {
		return s
	}
	for attrs := b[sizeofInetDiagMsg:]; len(attrs) >= 4; {
		n := int(binary.NativeEndian.Uint16(attrs[0:]))
		typ := binary.NativeEndian.Uint16(attrs[2:]) & 0x3fff // NLA_TYPE_MASK
		if n < 4 || n > len(attrs) {
			break
		}
		if typ == inetDiagSKV6Only && n >= 5 {
			s.V6Only = attrs[4] != 0
		}
		next := (n + 3) &^ 3
		if next > len(attrs) {
			break
		}
		attrs = attrs[next:]
	}
	return s
}
