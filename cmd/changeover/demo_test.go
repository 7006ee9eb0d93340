//go:build linux

package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/changeover-dev/changeover/internal/proc"
)

// buildDemo builds cmd/demo into a temporary directory of the test.
func buildDemo(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "demo")
	// go test puts its own GOROOT/bin first in PATH, so this is the go
	// command that runs the test (runtime.GOROOT is deprecated).
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go, to build cmd/demo: %v", err)
	}
	if out, err := exec.Command(gobin, "build", "-o", path, "../demo").CombinedOutput(); err != nil {
		t.Fatalf("build cmd/demo: %v\n%s", err, out)
	}
	return path
}

// TestDemoZeroDowntime supervises the real demo server (package runner) with
// no probe flag, reloads it under a request loop and counts failed requests.
// Each generation has its own version ($DEMO_VERSION from --env-file, read
// again at each reload); every answer must come from a generation that
// served, and every generation must have answered.
func TestDemoZeroDowntime(t *testing.T) {
	demo := buildDemo(t)
	e := newEnv(t)
	setVersion := func(v string) {
		if err := os.WriteFile(e.envFile, []byte("DEMO_VERSION="+v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	setVersion("v1")
	ctx, cancel := contextWithCancel()
	p := &inProcess{errc: make(chan error, 1), cancel: cancel, stderr: &syncBuffer{}, stdout: &syncBuffer{}}
	args := []string{"run", "--control", e.sock, "--env-file", e.envFile, "--drain-timeout", "5s", "--", demo, "-addr", e.addr}
	go func() { p.errc <- run(ctx, args, p.stdout, p.stderr) }()
	t.Cleanup(func() { cancel(); p.wait(t, 20*time.Second) })
	st := e.waitServing(p, 1)
	t.Cleanup(func() { killGroups(e, p) })
	if got := get(e.addr); !strings.HasPrefix(got, "version=v1 ") {
		t.Fatalf("demo served %q", got)
	}

	var failed atomic.Int64
	var mu sync.Mutex
	answers := map[string]int{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			deadline := time.Now().Add(60 * time.Second)
			for i := 0; i < 100000 && time.Now().Before(deadline); i++ {
				select {
				case <-stop:
					return
				default:
				}
				got := get(e.addr)
				if !strings.HasPrefix(got, "version=") {
					failed.Add(1)
					continue
				}
				mu.Lock()
				answers[got]++
				mu.Unlock()
			}
		}()
	}
	served := []string{answerOf("v1", servingPID(t, st))}
	waitAnswer := func(a string) {
		waitFor(t, 10*time.Second, "an answer "+a, func() bool {
			mu.Lock()
			defer mu.Unlock()
			return answers[a] > 0
		})
	}
	waitAnswer(served[0])
	for gen := 2; gen <= 4; gen++ {
		oldPID := st.Generations[len(st.Generations)-1].PID
		setVersion(fmt.Sprintf("v%d", gen))
		start := time.Now()
		code, out, stderr := cli("reload", "--control", e.sock)
		if code != 0 {
			t.Fatalf("reload to generation %d: exit %d: %s\n%s", gen, code, stderr, p.stderr.String())
		}
		t.Logf("reload to generation %d (reload command until the old instance's listeners closed): %v; %s",
			gen, time.Since(start).Round(time.Millisecond), strings.TrimSpace(out))
		st = e.waitServing(p, gen)
		// The reload is done at the handover: the old generation drains
		// in the background, and leaves.
		for _, g := range st.Generations {
			if g.PID == oldPID && g.State != "exited" && g.State != "draining" {
				t.Errorf("old generation %s after reload, want draining or exited", g.State)
			}
		}
		served = append(served, answerOf(fmt.Sprintf("v%d", gen), servingPID(t, st)))
		waitAnswer(served[len(served)-1])
		waitFor(t, 10*time.Second, "old generation exited", func() bool { return syscall.Kill(oldPID, 0) != nil })
	}
	close(stop)
	wg.Wait()
	t.Logf("requests during 3 reloads: %v answers, %d failed", answers, failed.Load())
	if failed.Load() != 0 {
		t.Errorf("%d requests failed", failed.Load())
	}
	for a, n := range answers {
		if !slices.Contains(served, a) {
			t.Errorf("%d requests answered %q, not by a generation that served (%q)", n, a, served)
		}
	}
	for _, a := range served {
		if answers[a] == 0 {
			t.Errorf("generation %q answered no request", a)
		}
	}
}

// TestDemoSwap deploys the real demo server twice with swap.
func TestDemoSwap(t *testing.T) {
	demo := buildDemo(t)
	e := newEnv(t)
	pidfile := filepath.Join(e.dir, "demo.pid")
	var pids []int
	t.Cleanup(func() {
		for _, pid := range pids {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
		}
	})
	for _, v := range []string{"v1", "v2"} {
		code, out, stderr := cli("swap", "--pidfile", pidfile, "--drain-timeout", "5s", "--", demo, "-addr", e.addr, "-version", v)
		if f := readPidfile(t, pidfile); len(f) > 0 {
			pid, _ := strconv.Atoi(f[0])
			pids = append(pids, pid)
		}
		if code != 0 {
			t.Fatalf("swap %s: exit %d: %s", v, code, stderr)
		}
		t.Logf("swap %s: %s", v, strings.TrimSpace(out))
		if got := get(e.addr); !strings.HasPrefix(got, "version="+v+" ") {
			t.Fatalf("after swap %s served %q", v, got)
		}
	}
	if proc.Alive(pids[0], 0) {
		t.Errorf("v1 (pid %d) still alive", pids[0])
	}
	if b, _ := os.ReadFile(filepath.Join(e.dir, "demo.log")); !strings.Contains(string(b), "version=v2") {
		t.Errorf("demo.log beside the pidfile lacks the instance's output:\n%s", b)
	}
}
