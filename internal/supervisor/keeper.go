//go:build linux

package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/changeover-dev/changeover/internal/proc"
)

// The drain keeper: who enforces a drain deadline after swap has exited.
//
// swap returns at the handover, once the old generation listens no more
// (as run's reload does), while the old instance may still drain for up to
// --drain-timeout: a long request, a WebSocket, idle keep-alive
// connections. Someone must SIGKILL its process group at the deadline if
// it overstays, and swap has gone by then. Before it exits, swap starts a
// keeper: this executable again (/proc/self/exe, so a binary replaced by
// the deploy does not matter), with the order (the pidfile, and each
// draining generation's PID, process group, start time and deadline, as
// the state file records them) as JSON in EnvKeeper. It runs in a session
// of its own, stdin on /dev/null and stdout and stderr appended to the
// instance log: it holds no descriptor of swap's (no pipe of a deploy
// script's $(...), no socket, no lock), and `ps` shows it as
// `changeover drain-keeper PIDFILE`.
//
// For each generation the keeper does what swap does with a draining
// generation the state file names (adoptRecorded, drainUntil): it is
// adopted only if /proc shows the recorded start time at the recorded
// PID, which leads its own process group (or, the leader gone, members of
// that group started after it); every signal goes through proc.Target,
// which decides at the moment of the signal whom it may reach. A reused
// PID, or a group already empty, gets nothing: the keeper says so and
// lets it go. Otherwise it waits until the group is empty or the deadline
// has passed, and then SIGKILLs what is left of the group, never before.
//
// When its generations are gone, the keeper takes the pidfile lock (for at
// most keeperLockWait: a swap holding it rewrites the state file itself)
// and removes them from the state file. Swap records the keeper beside
// each generation it watches (StateGen.KeeperPID): a later swap leaves a
// generation whose keeper still runs to it, and hands the others to a
// keeper of its own. A generation watched by two keepers (a swap killed
// after starting its keeper and before recording it) is harmless: both
// verify before signalling, they kill at the same deadline, and a SIGKILL
// to a group that is gone reaches nobody (proc.Target.Signal). If the
// keeper is killed, its generations are left to the next swap, as they
// are when a swap is killed during the drain.

// EnvKeeper marks a re-executed changeover as swap's drain keeper; its
// value is a KeeperOrder in JSON.
const EnvKeeper = "CHANGEOVER_INTERNAL_DRAIN_KEEPER"

// KeeperOrder is what swap hands its drain keeper.
type KeeperOrder struct {
	Pidfile     string     `json:"pidfile"`
	LogFormat   string     `json:"log_format,omitempty"` // text (default) or json
	LogLevel    slog.Level `json:"log_level,omitempty"`  // the least level logged (swap's --log-level)
	Generations []StateGen `json:"generations"`          // draining, each with its DrainDeadline
}

const (
	// keeperPoll is how often the keeper looks whether a group it watches
	// is empty; the kill itself comes at the deadline, not at a poll.
	keeperPoll = 200 * time.Millisecond
	// keeperLockWait bounds the keeper's wait for the pidfile lock.
	keeperLockWait = 10 * time.Second
	// keeperArg is the keeper's argv[1], for ps.
	keeperArg = "drain-keeper"
)

// keeperDispatched is set once MaybeKeep has found that this process is
// not a keeper: its main dispatches the keeper mode, so this executable
// re-run with EnvKeeper becomes a keeper. Swap starts a keeper only then;
// any other program (a test binary whose TestMain does not call
// MaybeKeep) would run itself whole again, so Swap keeps the deadlines
// itself there.
var keeperDispatched atomic.Bool

// MaybeKeep runs the drain keeper if this process was started as one
// (EnvKeeper set) and returns its exit code and true; otherwise 0 and
// false. Call it first thing in main (and in TestMain of tests that run
// swap), and exit with the code: Swap starts a keeper only in a process
// that has called it.
func MaybeKeep() (int, bool) {
	v, ok := os.LookupEnv(EnvKeeper)
	if !ok {
		keeperDispatched.Store(true)
		return 0, false
	}
	_ = os.Unsetenv(EnvKeeper)
	var order KeeperOrder
	err := json.Unmarshal([]byte(v), &order)
	log := keeperLogger(order, os.Stderr)
	if err != nil {
		log.Error("drain keeper: unreadable order; nothing signalled", KeyError, err)
		return 2, true
	}
	keep(order, log)
	return 0, true
}

// keeperLogger is the keeper's logger, in the order's format, to w.
func keeperLogger(order KeeperOrder, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: order.LogLevel}
	var h slog.Handler = slog.NewTextHandler(w, opts)
	if order.LogFormat == "json" {
		h = slog.NewJSONHandler(w, opts)
	}
	return slog.New(h).With("keeper_pid", os.Getpid())
}

// keep watches every generation of order to its end, then drops the gone
// ones from the state file.
func keep(order KeeperOrder, log *slog.Logger) {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		gone []StateGen
	)
	for _, g := range order.Generations {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if keepGeneration(g, log) {
				mu.Lock()
				gone = append(gone, g)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if order.Pidfile != "" && len(gone) > 0 {
		dropFromState(order.Pidfile, gone, log)
	}
}

// keepGeneration waits until g's process group is empty or its drain
// deadline has passed, then SIGKILLs what is left, verified as swap
// verifies a recorded generation. It reports whether g is gone (exited,
// killed, or its PID now another process); false: g was never one the
// keeper could signal (it is left in the state file).
func keepGeneration(g StateGen, log *slog.Logger) bool {
	if g.PGID != g.PID || g.PGID == unix.Getpgrp() || g.StartTicks == 0 {
		log.Warn("drain keeper: the order names a process that does not lead a group of its own, or no start time; never signalling it",
			KeyGeneration, g.Generation, KeyPID, g.PID, "pgid", g.PGID)
		return false
	}
	in := adoptRecorded(g.Generation, g.PID, g.PGID, g.StartTicks, g.LeaderSeenTicks, g.HealthAddr)
	if in == nil {
		why := "its process group is empty"
		if st, err := proc.ReadStat(g.PID); err == nil && st.StartTime != g.StartTicks {
			why = fmt.Sprintf("its PID is now another process (start time %d, recorded %d); never signalling it", st.StartTime, g.StartTicks)
		}
		log.Info("drain keeper: generation already gone: "+why, KeyGeneration, g.Generation, KeyPID, g.PID, "killed", false)
		return true
	}
	in.setState(StateDraining)
	in.setDrainDeadline(g.DrainDeadline)
	log.Info("drain keeper: watching a draining generation until its deadline", KeyGeneration, g.Generation, KeyPID, g.PID,
		"drain_deadline", g.DrainDeadline)
	start := time.Now()
	// The recorded deadline is wall-clock time; from here on it is kept
	// on the monotonic clock, so that a step of the system clock neither
	// brings the kill forward nor puts it off.
	deadline := start.Add(time.Until(g.DrainDeadline))
	killed := false
	for !in.groupEmpty() {
		wait := time.Until(deadline)
		if wait <= 0 {
			log.Warn("drain deadline passed: killing the process group", KeyGeneration, g.Generation, KeyPID, g.PID,
				"pids", in.target.Members(), "drain_deadline", g.DrainDeadline)
			killGroupAndWait(in)
			killed = true
			break
		}
		time.Sleep(min(wait, keeperPoll))
	}
	lvl := slog.LevelInfo
	if killed {
		lvl = slog.LevelWarn
	}
	log.Log(context.Background(), lvl, "drain keeper: generation gone", KeyGeneration, g.Generation, KeyPID, g.PID,
		"killed", killed, KeyDuration, time.Since(start).Round(time.Millisecond))
	return true
}

// dropFromState removes the generations of gone that the state file beside
// pidfile still names as draining (same generation, PID and start time),
// under the pidfile lock. Without the lock in keeperLockWait it leaves
// them: a swap holds the lock and rewrites the state file, and a gone
// generation is dropped by the next swap anyway (it signals only what it
// verifies).
func dropFromState(pidfile string, gone []StateGen, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), keeperLockWait)
	defer cancel()
	lock, err := lockPidfile(ctx, pidfile)
	if err != nil {
		log.Info("drain keeper: leaving the gone generations in the state file to the next swap", KeyError, err)
		return
	}
	defer lock.Close()
	defer unix.Flock(int(lock.Fd()), unix.LOCK_UN)
	st, err := loadState(SwapStatePath(pidfile))
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	if err != nil {
		log.Warn("drain keeper: not trusting the state file; leaving it as it is", KeyError, err)
		return
	}
	kept := slices.DeleteFunc(slices.Clone(st.Generations), func(g StateGen) bool {
		return g.State == StateDraining && slices.ContainsFunc(gone, func(o StateGen) bool {
			return o.Generation == g.Generation && o.PID == g.PID && o.StartTicks == g.StartTicks
		})
	})
	if len(kept) == len(st.Generations) {
		return
	}
	if err := writeSwapState(pidfile, kept); err != nil {
		log.Warn("drain keeper: cannot rewrite the state file", KeyError, err)
		return
	}
	log.Info("drain keeper: state file updated", "path", SwapStatePath(pidfile), "generations", len(kept))
}

// startKeeper starts the drain keeper for order (see above), its stdout
// and stderr appended to logf, and returns its PID and start time.
func startKeeper(order KeeperOrder, logf *os.File) (int, uint64, error) {
	if !keeperDispatched.Load() {
		return 0, 0, errors.New("this program does not run the drain keeper (its main does not call supervisor.MaybeKeep)")
	}
	b, err := json.Marshal(order)
	if err != nil {
		return 0, 0, fmt.Errorf("drain keeper order for %s: %w", order.Pidfile, err)
	}
	cmd := exec.Command("/proc/self/exe")
	cmd.Args = []string{os.Args[0], keeperArg, order.Pidfile}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, EnvKeeper+"=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, EnvKeeper+"="+string(b))
	cmd.Stdout, cmd.Stderr = logf, logf // stdin: /dev/null
	cmd.SysProcAttr = &unix.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, 0, fmt.Errorf("start the drain keeper (/proc/self/exe) for %s: %w", order.Pidfile, err)
	}
	pid := cmd.Process.Pid
	// Reaped here while this process lives (a test, a library caller);
	// once swap exits, init reaps it.
	go func() { _ = cmd.Wait() }()
	ticks, err := proc.StartTime(pid)
	if err != nil {
		return pid, 0, nil // it exited already (nothing to watch, or a failure it logged)
	}
	return pid, ticks, nil
}
