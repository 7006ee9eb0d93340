//go:build linux

package reuseport

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/changeover-dev/changeover/internal/netnstest"
)

// TestMain lets the test binary play a server of another user (see
// TestListenOtherUID).
func TestMain(m *testing.M) {
	if addr := os.Getenv("REUSEPORT_TEST_HOLD"); addr != "" {
		l, err := Listen(context.Background(), "tcp", addr)
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Println(l.Addr())
		_, _ = bufio.NewReader(os.Stdin).ReadString('\n') // hold until the parent closes stdin
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func listen(t *testing.T, addr string) *net.TCPListener {
	t.Helper()
	l, err := Listen(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l.(*net.TCPListener)
}

// waitQueues dials n connections to addr and waits until the accept queues
// of ls hold them all; it returns each queue's length.
func dialAndCount(t *testing.T, addr string, n int, ls ...*net.TCPListener) []int {
	t.Helper()
	for range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		counts, total := make([]int, len(ls)), 0
		for i, l := range ls {
			q, err := AcceptQueueLen(l)
			if err != nil {
				t.Fatal(err)
			}
			counts[i] = q
			total += q
		}
		if total >= n || time.Now().After(deadline) {
			return counts
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// drain accepts and closes whatever is queued on l.
func drain(t *testing.T, l *net.TCPListener) {
	t.Helper()
	for {
		q, err := AcceptQueueLen(l)
		if err != nil {
			t.Fatal(err)
		}
		if q == 0 {
			return
		}
		c, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
}

// TestSteering checks the kernel facts the handover relies on: the program
// returns an index in join order, an out-of-range index falls back to the
// hash, a leaving member is replaced by the last one, and the program stays
// with the group after the socket that attached it is closed.
func TestSteering(t *testing.T) {
	l0 := listen(t, "127.0.0.1:0")
	addr := l0.Addr().String()
	l1 := listen(t, addr)

	if n, err := GroupSize(netip.MustParseAddrPort(addr)); err != nil || n != 2 {
		t.Fatalf("GroupSize = %d, %v; want 2", n, err)
	}

	if err := Steer(l1, 1); err != nil { // attached through l1, index 1 = l1
		t.Fatal(err)
	}
	if got := dialAndCount(t, addr, 20, l0, l1); got[0] != 0 || got[1] != 20 {
		t.Fatalf("ret #1: queues = %v, want [0 20]", got)
	}
	drain(t, l1)

	if err := Dark(l1); err != nil {
		t.Fatal(err)
	}
	if got := dialAndCount(t, addr, 20, l0, l1); got[0] != 20 || got[1] != 0 {
		t.Fatalf("ret #0: queues = %v, want [20 0]", got)
	}
	drain(t, l0)

	// Steer to l1, then close l0: l1 moves into slot 0, index 1 is out of
	// range and the hash (one member) picks l1.
	if err := Steer(l0, 1); err != nil {
		t.Fatal(err)
	}
	l0.Close()
	if got := dialAndCount(t, addr, 10, l1); got[0] != 10 {
		t.Fatalf("out of range: queue = %v, want [10]", got)
	}
	drain(t, l1)

	// The stale "ret #1" steers everything to a newcomer at slot 1.
	l2 := listen(t, addr)
	if got := dialAndCount(t, addr, 10, l1, l2); got[1] != 10 {
		t.Fatalf("stale program: queues = %v, want all 10 on the newcomer", got)
	}
	drain(t, l2)
	// Which Dark neutralises.
	if err := Dark(l2); err != nil {
		t.Fatal(err)
	}
	if got := dialAndCount(t, addr, 10, l1, l2); got[0] != 10 {
		t.Fatalf("after Dark: queues = %v, want all 10 on the oldest", got)
	}
	drain(t, l1)

	if err := Detach(l2); err != nil {
		t.Fatal(err)
	}
	if err := Detach(l2); err != nil {
		t.Fatalf("second Detach: %v", err)
	}
}

func TestListeningSockets(t *testing.T) {
	l := listen(t, "127.0.0.1:0")
	var st syscall.Stat_t
	rc, _ := l.SyscallConn()
	rc.Control(func(fd uintptr) { syscall.Fstat(int(fd), &st) })
	socks, err := ListeningSockets()
	if err != nil {
		t.Fatal(err)
	}
	want := netip.MustParseAddrPort(l.Addr().String())
	for _, s := range socks {
		if s.Inode == st.Ino {
			if s.Addr != want || s.UID != os.Geteuid() {
				t.Fatalf("socket = %+v, want addr %s uid %d", s, want, os.Geteuid())
			}
			return
		}
	}
	t.Fatalf("inode %d (%s) not among %d listening sockets", st.Ino, want, len(socks))
}

func TestListenHeldWithoutReuseport(t *testing.T) {
	plain, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	_, err = Listen(context.Background(), "tcp", plain.Addr().String())
	var inUse *AddrInUseError
	if !errors.As(err, &inUse) || !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("err = %v, want an AddrInUseError wrapping EADDRINUSE", err)
	}
	for _, want := range []string{plain.Addr().String(), "without SO_REUSEPORT"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}

// TestListenOtherUID: a process of another user cannot join the group, so
// it cannot take part of the port's traffic.
func TestListenOtherUID(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to start a process as another user")
	}
	// The test binary's own directory is not open to another user: copy it.
	dir, err := os.MkdirTemp("", "reuseport-uid")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := dir + "/holder"
	exe, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, exe, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^$")
	cmd.Env = append(os.Environ(), "REUSEPORT_TEST_HOLD=127.0.0.1:0")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	stdin, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || strings.HasPrefix(line, "error") {
		t.Fatalf("child: %q, %v", line, err)
	}
	addr := strings.TrimSpace(line)
	_, err = Listen(context.Background(), "tcp", addr)
	if !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), "uid 65534") {
		t.Fatalf("err = %v, want EADDRINUSE naming uid 65534", err)
	}
}

// TestHalfOpen uses TCP_DEFER_ACCEPT, which keeps a connection in SYN_RECV
// on the server until its first data arrives, to hold one half-open.
func TestHalfOpen(t *testing.T) {
	l := listen(t, "127.0.0.1:0")
	rc, _ := l.SyscallConn()
	var serr error
	rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_DEFER_ACCEPT, 5)
	})
	if serr != nil {
		t.Fatal(serr)
	}
	addr := netip.MustParseAddrPort(l.Addr().String())
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	peer := netip.MustParseAddrPort(c.LocalAddr().String())

	wait := func(want bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			ho, err := HalfOpen(addr)
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := ho[peer]; ok == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("HalfOpen(%s) has %s: %v, want %v (all: %v)", addr, peer, !want, want, ho)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	wait(true)
	if q, _ := AcceptQueueLen(l); q != 0 {
		t.Fatalf("accept queue = %d while the connection is half-open", q)
	}
	c.Write([]byte("x")) // data completes it: out of SYN_RECV, into the queue
	wait(false)
	deadline := time.Now().Add(5 * time.Second)
	for {
		q, err := AcceptQueueLen(l)
		if err != nil {
			t.Fatal(err)
		}
		if q == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("accept queue = %d, want 1", q)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestHalfOpenRetransmits: HalfOpen reports how many times the SYN-ACK of a
// request was sent again (idiag_retrans): 0 at first, 1 once the initial
// retransmission timeout (1 s) has passed without the final ACK. The SYN
// comes from a peer that never answers (its SYN-ACKs go to a sink), in a
// network namespace of the test's own.
func TestHalfOpenRetransmits(t *testing.T) {
	if !netnstest.Run(t) {
		return
	}
	sink := netnstest.MakeSink(t)
	l := listen(t, netnstest.SinkServer+":8080")
	addr := netip.MustParseAddrPort(l.Addr().String())
	peer := netnstest.NewPeer(t, sink, 40003, addr)
	peer.Write(netnstest.SYN, nil)
	begin := time.Now()
	var seen []int
	for time.Since(begin) < 5*time.Second {
		ho, err := HalfOpen(addr)
		if err != nil {
			t.Fatal(err)
		}
		if h, ok := ho[peer.Local]; ok && (len(seen) == 0 || seen[len(seen)-1] != h.Retransmits) {
			seen = append(seen, h.Retransmits)
		}
		if len(seen) > 0 && seen[len(seen)-1] >= 1 {
			t.Logf("retransmits seen %v, the first retransmission after %v", seen, time.Since(begin).Round(time.Millisecond))
			if seen[0] != 0 {
				t.Fatalf("retransmits seen %v, want 0 first", seen)
			}
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("HalfOpen(%s) for %s: retransmits seen %v in 5s, want 0 then 1", addr, peer.Local, seen)
}

func TestListenPacketShares(t *testing.T) {
	a, err := ListenPacket(context.Background(), "udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := ListenPacket(context.Background(), "udp", a.LocalAddr().String())
	if err != nil {
		t.Fatalf("second UDP socket on %s: %v", a.LocalAddr(), err)
	}
	b.Close()
}

func TestListenPacketHeldWithoutReuseport(t *testing.T) {
	plain, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	_, err = ListenPacket(context.Background(), "udp", plain.LocalAddr().String())
	var inUse *AddrInUseError
	if !errors.As(err, &inUse) || !strings.Contains(err.Error(), "UDP socket without SO_REUSEPORT") {
		t.Fatalf("err = %v, want an AddrInUseError about a UDP socket", err)
	}
}

// rawListen listens with SO_REUSEPORT on an AF_INET6 socket with
// IPV6_V6ONLY as given, bound to addr (which may be v4-mapped): what a
// server in another language can do and Go's net package does not.
func rawListen6(t *testing.T, addr netip.AddrPort, v6only bool) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	only := 0
	if v6only {
		only = 1
	}
	for _, o := range [][3]int{{unix.SOL_SOCKET, unix.SO_REUSEPORT, 1}, {unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, only}} {
		if err := unix.SetsockoptInt(fd, o[0], o[1], o[2]); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Bind(fd, &unix.SockaddrInet6{Addr: addr.Addr().As16(), Port: int(addr.Port())}); err != nil {
		t.Fatalf("bind AF_INET6 %s: %v", addr, err)
	}
	if err := unix.Listen(fd, 16); err != nil {
		t.Fatal(err)
	}
}

// TestGroupSizeCountsOneGroup: an AF_INET6 socket bound to the v4-mapped
// form of an IPv4 address takes the same connections as an AF_INET one,
// but the kernel keeps them in separate groups (a group is one family, one
// address, one IPV6_V6ONLY setting, one device).
func TestGroupSizeCountsOneGroup(t *testing.T) {
	l := listen(t, "127.0.0.1:0")
	ap := netip.MustParseAddrPort(l.Addr().String())
	rawListen6(t, netip.AddrPortFrom(netip.MustParseAddr("::ffff:127.0.0.1"), ap.Port()), false)
	if n, err := GroupSize(ap); err != nil || n != 1 {
		t.Fatalf("GroupSize(%s) = %d, %v; want 1 (the AF_INET6 socket on ::ffff:127.0.0.1 is another group)", ap, n, err)
	}
}
