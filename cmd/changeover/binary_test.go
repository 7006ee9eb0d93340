//go:build linux

package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/changeover-dev/changeover/internal/proc"
)

// TestBinarySIGHUPAndSIGTERM runs changeover as a real process: SIGHUP
// reloads (same supervisor PID, new version served), SIGTERM drains and exits
// 0 with no instance left.
func TestBinarySIGHUPAndSIGTERM(t *testing.T) {
	e := newEnv(t)
	b := e.binary(e.runArgs("--ready-timeout", "5s", "--drain-timeout", "5s")...)
	st := e.waitServing(nil, 1)
	if st.PID != b.cmd.Process.Pid {
		t.Fatalf("status PID %d, want supervisor %d", st.PID, b.cmd.Process.Pid)
	}
	if got := get(e.addr); !strings.HasPrefix(got, "version=1 ") {
		t.Fatalf("served %q", got)
	}
	old := st.Generations[0].PID

	e.setEnv("2")
	start := time.Now()
	if err := b.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "old instance exit", func() bool { return syscall.Kill(old, 0) != nil })
	t.Logf("reload (SIGHUP to old instance exit): %v", time.Since(start))
	if got := get(e.addr); !strings.HasPrefix(got, "version=2 ") {
		t.Fatalf("after SIGHUP served %q, want version=2", got)
	}
	st = e.waitServing(nil, 2)
	if st.PID != b.cmd.Process.Pid {
		t.Errorf("supervisor PID changed: %d, want %d", st.PID, b.cmd.Process.Pid)
	}

	if err := b.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := b.exitCode(t, 15*time.Second); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0; output:\n%s", code, b.out.String())
	}
	if alive := e.aliveHelpers(); len(alive) != 0 {
		t.Errorf("instances left after SIGTERM: %v", alive)
	}
	if _, err := os.Stat(e.sock); err == nil {
		t.Errorf("control socket %s left behind", e.sock)
	}
}

// TestBinarySecondSignalHurries: an instance that ignores SIGTERM is
// SIGKILLed at the second SIGTERM, long before the drain timeout.
func TestBinarySecondSignalHurries(t *testing.T) {
	e := newEnv(t)
	e.setEnv("1", envMode+"=ignore-term")
	b := e.binary(e.runArgs("--drain-timeout", "60s")...)
	e.waitServing(nil, 1)
	_ = b.cmd.Process.Signal(syscall.SIGTERM)
	waitFor(t, 5*time.Second, "stopping", func() bool { return strings.Contains(b.out.String(), "stopping") })
	_ = b.cmd.Process.Signal(syscall.SIGTERM)
	if code := b.exitCode(t, 10*time.Second); code != 0 {
		t.Errorf("exit code %d, want 0; output:\n%s", code, b.out.String())
	}
	if alive := e.aliveHelpers(); len(alive) != 0 {
		t.Errorf("instances left: %v", alive)
	}
}

func TestCrashRestartAndCrashLoop(t *testing.T) {
	t.Run("restart", func(t *testing.T) {
		e := newEnv(t)
		once := e.dir + "/crash-once"
		if err := os.WriteFile(once, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		e.setEnv("1", envCrashOnce+"="+once)
		p := e.startInProcess("--restart-backoff", "50ms")
		st := e.waitServing(p, 2)
		if len(e.helperPIDs()) != 2 {
			t.Errorf("helpers started: %v", e.helperPIDs())
		}
		// The crash is logged once its stderr's last lines are in, off the
		// supervisor's loop: the replacement may be ready first.
		waitFor(t, 5*time.Second, "the crash logged", func() bool { return strings.Contains(p.stderr.String(), "serving instance exited") })
		if logs := p.stderr.String(); !strings.Contains(logs, "exit status 3") {
			t.Errorf("crash not logged with its status:\n%s", logs)
		}
		if got := get(e.addr); !strings.Contains(got, "version=1") {
			t.Errorf("after restart served %q (status %+v)", got, st)
		}
	})
	t.Run("loop", func(t *testing.T) {
		e := newEnv(t)
		e.setEnv("1", envMode+"=crash")
		p := e.startInProcess("--restart-backoff", "20ms", "--crash-limit", "2", "--crash-window", "1m")
		err := p.wait(t, 20*time.Second)
		if code := exitCode(err); code != exitCrashLoop {
			t.Fatalf("run: %v (exit %d), want crash loop exit %d", err, code, exitCrashLoop)
		}
		if n := len(e.helperPIDs()); n != 3 {
			t.Errorf("%d instances started, want 3", n)
		}
		if alive := e.aliveHelpers(); len(alive) != 0 {
			t.Errorf("instances left: %v", alive)
		}
	})
}

// TestBinaryReapsOrphans: an instance's orphaned child is re-parented to
// the supervisor (child subreaper) and reaped, leaving no zombie; --pidfile
// holds the supervisor's PID.
func TestBinaryReapsOrphans(t *testing.T) {
	e := newEnv(t)
	orphanFile := filepath.Join(e.dir, "orphan")
	e.setEnv("1", envOrphan+"="+orphanFile)
	pidfile := filepath.Join(e.dir, "sup.pid")
	b := e.binary(e.runArgs("--pidfile", pidfile)...)
	e.waitServing(nil, 1)
	if got, _ := os.ReadFile(pidfile); strings.TrimSpace(string(got)) != strconv.Itoa(b.cmd.Process.Pid) {
		t.Errorf("pidfile holds %q, want %d", got, b.cmd.Process.Pid)
	}
	var orphan int
	waitFor(t, 5*time.Second, "orphan PID", func() bool {
		got, err := os.ReadFile(orphanFile)
		orphan, _ = strconv.Atoi(strings.TrimSpace(string(got)))
		return err == nil && orphan > 0
	})
	if st, err := proc.ReadStat(orphan); err == nil && st.PPID != b.cmd.Process.Pid {
		t.Errorf("orphan %d has parent %d, want the supervisor %d", orphan, st.PPID, b.cmd.Process.Pid)
	}
	waitFor(t, 5*time.Second, "orphan reaped (no zombie left)", func() bool {
		_, err := proc.ReadStat(orphan)
		return err != nil
	})
}

// TestBinarySIGTERMWhileStarting: a stop during generation 1's start kills
// it and exits 0.
func TestBinarySIGTERMWhileStarting(t *testing.T) {
	e := newEnv(t)
	e.setEnv("1", envMode+"=never-ready")
	b := e.binary(e.runArgs("--ready-timeout", "60s")...)
	waitFor(t, 5*time.Second, "instance started", func() bool { return len(e.aliveHelpers()) == 1 })
	_ = b.cmd.Process.Signal(syscall.SIGTERM)
	if code := b.exitCode(t, 10*time.Second); code != 0 {
		t.Errorf("exit %d, want 0; output:\n%s", code, b.out.String())
	}
	if alive := e.aliveHelpers(); len(alive) != 0 {
		t.Errorf("instances left: %v", alive)
	}
}
