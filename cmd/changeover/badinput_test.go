//go:build linux

package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Bad input already covered elsewhere: TestUsageAndExitCodes (unknown
// command and flag, bad durations, bad --log-format, bad or empty probe, a
// missing COMMAND, nothing after --, swap without --pidfile, an
// unreachable control socket), TestSwap (garbage and empty swap pidfile:
// exit 2, nothing started), TestSwapReusedPID (a pidfile naming a PID that
// now belongs to an unrelated process: never signalled), TestControlSocket
// (a socket held by a live supervisor: exit 1 naming it), TestReloadRefusals
// (a probe on the shared port; a new version that does not listen where the
// old one does: exit 4), TestAdoptAfterSupervisorKilled (a socket left by a
// killed supervisor is reused). The tests below fill the gaps.

// TestBadInputFlags: each bad value is named in the error, with exit 2
// (usage) or 1 (a path that cannot be used), and no instance is started.
func TestBadInputFlags(t *testing.T) {
	e := newEnv(t)
	notExec := filepath.Join(e.dir, "server.txt")
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	fileDir := filepath.Join(e.dir, "plainfile")
	if err := os.WriteFile(fileDir, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	pidUnder := filepath.Join(fileDir, "sup.pid")
	run := func(flags ...string) []string {
		args := append([]string{"run", "--control", e.sock, "--ready-timeout", "2s"}, flags...)
		return args
	}
	tests := []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"negative crash limit", append(run("--crash-limit=-1"), "--", e.exe), 2, []string{"-1"}},
		{"no draining slot", append(run("--max-draining=0"), "--", e.exe), 2, []string{"--max-draining", "0"}},
		{"zero backoff", append(run("--restart-backoff", "0s"), "--", e.exe), 2, []string{`"0s"`}},
		{"bad debounce", append(run("--watch-debounce", "soon"), "--", e.exe), 2, []string{`"soon"`}},
		{"bad crash window", append(run("--crash-window", "1x"), "--", e.exe), 2, []string{`"1x"`}},
		{"malformed tcp probe", append(run("--health", "tcp:nonsense"), "--", e.exe), 2, []string{`"tcp:nonsense"`}},
		{"malformed http probe", append(run("--health", "http://[::1"), "--", e.exe), 2, []string{`"http://[::1"`}},
		{"malformed exec probe", append(run("--health", "exec:"), "--", e.exe), 2, []string{`"exec:"`}},
		{"swap zero drain", []string{"swap", "--pidfile", filepath.Join(e.dir, "p.pid"), "--drain-timeout", "0", "--", e.exe}, 2, []string{`"0"`}},
		{"reload negative timeout", []string{"reload", "--control", e.sock, "--timeout", "-5s"}, 2, []string{`"-5s"`}},
		{"command not executable", append(run(), "--", notExec), 1, []string{notExec, "not an executable file"}},
		{"command is a directory", append(run(), "--", e.dir), 1, []string{e.dir, "not an executable file"}},
		{"command not on PATH", append(run(), "--", "no-such-server-xyz"), 1, []string{"no-such-server-xyz"}},
		{"missing --dir", append(run("--dir", filepath.Join(e.dir, "nodir")), "--", e.exe), 1, []string{filepath.Join(e.dir, "nodir")}},
		{"missing --env-file", append(run("--env-file", filepath.Join(e.dir, "noenv")), "--", e.exe), 1, []string{filepath.Join(e.dir, "noenv")}},
		{"pidfile under a regular file", append(run("--pidfile", pidUnder), "--", e.exe), 1, []string{pidUnder}},
		{"control socket under a regular file", []string{"run", "--control", filepath.Join(fileDir, "c.sock"), "--", e.exe}, 1, []string{fileDir}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := cli(tt.args...)
			if code != tt.code {
				t.Errorf("exit code %d, want %d; stderr:\n%s", code, tt.code, stderr)
			}
			for _, w := range tt.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr does not name %q:\n%s", w, stderr)
				}
			}
		})
	}
	if n := len(e.helperPIDs()); n != 0 {
		t.Errorf("%d instances started by bad input", n)
	}
}

// TestBadInputWhileServing: bad input at reload time (COMMAND replaced by
// something that cannot run, a broken env file) fails the reload naming the
// value, and the serving instance is never touched.
func TestBadInputWhileServing(t *testing.T) {
	e := newEnv(t)
	// A control socket left behind by a killed supervisor is reused.
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: e.sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()
	server := filepath.Join(e.dir, "server")
	if err := os.Symlink(e.exe, server); err != nil {
		t.Fatal(err)
	}
	p := e.startCommand(server, "--ready-timeout", "20s")
	st := e.waitServing(p, 1)
	pid1 := servingPID(t, st)

	check := func(what string, wantCode int, want ...string) {
		t.Helper()
		code, _, stderr := cli("reload", "--control", e.sock)
		if code != wantCode {
			t.Errorf("%s: reload exit %d, want %d:\n%s", what, code, wantCode, stderr)
		}
		for _, w := range want {
			if !strings.Contains(stderr, w) {
				t.Errorf("%s: reload error does not name %q:\n%s", what, w, stderr)
			}
		}
		if st := e.waitServing(p, 1); servingPID(t, st) != pid1 {
			t.Errorf("%s: serving generation changed: %+v", what, st)
		}
		burst(t, e.addr, 10, "1", pid1)
	}

	// COMMAND replaced by a file without the execute bit.
	if err := os.Remove(server); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(server, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	check("non-executable COMMAND", 1, server, "not an executable file")
	// COMMAND removed.
	if err := os.Remove(server); err != nil {
		t.Fatal(err)
	}
	check("missing COMMAND", 1, server)
	if err := os.Symlink(e.exe, server); err != nil {
		t.Fatal(err)
	}
	// A broken env file.
	good, _ := os.ReadFile(e.envFile)
	if err := os.WriteFile(e.envFile, append(good, []byte("this is not an assignment\n")...), 0o644); err != nil {
		t.Fatal(err)
	}
	check("broken env file", 1, e.envFile, "line 5")
	if alive := e.aliveHelpers(); len(alive) != 1 || alive[0] != pid1 {
		t.Errorf("instances alive %v, want only generation 1", alive)
	}
}

// TestBadInputSwapPidfile: a swap pidfile that cannot be used (its
// directory is a regular file; it is a directory) exits 2 naming it, and
// neither the serving instance nor anything else is touched.
func TestBadInputSwapPidfile(t *testing.T) {
	e := newEnv(t)
	good := filepath.Join(e.dir, "app.pid")
	if code, _, stderr := cli("swap", "--pidfile", good, "--env-file", e.envFile, "--drain-timeout", "2s", "--", e.exe); code != 0 {
		t.Fatalf("first swap: exit %d: %s", code, stderr)
	}
	serving := e.aliveHelpers()
	fileDir := filepath.Join(e.dir, "plainfile")
	if err := os.WriteFile(fileDir, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	isDir := filepath.Join(e.dir, "dir.pid")
	if err := os.Mkdir(isDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, pf := range []string{filepath.Join(fileDir, "app.pid"), isDir} {
		code, _, stderr := cli("swap", "--pidfile", pf, "--env-file", e.envFile, "--drain-timeout", "2s", "--", e.exe)
		if code != exitUsage || !strings.Contains(stderr, pf) || !strings.Contains(stderr, "nothing touched") {
			t.Errorf("swap --pidfile %s: exit %d, want 2 naming it:\n%s", pf, code, stderr)
		}
	}
	if alive := e.aliveHelpers(); len(alive) != 1 || alive[0] != serving[0] || len(e.helperPIDs()) != 1 {
		t.Errorf("instances %v (started %v), want only the first swap's %v", alive, e.helperPIDs(), serving)
	}
	if got := get(e.addr); !strings.HasPrefix(got, "version=1 ") {
		t.Errorf("served %q", got)
	}
}

// TestBadInputPortWithoutReuseport: a port held by a process without
// SO_REUSEPORT makes generation 1 (a server on package runner) fail with
// exit 3; the message names the address and says "without SO_REUSEPORT".
func TestBadInputPortWithoutReuseport(t *testing.T) {
	e := newEnv(t)
	ln, err := listenPlain(e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	e.setFault(faultOK, "1")
	p := e.startInProcess("--ready-timeout", "20s")
	err = p.wait(t, 15*time.Second)
	if code := exitCode(err); code != exitExited || err == nil ||
		!strings.Contains(err.Error(), e.addr) || !strings.Contains(err.Error(), "without SO_REUSEPORT") {
		t.Errorf("run: exit %d: %v; want 3 naming %s and \"without SO_REUSEPORT\"", code, err, e.addr)
	}
}
