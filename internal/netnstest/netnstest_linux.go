//go:build linux

package netnstest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// envTest names the test that the test binary runs, alone, inside a
// network namespace of its own (see Run).
const envTest = "NETNSTEST_RUN"

// Run runs the calling (top-level) test again in a child test binary
// inside a new network namespace, with lo up, and reports its result. It
// returns true in that child, where the test goes on; false in the parent,
// which should return. It needs root (CAP_SYS_ADMIN for CLONE_NEWNET).
func Run(t *testing.T) bool {
	t.Helper()
	if os.Getenv(envTest) == t.Name() {
		if err := LoUp(); err != nil {
			t.Fatalf("bring up lo: %v", err)
		}
		return true
	}
	if os.Geteuid() != 0 {
		t.Skip("not root: needs a network namespace of its own")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^"+regexp.QuoteMeta(t.Name())+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), envTest+"="+t.Name())
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatalf("%s in a network namespace of its own: %v\n%s", t.Name(), err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, ".go:") { // the child's t.Log lines
			t.Log(strings.TrimSpace(line))
		}
	}
	return false
}

// The sink: an interface whose every transmitted packet is discarded. A
// route to the peers' subnet through it lets the kernel answer a SYN from
// those peers (tcp_conn_request drops a SYN it has no route back for), and
// their SYN-ACKs and everything after go nowhere, as to a host that
// vanished or a spoofed source. An ifb device is such a sink: it only
// forwards what tc redirected to it and frees anything else it is given
// (ifb_xmit); it is IFF_NOARP, so nothing waits on neighbour resolution.
// A packet socket on it still sees what is sent, which is how a test reads
// the server's SYN-ACK and answer.
const (
	SinkName   = "sink0"
	SinkServer = "10.99.0.1" // the servers' address, on the sink
	SinkPeer   = "10.99.0.2" // a peer routed through the sink (no host has it)
)

// MakeSink creates sink0, up, with SinkServer/24, and returns its index.
func MakeSink(t *testing.T) int {
	t.Helper()
	var kindErr error
	for _, kind := range []string{"ifb", "dummy"} {
		if kindErr = rtnlNewLink(SinkName, kind); kindErr == nil {
			break
		}
	}
	if kindErr != nil {
		t.Fatalf("create %s (ifb or dummy): %v", SinkName, kindErr)
	}
	ifi, err := net.InterfaceByName(SinkName)
	if err != nil {
		t.Fatal(err)
	}
	if err := rtnlNewAddr(ifi.Index, netip.MustParsePrefix(SinkServer+"/24")); err != nil {
		t.Fatalf("address %s/24 on %s: %v", SinkServer, SinkName, err)
	}
	return ifi.Index
}

// rtnlNewLink is "ip link add NAME up type KIND".
func rtnlNewLink(name, kind string) error {
	info := unix.IfInfomsg{Family: unix.AF_UNSPEC, Flags: unix.IFF_UP, Change: unix.IFF_UP}
	body := unsafe.Slice((*byte)(unsafe.Pointer(&info)), unix.SizeofIfInfomsg)
	body = rtAttr(body, unix.IFLA_IFNAME, append([]byte(name), 0))
	body = rtAttr(body, unix.IFLA_LINKINFO, rtAttr(nil, unix.IFLA_INFO_KIND, []byte(kind)))
	return rtnlDo(unix.RTM_NEWLINK, unix.NLM_F_CREATE|unix.NLM_F_EXCL, body)
}

// rtnlNewAddr is "ip addr add PREFIX dev INDEX" (IPv4); the kernel adds the
// prefix route.
func rtnlNewAddr(index int, p netip.Prefix) error {
	msg := unix.IfAddrmsg{Family: unix.AF_INET, Prefixlen: uint8(p.Bits()), Index: uint32(index)}
	body := unsafe.Slice((*byte)(unsafe.Pointer(&msg)), unix.SizeofIfAddrmsg)
	a := p.Addr().As4()
	body = rtAttr(body, unix.IFA_LOCAL, a[:])
	body = rtAttr(body, unix.IFA_ADDRESS, a[:])
	return rtnlDo(unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_EXCL, body)
}

func rtAttr(b []byte, typ uint16, data []byte) []byte {
	n := unix.SizeofRtAttr + len(data)
	b = binary.NativeEndian.AppendUint16(b, uint16(n))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, data...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// rtnlDo sends one rtnetlink request and waits for its acknowledgement.
func rtnlDo(typ uint16, flags uint16, body []byte) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	msg := make([]byte, unix.NLMSG_HDRLEN, unix.NLMSG_HDRLEN+len(body))
	msg = append(msg, body...)
	hdr := (*unix.NlMsghdr)(unsafe.Pointer(&msg[0]))
	hdr.Len = uint32(len(msg))
	hdr.Type = typ
	hdr.Flags = unix.NLM_F_REQUEST | unix.NLM_F_ACK | flags
	hdr.Seq = 1
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, 1<<16)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return err
	}
	msgs, err := syscall.ParseNetlinkMessage(buf[:n])
	if err != nil {
		return err
	}
	for _, m := range msgs {
		if m.Header.Type == unix.NLMSG_ERROR && len(m.Data) >= 4 {
			if errno := -int32(binary.NativeEndian.Uint32(m.Data)); errno != 0 {
				return syscall.Errno(errno)
			}
			return nil
		}
	}
	return fmt.Errorf("rtnetlink: no acknowledgement")
}

// Peer is a TCP client made by hand at SinkPeer: it sends its segments
// through a raw socket (IP_HDRINCL, any source address) and reads the
// server's on the sink with a packet socket. The kernel has no socket for
// it, so nothing answers the server on its behalf: it answers what the
// test says, when the test says.
type Peer struct {
	t      *testing.T
	send   int // raw socket
	cap    int // packet socket on the sink
	Local  netip.AddrPort
	Server netip.AddrPort
	seq    uint32 // next sequence number to send
	ack    uint32 // next sequence number expected from the server
}

func NewPeer(t *testing.T, sink int, port uint16, server netip.AddrPort) *Peer {
	t.Helper()
	send, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW) // IPPROTO_RAW implies IP_HDRINCL
	if err != nil {
		t.Fatal(err)
	}
	// ETH_P_ALL: packets a host sends reach only the taps for every
	// protocol (dev_queue_xmit_nit walks ptype_all).
	cap, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(cap, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: sink}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(send); unix.Close(cap) })
	return &Peer{t: t, send: send, cap: cap, Local: netip.AddrPortFrom(netip.MustParseAddr(SinkPeer), port),
		Server: server, seq: 0x10000000}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

const (
	FIN = 0x01
	SYN = 0x02
	RST = 0x04
	PSH = 0x08
	ACK = 0x10
)

// Write sends one segment with flags and payload, and advances seq.
func (p *Peer) Write(flags uint8, payload []byte) {
	p.t.Helper()
	tcp := make([]byte, 20, 20+len(payload))
	binary.BigEndian.PutUint16(tcp[0:], p.Local.Port())
	binary.BigEndian.PutUint16(tcp[2:], p.Server.Port())
	binary.BigEndian.PutUint32(tcp[4:], p.seq)
	if flags&ACK != 0 {
		binary.BigEndian.PutUint32(tcp[8:], p.ack)
	}
	tcp[12] = 5 << 4 // data offset: no options (the server then assumes MSS 536)
	tcp[13] = flags
	binary.BigEndian.PutUint16(tcp[14:], 65535) // window
	tcp = append(tcp, payload...)
	src, dst := p.Local.Addr().As4(), p.Server.Addr().As4()
	pseudo := append(append(append([]byte{}, src[:]...), dst[:]...), 0, unix.IPPROTO_TCP, byte(len(tcp)>>8), byte(len(tcp)))
	binary.BigEndian.PutUint16(tcp[16:], checksum(append(pseudo, tcp...)))

	ip := make([]byte, 20, 20+len(tcp))
	ip[0] = 0x45 // IPv4, 5 words of header
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(tcp)))
	ip[8] = 64 // TTL
	ip[9] = unix.IPPROTO_TCP
	copy(ip[12:], src[:])
	copy(ip[16:], dst[:])
	binary.BigEndian.PutUint16(ip[10:], checksum(ip))
	if err := unix.Sendto(p.send, append(ip, tcp...), 0, &unix.SockaddrInet4{Addr: dst}); err != nil {
		p.t.Fatalf("send a segment as %s: %v", p.Local, err)
	}
	p.seq += uint32(len(payload))
	if flags&(SYN|FIN) != 0 {
		p.seq++
	}
}

func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// Segment is one TCP segment the server sent to the peer.
type Segment struct {
	Flags    uint8
	Seq, Ack uint32
	Payload  []byte
}

// Read returns the next segment from the server to the peer, or fails the
// test after timeout.
func (p *Peer) Read(timeout time.Duration) Segment {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 1<<16)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			p.t.Fatalf("no segment from %s to %s in %v", p.Server, p.Local, timeout)
		}
		tv := unix.NsecToTimeval(left.Nanoseconds())
		unix.SetsockoptTimeval(p.cap, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		n, _, err := unix.Recvfrom(p.cap, buf, 0)
		if err == unix.EAGAIN || err == unix.EINTR {
			continue
		}
		if err != nil {
			p.t.Fatal(err)
		}
		b := buf[:n]
		if len(b) < 20 || b[0]>>4 != 4 || b[9] != unix.IPPROTO_TCP {
			continue
		}
		ihl := int(b[0]&0x0f) * 4
		src, dst := netip.AddrFrom4([4]byte(b[12:16])), netip.AddrFrom4([4]byte(b[16:20]))
		tcp := b[ihl:]
		if len(tcp) < 20 || src != p.Server.Addr() || dst != p.Local.Addr() ||
			binary.BigEndian.Uint16(tcp[0:]) != p.Server.Port() || binary.BigEndian.Uint16(tcp[2:]) != p.Local.Port() {
			continue
		}
		doff := int(tcp[12]>>4) * 4
		return Segment{Flags: tcp[13], Seq: binary.BigEndian.Uint32(tcp[4:]), Ack: binary.BigEndian.Uint32(tcp[8:]),
			Payload: append([]byte(nil), tcp[doff:]...)}
	}
}

// SynAck reads segments until the server's SYN-ACK and records its
// sequence number.
func (p *Peer) SynAck(timeout time.Duration) {
	p.t.Helper()
	for {
		s := p.Read(timeout)
		if s.Flags&(SYN|ACK) == SYN|ACK {
			p.ack = s.Seq + 1
			return
		}
	}
}

// Response reads the server's in-order payload until it parses as a whole
// HTTP response, acknowledging nothing (the server retransmits; duplicates
// are skipped).
func (p *Peer) Response(timeout time.Duration) (*http.Response, string) {
	p.t.Helper()
	var got []byte
	for {
		s := p.Read(timeout)
		if s.Flags&RST != 0 {
			p.t.Fatalf("the server reset the connection of %s", p.Local)
		}
		if s.Seq != p.ack || len(s.Payload) == 0 {
			continue
		}
		got = append(got, s.Payload...)
		p.ack += uint32(len(s.Payload))
		resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(got)), nil)
		if err != nil {
			continue
		}
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			continue // not all of it yet
		}
		return resp, string(body)
	}
}

// LoUp brings up lo, which a new network namespace has down.
func LoUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}
