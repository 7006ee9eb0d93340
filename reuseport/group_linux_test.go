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
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// inodes returns the socket inodes of ls.
func inodes(t *testing.T, ls []*net.TCPListener) []uint64 {
	t.Helper()
	var out []uint64
	for _, l := range ls {
		ino, err := Inode(l)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ino)
	}
	return out
}

// dialFrom connects to dst from src (any address if invalid).
func dialFrom(t *testing.T, src netip.Addr, dst string) {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if src.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
	}
	c, err := d.Dial("tcp", dst)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
}

// landing dials n connections to addr from src and returns how many each of
// ls queued, once all n are queued on them; it fails if any is queued on a
// placeholder of g, or if they are not all on ls within 5 s. The queues are
// emptied afterwards.
func landing(t *testing.T, g *Group, src netip.Addr, addr string, n int, ls ...*net.TCPListener) []int {
	t.Helper()
	base := map[uint64]int{}
	for ino, p := range g.phs {
		base[ino], _ = queueLen(p.fd)
	}
	for range n {
		dialFrom(t, src, addr)
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
		for ino, p := range g.phs {
			if q, _ := queueLen(p.fd); q > base[ino] {
				t.Fatalf("%d connections queued on placeholder %d (queues of the listeners: %v)", q-base[ino], ino, counts)
			}
		}
		if total == n {
			for _, l := range ls {
				drain(t, l)
			}
			return counts
		}
		if total > n || time.Now().After(deadline) {
			t.Fatalf("queued %v (total %d), want %d in all", counts, total, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// onlyOn checks that counts[i] is 0 for every i not in want, and that at
// least one connection reached each of want when there were enough.
func onlyOn(t *testing.T, what string, counts []int, want ...int) {
	t.Helper()
	for i, c := range counts {
		if !slices.Contains(want, i) && c != 0 {
			t.Fatalf("%s: %d connections on listener %d, want them only on %v (all: %v)", what, c, i, want, counts)
		}
	}
}

func indices(from, n int) []int {
	var out []int
	for i := range n {
		out = append(out, from+i)
	}
	return out
}

// TestSlotProgram checks the kernel facts the program relies on, on real
// sockets: SKF_NET_OFF loads read the IP header of an IPv4 and an IPv6
// SYN (and of an IPv4 SYN reaching a dual-stack listener), BPF_IND loads
// with a negative K read the TCP source port, and the hash spreads.
func TestSlotProgram(t *testing.T) {
	attach := func(l *net.TCPListener, r slotRule) {
		t.Helper()
		prog, err := r.program()
		if err != nil {
			t.Fatal(err)
		}
		if err := withFD(l, "attach", func(fd int) error { return attachProgram(fd, prog) }); err != nil {
			t.Fatal(err)
		}
	}
	none := NewGroup(netip.AddrPort{}, GroupOptions{}) // no placeholders: landing checks only ls
	probe := netip.MustParseAddr("127.0.0.2")

	l0 := listen(t, "127.0.0.1:0")
	addr := l0.Addr().String()
	l1 := listen(t, addr)
	attach(l0, slotRule{Serving: []uint32{1}, Routes: []route{{Src: probe, Slots: []uint32{0}}}})
	onlyOn(t, "others", landing(t, none, netip.MustParseAddr("127.0.0.1"), addr, 5, l0, l1), 1)
	onlyOn(t, "probe", landing(t, none, probe, addr, 5, l0, l1), 0)
	onlyOn(t, "127.0.0.3", landing(t, none, netip.MustParseAddr("127.0.0.3"), addr, 5, l0, l1), 1)

	attach(l0, slotRule{Serving: []uint32{0, 1}})
	if got := landing(t, none, netip.Addr{}, addr, 40, l0, l1); got[0] == 0 || got[1] == 0 {
		t.Fatalf("spread over slots 0 and 1: %v", got)
	}

	// A dual-stack listener: IPv4 clients arrive as IPv4 packets.
	d0 := listen(t, "[::]:0")
	port := uint16(d0.Addr().(*net.TCPAddr).Port)
	d1 := listen(t, d0.Addr().String())
	v4 := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port).String()
	v6 := netip.AddrPortFrom(netip.IPv6Loopback(), port).String()
	for _, tc := range []struct {
		probe    string
		from, to string
		want     int
	}{
		{"127.0.0.2", "127.0.0.2", v4, 0},
		{"127.0.0.2", "127.0.0.3", v4, 1},
		{"127.0.0.2", "::1", v6, 1},
		{"::ffff:127.0.0.2", "127.0.0.2", v4, 0},
		{"::1", "::1", v6, 0},
		{"::1", "127.0.0.1", v4, 1},
	} {
		t.Run(fmt.Sprintf("probe %s from %s", tc.probe, tc.from), func(t *testing.T) {
			attach(d0, slotRule{Serving: []uint32{1}, Routes: []route{{Src: netip.MustParseAddr(tc.probe), Slots: []uint32{0}}}})
			onlyOn(t, "", landing(t, none, netip.MustParseAddr(tc.from), tc.to, 3, d0, d1), tc.want)
		})
	}

	// A route with a source port: only that port. The client's TCP socket
	// is bound first, to port 0, so the kernel picks a port no TCP socket
	// holds; it connects once the program names that port. (A port freed
	// by a UDP socket can be held by TCP in this shared namespace: the bind
	// then failed with EADDRINUSE.) While it stays bound, the other
	// clients' connect cannot be given its port: the kernel skips ports
	// held by an explicit bind when it picks one for connect.
	cfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(cfd)
	if err := unix.Bind(cfd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatalf("bind the client to 127.0.0.1:0: %v", err)
	}
	csa, err := unix.Getsockname(cfd)
	if err != nil {
		t.Fatal(err)
	}
	sport := uint16(csa.(*unix.SockaddrInet4).Port)
	attach(l0, slotRule{Serving: []uint32{1}, Routes: []route{{Src: netip.MustParseAddr("127.0.0.1"), Port: sport, Slots: []uint32{0}}}})
	onlyOn(t, "other ports", landing(t, none, netip.MustParseAddr("127.0.0.1"), addr, 3, l0, l1), 1)
	dst := netip.MustParseAddrPort(addr)
	// A blocking connect on loopback: the listeners' queues have room.
	if err := unix.Connect(cfd, &unix.SockaddrInet4{Addr: dst.Addr().As4(), Port: int(dst.Port())}); err != nil {
		t.Fatalf("connect from port %d to %s: %v", sport, addr, err)
	}
	if got := dialAndCount(t, addr, 0, l0, l1); got[0] != 1 || got[1] != 0 {
		t.Fatalf("from port %d: queues %v, want [1 0]", sport, got)
	}
}

// TestPlaceholderDropsSYN: a listener with backlog 0 takes one connection
// into its queue, then drops further SYNs (no RST): the client retransmits
// the SYN (after about 1 s) and it goes wherever the program then says.
// Listening again only changes the backlog: the socket keeps its slot.
func TestPlaceholderDropsSYN(t *testing.T) {
	l0 := listen(t, "127.0.0.1:0")
	addr := l0.Addr().String()
	g := NewGroup(netip.MustParseAddrPort(addr), GroupOptions{})
	if err := g.learn(inodes(t, []*net.TCPListener{l0})[0]); err != nil {
		t.Fatal(err)
	}
	p, err := g.openPlaceholder()
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	toSlot := func(slot uint32) {
		prog, _ := slotRule{Serving: []uint32{slot}}.program()
		if err := attachProgram(p.fd, prog); err != nil {
			t.Fatal(err)
		}
	}
	toSlot(1)
	dialFrom(t, netip.Addr{}, addr) // the plug
	errc := make(chan error, 1)
	go func() {
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err == nil {
			c.Close()
		}
		errc <- err
	}()
	// The second SYN reached the full placeholder: it is neither queued
	// nor answered. Wait until the kernel counted the drop.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if listenDrops(t) > 0 || time.Now().After(deadline) {
			break
		}
	}
	if q, _ := queueLen(p.fd); q != 1 {
		t.Fatalf("placeholder queue = %d, want 1 (the plug)", q)
	}
	toSlot(0)
	if err := <-errc; err != nil {
		t.Fatalf("the client whose SYN was dropped: %v, want it connected after a retransmission", err)
	}
	if q, _ := AcceptQueueLen(l0); q != 1 {
		t.Fatalf("listener queue = %d, want 1 (the retransmitted SYN)", q)
	}
	drain(t, l0)

	if err := unix.Listen(p.fd, 1); err != nil {
		t.Fatal(err)
	}
	toSlot(1)
	onlyOn(t, "after listen(1)", landing(t, &Group{}, netip.Addr{}, addr, 0, l0), 0)
	dialFrom(t, netip.Addr{}, addr)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if q, _ := queueLen(p.fd); q == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("after listen(fd, 1), the placeholder did not take a second connection at its slot")
		}
	}
}

// listenDrops reads TcpExtListenDrops of this network namespace.
func listenDrops(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/net/netstat")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	for i := 0; i+1 < len(lines); i += 2 {
		names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		for j, n := range names {
			if n == "ListenDrops" && j < len(values) {
				var v int
				fmt.Sscan(values[j], &v)
				return v
			}
		}
	}
	return 0
}

// TestGroupHandover runs the scheme of the package doc for old and new
// generations of 1, 2 and 4 members, the old members leaving in several
// orders, and checks where every new connection lands at each step.
func TestGroupHandover(t *testing.T) {
	orders := map[string]func(n int) [][]int{
		"first to last, one at a time": func(n int) [][]int {
			var o [][]int
			for i := range n {
				o = append(o, []int{i})
			}
			return o
		},
		"last to first, one at a time": func(n int) [][]int {
			var o [][]int
			for i := n - 1; i >= 0; i-- {
				o = append(o, []int{i})
			}
			return o
		},
		"odd then even, two at a time": func(n int) [][]int {
			var odd, even []int
			for i := range n {
				if i%2 == 1 {
					odd = append(odd, i)
				} else {
					even = append(even, i)
				}
			}
			return slices.DeleteFunc([][]int{odd, even}, func(s []int) bool { return len(s) == 0 })
		},
		"all at once": func(n int) [][]int { return [][]int{indices(0, n)} },
	}
	probe := netip.MustParseAddr("127.0.0.2")
	client := netip.MustParseAddr("127.0.0.1")
	for _, nOld := range []int{1, 2, 4} {
		for _, nNew := range []int{1, 2, 4} {
			for name, order := range orders {
				t.Run(fmt.Sprintf("old %d new %d %s", nOld, nNew, name), func(t *testing.T) {
					var ls []*net.TCPListener
					ls = append(ls, listen(t, "127.0.0.1:0"))
					addr := ls[0].Addr().String()
					for range nOld - 1 {
						ls = append(ls, listen(t, addr))
					}
					old := indices(0, nOld)
					g := NewGroup(netip.MustParseAddrPort(addr), GroupOptions{Probe: probe})
					t.Cleanup(func() { g.Close() })
					if err := g.Dark(inodes(t, ls)); err != nil {
						t.Fatal(err)
					}
					onlyOn(t, "dark, before", landing(t, g, client, addr, 4*nOld, ls...), old...)

					for range nNew {
						ls = append(ls, listen(t, addr))
					}
					next := indices(nOld, nNew)
					all := slices.Clone(ls)
					newInos := inodes(t, ls[nOld:])
					if err := g.Sync(); err != nil {
						t.Fatal(err)
					}
					onlyOn(t, "dark, new joined", landing(t, g, client, addr, 4*nOld, ls...), old...)
					onlyOn(t, "probe, dark", landing(t, g, probe, addr, 2, ls...), old...)
					if err := g.ProbeTo(newInos); err != nil {
						t.Fatal(err)
					}
					onlyOn(t, "probe routed", landing(t, g, probe, addr, 4, ls...), next...)
					onlyOn(t, "others while probed", landing(t, g, client, addr, 4*nOld, ls...), old...)

					if err := g.Cutover(newInos); err != nil {
						t.Fatal(err)
					}
					onlyOn(t, "cutover", landing(t, g, client, addr, 4*nNew, ls...), next...)
					if err := g.PrepareDepartures(nOld); err != nil {
						t.Fatal(err)
					}
					for _, step := range order(nOld) {
						for _, i := range step {
							all[i].Close()
							all[i] = nil
						}
						open := slices.DeleteFunc(slices.Clone(all), func(l *net.TCPListener) bool { return l == nil })
						// Before the supervisor has looked: nothing moved.
						got := landing(t, g, client, addr, 2*nNew, open...)
						onlyOn(t, fmt.Sprintf("after %v left", step), got, indices(len(open)-nNew, nNew)...)
						if err := g.Sync(); err != nil {
							t.Fatal(err)
						}
					}
					newLs := all[nOld:]
					got := landing(t, g, client, addr, 4*nNew, newLs...)
					if nNew > 1 && slices.Contains(got, 0) {
						t.Logf("spread over the new generation: %v", got)
					}
					if err := g.Compact(); err != nil {
						t.Fatal(err)
					}
					onlyOn(t, "compacted", landing(t, g, client, addr, 4*nNew, newLs...), indices(0, nNew)...)
					if nNew > 1 && g.Placeholders() != 1 {
						t.Errorf("after Compact: %d placeholders, want 1", g.Placeholders())
					}
					if n, _ := GroupSize(netip.MustParseAddrPort(addr)); n != nNew+g.Placeholders() {
						t.Errorf("group size %d, want %d members and %d placeholders", n, nNew, g.Placeholders())
					}
					t.Logf("placeholders left: %d", g.Placeholders())
				})
			}
		}
	}
}

// TestGroupCloseRefuses: with nothing serving, closing the placeholders
// makes the port refuse connections rather than queue them.
func TestGroupCloseRefuses(t *testing.T) {
	l := listen(t, "127.0.0.1:0")
	addr := l.Addr().String()
	g := NewGroup(netip.MustParseAddrPort(addr), GroupOptions{})
	if err := g.Dark(inodes(t, []*net.TCPListener{l})); err != nil {
		t.Fatal(err)
	}
	l.Close()
	if err := g.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := net.DialTimeout("tcp", addr, 5*time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial after Close: %v, want connection refused", err)
	}
}

// TestGroupOtherUID: a placeholder cannot join the group of another
// user's listener; the error names the address and both uids.
func TestGroupOtherUID(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to start a process as another user")
	}
	// t.TempDir's parent is not open to another user.
	dir, err := os.MkdirTemp("", "reuseport-group-uid")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	exe, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	bin := dir + "/holder"
	if err := os.WriteFile(bin, exe, 0o755); err != nil {
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
	addr := netip.MustParseAddrPort(strings.TrimSpace(line))
	socks, err := ListeningSockets()
	if err != nil {
		t.Fatal(err)
	}
	var ino uint64
	for _, s := range socks {
		if s.Addr == addr {
			ino = s.Inode
		}
	}
	g := NewGroup(addr, GroupOptions{})
	err = g.Dark([]uint64{ino})
	var pe *PlaceholderError
	if !errors.As(err, &pe) || !errors.Is(err, syscall.EADDRINUSE) || pe.UID != 65534 {
		t.Fatalf("Dark: %v, want a PlaceholderError for uid 65534 wrapping EADDRINUSE", err)
	}
	for _, want := range []string{addr.String(), "uid 65534", "uid 0"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	if g.Placeholders() != 0 {
		t.Errorf("%d placeholders after the refusal", g.Placeholders())
	}
}

// TestGroupHold: a group on an address that shadows a wider one (127.0.0.1
// beside 0.0.0.0, tcp4 0.0.0.0 beside a dual-stack [::]) is held: its
// members get no new connection, the SYNs are dropped by the placeholder
// (not queued, not reset), also after a member left, and once the members
// and the placeholders are gone the retransmitted SYNs reach the wider
// listener.
func TestGroupHold(t *testing.T) {
	for _, tc := range []struct{ wideNet, wide, narrow string }{
		{"tcp4", "0.0.0.0", "127.0.0.1"},
		{"tcp", "[::]", "0.0.0.0"},
	} {
		t.Run(tc.narrow+" beside "+tc.wide, func(t *testing.T) {
			wl, err := Listen(context.Background(), tc.wideNet, tc.wide+":0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { wl.Close() })
			w := wl.(*net.TCPListener)
			port := w.Addr().(*net.TCPAddr).Port
			narrow := netip.AddrPortFrom(netip.MustParseAddr(tc.narrow), uint16(port))
			var members []*net.TCPListener
			for range 2 {
				l, err := Listen(context.Background(), "tcp4", narrow.String())
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { l.Close() })
				members = append(members, l.(*net.TCPListener))
			}
			dial := fmt.Sprintf("127.0.0.1:%d", port)
			g := NewGroup(narrow, GroupOptions{})
			t.Cleanup(func() { g.Close() })
			if err := g.Hold(inodes(t, members)); err != nil {
				t.Fatal(err)
			}
			if n := g.Placeholders(); n != 3 {
				t.Fatalf("%d placeholders, want 3 (the hold, and one per member to leave)", n)
			}
			held := func(what string) chan error {
				t.Helper()
				drops := listenDrops(t)
				errc := make(chan error, 1)
				go func() {
					c, err := net.DialTimeout("tcp", dial, 10*time.Second)
					if err == nil {
						c.Close()
					}
					errc <- err
				}()
				for deadline := time.Now().Add(time.Second); listenDrops(t) == drops && time.Now().Before(deadline); time.Sleep(time.Millisecond) {
				}
				for i, l := range members {
					if q, err := AcceptQueueLen(l); err == nil && q != 0 {
						t.Fatalf("%s: %d connections queued on member %d, want none (held)", what, q, i)
					}
				}
				select {
				case err := <-errc:
					t.Fatalf("%s: the client's connect ended (%v) while the address is held, want its SYN dropped", what, err)
				default:
				}
				return errc
			}
			first := held("held")
			members[0].Close() // a member leaves: a placeholder moves into its slot, not the held one
			if err := g.Sync(); err != nil {
				t.Fatal(err)
			}
			second := held("held, a member gone")
			members[1].Close()
			if err := g.Close(); err != nil {
				t.Fatal(err)
			}
			for _, errc := range []chan error{first, second} {
				if err := <-errc; err != nil {
					t.Fatalf("a client held by the group: %v, want it connected to %s after a retransmitted SYN", err, w.Addr())
				}
			}
			if q, _ := AcceptQueueLen(w); q != 2 {
				t.Fatalf("%s holds %d connections, want the 2 that were held", w.Addr(), q)
			}
		})
	}
}

// TestGroupTrailing: a generation that joined while another served comes
// after the steered slots (its departures need no placeholder); the one
// that served before a cutover does not.
func TestGroupTrailing(t *testing.T) {
	old := []*net.TCPListener{listen(t, "127.0.0.1:0")}
	addr := old[0].Addr().String()
	old = append(old, listen(t, addr))
	g := NewGroup(netip.MustParseAddrPort(addr), GroupOptions{})
	t.Cleanup(func() { g.Close() })
	if err := g.Dark(inodes(t, old)); err != nil {
		t.Fatal(err)
	}
	next := inodes(t, []*net.TCPListener{listen(t, addr), listen(t, addr)})
	check := func(what string, members []uint64, want bool) {
		t.Helper()
		got, err := g.Trailing(members)
		if err != nil || got != want {
			t.Errorf("%s: Trailing %v, %v; want %v (%s)", what, got, err, want, g)
		}
	}
	check("dark: the joined generation", next, true)
	check("dark: the serving generation", inodes(t, old), false)
	if err := g.Cutover(next); err != nil {
		t.Fatal(err)
	}
	check("cut over: the generation that served before", inodes(t, old), false)
	check("cut over: the serving generation", next, false)
}
