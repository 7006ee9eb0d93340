//go:build linux

package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/changeover-dev/changeover/internal/proc"
	"github.com/changeover-dev/changeover/internal/supervisor"
)

func readPidfile(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(string(b))
}

// swapGeneration is the generation that the state file beside pidfile
// gives the PID in the pidfile.
func swapGeneration(t *testing.T, pidfile string) int {
	t.Helper()
	f := readPidfile(t, pidfile)
	b, err := os.ReadFile(supervisor.SwapStatePath(pidfile))
	if err != nil {
		t.Fatal(err)
	}
	var st supervisor.StateFile
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatalf("state file: %v", err)
	}
	for _, g := range st.Generations {
		if len(f) > 0 && strconv.Itoa(g.PID) == f[0] {
			return g.Generation
		}
	}
	t.Fatalf("state file %s does not name pid %v: %s", supervisor.SwapStatePath(pidfile), f, b)
	return 0
}

func TestSwap(t *testing.T) {
	e := newEnv(t)
	pidfile := filepath.Join(e.dir, "app.pid")
	swap := func(flags ...string) (int, string) {
		args := append([]string{"swap", "--pidfile", pidfile, "--env-file", e.envFile, "--ready-timeout", "20s", "--drain-timeout", "5s"}, flags...)
		code, _, stderr := cli(append(args, "--", e.exe)...)
		return code, stderr
	}

	// First deploy.
	if code, stderr := swap(); code != 0 {
		t.Fatalf("first swap: exit %d: %s", code, stderr)
	}
	f := readPidfile(t, pidfile)
	if len(f) != 1 || swapGeneration(t, pidfile) != 1 {
		t.Fatalf("pidfile after first deploy: %q (generation %d)", f, swapGeneration(t, pidfile))
	}
	pid1, _ := strconv.Atoi(f[0])
	if got := get(e.addr); !strings.HasPrefix(got, "version=1 pid="+f[0]) {
		t.Fatalf("served %q, want version 1 from pid %s", got, f[0])
	}
	if sid, _ := unix.Getsid(pid1); sid != pid1 {
		t.Errorf("instance session %d, want its own (%d)", sid, pid1)
	}

	// Second deploy: the old one is retired.
	e.setEnv("2")
	if code, stderr := swap(); code != 0 {
		t.Fatalf("second swap: exit %d: %s", code, stderr)
	}
	f = readPidfile(t, pidfile)
	if swapGeneration(t, pidfile) != 2 || f[0] == strconv.Itoa(pid1) {
		t.Fatalf("pidfile after second deploy: %q", f)
	}
	// swap returned at the handover; the old instance ends its drain in
	// the background (a connection that sent nothing holds net/http's
	// Shutdown for up to 5 s).
	waitFor(t, 15*time.Second, "the old instance gone", func() bool { return !proc.Alive(pid1, 0) })
	if got := get(e.addr); !strings.HasPrefix(got, "version=2 pid="+f[0]) {
		t.Fatalf("served %q, want version 2 from pid %s", got, f[0])
	}

	// Failed deploy: exit 3, pidfile and old instance untouched.
	before, _ := os.ReadFile(pidfile)
	e.setEnv("3", envMode+"=exit")
	code, stderr := swap()
	if code != 3 || !strings.Contains(stderr, "exiting at start") {
		t.Errorf("failed swap: exit %d, want 3 with the instance's output: %s", code, stderr)
	}
	if after, _ := os.ReadFile(pidfile); string(after) != string(before) {
		t.Errorf("pidfile changed by a failed swap: %q -> %q", before, after)
	}
	if got := get(e.addr); !strings.HasPrefix(got, "version=2 ") {
		t.Errorf("after failed swap served %q", got)
	}
	// Not ready in time: exit 4.
	e.setEnv("3", envMode+"=never-ready")
	if code, stderr := swap("--ready-timeout", "500ms", "--notify=false", "--health", "http://{health_addr}/"); code != 4 {
		t.Errorf("never-ready swap: exit %d, want 4: %s", code, stderr)
	}
	if alive := e.aliveHelpers(); len(alive) != 1 {
		t.Errorf("helpers alive %v, want only generation 2", alive)
	}

	// Garbage pidfile: exit 2, nothing touched.
	if err := os.WriteFile(pidfile, []byte("garbage\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	n := len(e.helperPIDs())
	if code, stderr := swap(); code != 2 || !strings.Contains(stderr, "garbage") {
		t.Errorf("garbage pidfile: exit %d, want 2: %s", code, stderr)
	}
	if len(e.helperPIDs()) != n {
		t.Errorf("an instance was started despite a garbage pidfile")
	}
	if err := os.WriteFile(pidfile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _ := swap(); code != 2 {
		t.Errorf("empty pidfile: exit %d, want 2", code)
	}
}

func TestSwapReusedPID(t *testing.T) {
	e := newEnv(t)
	pidfile := filepath.Join(e.dir, "app.pid")
	// A live process whose PID is in the pidfile with another start time:
	// a reused PID that must never be signalled.
	bystander := exec.Command("sleep", "60")
	bystander.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := bystander.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan struct{})
	go func() { _ = bystander.Wait(); close(waited) }()
	t.Cleanup(func() {
		_ = syscall.Kill(-bystander.Process.Pid, syscall.SIGKILL)
		<-waited
	})
	stale := strconv.Itoa(bystander.Process.Pid) + " 12345 4 127.0.0.1:1\n"
	if err := os.WriteFile(pidfile, []byte(stale), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := cli("swap", "--pidfile", pidfile, "--env-file", e.envFile, "--drain-timeout", "1s", "--", e.exe)
	if code != 0 || !strings.Contains(stderr, "reused PID") {
		t.Fatalf("swap over a reused PID: exit %d: %s", code, stderr)
	}
	select {
	case <-waited:
		t.Fatal("the process with the reused PID was signalled")
	default:
	}
	if f := readPidfile(t, pidfile); f[0] == strconv.Itoa(bystander.Process.Pid) || swapGeneration(t, pidfile) != 5 {
		t.Errorf("pidfile %q", f)
	}
}

// TestSwapSerialised: two swaps on one pidfile at once both succeed, one
// after the other (flock), and leave exactly one instance serving.
func TestSwapSerialised(t *testing.T) {
	e := newEnv(t)
	pidfile := filepath.Join(e.dir, "app.pid")
	codes := make(chan int, 2)
	for range 2 {
		go func() {
			code, _, _ := cli("swap", "--pidfile", pidfile, "--env-file", e.envFile, "--drain-timeout", "5s", "--", e.exe)
			codes <- code
		}()
	}
	for range 2 {
		if c := <-codes; c != 0 {
			t.Errorf("swap exit %d", c)
		}
	}
	if f := readPidfile(t, pidfile); len(f) != 1 || swapGeneration(t, pidfile) != 2 {
		t.Errorf("pidfile %q, want generation 2", f)
	}
	waitFor(t, 5*time.Second, "one instance left", func() bool { return len(e.aliveHelpers()) == 1 })
}
