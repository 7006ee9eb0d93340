//go:build linux

package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Wrappers: COMMAND is often not the server itself but a process that starts
// it and does not exec it (sh run.sh, npm start). Such a wrapper exits at
// the first SIGTERM while the server drains in the same process group.
const (
	// envWrapper makes the test binary an npm-like wrapper: it starts
	// itself (without envWrapper) as a child in its own process group,
	// forwards SIGTERM and SIGINT to it and exits at once, without
	// waiting for the child.
	envWrapper = "CHANGEOVER_TEST_WRAPPER"
	// envHold makes the test binary hold fd 3 (a listener inherited from
	// a server that daemonized it) until killed, for at most a minute,
	// after writing its PID to HELPER_PIDDIR.
	envHold = "CHANGEOVER_TEST_HOLD"
)

func npmLikeWrapper() int {
	cmd := exec.Command(os.Args[0])
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, envWrapper+"=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "wrapper:", err)
		return 1
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case sig := <-sigs:
		_ = cmd.Process.Signal(sig)
		fmt.Fprintln(os.Stderr, "wrapper: forwarded", sig, "and exits without waiting")
		return 0
	case err := <-exited:
		if err != nil {
			return 1
		}
		return 0
	}
}

// startListenerHolder starts a child in a session of its own (setsid, as a
// daemonizing server does) that inherits ln.
func startListenerHolder(ln net.Listener) error {
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		return fmt.Errorf("listener file: %w", err)
	}
	defer f.Close()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), envHold+"=1")
	cmd.ExtraFiles = []*os.File{f}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start listener holder: %w", err)
	}
	go func() { _ = cmd.Wait() }()
	return nil
}

func holdInheritedListener() int {
	if dir := os.Getenv(envPidDir); dir != "" {
		_ = os.WriteFile(filepath.Join(dir, strconv.Itoa(os.Getpid())), nil, 0o644)
	}
	signal.Ignore(syscall.SIGTERM)
	time.Sleep(time.Minute)
	return 0
}

// wrapperServer returns the PID of the one fault server (not the wrapper)
// alive among the helpers, waiting until there is exactly one.
func (e *env) wrapperServer(t *testing.T, except ...int) int {
	t.Helper()
	var pid int
	waitFor(t, 10*time.Second, "one server process", func() bool {
		var alive []int
		for _, p := range e.aliveHelpers() {
			if !containsInt(except, p) {
				alive = append(alive, p)
			}
		}
		if len(alive) == 1 {
			pid = alive[0]
		}
		return len(alive) == 1
	})
	return pid
}

func containsInt(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// TestWrapperKeepsDrain: COMMAND is a wrapper that does not exec the
// server (sh -c 'server; true', an npm-like wrapper that exits at the first
// SIGTERM). The wrapper leaves at once; the server in its process group
// must still drain: a request in flight on the old generation finishes, and
// the drain is logged killed=false. The same wrapper around a server that
// ignores SIGTERM is SIGKILLed at the drain deadline, not before, and logged
// killed=true.
func TestWrapperKeepsDrain(t *testing.T) {
	shell := func(e *env) []string { return []string{"/bin/sh", "-c", e.exe + "; true"} }
	npm := func(e *env) []string { return []string{e.exe} }
	for _, tc := range []struct {
		name    string
		command func(*env) []string
		env     []string
	}{
		// With -race, a Go program sleeps 1 s before it exits (the race
		// runtime's atexit_sleep_ms): the wrapper must leave at once.
		{"sh-no-exec", shell, []string{"GORACE=atexit_sleep_ms=0"}},
		{"npm-like", npm, []string{"GORACE=atexit_sleep_ms=0", envWrapper + "=1"}},
	} {
		t.Run(tc.name+"/drains", func(t *testing.T) {
			e := newEnv(t)
			e.setFault(faultOK, "1", tc.env...)
			p := e.startArgv(tc.command(e), "--drain-timeout", "10s")
			st := e.waitServing(p, 1)
			wrapper1 := servingPID(t, st)
			server1 := e.wrapperServer(t)
			if server1 == wrapper1 {
				t.Fatalf("the server is the wrapper (pid %d): the command exec'd it", server1)
			}
			burst(t, e.addr, 10, "1", server1)
			slow := slowRequest(t, e.addr, 1500*time.Millisecond)
			accepted(t, e.addr)
			e.setFault(faultOK, "2", tc.env...)
			start := time.Now()
			if code, _, stderr := cli("reload", "--control", e.sock); code != 0 {
				t.Fatalf("reload: exit %d: %s\n%s", code, stderr, p.stderr.String())
			}
			took := time.Since(start)
			if got := <-slow; !strings.HasPrefix(got, fmt.Sprintf("version=1 pid=%d", server1)) {
				t.Errorf("request in flight on generation 1 answered %q: the server was killed during its drain (reload took %v)", got, took.Round(time.Millisecond))
			}
			groupGone(t, st.Generations[0].PGID)
			// The reload is done at the handover; the exit is logged once
			// the group is seen empty.
			waitFor(t, 5*time.Second, "generation 1's exit logged", func() bool {
				return strings.Contains(p.stderr.String(), "msg=\"instance exited\" generation=1")
			})
			logs := p.stderr.String()
			if !strings.Contains(logs, "msg=\"instance exited\" generation=1") || !strings.Contains(logs, "killed=false") {
				t.Errorf("generation 1's drain not logged as a drain (killed=false):\n%s", logs)
			}
			st = e.waitServing(p, 2)
			burst(t, e.addr, 20, "2", e.wrapperServer(t, server1))
		})
		t.Run(tc.name+"/deadline", func(t *testing.T) {
			e := newEnv(t)
			e.setFault(faultIgnoreTerm, "1", tc.env...)
			const drain = time.Second
			p := e.startArgv(tc.command(e), "--drain-timeout", drain.String())
			st := e.waitServing(p, 1)
			server1 := e.wrapperServer(t)
			e.setFault(faultOK, "2", tc.env...)
			start := time.Now()
			if code, _, stderr := cli("reload", "--control", e.sock); code != 0 {
				t.Fatalf("reload: exit %d: %s", code, stderr)
			}
			if took := time.Since(start); took < drain {
				t.Errorf("reload took %v, less than the drain deadline %v", took.Round(time.Millisecond), drain)
			}
			// The drain itself (SIGTERM to the group gone), not the reload,
			// which includes generation 2's start. Logged once the group is
			// seen empty, which may follow the reload's answer.
			waitFor(t, 5*time.Second, "generation 1's exit logged", func() bool {
				return strings.Contains(p.stderr.String(), "msg=\"instance exited\" generation=1")
			})
			checkKillTime(t, p.stderr.String(), 1, drain)
			groupGone(t, st.Generations[0].PGID)
			if syscall.Kill(server1, 0) == nil {
				t.Errorf("server %d of generation 1 still alive", server1)
			}
			if logs := p.stderr.String(); !strings.Contains(logs, "killed=true") {
				t.Errorf("kill at the deadline not logged killed=true:\n%s", logs)
			}
		})
	}
}

// TestDaemonizedServerReported: a server that leaves its process group
// (setsid, as daemonizing servers do) is not tracked by the drain; when the
// group is empty but a process outside it still holds one of the group's
// listening sockets, the supervisor says so.
func TestDaemonizedServerReported(t *testing.T) {
	e := newEnv(t)
	e.setFault(faultDaemonize, "1")
	p := e.startInProcess("--drain-timeout", "3s")
	e.waitServing(p, 1)
	var holder int
	waitFor(t, 5*time.Second, "the setsid child", func() bool {
		for _, pid := range e.aliveHelpers() {
			if sid, _ := unix.Getsid(pid); sid == pid {
				holder = pid
			}
		}
		return holder != 0
	})
	e.setFault(faultOK, "2")
	if code, _, stderr := cli("reload", "--control", e.sock); code != 0 {
		t.Fatalf("reload: exit %d: %s", code, stderr)
	}
	want := fmt.Sprintf("pid=%d", holder)
	waitFor(t, 5*time.Second, "a log line about the untracked process", func() bool {
		logs := p.stderr.String()
		return strings.Contains(logs, "left its process group") && strings.Contains(logs, want)
	})
	_ = syscall.Kill(holder, syscall.SIGKILL)
}

// TestSwapWrapperGroup: swap retires the old instance by process group as
// run does: with a wrapper that does not exec the server, the server still
// drains (a request in flight finishes), and a server that ignores SIGTERM
// is SIGKILLed at the drain deadline with the rest of the group, not left
// running beside the new instance.
func TestSwapWrapperGroup(t *testing.T) {
	for _, tc := range []struct {
		name, mode string
		killed     bool
	}{
		{"drains", faultOK, false},
		{"deadline", faultIgnoreTerm, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			pidfile := filepath.Join(e.dir, "app.pid")
			e.setFault(tc.mode, "1", "GORACE=atexit_sleep_ms=0")
			swap := func() (int, string) {
				code, _, stderr := cli("swap", "--pidfile", pidfile, "--env-file", e.envFile, "--ready-timeout", "10s",
					"--drain-timeout", "2s", "--", "/bin/sh", "-c", e.exe+"; true")
				return code, stderr
			}
			if code, stderr := swap(); code != 0 {
				t.Fatalf("first swap: exit %d: %s", code, stderr)
			}
			server1 := e.wrapperServer(t)
			var slow <-chan string
			if !tc.killed {
				slow = slowRequest(t, e.addr, time.Second)
				accepted(t, e.addr)
			}
			e.setFault(faultOK, "2", "GORACE=atexit_sleep_ms=0")
			start := time.Now()
			code, stderr := swap()
			took := time.Since(start)
			if code != 0 {
				t.Fatalf("second swap: exit %d: %s", code, stderr)
			}
			if tc.killed && !strings.Contains(stderr, "killed=true") {
				t.Errorf("swap log lacks killed=true:\n%s", stderr)
			}
			if tc.killed {
				if took < 2*time.Second {
					t.Errorf("swap took %v, less than the 2 s drain deadline", took.Round(time.Millisecond))
				}
				checkKillTime(t, stderr, 1, 2*time.Second)
			}
			if slow != nil {
				if got := <-slow; !strings.HasPrefix(got, fmt.Sprintf("version=1 pid=%d", server1)) {
					t.Errorf("request in flight on the old server answered %q", got)
				}
			}
			waitFor(t, 5*time.Second, "the old server gone", func() bool { return syscall.Kill(server1, 0) != nil })
			if !tc.killed {
				// swap returned at the handover; the group ended its drain
				// after, on its own: swap's log or its drain keeper's (in
				// the instance log) says so.
				waitFor(t, 5*time.Second, "killed=false logged", func() bool {
					logs, _ := os.ReadFile(filepath.Join(e.dir, "app.log"))
					return regexp.MustCompile(`generation=1 .*killed=false`).MatchString(stderr + string(logs))
				})
			}
			burst(t, e.addr, 20, "2", e.wrapperServer(t, server1))
		})
	}
}

// killSlack is how long after the drain deadline a group may take to be
// SIGKILLed and found empty: the kill, the reaping and one poll, with room
// for a loaded machine.
const killSlack = 3 * time.Second

// checkKillTime finds the "instance exited" line of generation gen in logs
// and checks that its drain lasted the deadline and not more than killSlack
// longer: the kill comes at the deadline, not before, not much after.
func checkKillTime(t *testing.T, logs string, gen int, deadline time.Duration) {
	t.Helper()
	m := regexp.MustCompile(fmt.Sprintf(`msg="instance exited" generation=%d .*killed=true duration=(\S+)`, gen)).FindStringSubmatch(logs)
	if m == nil {
		t.Errorf("no kill of generation %d logged:\n%s", gen, logs)
		return
	}
	d, err := time.ParseDuration(m[1])
	if err != nil {
		t.Fatalf("duration %q: %v", m[1], err)
	}
	if d < deadline || d > deadline+killSlack {
		t.Errorf("generation %d killed %v after its stop signal, want between the deadline %v and %v", gen, d, deadline, deadline+killSlack)
	}
}
