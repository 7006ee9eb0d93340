//go:build linux

package supervisor

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/changeover-dev/changeover/internal/proc"
)

// TestSwapRetiresLeaderlessGroup: an old instance whose leader has exited
// while its group still runs (a wrapper such as sh -c 'srv & sleep 2') is
// retired by the next swap, not taken for a first deploy. (Issue 11
// review: the server was left serving beside every later generation.)
func TestSwapRetiresLeaderlessGroup(t *testing.T) {
	pidfile := filepath.Join(t.TempDir(), "a.pid")
	cfg := sleepSwap(t, pidfile)
	cfg.Launch.Command, cfg.Launch.Args = "sh", []string{"-c", "sleep 60 & sleep 2"}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	first, err := Swap(ctx, cfg)
	if err != nil {
		t.Fatalf("first swap: %v", err)
	}
	var members []int
	for i := 0; i < 200; i++ {
		if st, err := proc.ReadStat(first.PID); err != nil || st.State == 'Z' {
			members = proc.GroupMembers(first.PID)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(members) != 1 {
		t.Fatalf("group %d after its leader exited: %v, want the sleep alone", first.PID, members)
	}
	t.Cleanup(func() { _ = syscallKill(members[0]) })
	memberTicks, _ := proc.StartTime(members[0])
	cfg.Launch.Command, cfg.Launch.Args = "sleep", []string{"60"}
	second, err := Swap(ctx, cfg)
	if err != nil {
		t.Fatalf("second swap: %v", err)
	}
	if second.OldPID != first.PID {
		t.Errorf("second swap retired pid %d, want the group of %d", second.OldPID, first.PID)
	}
	if proc.Alive(members[0], memberTicks) {
		t.Errorf("pid %d of the old group still runs after the second swap", members[0])
	}
}

// TestSwapRetiresDrainingFromState: generations that the state file records
// as draining (a swap SIGKILLed during the drain) are retired by the next
// swap: SIGKILLed if their deadline has passed, else at it. (Issue 11
// review: the next swap looked at the pidfile's PID only, and the draining
// generation was never retired.)
func TestSwapRetiresDrainingFromState(t *testing.T) {
	pidfile := filepath.Join(t.TempDir(), "a.pid")
	serving, servingTicks := startVictim(t)
	late, lateTicks := startVictim(t)
	draining, drainingTicks := startVictim(t)
	gen := func(g, pid int, ticks uint64, state string, deadline time.Time) StateGen {
		return StateGen{Generation: g, PID: pid, PGID: pid, StartTicks: ticks, State: state, DrainDeadline: deadline}
	}
	if err := writeSwapState(pidfile, []StateGen{
		gen(3, serving, servingTicks, StateServing, time.Time{}),
		gen(1, late, lateTicks, StateDraining, time.Now().Add(-time.Second)),
		gen(2, draining, drainingTicks, StateDraining, time.Now().Add(500*time.Millisecond)),
	}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pidfile, []byte(strconv.Itoa(serving)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := Swap(ctx, sleepSwap(t, pidfile))
	if err != nil {
		t.Fatalf("swap: %v", err)
	}
	if res.Generation != 4 || res.OldPID != serving {
		t.Errorf("swap = %+v, want generation 4 retiring pid %d", res, serving)
	}
	for _, p := range []struct {
		pid   int
		ticks uint64
	}{{serving, servingTicks}, {late, lateTicks}, {draining, drainingTicks}} {
		if proc.Alive(p.pid, p.ticks) {
			t.Errorf("pid %d named by the state file still runs after the swap", p.pid)
		}
	}
}

func syscallKill(pid int) error { return unix.Kill(pid, unix.SIGKILL) }

// TestSwapSendsAPendingStop (review 2): a swap killed during its cutover
// (the old generation already recorded as draining, its stop signal not
// sent yet) left it serving; the next swap let it "drain" to its deadline
// and then SIGKILLed it while it still listened, resetting what it had
// queued. The state file says its stop is pending, and the next swap
// sends it.
func TestSwapSendsAPendingStop(t *testing.T) {
	pidfile := filepath.Join(t.TempDir(), "a.pid")
	serving, servingTicks := startVictim(t)
	unstopped, unstoppedTicks := startVictim(t)
	if err := writeSwapState(pidfile, []StateGen{
		{Generation: 2, PID: serving, PGID: serving, StartTicks: servingTicks, State: StateServing},
		{Generation: 1, PID: unstopped, PGID: unstopped, StartTicks: unstoppedTicks, State: StateDraining,
			DrainDeadline: time.Now().Add(20 * time.Second), StopPending: true, LeaderSeenTicks: proc.NowTicks()},
	}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pidfile, []byte(strconv.Itoa(serving)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	cfg := sleepSwap(t, pidfile)
	cfg.Log = slog.New(slog.NewTextHandler(&logs, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	if _, err := Swap(ctx, cfg); err != nil {
		t.Fatalf("swap: %v", err)
	}
	out := logs.String()
	if !strings.Contains(out, fmt.Sprintf("msg=\"stop signal sent\" generation=1 pid=%d", unstopped)) {
		t.Errorf("generation 1, whose stop was pending, got no stop signal; log:\n%s", out)
	}
	if strings.Contains(out, "generation=1") && strings.Contains(out, "killed=true") {
		t.Errorf("generation 1 was SIGKILLed rather than stopped; log:\n%s", out)
	}
}
