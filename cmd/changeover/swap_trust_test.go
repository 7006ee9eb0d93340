//go:build linux

package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/changeover-dev/changeover/internal/proc"
)

// swapArgs is a swap of the helper server with pidfile.
func (e *env) swapArgs(pidfile string, flags ...string) []string {
	args := append([]string{"swap", "--pidfile", pidfile, "--env-file", e.envFile, "--ready-timeout", "20s", "--drain-timeout", "5s"}, flags...)
	return append(args, "--", e.exe)
}

// pidfilePID reads a pidfile that must hold a PID alone on one line.
func pidfilePID(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSuffix(string(b), "\n"))
	if err != nil || pid <= 1 || strings.Count(string(b), "\n") != 1 {
		t.Fatalf("pidfile %s holds %q, want a PID alone on one line", path, b)
	}
	return pid
}

// startOutsideSwap starts the helper server version v in a session of its
// own, as an earlier swap (or another tool) would have, and waits until it
// serves.
func (e *env) startOutsideSwap(t *testing.T, v string) (pid int, ticks uint64) {
	t.Helper()
	cmd := exec.Command(e.exe)
	cmd.Env = append(os.Environ(), envHelper+"=server", envAddr+"="+e.addr, envVersion+"="+v, envPidDir+"="+e.pidDir, "NOTIFY_SOCKET=")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = cmd.Wait() }()
	pid = cmd.Process.Pid
	waitFor(t, 10*time.Second, "the server started outside swap", func() bool {
		return strings.HasPrefix(get(e.addr), fmt.Sprintf("version=%s pid=%d", v, pid))
	})
	ticks, _ = proc.StartTime(pid)
	return pid, ticks
}

// TestSwapPidfile: the pidfile holds the PID alone (kill -0 $(cat F) and
// pgrep -F F work); a pidfile that swap cannot verify (written by another
// tool) is never signalled unless --takeover says so; a pidfile of the
// previous release ("PID STARTTIME GEN ADDR") is verified and migrated.
func TestSwapPidfile(t *testing.T) {
	t.Run("pid alone", func(t *testing.T) {
		e := newEnv(t)
		pidfile := filepath.Join(e.dir, "app.pid")
		if code, _, stderr := cli(e.swapArgs(pidfile)...); code != 0 {
			t.Fatalf("swap: exit %d: %s", code, stderr)
		}
		pid := pidfilePID(t, pidfile)
		for _, sh := range []string{`kill -0 "$(cat "$0")"`, `pgrep -F "$0" >/dev/null`} {
			if out, err := exec.Command("/bin/sh", "-c", sh, pidfile).CombinedOutput(); err != nil {
				t.Errorf("%s: %v %s", sh, err, out)
			}
		}
		e.setEnv("2")
		if code, _, stderr := cli(e.swapArgs(pidfile)...); code != 0 {
			t.Fatalf("second swap: exit %d: %s", code, stderr)
		}
		pid2 := pidfilePID(t, pidfile)
		if pid2 == pid {
			t.Errorf("pidfile %d after the second swap names the first instance", pid2)
		}
		waitFor(t, 15*time.Second, "the first instance gone", func() bool { return !proc.Alive(pid, 0) })
		burst(t, e.addr, 20, "2", pid2)
	})
	t.Run("another tool's pidfile", func(t *testing.T) {
		e := newEnv(t)
		pidfile := filepath.Join(e.dir, "app.pid")
		by := startBystander(t)
		if err := os.WriteFile(pidfile, []byte(strconv.Itoa(by.pid)+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		code, _, stderr := cli(e.swapArgs(pidfile)...)
		if code != exitUsage || !strings.Contains(stderr, "--takeover") || !strings.Contains(stderr, strconv.Itoa(by.pid)) {
			t.Errorf("swap over an unverifiable pidfile: exit %d, want 2 naming the pid and --takeover:\n%s", code, stderr)
		}
		time.Sleep(100 * time.Millisecond)
		if by.gone() {
			t.Fatalf("the process named by another tool's pidfile was signalled")
		}
		if n := len(e.helperPIDs()); n != 0 {
			t.Errorf("%d instances started", n)
		}
		// Taking over is explicit.
		code, _, stderr = cli(e.swapArgs(pidfile, "--takeover")...)
		if code != 0 {
			t.Fatalf("swap --takeover: exit %d: %s", code, stderr)
		}
		waitFor(t, 5*time.Second, "the process taken over gone", by.gone)
		burst(t, e.addr, 10, "1", pidfilePID(t, pidfile))
	})
	t.Run("previous release's pidfile", func(t *testing.T) {
		e := newEnv(t)
		pidfile := filepath.Join(e.dir, "app.pid")
		old, ticks := e.startOutsideSwap(t, "3")
		legacy := fmt.Sprintf("%d %d 3 127.0.0.1:1\n", old, ticks)
		if err := os.WriteFile(pidfile, []byte(legacy), 0o644); err != nil {
			t.Fatal(err)
		}
		e.setEnv("4")
		code, out, stderr := cli(e.swapArgs(pidfile)...)
		if code != 0 || !strings.Contains(out, fmt.Sprintf("generation 4 pid %d took over from pid %d", pidfilePID(t, pidfile), old)) {
			t.Fatalf("swap over a pidfile of the previous release: exit %d: %s%s", code, out, stderr)
		}
		waitFor(t, 5*time.Second, "the old instance gone", func() bool { return !proc.Alive(old, 0) })
		burst(t, e.addr, 10, "4", pidfilePID(t, pidfile))
	})
}
