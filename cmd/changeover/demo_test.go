package main

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var (
	demoOnce sync.Once
	demoPath string
	demoErr  error
	demoOut  []byte
)

// buildDemo builds cmd/demo once per test binary.
func buildDemo(t *testing.T) string {
	t.Helper()
	demoOnce.Do(func() {
		dir, err := osMkdirTemp()
		if err != nil {
			demoErr = err
			return
		}
		demoPath = filepath.Join(dir, "demo")
		gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
		cmd := exec.Command(gobin, "build", "-o", demoPath, "../demo")
		demoOut, demoErr = cmd.CombinedOutput()
	})
	if demoErr != nil {
		t.Fatalf("build cmd/demo: %v\n%s", demoErr, demoOut)
	}
	return demoPath
}

// TestDemoZeroDowntime supervises the real demo server (package runner) with
// no probe flag, reloads it under a request loop and counts failed requests.
func TestDemoZeroDowntime(t *testing.T) {
	demo := buildDemo(t)
	e := newEnv(t)
	ctx, cancel := contextWithCancel()
	p := &inProcess{errc: make(chan error, 1), cancel: cancel, stderr: &syncBuffer{}, stdout: &syncBuffer{}}
	args := []string{"run", "--control", e.sock, "--drain-timeout", "5s", "--", demo, "-addr", e.addr, "-version", "v1"}
	go func() { p.errc <- run(ctx, args, p.stdout, p.stderr) }()
	t.Cleanup(func() { cancel(); p.wait(t, 20*time.Second) })
	st := e.waitServing(p, 1)
	t.Cleanup(func() { killGroups(e, p) })
	if got := get(e.addr); !strings.HasPrefix(got, "version=v1 ") {
		t.Fatalf("demo served %q", got)
	}

	var ok, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			deadline := time.Now().Add(30 * time.Second)
			for i := 0; i < 100000 && time.Now().Before(deadline); i++ {
				select {
				case <-stop:
					return
				default:
				}
				if strings.HasPrefix(get(e.addr), "version=v1 ") {
					ok.Add(1)
				} else {
					failed.Add(1)
				}
			}
		}()
	}
	for gen := 2; gen <= 4; gen++ {
		oldPID := st.Generations[len(st.Generations)-1].PID
		start := time.Now()
		code, out, stderr := cli("reload", "--control", e.sock)
		if code != 0 {
			t.Fatalf("reload to generation %d: exit %d: %s\n%s", gen, code, stderr, p.stderr.String())
		}
		t.Logf("reload to generation %d (reload command until the old instance exited): %v; %s",
			gen, time.Since(start).Round(time.Millisecond), strings.TrimSpace(out))
		st = e.waitServing(p, gen)
		for _, g := range st.Generations {
			if g.PID == oldPID && g.State != "exited" {
				t.Errorf("old generation still %s after reload", g.State)
			}
		}
	}
	close(stop)
	wg.Wait()
	t.Logf("requests during 3 reloads: %d ok, %d failed", ok.Load(), failed.Load())
	if failed.Load() != 0 || ok.Load() == 0 {
		t.Errorf("%d requests failed (%d ok)", failed.Load(), ok.Load())
	}
}
