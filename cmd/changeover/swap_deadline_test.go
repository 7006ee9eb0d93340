//go:build linux

package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/changeover-dev/changeover/internal/proc"
	"github.com/changeover-dev/changeover/internal/supervisor"
)

// TestSwapDrainDeadlineOwner (issue 14): who kills an old instance that
// overstays its drain deadline under swap, which has no resident process.
//
//   - swap itself, while the port is not handed over: an old instance that
//     ignores SIGTERM keeps its listeners, so swap stays and kills its
//     group at --drain-timeout after the stop signal (never before);
//   - swap's drain keeper, once it is: swap returns when the old instance
//     listens no more, and the keeper it leaves kills the group at the
//     deadline if it is still there (TestSwapKeeperKillsAtDeadline,
//     TestSwapReturnsAtHandover, TestSwapKeeperNeverSignalsAStranger);
//   - if swap is killed during the handover, before it started a keeper,
//     the state file beside the pidfile still names the old instance as
//     draining with its deadline, and nothing kills it until the next
//     swap, which kills it at that recorded deadline (never before), and
//     retires the instance the dead swap started.
//
// Only the generations the state file names are signalled: the helpers
// that remain are the serving generation's.
func TestSwapDrainDeadlineOwner(t *testing.T) {
	e := newEnv(t)
	pidfile := filepath.Join(e.dir, "app.pid")
	const drain = 2 * time.Second
	swapArgs := func() []string {
		return []string{"swap", "--pidfile", pidfile, "--env-file", e.envFile, "--ready-timeout", "20s",
			"--drain-timeout", drain.String(), "--", e.exe}
	}
	swap := func(what string) string {
		t.Helper()
		code, _, stderr := cli(swapArgs()...)
		if code != 0 {
			t.Fatalf("%s: exit %d: %s", what, code, stderr)
		}
		return stderr
	}
	pidOf := func() int {
		t.Helper()
		pid, err := strconv.Atoi(readPidfile(t, pidfile)[0])
		if err != nil {
			t.Fatal(err)
		}
		return pid
	}

	// Generation 1 ignores SIGTERM: swap kills it at the deadline.
	e.setEnv("1", envMode+"=ignore-term")
	swap("first swap")
	gen1 := pidOf()
	ticks1, _ := proc.StartTime(gen1)
	e.setEnv("2", envMode+"=ignore-term")
	start := time.Now()
	stderr := swap("second swap")
	took := time.Since(start)
	if took < drain {
		t.Errorf("swap returned after %v, before the drain deadline (%v) of an old instance that ignores SIGTERM", took, drain)
	}
	if proc.Alive(gen1, ticks1) {
		t.Errorf("generation 1 (pid %d) still runs after the swap that retired it", gen1)
	}
	if !strings.Contains(stderr, "killed=true") {
		t.Errorf("the kill at the deadline is not logged:\n%s", stderr)
	}
	gen2 := pidOf()
	ticks2, _ := proc.StartTime(gen2)

	// The third swap is killed during generation 2's drain: generation 2
	// overstays, and nothing kills it until the next swap.
	e.setEnv("3")
	b := e.binary(swapArgs()...)
	var deadline time.Time
	waitFor(t, 20*time.Second, "the third swap's pidfile naming generation 3, its state file generation 2 as draining", func() bool {
		if f, err := os.ReadFile(pidfile); err != nil || strings.TrimSpace(string(f)) == strconv.Itoa(gen2) {
			return false // the state file is written first, then the pidfile
		}
		raw, err := os.ReadFile(supervisor.SwapStatePath(pidfile))
		if err != nil {
			return false
		}
		var st supervisor.StateFile
		if json.Unmarshal(raw, &st) != nil {
			return false
		}
		for _, g := range st.Generations {
			if g.PID == gen2 && g.State == supervisor.StateDraining {
				deadline = g.DrainDeadline
				return true
			}
		}
		return false
	})
	if err := syscall.Kill(-b.cmd.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	b.exitCode(t, 5*time.Second)
	if !proc.Alive(gen2, ticks2) {
		t.Fatal("generation 2 is gone once the swap retiring it was killed: it ignores SIGTERM, nobody should have killed it yet")
	}

	// The fourth swap kills generation 2 at its recorded deadline, not
	// before, and retires generation 3.
	e.setEnv("4")
	stderr = swap("fourth swap")
	if proc.Alive(gen2, ticks2) {
		t.Errorf("generation 2 (pid %d) still runs after the next swap", gen2)
	}
	if now := time.Now(); now.Before(deadline) {
		t.Errorf("the fourth swap returned at %v, before generation 2's recorded deadline %v", now.Format(time.StampMilli), deadline.Format(time.StampMilli))
	}
	if !strings.Contains(stderr, "recorded generation retired") {
		t.Errorf("the retirement of the recorded generation is not logged:\n%s", stderr)
	}
	waitFor(t, 10*time.Second, "only generation 4 left", func() bool {
		alive := e.aliveHelpers()
		return len(alive) == 1 && alive[0] == pidOf()
	})
	if got := get(e.addr); !strings.HasPrefix(got, "version=4 pid="+strconv.Itoa(pidOf())) {
		t.Errorf("served %q, want version 4 from pid %d", got, pidOf())
	}
}
