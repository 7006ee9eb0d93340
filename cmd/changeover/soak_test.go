//go:build linux

package main

import (
	"bufio"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
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

// TestSoakReloads reloads the helper server many times under the in-process
// supervisor; its open fds and goroutines after reload 10 and after the last
// are equal, and its RSS grows by less than 20%.
func TestSoakReloads(t *testing.T) {
	if testing.Short() {
		t.Skip("soak: 100 reloads take ~10-20s; skipped with -short")
	}
	n := 100
	v := os.Getenv(envSoakReloads)
	if raceEnabled && v == "" {
		t.Skip("soak: measures resources, not races, and -race makes each reload ~1s; skipped with -race unless " + envSoakReloads + " is set")
	}
	if v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 11 {
			t.Fatalf("%s=%q: want a number above 10", envSoakReloads, v)
		}
	}
	e := newEnv(t)
	p := e.startInProcess("--ready-timeout", "10s", "--drain-timeout", "5s")
	e.waitServing(p, 1)
	start := time.Now()
	var at10 supervisorUsage
	for i := 1; i <= n; i++ {
		code, _, stderr := cli("reload", "--control", e.sock)
		if code != 0 {
			t.Fatalf("reload %d: exit %d: %s", i, code, stderr)
		}
		switch {
		case i == 10:
			at10 = settledUsage(t, nil)
			t.Logf("SOAK after reload %d: fds=%d goroutines=%d rss=%dkB (%v)", i, at10.fds, at10.goroutines, at10.rssKB, time.Since(start).Round(time.Millisecond))
		case i == n || i%100 == 0:
			u := settledUsage(t, &at10)
			t.Logf("SOAK after reload %d: fds=%d goroutines=%d rss=%dkB (%v)", i, u.fds, u.goroutines, u.rssKB, time.Since(start).Round(time.Millisecond))
			if i == n {
				if u.fds != at10.fds {
					t.Errorf("open fds: %d after reload 10, %d after reload %d", at10.fds, u.fds, n)
				}
				if u.goroutines > at10.goroutines {
					t.Errorf("goroutines: %d after reload 10, %d after reload %d", at10.goroutines, u.goroutines, n)
				}
				if float64(u.rssKB) > 1.2*float64(at10.rssKB) {
					t.Errorf("RSS: %dkB after reload 10, %dkB after reload %d (> +20%%)", at10.rssKB, u.rssKB, n)
				}
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
