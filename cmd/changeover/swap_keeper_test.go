//go:build linux

package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/changeover-dev/changeover/internal/proc"
	"github.com/changeover-dev/changeover/internal/supervisor"
)

// envKeeper is the hidden mode in which changeover runs as swap's drain
// keeper.
const envKeeper = supervisor.EnvKeeper

// trackKeepers returns the drain keepers a swap's output names
// (keeper_pid=N) and kills each one's process group (a keeper leads a
// session of its own) at the end of the test, if the PID is still that
// keeper (same start time, its own group).
func trackKeepers(t *testing.T, out string) []int {
	t.Helper()
	var pids []int
	for _, m := range regexp.MustCompile(`keeper_pid=(\d+)`).FindAllStringSubmatch(out, -1) {
		pid, _ := strconv.Atoi(m[1])
		if pid <= 1 || slices.Contains(pids, pid) {
			continue
		}
		pids = append(pids, pid)
		st, err := proc.ReadStat(pid)
		if err != nil {
			continue
		}
		t.Cleanup(func() {
			if now, err := proc.ReadStat(pid); err == nil && now.StartTime == st.StartTime && now.PGID == pid {
				_ = syscall.Kill(-pid, syscall.SIGKILL)
			}
		})
	}
	return pids
}

// listensOn reports whether a process of group pgid listens on addr.
func listensOn(t *testing.T, pgid int, addr string) bool {
	t.Helper()
	addrs, err := proc.GroupListenAddrs(pgid)
	if err != nil {
		t.Fatal(err)
	}
	return slices.Contains(addrs, netip.MustParseAddrPort(addr))
}

// swapPiped runs swap as this test binary with its stdout and stderr on a
// pipe, as `out=$(changeover swap ...)` in a deploy script does: Wait
// returns only once every process holding the pipe has closed it. The
// channel gets the exit code and the output.
type swapResult struct {
	code int
	out  string
}

func (e *env) swapPiped(args ...string) <-chan swapResult {
	e.t.Helper()
	cmd := exec.Command(e.exe, args...)
	cmd.Env = append(os.Environ(), envHelper+"=main")
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	res := make(chan swapResult, 1)
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
		res <- swapResult{cmd.ProcessState.ExitCode(), out.String()}
	}()
	e.t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
		}
		trackKeepers(e.t, out.String())
	})
	return res
}

// TestSwapReturnsAtHandover (issue 14): swap returns once the old
// instance's listeners are gone, while it still drains a request in flight;
// the request is then answered by the old version and PID, and the old
// instance exits on its own: the drain keeper swap left behind signals
// nothing and exits, and removes the generation from the state file.
//
// The order is by events: the request cannot end before swap has
// returned, since its body is sent only then; swap's output is a pipe,
// which its Wait sees closed only if the keeper does not hold it.
func TestSwapReturnsAtHandover(t *testing.T) {
	e := newEnv(t)
	pidfile := filepath.Join(e.dir, "app.pid")
	args := []string{"swap", "--pidfile", pidfile, "--env-file", e.envFile, "--ready-timeout", "20s", "--drain-timeout", "30s", "--", e.exe}
	e.setFault(faultOK, "1")
	if code, _, stderr := cli(args...); code != 0 {
		t.Fatalf("first swap: exit %d: %s", code, stderr)
	}
	pid1 := pidfilePID(t, pidfile)
	ticks1, err := proc.StartTime(pid1)
	if err != nil {
		t.Fatal(err)
	}

	// A request in flight on generation 1: its headers, half its body.
	c, err := net.DialTimeout("tcp", e.addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nConnection: close\r\n\r\nabc"); err != nil {
		t.Fatal(err)
	}
	accepted(t, e.addr)

	e.setFault(faultOK, "2")
	var res swapResult
	select {
	case res = <-e.swapPiped(args...):
	case <-time.After(60 * time.Second):
		t.Fatal("swap did not return within 60 s while the old instance drains a request in flight (held until swap returns)")
	}
	keepers := trackKeepers(t, res.out)
	if res.code != 0 {
		t.Fatalf("second swap: exit %d:\n%s", res.code, res.out)
	}
	pid2 := pidfilePID(t, pidfile)
	if !proc.Alive(pid1, ticks1) {
		t.Fatalf("generation 1 (pid %d) gone when swap returned: its request in flight is not answered yet", pid1)
	}
	if listensOn(t, pid1, e.addr) {
		t.Errorf("generation 1 still listens on %s when swap returned", e.addr)
	}
	if !strings.Contains(res.out, fmt.Sprintf("pid %d drains until", pid1)) {
		t.Errorf("swap's output does not say that pid %d drains, and until when:\n%s", pid1, res.out)
	}
	if len(keepers) != 1 {
		t.Fatalf("swap's output names %d drain keepers, want 1:\n%s", len(keepers), res.out)
	}
	keeper := keepers[0]
	kst, err := proc.ReadStat(keeper)
	if err != nil {
		t.Fatalf("keeper %d: %v", keeper, err)
	}
	if sid, _ := unix.Getsid(keeper); sid != keeper {
		t.Errorf("keeper %d in session %d, want its own", keeper, sid)
	}
	if l, err := proc.GroupListenAddrs(keeper); err != nil || len(l) != 0 {
		t.Errorf("keeper %d listens on %v (%v): it must hold none of swap's sockets", keeper, l, err)
	}
	burst(t, e.addr, 10, "2", pid2)

	// Now the request ends, on generation 1.
	if _, err := io.WriteString(c, "def"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("request in flight on generation 1: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := answerOf("1", pid1); string(body) != want {
		t.Errorf("request in flight answered %q, want %q (the old version and PID)", body, want)
	}
	waitFor(t, 15*time.Second, "generation 1 gone on its own", func() bool { return !proc.Alive(pid1, ticks1) })
	waitFor(t, 15*time.Second, "the keeper gone", func() bool { return !proc.Alive(keeper, kst.StartTime) })
	logPath := filepath.Join(e.dir, "app.log")
	logs, _ := os.ReadFile(logPath)
	if !regexp.MustCompile(fmt.Sprintf(`keeper.*generation=1 pid=%d .*killed=false`, pid1)).Match(logs) {
		t.Errorf("%s has no keeper line saying generation 1 ended without a kill:\n%s", logPath, logs)
	}
	if strings.Contains(string(logs), "drain deadline passed") {
		t.Errorf("the keeper killed something:\n%s", logs)
	}
	waitFor(t, 5*time.Second, "the state file naming generation 2 alone", func() bool {
		st := readSwapState(t, pidfile)
		return len(st.Generations) == 1 && st.Generations[0].PID == pid2
	})
}

// readSwapState reads the state file beside pidfile.
func readSwapState(t *testing.T, pidfile string) supervisor.StateFile {
	t.Helper()
	var st supervisor.StateFile
	b, err := os.ReadFile(supervisor.SwapStatePath(pidfile))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatalf("state file: %v: %s", err, b)
	}
	return st
}

// keeperKills returns the drain deadline and the time of each kill a
// keeper logged for generation gen.
func keeperKills(t *testing.T, logs string, gen int) (deadlines, at []time.Time) {
	t.Helper()
	re := regexp.MustCompile(fmt.Sprintf(`time=(\S+) .*msg="drain deadline passed[^"]*" .*generation=%d .*drain_deadline=(\S+)`, gen))
	for _, m := range re.FindAllStringSubmatch(logs, -1) {
		a, err := time.Parse(time.RFC3339Nano, m[1])
		if err != nil {
			t.Fatalf("time %q: %v", m[1], err)
		}
		d, err := time.Parse(time.RFC3339Nano, m[2])
		if err != nil {
			t.Fatalf("drain_deadline %q: %v", m[2], err)
		}
		at, deadlines = append(at, a), append(deadlines, d)
	}
	return deadlines, at
}

// TestSwapKeeperKillsAtDeadline (issue 14): the old instance closes its
// listener at SIGTERM but never exits. swap returns at the handover, before
// the drain deadline; its drain keeper SIGKILLs the group at the deadline,
// never before, and logs it to the instance log. A third swap run at once,
// while that keeper watches generation 1, leaves generation 1 to it: one
// kill, at its deadline, and no third generation listening.
func TestSwapKeeperKillsAtDeadline(t *testing.T) {
	e := newEnv(t)
	pidfile := filepath.Join(e.dir, "app.pid")
	const drain = 5 * time.Second
	args := []string{"swap", "--pidfile", pidfile, "--env-file", e.envFile, "--ready-timeout", "20s", "--drain-timeout", drain.String(), "--", e.exe}
	swap := func(what string) string {
		t.Helper()
		code, stdout, stderr := cli(args...)
		trackKeepers(t, stderr)
		if code != 0 {
			t.Fatalf("%s: exit %d: %s", what, code, stderr)
		}
		return stdout + stderr
	}
	e.setFault(faultLinger, "1")
	swap("first swap")
	pid1 := pidfilePID(t, pidfile)
	ticks1, _ := proc.StartTime(pid1)

	e.setFault(faultOK, "2")
	out := swap("second swap")
	if !proc.Alive(pid1, ticks1) {
		t.Fatalf("generation 1 (pid %d) gone when swap returned: swap did not return at the handover:\n%s", pid1, out)
	}
	if listensOn(t, pid1, e.addr) {
		t.Errorf("generation 1 still listens on %s when swap returned", e.addr)
	}
	var deadline time.Time
	for _, g := range readSwapState(t, pidfile).Generations {
		if g.PID == pid1 && g.State == supervisor.StateDraining {
			deadline = g.DrainDeadline
		}
	}
	if deadline.IsZero() {
		t.Fatalf("the state file does not name generation 1 as draining after the swap:\n%+v", readSwapState(t, pidfile))
	}
	if len(trackKeepers(t, out)) != 1 {
		t.Fatalf("the second swap names no drain keeper:\n%s", out)
	}
	pid2 := pidfilePID(t, pidfile)

	// A third swap while generation 1 drains: generation 2 leaves at once.
	e.setFault(faultOK, "3")
	swap("third swap")
	pid3 := pidfilePID(t, pidfile)
	if time.Now().After(deadline) {
		t.Logf("the third swap returned after generation 1's deadline: the machine is slow; the kill is still checked")
	}
	for _, pid := range []int{pid1, pid2} {
		if listensOn(t, pid, e.addr) {
			t.Errorf("pid %d still listens on %s after the third swap", pid, e.addr)
		}
	}
	burst(t, e.addr, 10, "3", pid3)

	waitFor(t, drain+20*time.Second, "generation 1 killed", func() bool { return !proc.Alive(pid1, ticks1) })
	logPath := filepath.Join(e.dir, "app.log")
	var logs []byte
	waitFor(t, 10*time.Second, "the keeper's kill of generation 1 in "+logPath, func() bool {
		logs, _ = os.ReadFile(logPath)
		d, _ := keeperKills(t, string(logs), 1)
		return len(d) > 0
	})
	deadlines, at := keeperKills(t, string(logs), 1)
	if len(at) != 1 {
		t.Errorf("generation 1 killed %d times, want once:\n%s", len(at), logs)
	}
	for i := range at {
		if at[i].Before(deadlines[i]) || at[i].Before(deadline.Truncate(time.Millisecond)) {
			t.Errorf("generation 1 killed at %v, before its drain deadline %v (recorded %v)", at[i], deadlines[i], deadline)
		}
		if at[i].After(deadline.Add(killSlack)) {
			t.Errorf("generation 1 killed at %v, more than %v after its drain deadline %v", at[i], killSlack, deadline)
		}
	}
	waitFor(t, 10*time.Second, "only generation 3 left", func() bool {
		alive := e.aliveHelpers()
		return len(alive) == 1 && alive[0] == pid3
	})
	waitFor(t, 10*time.Second, "the state file naming generation 3 alone", func() bool {
		st := readSwapState(t, pidfile)
		return len(st.Generations) == 1 && st.Generations[0].PID == pid3
	})
}

// TestSwapKeeperNeverSignalsAStranger: a keeper given a planted order
// signals only the process it names with the recorded start time: a live
// process whose start time differs (a reused PID) is never signalled, even
// past its deadline; a process that has exited is left alone; the recorded
// one is SIGKILLed with its group at its deadline, not before.
func TestSwapKeeperNeverSignalsAStranger(t *testing.T) {
	e := newEnv(t)
	pidfile := filepath.Join(e.dir, "app.pid")
	// sleepGroup starts sleep in a session of its own, killed at cleanup.
	sleepGroup := func() (int, uint64, <-chan struct{}) {
		cmd := exec.Command("sleep", "60")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		done := startGroup(t, cmd)
		ticks, err := proc.StartTime(cmd.Process.Pid)
		if err != nil {
			t.Fatal(err)
		}
		return cmd.Process.Pid, ticks, done
	}
	stranger, strangerTicks, strangerDone := sleepGroup()
	victim, victimTicks, victimDone := sleepGroup()
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	goneTicks := strangerTicks // any: the process is gone
	deadline := time.Now().Add(time.Second)
	gens := []supervisor.StateGen{
		{Generation: 1, PID: stranger, PGID: stranger, StartTicks: strangerTicks + 1, State: supervisor.StateDraining, DrainDeadline: time.Now().Add(-time.Second)},
		{Generation: 2, PID: gone.Process.Pid, PGID: gone.Process.Pid, StartTicks: goneTicks, State: supervisor.StateDraining, DrainDeadline: time.Now().Add(-time.Second)},
		{Generation: 3, PID: victim, PGID: victim, StartTicks: victimTicks, State: supervisor.StateDraining, DrainDeadline: deadline},
	}
	order, err := json.Marshal(map[string]any{"pidfile": pidfile, "generations": gens})
	if err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(e.dir, "keeper.log")
	lf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	// -test.run matches nothing: a binary without the keeper mode runs no
	// test instead of the whole suite.
	cmd := exec.Command(e.exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), envKeeper+"="+string(order))
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	kdone := startGroup(t, cmd)
	select {
	case <-kdone:
	case <-time.After(20 * time.Second):
		t.Fatal("keeper did not exit within 20 s")
	}
	logs, _ := os.ReadFile(logPath)
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("keeper exit %d:\n%s", code, logs)
	}
	select {
	case <-strangerDone:
		t.Errorf("the stranger (pid %d, start time not the recorded one) was signalled:\n%s", stranger, logs)
	default:
	}
	select {
	case <-victimDone:
	case <-time.After(5 * time.Second):
		t.Fatalf("the recorded process (pid %d) was not killed at its deadline:\n%s", victim, logs)
	}
	deadlines, at := keeperKills(t, string(logs), 3)
	if len(at) != 1 || at[0].Before(deadline.Truncate(time.Millisecond)) || deadlines[0].Before(deadline.Truncate(time.Millisecond)) {
		t.Errorf("the recorded process: kills at %v (deadlines %v), want one at or after %v:\n%s", at, deadlines, deadline, logs)
	}
	for _, gen := range []int{1, 2} {
		if d, _ := keeperKills(t, string(logs), gen); len(d) != 0 {
			t.Errorf("generation %d (not the recorded process) killed:\n%s", gen, logs)
		}
	}
	if !strings.Contains(string(logs), "generation=1") {
		t.Errorf("the keeper does not say what it did with generation 1:\n%s", logs)
	}
}
