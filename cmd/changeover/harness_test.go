//go:build linux

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/changeover-dev/changeover/internal/control"
	"github.com/changeover-dev/changeover/internal/proc"
	"github.com/changeover-dev/changeover/internal/supervisor"
)

// syncBuffer is a goroutine-safe buffer for captured output.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitFor polls cond every 20ms until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// freeAddr returns a free 127.0.0.1 port.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

var httpClient = &http.Client{
	Timeout:   2 * time.Second,
	Transport: &http.Transport{DisableKeepAlives: true},
}

// get returns the body of GET http://addr/ or "" on error.
func get(addr string) string {
	resp, err := httpClient.Get("http://" + addr + "/")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// env is one test's world: a shared address, an env file for the helper
// server and a control socket.
type env struct {
	t       *testing.T
	dir     string
	addr    string
	envFile string
	pidDir  string
	sock    string
	exe     string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, dir: dir, addr: freeAddr(t), envFile: filepath.Join(dir, "env"),
		pidDir: filepath.Join(dir, "pids"), sock: filepath.Join(dir, "c.sock"), exe: exe}
	if err := os.Mkdir(e.pidDir, 0o755); err != nil {
		t.Fatal(err)
	}
	e.setEnv("1")
	t.Cleanup(e.killHelpers)
	return e
}

// setEnv rewrites the env file: version and extra KEY=VALUE lines.
func (e *env) setEnv(version string, kv ...string) {
	lines := []string{envHelper + "=server", envAddr + "=" + e.addr, envVersion + "=" + version, envPidDir + "=" + e.pidDir}
	lines = append(lines, kv...)
	if err := os.WriteFile(e.envFile, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		e.t.Fatal(err)
	}
}

// helperPIDs lists every helper server ever started in this test.
func (e *env) helperPIDs() []int {
	ents, _ := os.ReadDir(e.pidDir)
	var out []int
	for _, en := range ents {
		if pid, err := strconv.Atoi(en.Name()); err == nil {
			out = append(out, pid)
		}
	}
	return out
}

// aliveHelpers lists helper servers still running.
func (e *env) aliveHelpers() []int {
	var out []int
	for _, pid := range e.helperPIDs() {
		if st, err := proc.ReadStat(pid); err == nil && st.State != 'Z' {
			out = append(out, pid)
		}
	}
	return out
}

// killHelpers SIGKILLs the process group of every helper (each is its own
// group leader) and the helper itself, and the drain keepers of swaps.
func (e *env) killHelpers() {
	// The keepers first: a keeper that sees its group die rewrites the
	// state file, which would race t.TempDir's removal.
	killKeepers(e.dir)
	for _, pid := range e.helperPIDs() {
		if pid != syscall.Getpgrp() {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
		}
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// killKeepers SIGKILLs the drain keepers that the files in dir name (a
// keeper logs keeper_pid=N to the instance log, swap records it in F.state
// before it returns) and that still run as
// one: a session of their own, "drain-keeper" in their command line; and
// waits (up to 5 s) until they are gone, so that none writes in dir after.
func killKeepers(dir string) {
	type keeper struct {
		pid   int
		start uint64
	}
	var killed []keeper
	defer func() {
		for i := 0; i < 250; i++ {
			if !slices.ContainsFunc(killed, func(k keeper) bool { return proc.Alive(k.pid, k.start) }) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	ents, _ := os.ReadDir(dir)
	re := regexp.MustCompile(`keeper_pid"?[=:] *(\d+)`) // a log line, or F.state
	for _, en := range ents {
		if !en.Type().IsRegular() {
			continue
		}
		b, _ := os.ReadFile(filepath.Join(dir, en.Name()))
		for _, m := range re.FindAllSubmatch(b, -1) {
			pid, _ := strconv.Atoi(string(m[1]))
			st, err := proc.ReadStat(pid)
			if err != nil || st.PGID != pid || pid == syscall.Getpgrp() {
				continue
			}
			cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			if args := strings.Split(string(cmdline), "\x00"); len(args) > 1 && args[1] == "drain-keeper" {
				_ = syscall.Kill(-pid, syscall.SIGKILL)
				killed = append(killed, keeper{pid, st.StartTime})
			}
		}
	}
}

// runArgs builds "run" arguments for the helper server.
func (e *env) runArgs(flags ...string) []string {
	args := append([]string{"run", "--control", e.sock, "--env-file", e.envFile}, flags...)
	return append(args, "--", e.exe)
}

// inProcess runs "changeover run" in this process.
type inProcess struct {
	errc   chan error
	cancel context.CancelFunc
	stderr *syncBuffer
	stdout *syncBuffer
	err    error
	done   bool
}

func (e *env) startInProcess(flags ...string) *inProcess {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p := &inProcess{errc: make(chan error, 1), cancel: cancel, stderr: &syncBuffer{}, stdout: &syncBuffer{}}
	args := e.runArgs(flags...)
	go func() { p.errc <- run(ctx, args, p.stdout, p.stderr) }()
	e.t.Cleanup(func() {
		cancel()
		p.wait(e.t, 20*time.Second)
	})
	return p
}

// wait returns run's error, failing the test if it does not return in time.
func (p *inProcess) wait(t *testing.T, timeout time.Duration) error {
	t.Helper()
	if p.done {
		return p.err
	}
	select {
	case p.err = <-p.errc:
		p.done = true
		return p.err
	case <-time.After(timeout):
		t.Fatalf("run did not return within %v; stderr:\n%s", timeout, p.stderr.String())
	}
	return nil
}

// exited reports whether run has returned.
func (p *inProcess) exited() bool {
	if p.done {
		return true
	}
	select {
	case p.err = <-p.errc:
		p.done = true
		return true
	default:
		return false
	}
}

// status asks the supervisor for its status.
func (e *env) status() (supervisor.Status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := control.Call(ctx, e.sock, control.Request{Op: "status"})
	if err != nil {
		return supervisor.Status{}, err
	}
	var st supervisor.Status
	err = json.Unmarshal(resp.Body, &st)
	return st, err
}

// waitServing waits until generation gen serves, failing early if run exits.
func (e *env) waitServing(p *inProcess, gen int) supervisor.Status {
	e.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if p != nil && p.exited() {
			e.t.Fatalf("run returned early: %v\nstderr:\n%s", p.err, p.stderr.String())
		}
		st, err := e.status()
		if err == nil && st.Serving == gen && !st.Reloading {
			return st
		}
		if time.Now().After(deadline) {
			logs := ""
			if p != nil {
				logs = p.stderr.String()
			}
			e.t.Fatalf("generation %d not serving after 20s (status %+v, %v); run stderr:\n%s", gen, st, err, logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// cli runs a changeover client command in-process and returns its exit
// code, stdout and stderr.
func cli(args ...string) (int, string, string) {
	var out, errb syncBuffer
	err := run(context.Background(), args, &out, &errb)
	if err != nil {
		fmt.Fprintf(&errb, "changeover: %v\n", err)
	}
	return exitCode(err), out.String(), errb.String()
}

// binProc is this test binary running as the changeover command.
type binProc struct {
	cmd  *exec.Cmd
	out  fileOut
	done chan struct{}
}

// fileOut is output captured in a file: instances inherit it, and a pipe
// would keep cmd.Wait waiting for them.
type fileOut string

func (f fileOut) String() string {
	b, _ := os.ReadFile(string(f))
	return string(b)
}

// exitCode waits for the process and returns its exit code.
func (b *binProc) exitCode(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-b.done:
	case <-time.After(timeout):
		t.Fatalf("changeover did not exit within %v; output:\n%s", timeout, b.out.String())
	}
	return b.cmd.ProcessState.ExitCode()
}

// binary starts this test binary as the changeover command.
func (e *env) binary(args ...string) *binProc {
	e.t.Helper()
	cmd := exec.Command(e.exe, args...)
	cmd.Env = append(os.Environ(), envHelper+"=main")
	f, err := os.CreateTemp(e.dir, "out")
	if err != nil {
		e.t.Fatal(err)
	}
	defer f.Close()
	b := &binProc{cmd: cmd, out: fileOut(f.Name()), done: make(chan struct{})}
	cmd.Stderr, cmd.Stdout = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	go func() { _ = cmd.Wait(); close(b.done) }()
	e.t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		select {
		case <-b.done:
		case <-time.After(10 * time.Second):
		}
	})
	return b
}

// listenPlain listens on addr without SO_REUSEPORT.
// startGroup starts cmd, which leads a process group of its own (its
// SysProcAttr sets Setsid or Setpgid), and SIGKILLs that group and waits
// for cmd when the test ends. It returns a channel closed once cmd has
// exited.
func startGroup(t *testing.T, cmd *exec.Cmd) <-chan struct{} {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	})
	return done
}

func listenPlain(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }

func contextWithCancel() (context.Context, context.CancelFunc) {
	return context.WithCancel(context.Background())
}

// killGroups SIGKILLs the process groups of every generation the supervisor
// reports (for servers that do not write their PID to the env's pid dir).
func killGroups(e *env, p *inProcess) {
	st, err := e.status()
	if err != nil {
		return
	}
	for _, g := range st.Generations {
		if g.PGID > 1 && g.PGID != syscall.Getpgrp() {
			_ = syscall.Kill(-g.PGID, syscall.SIGKILL)
		}
	}
}

// startArgv is startInProcess with another command line than the test
// binary.
func (e *env) startArgv(argv []string, flags ...string) *inProcess {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p := &inProcess{errc: make(chan error, 1), cancel: cancel, stderr: &syncBuffer{}, stdout: &syncBuffer{}}
	args := append(append(append([]string{"run", "--control", e.sock, "--env-file", e.envFile}, flags...), "--"), argv...)
	go func() { p.errc <- run(ctx, args, p.stdout, p.stderr) }()
	e.t.Cleanup(func() {
		cancel()
		p.wait(e.t, 20*time.Second)
	})
	return p
}
