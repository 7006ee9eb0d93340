//go:build linux

package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/changeover-dev/changeover/internal/supervisor"
)

// The defects of issue 10 (and issue 11's adoption of draining
// generations), each with real processes. The machine's table
// (internal/supervisor/machine_test.go) has a row for each.

// TestCoreReplacementFailsWhileOldDrains (defect 1): generation 2 takes
// over and crashes while generation 1 drains, and its replacement fails
// too. Nothing serves then, and nothing is starting: a restart must follow
// (after a backoff, the second crash in the window), not an idle
// supervisor with serving_generation 0.
func TestCoreReplacementFailsWhileOldDrains(t *testing.T) {
	e := newEnv(t)
	e.setFault(faultOK, "1")
	p := e.startInProcess("--ready-timeout", "20s", "--drain-timeout", "5s", "--restart-backoff", "200ms")
	e.waitServing(p, 1)
	slow := slowRequest(t, e.addr, 2*time.Second) // keeps generation 1 draining
	e.setFault(faultOK, "2")
	go cli("reload", "--control", e.sock)
	gen2 := e.waitTakenOver(t, 1, 2, false)
	e.setFault(faultExit, "3") // the replacement exits at start
	if err := syscall.Kill(-gen2.PGID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the replacement (generation 3) failed", func() bool {
		st, err := e.status()
		g3, ok := genByNumber(st, 3)
		return err == nil && ok && g3.State == supervisor.StateFailed
	})
	e.setFault(faultOK, "4")
	var st supervisor.Status
	waitFor(t, 10*time.Second, "a generation serving again after the failed replacement", func() bool {
		var err error
		st, err = e.status()
		return err == nil && st.Serving >= 4 && !st.Reloading
	})
	burst(t, e.addr, 20, "4", servingPID(t, st))
	if got := <-slow; !strings.HasPrefix(got, "version=1 ") {
		t.Errorf("request in flight on the draining generation 1 answered %q", got)
	}
}

// TestCoreFirstCrashRestartsAtOnce (defect 2): the first crash in the
// window is replaced as soon as the crashed group's listeners are gone,
// not after --restart-backoff (10s here).
func TestCoreFirstCrashRestartsAtOnce(t *testing.T) {
	e := newEnv(t)
	e.setFault(faultOK, "1")
	p := e.startInProcess("--restart-backoff", "10s")
	st := e.waitServing(p, 1)
	load := startLoad(t, e.addr, 2)
	load.waitSent(t, 20)
	start := time.Now()
	if err := syscall.Kill(-st.Generations[0].PGID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "generation 2 serving, long before the 10s backoff", func() bool {
		st, err := e.status()
		return err == nil && st.Serving == 2
	})
	t.Logf("first crash replaced in %v", time.Since(start).Round(time.Millisecond))
	load.waitSent(t, 20)
	sent, failed := load.report(t, "first crash, replaced at once")
	t.Logf("requests refused between the crash and the replacement: %d of %d, from %s to %s", failed, sent,
		load.firstFail.Format("15:04:05.000"), load.lastFail.Format("15:04:05.000"))
}

// TestCoreGenerationOneFailsWhileReloadWaits (defect 3): generation 1 is
// never ready while a `changeover reload` waits on the control socket.
// run exits 4 and the reload gets an answer (4 too).
func TestCoreGenerationOneFailsWhileReloadWaits(t *testing.T) {
	e := newEnv(t)
	e.setEnv("1", envMode+"=never-ready")
	b := e.binary(e.runArgs("--ready-timeout", "8s")...)
	waitFor(t, 8*time.Second, "control socket and generation 1 started", func() bool {
		_, err := e.status()
		return err == nil && len(e.aliveHelpers()) == 1
	})
	reload := make(chan int, 1)
	go func() { c, _, _ := cli("reload", "--control", e.sock); reload <- c }()
	if code := b.exitCode(t, 20*time.Second); code != exitNotReady {
		t.Errorf("run: exit %d, want %d:\n%s", code, exitNotReady, b.out.String())
	}
	select {
	case c := <-reload:
		if c != exitNotReady {
			t.Errorf("reload: exit %d, want %d (generation 1 was not ready)", c, exitNotReady)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the reload waiting during generation 1 never got an answer")
	}
	if alive := e.aliveHelpers(); len(alive) != 0 {
		t.Errorf("instances left: %v", alive)
	}
}

// TestCoreReloadDuringBackoffStartsNoExtra (defect 5): a reload asked for
// while a crash restart waits out its backoff is that restart: when the
// backoff ends (2s after the second crash; the core before the machine
// waited 4s), no extra generation starts, even while the reload's
// generation is still starting (5s).
func TestCoreReloadDuringBackoffStartsNoExtra(t *testing.T) {
	e := newEnv(t)
	p := e.startInProcess("--restart-backoff", "2s", "--ready-timeout", "10s")
	st := e.waitServing(p, 1)
	_ = syscall.Kill(-st.Generations[0].PGID, syscall.SIGKILL)
	st = e.waitServing(p, 2)
	g2, _ := genByNumber(st, 2)
	_ = syscall.Kill(-g2.PGID, syscall.SIGKILL) // the second crash: a backoff
	waitFor(t, 5*time.Second, "the crash seen, nothing serving", func() bool {
		st, err := e.status()
		return err == nil && st.Serving == 0
	})
	// Ready after the backoff has ended.
	e.setEnv("3", envReadyDelay+"=5s")
	if code, _, stderr := cli("reload", "--control", e.sock); code != 0 {
		t.Fatalf("reload during the backoff: exit %d: %s", code, stderr)
	}
	// Watch for a while: no fourth generation.
	for end := time.Now().Add(1500 * time.Millisecond); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if n := len(e.helperPIDs()); n > 3 {
			st, _ := e.status()
			t.Fatalf("%d generations started, want 3: the reload during the backoff was followed by an extra one (%+v)", n, st.Generations)
		}
	}
	e.waitServing(p, 3)
}

// TestCoreCoverageOfSharedAddresses (defect 6): the new generation must
// listen where the old one shares a port with SO_REUSEPORT, polled until
// the ready deadline: a per-process port of the old one (a pprof-like
// listener on :0) is not required, and a server that binds just after
// READY=1 is promoted.
func TestCoreCoverageOfSharedAddresses(t *testing.T) {
	e := newEnv(t)
	e.setEnv("1", envPrivatePort+"=1")
	p := e.startInProcess("--ready-timeout", "20s")
	e.waitServing(p, 1)
	e.setEnv("2", envPrivatePort+"=1")
	if code, _, stderr := cli("reload", "--control", e.sock); code != 0 {
		t.Errorf("reload of a server with a private port: exit %d: %s", code, stderr)
	}
	e.setEnv("3", envBindAfterReady+"=300ms")
	if code, _, stderr := cli("reload", "--control", e.sock); code != 0 {
		t.Errorf("reload of a server that binds after READY=1: exit %d: %s", code, stderr)
	}
	if got := get(e.addr); !strings.HasPrefix(got, "version=3 ") {
		t.Errorf("served %q, want version 3", got)
	}
}

// TestCoreSurvivesBrokenPipe (defect 7): `changeover run ... | tee` must
// survive tee exiting: logging to a broken pipe does not kill the
// supervisor (nor the stderr relay), and reloads go on.
func TestCoreSurvivesBrokenPipe(t *testing.T) {
	e := newEnv(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(e.exe, e.runArgs()...)
	cmd.Env = append(os.Environ(), envHelper+"=main")
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	done := startGroup(t, cmd)
	w.Close()
	if line, err := bufio.NewReader(r).ReadString('\n'); err != nil {
		t.Fatalf("first log line: %q %v", line, err)
	}
	e.waitServing(nil, 1)
	r.Close() // tee exits
	e.setEnv("2")
	_ = cmd.Process.Signal(syscall.SIGHUP)
	e.waitServing(nil, 2)
	if got := get(e.addr); !strings.HasPrefix(got, "version=2 ") {
		t.Errorf("served %q after the reload, want version 2", got)
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
		if code := cmd.ProcessState.ExitCode(); code != 0 {
			t.Errorf("exit %d after SIGTERM, want 0 (%v)", code, cmd.ProcessState)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no exit after SIGTERM")
	}
}

// TestCoreAdoptsDrainingGeneration (issue 11, defect 3): the supervisor is
// SIGKILLed while generation 1 drains a request. The next supervisor
// adopts generation 1 as draining (with the deadline recorded in the
// state file) and lets it finish: the request is answered by version 1.
func TestCoreAdoptsDrainingGeneration(t *testing.T) {
	e := newEnv(t)
	e.setFault(faultOK, "1")
	b := e.binary(e.runArgs("--drain-timeout", "10s")...)
	st := e.waitServing(nil, 1)
	g1 := st.Generations[0]
	slow := slowRequest(t, e.addr, 3*time.Second)
	e.setFault(faultOK, "2")
	_ = b.cmd.Process.Signal(syscall.SIGHUP)
	e.waitTakenOver(t, 1, 2, false)
	_ = syscall.Kill(b.cmd.Process.Pid, syscall.SIGKILL)
	b.exitCode(t, 5*time.Second)
	e.setFault(faultOK, "3")
	b2 := e.binary(e.runArgs("--drain-timeout", "10s")...)
	e.waitServing(nil, 3)
	if got := <-slow; !strings.HasPrefix(got, "version=1 ") {
		t.Errorf("the request in flight on draining generation 1 answered %q, want version 1 (adopted and left to finish)", got)
	}
	groupGone(t, g1.PGID)
	if out := b2.out.String(); !strings.Contains(out, "adopted draining instance") {
		t.Errorf("adoption of the draining generation not logged:\n%s", out)
	}
	_ = b2.cmd.Process.Signal(syscall.SIGTERM)
	if code := b2.exitCode(t, 15*time.Second); code != 0 {
		t.Errorf("exit %d", code)
	}
	if alive := e.aliveHelpers(); len(alive) != 0 {
		t.Errorf("instances left: %v", alive)
	}
}

// TestCoreNewExitsDuringHandover (review of issue 10): generation 2 is
// ready and promoted, and exits while generation 1 (which ignores SIGTERM)
// still has its listener open. The reload failed, whatever happens next:
// it exits 3 naming the handover, not 0. The crash is then replaced once
// generation 1 is killed at its drain deadline and stops listening.
func TestCoreNewExitsDuringHandover(t *testing.T) {
	e := newEnv(t)
	e.setFault(faultIgnoreTerm, "1")
	p := e.startInProcess("--drain-timeout", "3s")
	e.waitServing(p, 1)
	e.setFault(faultOK, "2")
	type reloadResult struct {
		code   int
		stderr string
	}
	reloaded := make(chan reloadResult, 1)
	go func() {
		code, _, stderr := cli("reload", "--control", e.sock)
		reloaded <- reloadResult{code, stderr}
	}()
	gen2 := e.waitTakenOver(t, 1, 2, true)
	e.setFault(faultOK, "3")
	if err := syscall.Kill(-gen2.PGID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-reloaded:
		if r.code != exitExited || !strings.Contains(r.stderr, "exited during the handover") {
			t.Errorf("reload: exit %d, stderr %q; want exit %d naming the handover", r.code, r.stderr, exitExited)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the reload got no answer")
	}
	var st supervisor.Status
	waitFor(t, 15*time.Second, "generation 3 serving after generation 1's deadline", func() bool {
		var err error
		st, err = e.status()
		return err == nil && st.Serving == 3 && !st.Reloading
	})
	burst(t, e.addr, 20, "3", servingPID(t, st))
}

// waitTakenOver waits until generation next serves while old drains (and,
// with handingOver, while the reload still runs: old's listeners are not
// gone yet), and returns next's status.
func (e *env) waitTakenOver(t *testing.T, old, next int, handingOver bool) supervisor.GenStatus {
	t.Helper()
	var gen supervisor.GenStatus
	waitFor(t, 10*time.Second, fmt.Sprintf("generation %d serving while generation %d drains (reload running: %v)", next, old, handingOver), func() bool {
		st, err := e.status()
		o, ok1 := genByNumber(st, old)
		n, ok2 := genByNumber(st, next)
		gen = n
		return err == nil && ok1 && ok2 && o.State == supervisor.StateDraining && n.State == supervisor.StateServing &&
			(!handingOver || st.Reloading)
	})
	return gen
}
