//go:build linux

package main

import (
	"bufio"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/changeover-dev/changeover/internal/supervisor"
)

// envSoakReloads sets the number of reloads of TestSoakReloads, e.g.
//
//	CHANGEOVER_SOAK_RELOADS=1000 go test -run TestSoakReloads -v -timeout 30m ./cmd/changeover/
const envSoakReloads = "CHANGEOVER_SOAK_RELOADS"

// supervisorUsage is what the in-process supervisor holds.
type supervisorUsage struct {
	fds, goroutines int
	rssKB           int64
}

func measureUsage(t *testing.T) supervisorUsage {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	u := supervisorUsage{fds: len(ents), goroutines: runtime.NumGoroutine()}
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			u.rssKB, _ = strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return u
}

// settledUsage measures once the goroutines and fds of the last reload
// (relay readers, control connections) are gone: until the counts are at
// most want's, or 3s.
func settledUsage(t *testing.T, want *supervisorUsage) supervisorUsage {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	var prev supervisorUsage
	for i := 0; ; i++ {
		runtime.GC()
		u := measureUsage(t)
		if want != nil && u.fds <= want.fds && u.goroutines <= want.goroutines {
			return u
		}
		if want == nil && i > 0 && u.fds == prev.fds && u.goroutines == prev.goroutines {
			return u
		}
		if time.Now().After(deadline) {
			return u
		}
		prev = u
		time.Sleep(50 * time.Millisecond)
	}
}

// soakRSSGrowth is the most RSS may grow from reload 10 to any later
// checkpoint: the bound docs/failure-modes.md states.
const soakRSSGrowth = 0.25

// TestSoakReloads reloads the helper server many times under the in-process
// supervisor and measures it every 10 reloads from reload 10 on: at every
// checkpoint its open fds and goroutines are no more than the fewest seen
// since reload 10, and its RSS has grown by less than soakRSSGrowth. 100 reloads by
// default; 30 with -race (which makes the supervisor slower, not leakier),
// unless CHANGEOVER_SOAK_RELOADS says.
func TestSoakReloads(t *testing.T) {
	n := 100
	if raceEnabled {
		n = 30
	}
	if testing.Short() {
		n = 20
	}
	if v := os.Getenv(envSoakReloads); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 20 {
			t.Fatalf("%s=%q: want a number of at least 20", envSoakReloads, v)
		}
	}
	e := newEnv(t)
	// A -race helper sleeps 1 s before it exits (atexit_sleep_ms), and so
	// does each instance's stderr relay (this binary, with our
	// environment), whose pipe the supervisor reads until the relay exits:
	// a reload is done at the handover, so that second would overlap the
	// next measurement.
	t.Setenv("GORACE", "atexit_sleep_ms=0")
	e.setEnv("1", "GORACE=atexit_sleep_ms=0")
	p := e.startInProcess("--ready-timeout", "10s", "--drain-timeout", "5s")
	e.waitServing(p, 1)
	start := time.Now()
	var at10 supervisorUsage
	for i := 1; i <= n; i++ {
		code, _, stderr := cli("reload", "--control", e.sock)
		if code != 0 {
			t.Fatalf("reload %d: exit %d: %s", i, code, stderr)
		}
		if i >= 10 && (i%10 == 0 || i == n) {
			// A reload is done at the handover: measure once the old
			// generation has left (it drains in the background).
			waitFor(t, 10*time.Second, "no generation draining", func() bool {
				st, err := e.status()
				return err == nil && !slices.ContainsFunc(st.Generations, func(g supervisor.GenStatus) bool {
					return g.State == supervisor.StateDraining
				})
			})
		}
		switch {
		case i == 10:
			at10 = settledUsage(t, nil)
			t.Logf("SOAK after reload %d: fds=%d goroutines=%d rss=%dkB (%v)", i, at10.fds, at10.goroutines, at10.rssKB, time.Since(start).Round(time.Millisecond))
		case i > 10 && (i%10 == 0 || i == n):
			u := settledUsage(t, &at10)
			if i%100 == 0 || i == n || testing.Verbose() {
				t.Logf("SOAK after reload %d: fds=%d goroutines=%d rss=%dkB (%v)", i, u.fds, u.goroutines, u.rssKB, time.Since(start).Round(time.Millisecond))
			}
			// A leak is growth. The baseline tightens to the lowest count
			// seen: an exited generation's pidfd and pipes may still be
			// closing when reload 10 is measured, and a later checkpoint
			// waits (settledUsage) until it is back at or under it.
			if u.fds > at10.fds {
				t.Errorf("open fds: at most %d from reload 10 on, %d after reload %d", at10.fds, u.fds, i)
			}
			if u.goroutines > at10.goroutines {
				t.Errorf("goroutines: at most %d from reload 10 on, %d after reload %d", at10.goroutines, u.goroutines, i)
			}
			at10.fds, at10.goroutines = min(at10.fds, u.fds), min(at10.goroutines, u.goroutines)
			if float64(u.rssKB) > (1+soakRSSGrowth)*float64(at10.rssKB) {
				t.Errorf("RSS: %dkB after reload 10, %dkB after reload %d (> +%.0f%%)", at10.rssKB, u.rssKB, i, 100*soakRSSGrowth)
			}
		}
	}
	st := e.waitServing(p, n+1)
	if alive := e.aliveHelpers(); len(alive) != 1 {
		t.Errorf("instances alive after %d reloads: %v", n, alive)
	}
	if len(st.Generations) > 8 {
		t.Errorf("status keeps %d generations", len(st.Generations))
	}
	t.Logf("SOAK %d reloads in %v", n, time.Since(start).Round(time.Millisecond))
}
