//go:build linux

package main

import (
	"encoding/json"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/changeover-dev/changeover/internal/proc"
	"github.com/changeover-dev/changeover/internal/supervisor"
)

// TestFaultNewInstance: a new instance that exits at startup, hangs without
// binding, binds but never becomes healthy, or whose probe flaps is killed
// with its whole process group; the reload fails naming the instance's exit
// status or error and its last stderr lines; the old instance serves every
// request throughout (zero failures) and every new connection afterwards.
func TestFaultNewInstance(t *testing.T) {
	e := newEnv(t)
	e.setFault(faultOK, "1")
	p := e.startInProcess("--ready-timeout", "8s", "--drain-timeout", "2s",
		"--health", "http://{health_addr}/")
	st := e.waitServing(p, 1)
	pid1 := servingPID(t, st)
	gen := 1
	for _, tc := range []struct {
		mode string
		code int
		want []string
	}{
		{faultExit, exitExited, []string{"exited before it was ready", "exit status 7", "fault: exiting at start as asked"}},
		{faultHang, exitNotReady, []string{"not ready in time", "fault: hanging without listening"}},
		{faultDark, exitNotReady, []string{"not ready in time", "(pid "}},
		{faultFlap, exitNotReady, []string{"not ready in time", "503"}},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			load := startLoad(t, e.addr, 2)
			from := time.Now()
			load.waitSent(t, 20)
			e.setFault(tc.mode, "bad")
			gen++
			code, _, stderr := cli("reload", "--control", e.sock)
			if code != tc.code {
				t.Errorf("reload: exit %d, want %d; stderr:\n%s", code, tc.code, stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("reload error lacks %q:\n%s", w, stderr)
				}
			}
			st := e.waitServing(p, 1)
			g, ok := genByNumber(st, gen)
			if !ok || g.State != supervisor.StateFailed {
				t.Fatalf("generation %d not reported failed: %+v", gen, st.Generations)
			}
			groupGone(t, g.PGID)
			load.waitSent(t, 20)
			sent, failed := load.report(t, "new instance "+tc.mode)
			if failed != 0 {
				t.Errorf("%d of %d requests failed while generation 1 kept serving", failed, sent)
			}
			v1 := answerOf("1", pid1)
			load.answeredBy(t, "new instance "+tc.mode, from, time.Time{}, []string{v1}, v1)
			burst(t, e.addr, 50, "1", pid1)
			if alive := e.aliveHelpers(); len(alive) != 1 || alive[0] != pid1 {
				t.Errorf("instances alive %v, want only generation 1 (pid %d)", alive, pid1)
			}
		})
	}
	e.setFault(faultOK, "1")
}

// TestFaultNewInstanceControl is the control run of TestFaultNewInstance
// and TestFaultSIGTERMDuringReload: with naive servers (no steering: a new
// instance gets a share of new connections as soon as it listens), a new
// version that listens but never becomes ready answers requests, and the
// who-answered check of those tests sees it. With runner, or with the
// supervisor steering (the default), the new instance is dark and answers
// none: this control runs the kernel path (--steering kernel).
func TestFaultNewInstanceControl(t *testing.T) {
	e := newEnv(t)
	p := e.startInProcess("--ready-timeout", "8s", "--drain-timeout", "2s", "--steering", "kernel")
	st := e.waitServing(p, 1)
	v1 := answerOf("1", servingPID(t, st))
	load := startLoad(t, e.addr, 2)
	from := time.Now()
	load.waitSent(t, 20)
	e.setEnv("bad", envMode+"=never-ready")
	if code, _, stderr := cli("reload", "--control", e.sock); code != exitNotReady {
		t.Errorf("reload: exit %d, want %d: %s", code, exitNotReady, stderr)
	}
	load.report(t, "control: naive servers, a new version never ready")
	others := 0
	for a, n := range load.answersIn(from) {
		if a != v1 {
			others += n
		}
	}
	t.Logf("CONTROL: %d requests answered by the naive new version that never became ready", others)
	if others == 0 {
		t.Errorf("control: the naive new version answered no request: this scenario could not show a wrong answerer")
	}
}

// TestFaultCrashDuringDrain: the new instance becomes ready, takes over,
// and crashes while the old one drains. The old one has already handed its
// port over, so nothing serves new connections: the supervisor starts a
// replacement at once (no backoff) while the old one finishes its drain.
// Requests in that gap may fail (refused): they are counted, not asserted.
func TestFaultCrashDuringDrain(t *testing.T) {
	e := newEnv(t)
	e.setFault(faultOK, "1")
	p := e.startInProcess("--ready-timeout", "20s", "--drain-timeout", "3s", "--restart-backoff", "10s")
	st := e.waitServing(p, 1)
	pid1 := servingPID(t, st)
	load := startLoad(t, e.addr, 2)
	from := time.Now()
	load.waitSent(t, 20)

	// A slow request in flight on generation 1 keeps its drain going.
	slow := slowRequest(t, e.addr, 1500*time.Millisecond)
	e.setFault(faultOK, "2")
	reloadAt := time.Now()
	// The reload is done at the handover (generation 1's listener gone);
	// generation 1 still drains the slow request when 2 crashes. (A crash
	// before the handover fails the reload: TestCoreNewExitsDuringHandover.)
	if c, _, stderr := cli("reload", "--control", e.sock); c != 0 {
		t.Fatalf("reload to generation 2: exit %d: %s", c, stderr)
	}
	st, err := e.status()
	g1, ok1 := genByNumber(st, 1)
	gen2, ok2 := genByNumber(st, 2)
	if err != nil || !ok1 || !ok2 || g1.State != supervisor.StateDraining || gen2.State != supervisor.StateServing {
		t.Fatalf("after the reload: want generation 1 draining (slow request) and 2 serving: %+v %v", st, err)
	}
	e.setFault(faultOK, "3")
	if err := syscall.Kill(-gen2.PGID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	st = e.waitServing(p, 3)
	groupGone(t, gen2.PGID)
	waitFor(t, 5*time.Second, "generation 1 gone", func() bool { return !proc.Alive(pid1, 0) })
	if got := <-slow; got != answerOf("1", pid1) {
		t.Errorf("request in flight on the draining generation 1 answered %q", got)
	}
	settled := time.Now()
	load.waitSent(t, 20)
	sent, failed := load.report(t, "new instance crashes during the old one's drain")
	t.Logf("requests failed in the gap between the crash and the replacement: %d of %d, from %s to %s", failed, sent,
		load.firstFail.Format("15:04:05.000"), load.lastFail.Format("15:04:05.000"))
	v1, v2, v3 := answerOf("1", pid1), answerOf("2", gen2.PID), answerOf("3", servingPID(t, st))
	load.answeredBy(t, "before the reload", from, reloadAt, []string{v1}, v1)
	load.answeredBy(t, "reload, crash, replacement", reloadAt, settled, []string{v1, v2, v3})
	load.answeredBy(t, "after", settled, time.Time{}, []string{v3}, v3)
	burst(t, e.addr, 50, "3", servingPID(t, st))
	logs := p.stderr.String()
	for _, w := range []string{"serving instance exited", "signal killed", "starting a replacement now"} {
		if !strings.Contains(logs, w) {
			t.Errorf("log lacks %q:\n%s", w, logs)
		}
	}
	if alive := e.aliveHelpers(); len(alive) != 1 {
		t.Errorf("instances alive %v, want one", alive)
	}
}

// TestFaultOldDrainDeadline: requests longer than the drain deadline are cut
// when it passes, and the old instance's log counts them.
func TestFaultOldDrainDeadline(t *testing.T) {
	e := newEnv(t)
	// The runner cuts at a tenth before the deadline, counted from when
	// it sees SIGTERM: 3 s leaves 300 ms for a loaded machine to deliver
	// the signal. A -race server sleeps 1 s before it exits unless told.
	e.setFault(faultOK, "1", "GORACE=atexit_sleep_ms=0")
	b := e.binary(e.runArgs("--drain-timeout", "3s")...)
	pid1 := servingPID(t, e.waitServing(nil, 1))
	load := startLoad(t, e.addr, 2)
	from := time.Now()
	load.waitSent(t, 20)
	long := slowRequest(t, e.addr, 8*time.Second)
	e.setFault(faultOK, "2", "GORACE=atexit_sleep_ms=0")
	start := time.Now()
	if code, _, stderr := cli("reload", "--control", e.sock); code != 0 {
		t.Fatalf("reload: exit %d: %s\n%s", code, stderr, b.out.String())
	}
	t.Logf("reload with a request longer than the drain deadline took %v", time.Since(start).Round(time.Millisecond))
	st := e.waitServing(nil, 2)
	done := time.Now()
	load.waitSent(t, 20)
	got := <-long
	if strings.HasPrefix(got, "version=") {
		t.Errorf("the 8s request was not cut at the 3s deadline: %q", got)
	}
	t.Logf("long request: %s", got)
	sent, failed := load.report(t, "old instance with a request longer than the drain deadline")
	if failed != 0 {
		t.Errorf("%d of %d requests failed", failed, sent)
	}
	v1, v2 := answerOf("1", pid1), answerOf("2", servingPID(t, st))
	load.answeredBy(t, "before the reload", from, start, []string{v1}, v1)
	load.answeredBy(t, "during the reload", start, done, []string{v1, v2}, v2)
	load.answeredBy(t, "after", done, time.Time{}, []string{v2}, v2)
	// The instance's log reaches ours through the stderr relay.
	waitFor(t, 5*time.Second, "the cut request counted in the log", func() bool {
		out := b.out.String()
		return strings.Contains(out, "drain deadline passed: cut connections") && strings.Contains(out, "cut=1")
	})
	burst(t, e.addr, 50, "2", servingPID(t, st))
}

// TestFaultOldIgnoresSIGTERM: an old instance that ignores SIGTERM is
// SIGKILLed with its group at the drain deadline and the reload succeeds.
// It never drained, so connections it held at the kill are cut: counted.
func TestFaultOldIgnoresSIGTERM(t *testing.T) {
	e := newEnv(t)
	e.setFault(faultIgnoreTerm, "1")
	b := e.binary(e.runArgs("--drain-timeout", "1s")...)
	st := e.waitServing(nil, 1)
	g1 := st.Generations[0]
	load := startLoad(t, e.addr, 2)
	from := time.Now()
	load.waitSent(t, 20)
	e.setFault(faultOK, "2")
	start := time.Now()
	if code, _, stderr := cli("reload", "--control", e.sock); code != 0 {
		t.Fatalf("reload: exit %d: %s", code, stderr)
	}
	if took := time.Since(start); took < time.Second {
		t.Errorf("reload took %v, less than the drain deadline", took)
	}
	// The reload is done when the listener is gone (by the SIGKILL); the
	// exit is logged once the group is seen empty, which may come after.
	waitFor(t, 5*time.Second, "the exit logged", func() bool { return strings.Contains(b.out.String(), "instance exited") })
	checkKillTime(t, b.out.String(), 1, time.Second)
	st = e.waitServing(nil, 2)
	groupGone(t, g1.PGID)
	done := time.Now()
	load.waitSent(t, 20)
	sent, failed := load.report(t, "old instance ignores SIGTERM")
	v1, v2 := answerOf("1", g1.PID), answerOf("2", servingPID(t, st))
	load.answeredBy(t, "before the reload", from, start, []string{v1}, v1)
	load.answeredBy(t, "during the reload", start, done, []string{v1, v2})
	load.answeredBy(t, "after", done, time.Time{}, []string{v2}, v2)
	t.Logf("requests cut by the SIGKILL of an instance that never drained: %d of %d", failed, sent)
	out := b.out.String()
	for _, w := range []string{"killed=true", "signal killed"} {
		if !strings.Contains(out, w) {
			t.Errorf("log lacks %q:\n%s", w, out)
		}
	}
	burst(t, e.addr, 50, "2", servingPID(t, st))
}

// TestFaultSIGHUPStorm: 20 SIGHUPs in a burst coalesce into at most two
// reloads; no request fails.
func TestFaultSIGHUPStorm(t *testing.T) {
	e := newEnv(t)
	e.setFault(faultOK, "1")
	b := e.binary(e.runArgs("--drain-timeout", "2s")...)
	pid1 := servingPID(t, e.waitServing(nil, 1))
	load := startLoad(t, e.addr, 2)
	from := time.Now()
	load.waitSent(t, 20)
	e.setFault(faultOK, "2")
	storm := time.Now()
	for range 20 {
		_ = b.cmd.Process.Signal(syscall.SIGHUP)
	}
	// Settled: no reload running, and the same for 10 polls in a row.
	var st supervisor.Status
	stable := 0
	waitFor(t, 15*time.Second, "reloads settled", func() bool {
		code, out, _ := cli("status", "--json", "--control", e.sock)
		var now supervisor.Status
		if code != 0 || json.Unmarshal([]byte(out), &now) != nil || now.Reloading || now.Serving < 2 {
			stable = 0
			return false
		}
		if now.Serving == st.Serving {
			stable++
		} else {
			stable = 0
		}
		st = now
		return stable >= 10
	})
	if st.Serving > 3 {
		t.Errorf("20 SIGHUPs made %d reloads, want at most 2", st.Serving-1)
	}
	if n := len(e.helperPIDs()); n != st.Serving {
		t.Errorf("%d instances started, want %d", n, st.Serving)
	}
	t.Logf("20 SIGHUPs: %d reloads (serving generation %d)", st.Serving-1, st.Serving)
	waitFor(t, 10*time.Second, "one instance left", func() bool { return len(e.aliveHelpers()) == 1 })
	settled := time.Now()
	load.waitSent(t, 20)
	sent, failed := load.report(t, "SIGHUP storm")
	v1, last := answerOf("1", pid1), answerOf("2", servingPID(t, st))
	during := []string{v1}
	for _, pid := range e.helperPIDs() {
		during = append(during, answerOf("2", pid))
	}
	load.answeredBy(t, "before the storm", from, storm, []string{v1}, v1)
	load.answeredBy(t, "storm", storm, settled, during)
	load.answeredBy(t, "after", settled, time.Time{}, []string{last}, last)
	if failed != 0 {
		t.Errorf("%d of %d requests failed", failed, sent)
	}
	burst(t, e.addr, 50, "2", servingPID(t, st))
	// The reloads were done at their handovers; the old ones leave.
	waitFor(t, 5*time.Second, "one instance left", func() bool { return len(e.aliveHelpers()) == 1 })
}

// TestFaultSIGHUPWhileStopping: SIGHUPs during a stop are ignored; exit 0,
// no instance left, no new generation started.
func TestFaultSIGHUPWhileStopping(t *testing.T) {
	e := newEnv(t)
	e.setFault(faultOK, "1")
	b := e.binary(e.runArgs("--drain-timeout", "2s")...)
	st := e.waitServing(nil, 1)
	// A request in flight keeps the drain (and so the stop) going.
	done := slowRequest(t, e.addr, 700*time.Millisecond)
	accepted(t, e.addr) // alone on its address, it closes its listener at once
	_ = b.cmd.Process.Signal(syscall.SIGTERM)
	waitFor(t, 5*time.Second, "stopping", func() bool { return strings.Contains(b.out.String(), "draining") })
	for range 5 {
		_ = b.cmd.Process.Signal(syscall.SIGHUP)
	}
	if code := b.exitCode(t, 10*time.Second); code != 0 {
		t.Errorf("exit %d, want 0:\n%s", code, b.out.String())
	}
	if got := <-done; !strings.HasPrefix(got, "version=1 ") {
		t.Errorf("request in flight during the stop answered %q", got)
	}
	if n := len(e.helperPIDs()); n != 1 {
		t.Errorf("%d instances started, want 1 (a SIGHUP while stopping started one)", n)
	}
	groupGone(t, st.Generations[0].PGID)
	if alive := e.aliveHelpers(); len(alive) != 0 {
		t.Errorf("instances left: %v", alive)
	}
}

// TestFaultSIGTERMDuringReload: a stop while generation 2 is starting
// abandons the reload: generation 2 is killed with its group, generation 1
// alone drains, exit 0, no process left.
func TestFaultSIGTERMDuringReload(t *testing.T) {
	e := newEnv(t)
	e.setFault(faultOK, "1")
	b := e.binary(e.runArgs("--drain-timeout", "2s", "--ready-timeout", "20s")...)
	st := e.waitServing(nil, 1)
	g1 := st.Generations[0]
	load := startLoad(t, e.addr, 2)
	from := time.Now()
	load.waitSent(t, 20)
	e.setFault(faultOK, "2", envReadyDelay+"=20s")
	_ = b.cmd.Process.Signal(syscall.SIGHUP)
	var g2 supervisor.GenStatus
	waitFor(t, 10*time.Second, "generation 2 starting", func() bool {
		st, err := e.status()
		var ok bool
		g2, ok = genByNumber(st, 2)
		return err == nil && ok && st.Reloading && g2.PID > 0
	})
	load.waitSent(t, 10)
	sent, failed := load.report(t, "until SIGTERM during a reload")
	if failed != 0 {
		t.Errorf("%d of %d requests failed before the stop", failed, sent)
	}
	v1 := answerOf("1", g1.PID)
	load.answeredBy(t, "while generation 2 starts", from, time.Time{}, []string{v1}, v1)
	_ = b.cmd.Process.Signal(syscall.SIGTERM)
	if code := b.exitCode(t, 15*time.Second); code != 0 {
		t.Errorf("exit %d, want 0:\n%s", code, b.out.String())
	}
	out := b.out.String()
	if n := strings.Count(out, "msg=draining generation="); n != 1 || !strings.Contains(out, "msg=draining generation=1 ") {
		t.Errorf("%d instances drained, want generation 1 only:\n%s", n, out)
	}
	groupGone(t, g1.PGID)
	groupGone(t, g2.PGID)
	if alive := e.aliveHelpers(); len(alive) != 0 {
		t.Errorf("instances left: %v", alive)
	}
}

// TestFaultSupervisorSIGKILL: the supervisor is SIGKILLed under load; its
// instance keeps serving; a new supervisor (as systemd would start with
// KillMode=process) adopts it and retires it through a normal handover.
// No request fails.
func TestFaultSupervisorSIGKILL(t *testing.T) {
	e := newEnv(t)
	e.setFault(faultOK, "1")
	b := e.binary(e.runArgs("--drain-timeout", "2s")...)
	st := e.waitServing(nil, 1)
	g1 := st.Generations[0]
	load := startLoad(t, e.addr, 2)
	from := time.Now()
	load.waitSent(t, 20)
	_ = syscall.Kill(b.cmd.Process.Pid, syscall.SIGKILL)
	b.exitCode(t, 5*time.Second)
	load.waitSent(t, 30) // served with no supervisor
	e.setFault(faultOK, "2")
	restart := time.Now()
	b2 := e.binary(e.runArgs("--drain-timeout", "2s")...)
	e.waitServing(nil, 2)
	groupGone(t, g1.PGID)
	done := time.Now()
	// Gone, and seen gone (the adopted one is not our child: polled).
	waitFor(t, 5*time.Second, "adopted generation 1 reported exited", func() bool {
		st, _ = e.status()
		g, ok := genByNumber(st, 1)
		return ok && g.State == supervisor.StateExited
	})
	load.waitSent(t, 20)
	sent, failed := load.report(t, "supervisor SIGKILLed and started again")
	if failed != 0 {
		t.Errorf("%d of %d requests failed", failed, sent)
	}
	v1, v2 := answerOf("1", g1.PID), answerOf("2", servingPID(t, st))
	load.answeredBy(t, "through the supervisor's SIGKILL", from, restart, []string{v1}, v1)
	load.answeredBy(t, "adoption and handover", restart, done, []string{v1, v2}, v2)
	load.answeredBy(t, "after", done, time.Time{}, []string{v2}, v2)
	if len(st.Generations) != 2 || !st.Generations[0].Adopted || st.Generations[0].State != supervisor.StateExited {
		t.Errorf("generations %+v, want adopted 1 exited and 2 serving", st.Generations)
	}
	burst(t, e.addr, 50, "2", servingPID(t, st))
	if alive := e.aliveHelpers(); len(alive) != 1 {
		t.Errorf("instances alive %v, want one", alive)
	}
	_ = b2.cmd.Process.Signal(syscall.SIGTERM)
	if code := b2.exitCode(t, 10*time.Second); code != 0 {
		t.Errorf("exit %d", code)
	}
	if alive := e.aliveHelpers(); len(alive) != 0 {
		t.Errorf("instances left: %v", alive)
	}
}

// TestFaultServingCrashDuringReloadStart: the serving instance crashes while
// a reload's new instance is still starting. No second instance is started
// beside it: the reload's instance takes over when ready and is the only one
// left. Requests until it listens fail (nothing serves): counted.
func TestFaultServingCrashDuringReloadStart(t *testing.T) {
	e := newEnv(t)
	e.setFault(faultOK, "1")
	p := e.startInProcess("--ready-timeout", "20s", "--drain-timeout", "2s", "--restart-backoff", "10s")
	st := e.waitServing(p, 1)
	g1 := st.Generations[0]
	load := startLoad(t, e.addr, 2)
	from := time.Now()
	load.waitSent(t, 20)
	e.setFault(faultOK, "2", envReadyDelay+"=500ms")
	reload := make(chan int, 1)
	go func() { c, _, _ := cli("reload", "--control", e.sock); reload <- c }()
	waitFor(t, 10*time.Second, "generation 2 starting", func() bool {
		st, err := e.status()
		g, ok := genByNumber(st, 2)
		return err == nil && ok && g.PID > 0
	})
	crash := time.Now()
	if err := syscall.Kill(-g1.PGID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if c := <-reload; c != 0 {
		t.Errorf("reload: exit %d, want 0 (generation 2 takes over)", c)
	}
	st = e.waitServing(p, 2)
	groupGone(t, g1.PGID)
	done := time.Now()
	load.waitSent(t, 20)
	v1, v2 := answerOf("1", g1.PID), answerOf("2", servingPID(t, st))
	load.answeredBy(t, "before the crash", from, crash, []string{v1}, v1)
	load.answeredBy(t, "after generation 2 took over", done, time.Time{}, []string{v2}, v2)
	sent, failed := load.report(t, "serving instance crashes while the new one starts")
	t.Logf("requests failed until generation 2 listened: %d of %d", failed, sent)
	if n := len(e.helperPIDs()); n != 2 {
		t.Errorf("%d instances started, want 2 (no replacement beside the reload's)", n)
	}
	// Generation 1 crashed before generation 2 was ready: its group is
	// empty, so nothing may be sent to it (its number could be reused).
	if logs := p.stderr.String(); strings.Contains(logs, "msg=draining generation=1 ") {
		t.Errorf("a stop signal went to generation 1's group after it crashed:\n%s", logs)
	}
	if alive := e.aliveHelpers(); len(alive) != 1 {
		t.Errorf("instances alive %v, want one", alive)
	}
	burst(t, e.addr, 50, "2", servingPID(t, st))
}
