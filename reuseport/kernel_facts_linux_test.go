//go:build linux

package reuseport

import (
	"context"
	"errors"
	"net"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/changeover-dev/changeover/internal/netnstest"
)

// rawListen4 makes an AF_INET SO_REUSEPORT socket bound to 127.0.0.1:port,
// attaches "return before" to it before listen when before >= 0, and
// listens. It returns the fd (closed at the end of the test) and the
// listen error.
func rawListen4(t *testing.T, port int, before int) (int, int, error) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: port}); err != nil {
		t.Fatal(err)
	}
	if before >= 0 {
		prog := []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: uint32(before)}}
		if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF,
			&unix.SockFprog{Len: 1, Filter: &prog[0]}); err != nil {
			t.Fatalf("attach before listen: %v", err)
		}
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return fd, sa.(*unix.SockaddrInet4).Port, unix.Listen(fd, 128)
}

func fdQueue(t *testing.T, fd int) int {
	t.Helper()
	info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		t.Fatal(err)
	}
	return int(info.Unacked)
}

// TestProgramAttachedBeforeListen: a program attached before listen is not
// thrown away. The first socket of a group keeps it (the group is made at
// its listen and takes the socket's program), and a socket that has one
// cannot join an existing group: its listen fails with EADDRINUSE. So a
// joining instance can only attach after its listen.
func TestProgramAttachedBeforeListen(t *testing.T) {
	first, port, err := rawListen4(t, 0, 1)
	if err != nil {
		t.Fatalf("first socket, program attached before listen: %v", err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	second := listen(t, addr)
	got := dialAndCount(t, addr, 20, second)
	if q := fdQueue(t, first); q != 0 || got[0] != 20 {
		t.Fatalf("queues: first %d, second %d; want 0 and 20 (the first socket's \"return 1\" kept)", q, got[0])
	}
	_, _, err = rawListen4(t, port, 0)
	if !errors.Is(err, unix.EADDRINUSE) {
		t.Fatalf("listen of a joining socket with a program attached before listen: %v, want EADDRINUSE", err)
	}
}

// TestOverlappingAddressesAreSeparateGroups: listeners on one port with
// overlapping but different addresses are separate groups, and for a
// connection the kernel picks the listener by specificity before any
// program runs: the specific address before the wildcard, and an AF_INET
// listener before a dual-stack [::] one for an IPv4 client.
func TestOverlappingAddressesAreSeparateGroups(t *testing.T) {
	for _, tc := range []struct {
		name                    string
		wideNet, wide           string
		narrowNet, narrow, dial string
	}{
		{"127.0.0.1 before 0.0.0.0", "tcp4", "0.0.0.0", "tcp4", "127.0.0.1", "127.0.0.1"},
		{"0.0.0.0 before [::]", "tcp", "[::]", "tcp4", "0.0.0.0", "127.0.0.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, err := Listen(context.Background(), tc.wideNet, tc.wide+":0")
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			if err := Dark(w.(*net.TCPListener)); err != nil { // a program on the wide group
				t.Fatal(err)
			}
			_, port, _ := net.SplitHostPort(w.Addr().String())
			n, err := Listen(context.Background(), tc.narrowNet, tc.narrow+":"+port)
			if err != nil {
				t.Fatal(err)
			}
			defer n.Close()
			wideGroup, _ := Describe(w.(*net.TCPListener))
			narrowGroup, _ := Describe(n.(*net.TCPListener))
			if wideGroup.SameGroup(narrowGroup) || !wideGroup.Overlaps(narrowGroup) {
				t.Fatalf("%s and %s: SameGroup %v, Overlaps %v; want false, true", w.Addr(), n.Addr(),
					wideGroup.SameGroup(narrowGroup), wideGroup.Overlaps(narrowGroup))
			}
			if !narrowGroup.Shadows(wideGroup) || wideGroup.Shadows(narrowGroup) {
				t.Fatalf("%s shadows %s: %v, and the reverse: %v; want true, false", n.Addr(), w.Addr(),
					narrowGroup.Shadows(wideGroup), wideGroup.Shadows(narrowGroup))
			}
			got := dialAndCount(t, tc.dial+":"+port, 10, w.(*net.TCPListener), n.(*net.TCPListener))
			if got[0] != 0 || got[1] != 10 {
				t.Fatalf("queues: %s %d, %s %d; want all 10 on %s", w.Addr(), got[0], n.Addr(), got[1], n.Addr())
			}
		})
	}
}

// queueThenClose queues n connections on the first of three members of a
// group (steered there), steers the group to member 1, closes member 0,
// and returns the queues of the two others and how many clients saw a
// reset.
func queueThenClose(t *testing.T, n int) (q1, q2, resets int) {
	l0 := listen(t, "127.0.0.1:0")
	addr := l0.Addr().String()
	l1, l2 := listen(t, addr), listen(t, addr)
	if err := Dark(l0); err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	for range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		conns = append(conns, c)
	}
	deadline := time.Now().Add(5 * time.Second)
	for q, _ := AcceptQueueLen(l0); q < n; q, _ = AcceptQueueLen(l0) {
		if time.Now().After(deadline) {
			t.Fatalf("member 0 has %d of %d connections queued", q, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := Steer(l1, 1); err != nil {
		t.Fatal(err)
	}
	l0.Close()
	time.Sleep(50 * time.Millisecond)
	q1, _ = AcceptQueueLen(l1)
	q2, _ = AcceptQueueLen(l2)
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); errors.Is(err, unix.ECONNRESET) {
			resets++
		}
	}
	return q1, q2, resets
}

// TestCloseResetsQueueWithoutMigrateReq: with tcp_migrate_req=0, closing a
// listener resets every connection in its accept queue, even with other
// members in the group.
func TestCloseResetsQueueWithoutMigrateReq(t *testing.T) {
	if on, _ := MigrateReq(); on && !netnstest.Run(t) { // the host has 1: a namespace of our own has 0
		return
	}
	if on, _ := MigrateReq(); on {
		t.Fatal("tcp_migrate_req=1 in a new network namespace")
	}
	const n = 16
	q1, q2, resets := queueThenClose(t, n)
	t.Logf("tcp_migrate_req=0: %d queued on the closed member; after the close %d and %d on the others, %d resets", n, q1, q2, resets)
	if resets != n || q1+q2 != 0 {
		t.Fatalf("%d resets, %d moved; want %d resets, 0 moved", resets, q1+q2, n)
	}
}

// TestMigrateReqIgnoresProgram: with tcp_migrate_req=1 a closing listener's
// queue moves to the other members, spread by hash: the group's classic
// BPF program is not asked (the kernel asks only an eBPF program of type
// BPF_SK_REUSEPORT_SELECT_OR_MIGRATE), so a member that the program keeps
// dark can receive some.
func TestMigrateReqIgnoresProgram(t *testing.T) {
	if !netnstest.Run(t) {
		return
	}
	if err := EnableMigrateReq(); err != nil {
		t.Fatal(err)
	}
	const n = 40
	q1, q2, resets := queueThenClose(t, n)
	t.Logf("tcp_migrate_req=1, program \"return 1\": of %d queued on the closed member, %d moved to member 1 and %d to the dark member 2; %d resets", n, q1, q2, resets)
	if resets != 0 || q1+q2 != n || q2 == 0 {
		t.Fatalf("moved %d and %d, %d resets; want all %d moved, some to the dark member, no reset", q1, q2, resets, n)
	}
}
