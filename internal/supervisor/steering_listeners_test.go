//go:build linux

package supervisor

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/changeover-dev/changeover/internal/proc"
	"github.com/changeover-dev/changeover/reuseport"
)

// holder is a process (sleep) that holds listening sockets, as a server
// generation does, in a process group of its own or in another's.
type holder struct {
	cmd  *exec.Cmd
	in   *Instance
	addr string // its first listener's
}

// startHolder starts a process holding lns (closed here once it holds
// them), in the process group pgid (0: its own), as generation gen.
func startHolder(t *testing.T, gen, pgid int, lns ...*net.TCPListener) *holder {
	t.Helper()
	cmd := exec.Command("sleep", "300")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pgid: pgid}
	for _, ln := range lns {
		f, err := ln.File()
		if err != nil {
			t.Fatal(err)
		}
		cmd.ExtraFiles = append(cmd.ExtraFiles, f)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for i, ln := range lns {
		cmd.ExtraFiles[i].Close()
		ln.Close()
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	group := cmd.Process.Pid
	if pgid != 0 {
		group = pgid
	}
	h := &holder{cmd: cmd, in: &Instance{Gen: gen, PID: cmd.Process.Pid, PGID: group}}
	if pgid == 0 { // a leader: signalled, and its group seen, as an instance's
		ticks, err := proc.StartTime(cmd.Process.Pid)
		if err != nil {
			t.Fatal(err)
		}
		h.in.StartTicks, h.in.target = ticks, proc.NewTarget(cmd.Process.Pid, ticks)
	}
	if len(lns) > 0 {
		h.addr = lns[0].Addr().String()
	}
	return h
}

func reuseListen(t *testing.T, addr string) *net.TCPListener {
	t.Helper()
	ln, err := reuseport.Listen(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return ln.(*net.TCPListener)
}

// countGroupReads counts, by process group, the reads of a group's
// descriptors (groupSockets) until the test ends.
func countGroupReads(t *testing.T) func(pgid int) int {
	var mu sync.Mutex
	reads := map[int]int{}
	real := groupSockets
	groupSockets = func(pgid int) map[uint64]bool {
		mu.Lock()
		reads[pgid]++
		mu.Unlock()
		return real(pgid)
	}
	t.Cleanup(func() { groupSockets = real })
	return func(pgid int) int {
		mu.Lock()
		defer mu.Unlock()
		return reads[pgid]
	}
}

// servingAndDark starts generation 1 holding a listener on a port of its
// own and makes the handover into generation 2 dark: the steering is
// returned locked (unlocked, and its placeholders closed, when the test
// ends).
func servingAndDark(t *testing.T) (*holder, *steering) {
	t.Helper()
	old := startHolder(t, 1, 0, reuseListen(t, "127.0.0.1:0"))
	st := newSteering(slog.New(slog.DiscardHandler))
	st.mu.Lock()
	t.Cleanup(func() {
		st.closeAllLocked()
		st.mu.Unlock()
	})
	st.dark(2, old.in)
	return old, st
}

// TestSteeringReadsAGenerationsDescriptorsOnce: a generation's descriptors
// are as many as its connections (10,000 idle keep-alive connections take
// tens of milliseconds to read, and every read was on the reload's path:
// before the start, at the cutover, before the stop signal). The serving
// generation's listeners are read once and then only checked against a
// sock_diag dump.
func TestSteeringReadsAGenerationsDescriptorsOnce(t *testing.T) {
	reads := countGroupReads(t)
	old, st := servingAndDark(t)
	addr := old.addr
	if !st.steered(2) {
		t.Fatalf("the handover into generation 2 is not steered (path %q)", st.paths[2])
	}
	next := startHolder(t, 2, 0, reuseListen(t, addr))
	oldSocks, ok := st.cutover(next.in, old.in)
	if !ok {
		t.Fatal("cutover failed")
	}
	if n := listenerCount(oldSocks); n != 1 {
		t.Errorf("cutover returned %d listeners of the old generation, want 1: %v", n, oldSocks)
	}
	st.mu.Unlock() // prepareDepartures locks it
	st.prepareDepartures(old.in)
	st.mu.Lock()
	if n := reads(old.in.PGID); n != 1 {
		t.Errorf("the old generation's descriptors were read %d times during one handover, want 1", n)
	}
	if n := reads(next.in.PGID); n != 1 {
		t.Errorf("the new generation's descriptors were read %d times, want 1", n)
	}
}

// TestSteeringSeesAListenerOpenedAfterTheRead: what the remembered
// listeners cannot show, a listener that the serving generation opened
// since they were read, sends the next read to its descriptors: the next
// handover steers that address too.
func TestSteeringSeesAListenerOpenedAfterTheRead(t *testing.T) {
	reads := countGroupReads(t)
	old, st := servingAndDark(t)
	if len(st.groups) != 1 {
		t.Fatalf("steering %d addresses, want 1", len(st.groups))
	}
	// Generation 2 failed; generation 1 opens a second listener (another
	// process of its group) before the next reload.
	second := reuseListen(t, "127.0.0.1:0")
	secondAddr := netip.MustParseAddrPort(second.Addr().String())
	startHolder(t, 1, old.in.PGID, second)
	st.dark(3, old.in)
	if _, ok := st.groups[secondAddr]; !ok || len(st.groups) != 2 {
		t.Errorf("after generation 1 listened on %s too, the handover into 3 steers %d addresses, without it", secondAddr, len(st.groups))
	}
	if n := reads(old.in.PGID); n != 2 {
		t.Errorf("generation 1's descriptors read %d times, want 2 (its new listener is seen only there)", n)
	}
}

// TestCoverageCheckReadsTheOldGenerationOnce: the coverage check compares
// the new generation's listeners with the old one's, and polls until the
// deadline. Where another server on the host shares an address with
// SO_REUSEPORT (any port: nginx, another Go service), the old generation's
// shared listeners are not the ones the new one covers, and the check read
// the old group's descriptors at every call (38 ms with 10,000 idle
// connections, between READY=1 and the cutover). The steering's read of
// them, made when the old generation was young, answers instead.
func TestCoverageCheckReadsTheOldGenerationOnce(t *testing.T) {
	reads := countGroupReads(t)
	ln := reuseListen(t, "127.0.0.1:0")
	addr := ln.Addr().String()
	old := startHolder(t, 1, 0, ln)
	startHolder(t, 0, 0, reuseListen(t, "127.0.0.1:0")) // another server's
	s := New(Config{Name: "t"})
	defer s.steer.closeAll()
	s.steer.mu.Lock()
	s.steer.dark(2, old.in)
	s.steer.mu.Unlock()
	next := startHolder(t, 2, 0, reuseListen(t, addr))
	for range 2 {
		if err := s.checkCoverage(next.in, old.in); err != nil {
			t.Fatalf("coverage check: %v", err)
		}
	}
	if n := reads(old.in.PGID); n != 1 {
		t.Errorf("the old generation's descriptors were read %d times (dark, then two coverage checks), want 1", n)
	}
}

// TestStopWatchSeesEverySharedListener (review of the stop's watch): where
// the coverage check's snapshot is stale at the stop signal (a quiet wait
// over a second), the stop's watch takes the old generation's listeners
// from the steering's read. It must look for all of them on addresses
// shared with SO_REUSEPORT, not only the steered ones: a listener the old
// group opened on another address after the dark still takes connections,
// and the reload returned while it listened.
func TestStopWatchSeesEverySharedListener(t *testing.T) {
	old, st := servingAndDark(t)
	old.in.done = make(chan struct{})
	next := startHolder(t, 2, 0, reuseListen(t, old.addr))
	if _, ok := st.cutover(next.in, old.in); !ok {
		t.Fatal("cutover failed")
	}
	st.mu.Unlock() // prepareDepartures locks it
	other := reuseListen(t, "127.0.0.1:0")
	otherAddr := other.Addr().String()
	startHolder(t, 1, old.in.PGID, other) // generation 1's group listens on another address too
	old.in.noteSharedAtStop(st.prepareDepartures(old.in))
	st.mu.Lock()
	// Generation 1's first process exits: its steered listener closes,
	// the one on the other address still listens.
	_ = old.cmd.Process.Kill()
	_ = old.cmd.Wait()
	// As an instance's reaper does: its leader was alive until now, so
	// the group's other process (started after the leader was first
	// verified) is still its (see proc.Target).
	old.in.target.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	listenersGone(ctx, old.in)
	socks, err := reuseport.ListeningSockets()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range socks {
		if s.Addr.String() == otherAddr && ctx.Err() == nil {
			t.Errorf("listenersGone returned while generation 1's group still listens on %s", otherAddr)
		}
	}
}

// TestFirstGenerationIsReadWhenReady: a generation that becomes ready with
// no generation before it (the first deploy, a restart after a crash) had
// its descriptors read only at the next reload's dark, by then as many as
// its connections (the bench's idle run: about 70 ms of a reload with
// 10,000 idle keep-alive connections). It is read when it becomes ready,
// while it has none.
func TestFirstGenerationIsReadWhenReady(t *testing.T) {
	reads := countGroupReads(t)
	first := startHolder(t, 1, 0, reuseListen(t, "127.0.0.1:0"))
	s := New(Config{Name: "t", Probes: []string{"tcp:" + first.addr}})
	defer s.steer.closeAll()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.waitReadyCovered(ctx, first.in, time.Now().Add(10*time.Second), nil); err != nil {
		t.Fatal(err)
	}
	if n := reads(first.in.PGID); n != 1 {
		t.Errorf("generation 1's descriptors read %d times when it became ready, want 1", n)
	}
	s.steer.mu.Lock()
	s.steer.dark(2, first.in)
	s.steer.mu.Unlock()
	if n := reads(first.in.PGID); n != 1 {
		t.Errorf("generation 1's descriptors read %d times by the next reload's dark, want 1 in all", n)
	}
}

// TestRefusedGenerationStopsWithoutPlaceholders: a generation that started
// dark and is stopped without ever serving (refused for a shadowing
// address) joined the steered group after every serving member, so its
// departures move only members after the serving slots: its stop adds no
// placeholder, and so makes no plug connection that could hold up the
// loop before its stop signal (the hold's TimerHold counts from the
// machine's decision). The serving generation keeps every connection after
// it left.
func TestRefusedGenerationStopsWithoutPlaceholders(t *testing.T) {
	old, st := servingAndDark(t)
	addr := netip.MustParseAddrPort(old.addr)
	g := st.groups[addr]
	if g == nil {
		t.Fatalf("%s is not steered", addr)
	}
	refused := startHolder(t, 2, 0, reuseListen(t, old.addr), reuseListen(t, old.addr))
	before := g.Placeholders()
	st.mu.Unlock() // prepareDepartures locks it
	shared := st.prepareDepartures(refused.in)
	st.mu.Lock()
	if n := g.Placeholders(); n != before {
		t.Errorf("the refused generation's stop added %d placeholders, want none (its listeners come after the serving one's)", n-before)
	}
	if len(shared) != 2 {
		t.Errorf("the stop's watch looks for %d listeners of the refused generation, want its 2", len(shared))
	}
	_ = refused.cmd.Process.Kill()
	_ = refused.cmd.Wait()
	if err := g.Sync(); err != nil {
		t.Fatal(err)
	}
	const n = 4
	for range n {
		c, err := net.DialTimeout("tcp", old.addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
	}
	oldSocks, err := st.listenersOf(old.in)
	if err != nil {
		t.Fatal(err)
	}
	oldIno := oldSocks[addr][0].Inode
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		socks, err := reuseport.ListeningSockets()
		if err != nil {
			t.Fatal(err)
		}
		q := -1
		for _, s := range socks {
			if s.Inode == oldIno {
				q = s.Queue
			}
		}
		if q == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("generation 1's listener queues %d of the %d connections after the refused one left (%s)", q, n, g)
		}
	}
}
