//go:build linux

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/changeover-dev/changeover/internal/proc"
)

// TestReloadRefusals: a probe aimed at the shared port and a new instance
// that does not listen where the old one does are refused; the old one
// keeps serving.
func TestReloadRefusals(t *testing.T) {
	e := newEnv(t)
	p := e.startInProcess("--health", "http://"+e.addr+"/", "--ready-timeout", "3s")
	e.waitServing(p, 1)
	e.setEnv("2")
	code, _, stderr := cli("reload", "--control", e.sock)
	if code != 1 || !strings.Contains(stderr, "would answer it") || !strings.Contains(stderr, e.addr) {
		t.Errorf("reload with a shared-port probe: exit %d, want 1 naming why: %s", code, stderr)
	}
	if got := get(e.addr); !strings.HasPrefix(got, "version=1 ") {
		t.Errorf("served %q, want version 1", got)
	}
	code, _, _ = cli("stop", "--control", e.sock)
	if code != 0 || p.wait(t, 10*time.Second) != nil {
		t.Fatal("stop failed")
	}

	e2 := newEnv(t)
	p2 := e2.startInProcess("--ready-timeout", "3s")
	e2.waitServing(p2, 1)
	other := freeAddr(t)
	e2.setEnv("2", envAddr+"="+other) // later line wins
	code, _, stderr = cli("reload", "--control", e2.sock)
	if code != 4 || !strings.Contains(stderr, "does not listen on "+e2.addr+", which generation 1 serves") {
		t.Errorf("reload to another port: exit %d, want 4: %s", code, stderr)
	}
	if got := get(e2.addr); !strings.HasPrefix(got, "version=1 ") {
		t.Errorf("served %q, want version 1", got)
	}
}

// TestControlSocket: created 0600 in a 0700 directory; a second supervisor
// with the same socket is refused naming it; a stale socket is reused.
func TestControlSocket(t *testing.T) {
	e := newEnv(t)
	e.sock = filepath.Join(e.dir, "rt", "changeover", "app.sock")
	p := e.startInProcess("--name", "app")
	e.waitServing(p, 1)
	for path, want := range map[string]os.FileMode{e.sock: 0o600, filepath.Dir(e.sock): 0o700} {
		fi, err := os.Stat(path)
		if err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v (%v)", path, fi.Mode().Perm(), want, err)
		}
	}
	code, _, stderr := cli(e.runArgs("--name", "app")...)
	if code != 1 || !strings.Contains(stderr, "in use") || !strings.Contains(stderr, e.sock) {
		t.Errorf("second supervisor: exit %d: %s", code, stderr)
	}
	// Found without --control or --name when it is the only one.
	t.Setenv("XDG_RUNTIME_DIR", filepath.Join(e.dir, "rt"))
	if code, out, stderr := cli("status"); code != 0 || !strings.Contains(out, "supervisor app") {
		t.Errorf("status without --control: exit %d: %s %s", code, out, stderr)
	}
	if code, out, _ := cli("status", "--name", "app"); code != 0 || !strings.Contains(out, "generation 1 serving") {
		t.Errorf("status --name: exit %d: %s", code, out)
	}
}

// TestAdoptAfterSupervisorKilled: the instances of a SIGKILLed supervisor
// keep serving; the next supervisor adopts the serving one and retires it
// through a normal handover.
func TestAdoptAfterSupervisorKilled(t *testing.T) {
	e := newEnv(t)
	b := e.binary(e.runArgs("--drain-timeout", "5s")...)
	st := e.waitServing(nil, 1)
	gen1 := st.Generations[0]
	_ = syscall.Kill(b.cmd.Process.Pid, syscall.SIGKILL)
	b.exitCode(t, 5*time.Second)
	if got := get(e.addr); !strings.HasPrefix(got, "version=1 ") {
		t.Fatalf("instance did not survive its supervisor: %q", got)
	}
	e.setEnv("2")
	b2 := e.binary(e.runArgs("--drain-timeout", "5s")...)
	st = e.waitServing(nil, 2)
	waitFor(t, 10*time.Second, "adopted generation 1 retired", func() bool { return !proc.Alive(gen1.PID, 0) })
	if got := get(e.addr); !strings.HasPrefix(got, "version=2 ") {
		t.Errorf("served %q, want version 2", got)
	}
	if stale, _ := filepath.Glob(filepath.Join(e.dir, fmt.Sprintf("notify-%d-*.sock", b.cmd.Process.Pid))); len(stale) != 0 {
		t.Errorf("stale notify sockets of the killed supervisor left: %v", stale)
	}
	if !strings.Contains(b2.out.String(), "adopted") {
		t.Errorf("adoption not logged:\n%s", b2.out.String())
	}
	_ = b2.cmd.Process.Signal(syscall.SIGTERM)
	if code := b2.exitCode(t, 10*time.Second); code != 0 {
		t.Errorf("exit %d", code)
	}
	if alive := e.aliveHelpers(); len(alive) != 0 {
		t.Errorf("instances left: %v", alive)
	}
}

// TestWatchSymlinkFlip: with --watch, flipping a "current" symlink to another
// release reloads by itself, with that release's env file, working directory
// and binary (COMMAND relative to --dir).
func TestWatchSymlinkFlip(t *testing.T) {
	e := newEnv(t)
	for _, v := range []string{"1", "2"} {
		rel := filepath.Join(e.dir, "releases", v)
		if err := os.MkdirAll(rel, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(e.exe, filepath.Join(rel, "server")); err != nil {
			t.Fatal(err)
		}
		e.setEnv(v)
		b, _ := os.ReadFile(e.envFile)
		if err := os.WriteFile(filepath.Join(rel, "env"), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	current := filepath.Join(e.dir, "current")
	if err := os.Symlink(filepath.Join(e.dir, "releases", "1"), current); err != nil {
		t.Fatal(err)
	}
	args := []string{"run", "--control", e.sock, "--watch", "--watch-debounce", "200ms",
		"--env-file", filepath.Join(current, "env"), "--dir", current, "--", "./server"}
	p := &inProcess{errc: make(chan error, 1), stderr: &syncBuffer{}, stdout: &syncBuffer{}}
	ctx, cancel := contextWithCancel()
	p.cancel = cancel
	go func() { p.errc <- run(ctx, args, p.stdout, p.stderr) }()
	t.Cleanup(func() { cancel(); p.wait(t, 20*time.Second) })
	e.waitServing(p, 1)
	if got := get(e.addr); !strings.HasPrefix(got, "version=1 ") {
		t.Fatalf("served %q", got)
	}
	tmp := current + ".new"
	if err := os.Symlink(filepath.Join(e.dir, "releases", "2"), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, current); err != nil {
		t.Fatal(err)
	}
	st := e.waitServing(p, 2)
	if got := get(e.addr); !strings.HasPrefix(got, "version=2 ") {
		t.Errorf("served %q after the flip, want version 2", got)
	}
	if cwd, err := os.Readlink("/proc/" + strconv.Itoa(st.Generations[len(st.Generations)-1].PID) + "/cwd"); err != nil || cwd != filepath.Join(e.dir, "releases", "2") {
		t.Errorf("generation 2 runs in %q (%v), want releases/2", cwd, err)
	}
}
