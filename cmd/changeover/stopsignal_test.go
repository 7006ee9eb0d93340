//go:build linux

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/changeover-dev/changeover/internal/proc"
)

// TestStopSignalFlagValues: --stop-signal takes a name (with or without
// SIG, any case) or a number; --kill-mode takes group or main; anything else
// is a usage error (exit 2) naming the value, for run and for swap.
func TestStopSignalFlagValues(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "c.sock")
	pidfile := filepath.Join(dir, "p.pid")
	for _, cmd := range []string{"run", "swap"} {
		base := []string{cmd, "--control", sock}
		if cmd == "swap" {
			base = []string{cmd, "--pidfile", pidfile}
		}
		for _, tc := range []struct {
			flag, value string
		}{
			{"--stop-signal", "QIUT"},
			{"--stop-signal", "SIGFOO"},
			{"--stop-signal", "0"},
			{"--stop-signal", "99"},
			{"--stop-signal", "-3"},
			{"--stop-signal", "STOP"}, // cannot be caught: it would freeze the server until the deadline
			{"--stop-signal", "KILL"}, // cannot be caught: under --kill-mode main the workers would serve on, orphaned
			{"--stop-signal", "9"},
			{"--stop-signal", "32"}, // glibc's own (cancellation, setxid)
			{"--stop-signal", "33"},
			{"--stop-signal", ""},
			{"--kill-mode", "mixed"},
			{"--kill-mode", ""},
		} {
			t.Run(cmd+" "+tc.flag+"="+tc.value, func(t *testing.T) {
				args := append(append([]string{}, base...), tc.flag+"="+tc.value, "--", "/bin/true")
				code, _, stderr := cli(args...)
				if code != exitUsage {
					t.Errorf("exit %d, want %d; stderr:\n%s", code, exitUsage, stderr)
				}
				if !strings.Contains(stderr, strconv.Quote(tc.value)) {
					t.Errorf("stderr does not name %q:\n%s", tc.value, stderr)
				}
			})
		}
	}
	// Good values get past the flags: the control socket under a regular
	// file is what fails then (exit 1), before anything starts.
	plain := filepath.Join(dir, "plainfile")
	if err := os.WriteFile(plain, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, ok := range []string{"QUIT", "SIGQUIT", "quit", "3", "USR1", "WINCH", "TERM", " 3", "34", "--kill-mode=main"} {
		t.Run("accepts "+ok, func(t *testing.T) {
			flag := "--stop-signal=" + ok
			if strings.HasPrefix(ok, "--") {
				flag = ok
			}
			code, _, stderr := cli("run", "--control", filepath.Join(plain, "c.sock"), flag, "--", "/bin/true")
			if code != exitError || !strings.Contains(stderr, plain) {
				t.Errorf("%s: exit %d, want %d naming %s; stderr:\n%s", flag, code, exitError, plain, stderr)
			}
		})
	}
}

// signalScript is an instance that records which of its processes got
// SIGUSR2: the main process and one child in its process group, each
// writing a file named after its generation when the signal arrives. The
// main process kills its child when it leaves (as a master kills its
// workers), so that a child that was not signalled writes nothing. Ready
// is an exec probe (it speaks no sd_notify).
const signalScript = `#!/bin/sh
out=$SIGNAL_OUT/$CHANGEOVER_GENERATION
sh -c 'trap "echo child \$\$ >> $0-child; exit 0" USR2; while :; do sleep 0.05; done' "$out" &
child=$!
echo $child > "$out-childpid"
trap 'echo main $$ >> "$out-main"; sleep 0.3; kill -9 $child; exit 0' USR2
while :; do sleep 0.05; done
`

func writeSignalScript(t *testing.T, dir string) (script, out string) {
	t.Helper()
	script = filepath.Join(dir, "signal-recorder.sh")
	out = filepath.Join(dir, "signals")
	if err := os.WriteFile(script, []byte(signalScript), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(out, 0o755); err != nil {
		t.Fatal(err)
	}
	return script, out
}

// TestStopSignalKillMode: with --stop-signal USR2, a reload (run) sends
// USR2, not SIGTERM, to the old generation: with --kill-mode group to its
// main process and its child, with --kill-mode main to the main process
// only; the supervisor logs the PIDs it signalled; no process of the old
// group is left.
func TestStopSignalKillMode(t *testing.T) {
	for _, mode := range []string{"group", "main"} {
		t.Run(mode, func(t *testing.T) {
			e := newEnv(t)
			script, out := writeSignalScript(t, e.dir)
			e.setEnv("1", "SIGNAL_OUT="+out)
			p := e.startCommand(script, "--notify=false", "--health", "exec:true",
				"--stop-signal", "USR2", "--kill-mode", mode, "--drain-timeout", "5s")
			st := e.waitServing(p, 1)
			t.Cleanup(func() { killGroups(e, p) })
			g1, _ := genByNumber(st, 1)
			var childPID int
			waitFor(t, 5*time.Second, "child PID file", func() bool {
				b, err := os.ReadFile(filepath.Join(out, "1-childpid"))
				childPID, _ = strconv.Atoi(strings.TrimSpace(string(b)))
				return err == nil && childPID > 0
			})
			if code, _, stderr := cli("reload", "--control", e.sock); code != 0 {
				t.Fatalf("reload: exit %d: %s\n%s", code, stderr, p.stderr.String())
			}
			e.waitServing(p, 2)
			groupGone(t, g1.PGID)
			main, _ := os.ReadFile(filepath.Join(out, "1-main"))
			child, _ := os.ReadFile(filepath.Join(out, "1-child"))
			if want := fmt.Sprintf("main %d\n", g1.PID); string(main) != want {
				t.Errorf("main process recorded %q, want %q (USR2 to the main process)", main, want)
			}
			switch mode {
			case "group":
				if string(child) == "" {
					t.Errorf("child (pid %d) got no USR2 with --kill-mode group", childPID)
				}
			case "main":
				if string(child) != "" {
					t.Errorf("child (pid %d) got USR2 with --kill-mode main: %q", childPID, child)
				}
			}
			logs := p.stderr.String()
			line := ""
			for l := range strings.SplitSeq(logs, "\n") {
				if strings.Contains(l, "stop signal sent") && strings.Contains(l, "generation=1") {
					line = l
				}
			}
			if line == "" {
				t.Fatalf("no log line \"stop signal sent\" for generation 1:\n%s", logs)
			}
			t.Logf("log: %s", line)
			for _, w := range []string{"signal=SIGUSR2", "kill_mode=" + mode, strconv.Itoa(g1.PID)} {
				if !strings.Contains(line, w) {
					t.Errorf("log line lacks %q: %s", w, line)
				}
			}
			if has := strings.Contains(line, strconv.Itoa(childPID)); has != (mode == "group") {
				t.Errorf("log line names child %d: %v, want %v: %s", childPID, has, mode == "group", line)
			}
		})
	}
}

// strayChildScript is a master that leaves at once on SIGTERM and a child
// in its process group that ignores SIGTERM and outlives it (a worker the
// master forgot). Ready is an exec probe (it speaks no sd_notify).
const strayChildScript = `#!/bin/sh
out=$SIGNAL_OUT/$CHANGEOVER_GENERATION
sh -c 'trap "" TERM; while :; do sleep 0.05; done' &
echo $! > "$out-childpid"
trap 'exit 0' TERM
while :; do sleep 0.05; done
`

// TestKillModeMainKillsStrayChildAtDeadline: with --kill-mode main only
// the main process gets the stop signal, and it leaves; its child ignores
// SIGTERM and outlives it. The whole group is still SIGKILLed at the drain
// deadline: the child is gone after the deadline, not before, and not long
// after (killSlack), and the exit is logged killed=true.
func TestKillModeMainKillsStrayChildAtDeadline(t *testing.T) {
	e := newEnv(t)
	script := filepath.Join(e.dir, "stray-child.sh")
	if err := os.WriteFile(script, []byte(strayChildScript), 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(e.dir, "signals")
	if err := os.Mkdir(out, 0o755); err != nil {
		t.Fatal(err)
	}
	e.setEnv("1", "SIGNAL_OUT="+out)
	const drain = 2 * time.Second
	p := e.startCommand(script, "--notify=false", "--health", "exec:true",
		"--kill-mode", "main", "--drain-timeout", drain.String())
	st := e.waitServing(p, 1)
	g1, _ := genByNumber(st, 1)
	t.Cleanup(func() {
		killGroups(e, p)
		_ = syscall.Kill(-g1.PGID, syscall.SIGKILL) // generation 1's group, if the test failed
	})
	var childPID int
	waitFor(t, 5*time.Second, "child PID file", func() bool {
		b, err := os.ReadFile(filepath.Join(out, "1-childpid"))
		childPID, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil && childPID > 0
	})
	start := time.Now()
	if code, _, stderr := cli("reload", "--control", e.sock); code != 0 {
		t.Fatalf("reload: exit %d: %s\n%s", code, stderr, p.stderr.String())
	}
	// The main process leaves at its SIGTERM; the child is still there.
	waitFor(t, 5*time.Second, "generation 1's main process gone", func() bool { return !proc.Alive(g1.PID, 0) })
	mainGone := time.Now()
	if !proc.Alive(childPID, 0) {
		t.Fatalf("child %d left with the main process %d: nothing outlived it to test", childPID, g1.PID)
	}
	waitFor(t, drain+killSlack+5*time.Second, "generation 1's child gone", func() bool { return !proc.Alive(childPID, 0) })
	childGone := time.Now()
	// The stop signal follows the reload's start, so the kill cannot come
	// less than drain after it; the main process left after the signal, so
	// from then the kill is at most drain+killSlack away.
	if d := childGone.Sub(start); d < drain {
		t.Errorf("child gone %v after the reload started, before the drain deadline %v", d.Round(time.Millisecond), drain)
	}
	if d := childGone.Sub(mainGone); d > drain+killSlack {
		t.Errorf("child gone %v after the main process, more than the deadline %v + %v", d.Round(time.Millisecond), drain, killSlack)
	}
	t.Logf("child %d outlived the main process %d; gone %v after it (deadline %v)", childPID, g1.PID, childGone.Sub(mainGone).Round(time.Millisecond), drain)
	groupGone(t, g1.PGID)
	waitFor(t, 5*time.Second, "generation 1's exit logged", func() bool {
		return strings.Contains(p.stderr.String(), "msg=\"instance exited\" generation=1")
	})
	logs := p.stderr.String()
	checkKillTime(t, logs, 1, drain)
	if m := regexp.MustCompile(`msg="instance exited" generation=1 .*`).FindString(logs); m != "" {
		t.Logf("log: %s", m)
	}
	e.waitServing(p, 2)
}

// TestSwapStopSignal: swap --stop-signal USR2 --kill-mode main signals the
// old instance's main process only, with USR2.
func TestSwapStopSignal(t *testing.T) {
	e := newEnv(t)
	script, out := writeSignalScript(t, e.dir)
	e.setEnv("1", "SIGNAL_OUT="+out)
	pidfile := filepath.Join(e.dir, "app.pid")
	var pids []int
	t.Cleanup(func() {
		for _, pid := range pids {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
		}
	})
	for gen := 1; gen <= 2; gen++ {
		code, _, stderr := cli("swap", "--pidfile", pidfile, "--env-file", e.envFile, "--notify=false",
			"--health", "exec:true", "--stop-signal", "USR2", "--kill-mode", "main", "--drain-timeout", "5s", "--", script)
		if f := readPidfile(t, pidfile); len(f) > 0 {
			pid, _ := strconv.Atoi(f[0])
			pids = append(pids, pid)
		}
		if code != 0 {
			t.Fatalf("swap %d: exit %d: %s", gen, code, stderr)
		}
		if gen == 2 {
			if !strings.Contains(stderr, "stop signal sent") || !strings.Contains(stderr, "kill_mode=main") {
				t.Errorf("swap did not log the stop signal:\n%s", stderr)
			}
		}
	}
	// The old instance was a child of the first swap, which returned: in
	// this test process nobody reaps it, so it stays a zombie and
	// kill(-pgid, 0) still succeeds. Wait for no live member instead.
	waitFor(t, 5*time.Second, "no live process in the old group", func() bool {
		return len(proc.GroupMembers(pids[0])) == 0
	})
	main, _ := os.ReadFile(filepath.Join(out, "1-main"))
	child, _ := os.ReadFile(filepath.Join(out, "1-child"))
	if want := fmt.Sprintf("main %d\n", pids[0]); string(main) != want {
		t.Errorf("main process recorded %q, want %q", main, want)
	}
	if len(child) != 0 {
		t.Errorf("child got USR2 with --kill-mode main: %q", child)
	}
}
