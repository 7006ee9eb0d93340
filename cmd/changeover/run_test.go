//go:build linux

package main

import (
	"encoding/json"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/changeover-dev/changeover/internal/supervisor"
)

func TestReloadViaControlSocket(t *testing.T) {
	e := newEnv(t)
	p := e.startInProcess("--ready-timeout", "8s", "--drain-timeout", "5s",
		"--check", `test "$HELPER_MODE" != badcheck`)
	st := e.waitServing(p, 1)
	if got := get(e.addr); !strings.HasPrefix(got, "version=1 ") {
		t.Fatalf("served %q, want version=1", got)
	}
	gen1 := st.Generations[0].PID

	// A good reload: 0, the new version serves, the old one is gone.
	e.setEnv("2")
	code, out, stderr := cli("reload", "--control", e.sock)
	if code != 0 {
		t.Fatalf("reload: exit %d; stderr:\n%s\nrun stderr:\n%s", code, stderr, p.stderr.String())
	}
	if !strings.Contains(out, "generation 2 took over") {
		t.Errorf("reload output %q", out)
	}
	if got := get(e.addr); !strings.HasPrefix(got, "version=2 ") {
		t.Fatalf("served %q after reload, want version=2", got)
	}
	waitFor(t, 5*time.Second, "generation 1 gone", func() bool { return syscall.Kill(gen1, 0) != nil })

	// Failed reloads keep version 2 serving.
	for _, tc := range []struct {
		mode string
		code int
		want string
	}{
		{"exit", 3, "exited before it was ready"},
		{"never-ready", 4, "not ready in time"},
		{"badcheck", 5, "check refused"},
	} {
		e.setEnv("bad", envMode+"="+tc.mode)
		code, _, stderr := cli("reload", "--control", e.sock)
		if code != tc.code || !strings.Contains(stderr, tc.want) {
			t.Errorf("reload with %s: exit %d, want %d; stderr:\n%s", tc.mode, code, tc.code, stderr)
		}
		if got := get(e.addr); !strings.HasPrefix(got, "version=2 ") {
			t.Errorf("after failed reload (%s): served %q, want version=2", tc.mode, got)
		}
	}
	if alive := e.aliveHelpers(); len(alive) != 1 {
		t.Errorf("%d helpers alive after failed reloads, want 1: %v", len(alive), alive)
	}

	// Status, text and JSON.
	code, out, _ = cli("status", "--control", e.sock)
	if code != 0 || !strings.Contains(out, "generation 2 serving") || !strings.Contains(out, "last reload:") {
		t.Errorf("status: exit %d:\n%s", code, out)
	}
	code, out, _ = cli("status", "--json", "--control", e.sock)
	var js supervisor.Status
	if err := json.Unmarshal([]byte(out), &js); code != 0 || err != nil || js.Serving != 2 || js.LastReload == nil || js.LastReload.OK {
		t.Errorf("status --json: exit %d, err %v:\n%s", code, err, out)
	}

	// Stop: run returns nil and no instance is left.
	code, _, stderr = cli("stop", "--control", e.sock)
	if code != 0 {
		t.Fatalf("stop: exit %d: %s", code, stderr)
	}
	if err := p.wait(t, 10*time.Second); err != nil {
		t.Fatalf("run after stop: %v", err)
	}
	if alive := e.aliveHelpers(); len(alive) != 0 {
		t.Errorf("instances left after stop: %v", alive)
	}
}

func TestReloadCoalescing(t *testing.T) {
	e := newEnv(t)
	e.setEnv("1", envReadyDelay+"=1s")
	p := e.startInProcess("--ready-timeout", "20s")
	e.waitServing(p, 1)

	first := make(chan int, 1)
	go func() { c, _, _ := cli("reload", "--control", e.sock); first <- c }()
	waitFor(t, 5*time.Second, "first reload running", func() bool {
		st, err := e.status()
		return err == nil && st.Reloading
	})
	// Three more while generation 2 starts: they coalesce into one reload
	// (generation 3) and all report its outcome.
	var wg sync.WaitGroup
	outs := make([]string, 3)
	codes := make([]int, 3)
	for i := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes[i], outs[i], _ = cli("reload", "--control", e.sock)
		}()
	}
	wg.Wait()
	if c := <-first; c != 0 {
		t.Errorf("first reload: exit %d", c)
	}
	for i := range 3 {
		if codes[i] != 0 || !strings.Contains(outs[i], "generation 3 took over") {
			t.Errorf("coalesced reload %d: exit %d, output %q", i, codes[i], outs[i])
		}
	}
	st := e.waitServing(p, 3)
	if n := len(e.helperPIDs()); n != 3 {
		t.Errorf("%d instances started, want 3 (generations %+v)", n, st.Generations)
	}
}

func TestGenerationOneNotReady(t *testing.T) {
	e := newEnv(t)
	// A plain listener (no SO_REUSEPORT) holds the port: the helper's bind fails.
	ln, err := listenPlain(e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	p := e.startInProcess("--ready-timeout", "20s")
	err = p.wait(t, 15*time.Second)
	if err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("run: %v; want the instance's error", err)
	}
	if code := exitCode(err); code != exitExited {
		t.Errorf("exit code %d, want %d", code, exitExited)
	}
}

// TestDrainDeadlineKills: an old instance that ignores SIGTERM is SIGKILLed
// with its group just after --drain-timeout, and the reload then succeeds.
func TestDrainDeadlineKills(t *testing.T) {
	e := newEnv(t)
	e.setEnv("1", envMode+"=ignore-term")
	p := e.startInProcess("--drain-timeout", "500ms")
	st := e.waitServing(p, 1)
	e.setEnv("2")
	start := time.Now()
	code, _, stderr := cli("reload", "--control", e.sock)
	took := time.Since(start)
	if code != 0 {
		t.Fatalf("reload: exit %d: %s", code, stderr)
	}
	if took < 500*time.Millisecond {
		t.Errorf("reload took %v, less than the drain timeout", took)
	}
	// Done when its listener is gone, by the SIGKILL: it is reaped then.
	waitFor(t, 5*time.Second, "old instance gone", func() bool { return syscall.Kill(st.Generations[0].PID, 0) != nil })
	// The reload is done when its listener is gone (with the SIGKILL); the
	// exit is logged once its group is empty.
	waitFor(t, 5*time.Second, "the kill logged", func() bool {
		logs := p.stderr.String()
		return strings.Contains(logs, "killed=true") && strings.Contains(logs, "signal killed")
	})
	checkKillTime(t, p.stderr.String(), 1, 500*time.Millisecond)
}
