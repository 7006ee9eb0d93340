//go:build linux

package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/changeover-dev/changeover/internal/private"
	"github.com/changeover-dev/changeover/internal/proc"
	"github.com/changeover-dev/changeover/internal/reaper"
)

// SwapConfig configures Swap.
type SwapConfig struct {
	// Pidfile holds the PID of the serving instance alone on one line, as
	// kill $(cat F), pgrep -F F and systemd's PIDFile= read it. What Swap
	// needs besides (start time, process group, generation, health
	// address) is in SwapStatePath(Pidfile).
	Pidfile      string
	LogFile      string // instance stdout and stderr (appended); default Pidfile with .log for .pid
	Launch       Launch // Stdout/Stderr/Relay/Setsid are set by Swap
	Probes       []string
	Notify       bool
	ReadyTimeout time.Duration
	// Takeover lets Swap retire the live process named by a pidfile that it
	// cannot verify as an instance it started (no state file beside it, as
	// with another tool's pidfile): it is signalled after a check that it
	// is alive and was not restarted since. Default false: such a pidfile
	// is refused, nothing touched.
	Takeover bool
	Log      *slog.Logger
	// LogFormat and LogLevel are the drain keeper's log format (see
	// keeper.go: text, the default, or json) and least level (as Log's).
	LogFormat string
	LogLevel  slog.Level
	// Steering is who steers the port at the handover, as Config.Steering:
	// SteeringSupervisor (default) through placeholders of Swap's own, for
	// the time of the handover, or SteeringKernel.
	Steering string
}

// SwapResult says what Swap did.
type SwapResult struct {
	Generation int
	PID        int
	OldPID     int  // 0 on a first deploy
	OldKilled  bool // SIGKILLed by Swap at its drain deadline (it never handed over)
	// OldDraining: the old instance still drains (its listeners gone)
	// when Swap returns, until OldDrainDeadline, watched by the drain
	// keeper KeeperPID (see keeper.go).
	OldDraining      bool
	OldDrainDeadline time.Time
	KeeperPID        int // 0: no keeper started
}

// SwapStatePath is the state file beside a swap pidfile: PIDFILE.state, a
// StateFile whose generations are the serving instance (and, during a
// handover, the draining one).
func SwapStatePath(pidfile string) string { return pidfile + ".state" }

// pidRecord is what a swap pidfile and its state file say.
type pidRecord struct {
	PID    int
	PGID   int    // recorded process group; 0: not recorded
	Ticks  uint64 // recorded start time; 0: not recorded (unverifiable)
	Seen   uint64 // when its leader was last verified alive (StateGen.LeaderSeenTicks)
	Gen    int
	Health string
	Legacy bool   // "PID STARTTIME [GEN [ADDR]]", written by releases before the state file
	Why    string // why the record cannot be verified (Ticks 0)
	// Others are the generations the state file names besides PID: one a
	// swap killed during its drain left there as draining, with its
	// deadline (or one it started and had not yet named in the pidfile).
	Others []StateGen
	MaxGen int // the highest generation the pidfile or state file names
}

// parsePidfile reads a swap pidfile: the PID alone (this release; the rest
// comes from the state file beside it), or the previous release's "PID
// STARTTIME [GENERATION [HEALTH_ADDR]]".
func parsePidfile(path string) (*pidRecord, error) {
	// Read as the state file is: a pidfile of another user, or one that
	// others can write, names nothing we may signal, whatever its format.
	b, err := private.ReadFileIn(path, private.DirOptions{Sticky: true})
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: read pidfile %s: %w; nothing touched", ErrUsage, path, err)
	}
	f := strings.Fields(string(b))
	bad := fmt.Errorf("%w: pidfile %s holds %q, want a PID (or the previous format \"PID STARTTIME [GENERATION [HEALTH_ADDR]]\"); nothing touched", ErrUsage, path, strings.TrimSpace(string(b)))
	if len(f) < 1 || len(f) > 4 {
		return nil, bad
	}
	r := pidRecord{Gen: 1}
	if r.PID, err = strconv.Atoi(f[0]); err != nil || r.PID <= 1 {
		return nil, bad
	}
	if len(f) == 1 {
		return &r, nil
	}
	// The previous release started every instance in a session of its
	// own, so its process group is its PID.
	r.Legacy, r.PGID = true, r.PID
	if r.Ticks, err = strconv.ParseUint(f[1], 10, 64); err != nil {
		return nil, bad
	}
	if r.Ticks == 0 {
		r.Why = "the pidfile records no start time"
	}
	if len(f) > 2 {
		if r.Gen, err = strconv.Atoi(f[2]); err != nil || r.Gen < 1 {
			return nil, bad
		}
	}
	if len(f) > 3 {
		r.Health = f[3]
	}
	return &r, nil
}

// readSwapRecord reads the pidfile and completes it from the state file
// beside it, if that file is trusted (see loadState) and names the same PID.
func readSwapRecord(pidfile string) (*pidRecord, error) {
	r, err := parsePidfile(pidfile)
	if r == nil || err != nil || r.Legacy {
		return r, err
	}
	statePath := SwapStatePath(pidfile)
	st, err := loadState(statePath)
	switch {
	case errors.Is(err, os.ErrNotExist):
		r.Why = "no state file " + statePath + " beside it: not written by changeover swap"
		return r, nil
	case err != nil:
		r.Why = err.Error()
		return r, nil
	}
	found := false
	for _, g := range st.Generations {
		r.MaxGen = max(r.MaxGen, g.Generation)
		if g.PID == r.PID && !found {
			found = true
			r.PGID, r.Ticks, r.Gen, r.Health, r.Seen = g.PGID, g.StartTicks, g.Generation, g.HealthAddr, g.LeaderSeenTicks
			if r.Ticks == 0 {
				r.Why = "its state records no start time"
			}
			continue
		}
		r.Others = append(r.Others, g)
	}
	if !found {
		r.Why = fmt.Sprintf("the state file %s does not name pid %d", statePath, r.PID)
	}
	return r, nil
}

// lockPidfile takes the flock on PIDFILE.lock (never through a symlink),
// waiting until it is free or ctx is done.
//
// The pidfile's directory must be the user's and writable by no one else,
// or sticky (as /tmp), where the pidfile, its state and its lock are each
// checked to be the user's: decided here, before anything starts, so a
// directory that fits the first deploy fits every later one.
func lockPidfile(ctx context.Context, pidfile string) (*os.File, error) {
	if err := private.CheckDir(filepath.Dir(pidfile), private.DirOptions{Sticky: true}); err != nil {
		return nil, fmt.Errorf("%w: pidfile %s: %w; nothing touched", ErrUsage, pidfile, err)
	}
	lock, err := os.OpenFile(pidfile+".lock", os.O_CREATE|os.O_RDWR|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("%w: lock for pidfile %s: %w; nothing touched", ErrUsage, pidfile, err)
	}
	if err := private.CheckFile(lock); err != nil {
		lock.Close()
		return nil, fmt.Errorf("%w: lock for pidfile %s: %w; nothing touched", ErrUsage, pidfile, err)
	}
	for {
		err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return lock, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			lock.Close()
			return nil, fmt.Errorf("lock %s: %w", lock.Name(), err)
		}
		select {
		case <-ctx.Done():
			lock.Close()
			return nil, fmt.Errorf("waiting for the lock %s (another swap runs): %w", lock.Name(), context.Cause(ctx))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Swap starts the command detached (own session, output to LogFile), waits
// until it is ready, writes it to the pidfile (its state beside it) and
// retires the process named there. Two Swaps on one pidfile are serialised
// by a flock on PIDFILE.lock.
//
// ctx cancels the deploy only until the pidfile names the new instance:
// before that, the new instance is killed with its process group and the
// pidfile and the old instance are left as they were (the error wraps
// ErrInterrupted); after it, Swap finishes the handover (the old instance
// drains and exits, or is killed at the drain deadline) whatever ctx says.
//
// The old process is signalled only if it is verified as the instance a
// swap started (start time and process group, from the state file or a
// pidfile of the previous format, match /proc), or if cfg.Takeover is set.
func Swap(ctx context.Context, cfg SwapConfig) (*SwapResult, error) {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	lock, err := lockPidfile(ctx, cfg.Pidfile)
	if err != nil {
		return nil, err
	}
	defer lock.Close()
	defer unix.Flock(int(lock.Fd()), unix.LOCK_UN)

	rec, err := readSwapRecord(cfg.Pidfile)
	if err != nil {
		return nil, err
	}
	probe, err := os.CreateTemp(filepath.Dir(cfg.Pidfile), "."+filepath.Base(cfg.Pidfile)+".tmp*")
	if err != nil {
		return nil, fmt.Errorf("%w: pidfile %s is not writable: %w; nothing touched", ErrUsage, cfg.Pidfile, err)
	}
	probe.Close()
	os.Remove(probe.Name())

	old, gen, err := swapOld(cfg, rec, log)
	if err != nil {
		return nil, err
	}
	others := swapOthers(cfg, rec, log)

	logPath := cfg.LogFile
	if logPath == "" {
		logPath = strings.TrimSuffix(cfg.Pidfile, ".pid") + ".log"
	}
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND|unix.O_NOFOLLOW, 0o644)
	if err != nil {
		return nil, fmt.Errorf("%w: open instance log %s: %w; nothing touched", ErrUsage, logPath, err)
	}
	defer lf.Close()
	offset, _ := lf.Seek(0, 2)

	l := cfg.Launch
	l.Stdout, l.Stderr, l.Relay, l.Setsid = lf, lf, nil, true
	if l.RuntimeDir == "" {
		l.RuntimeDir = filepath.Dir(cfg.Pidfile)
	}
	rp := reaper.New(log, false)
	defer rp.Close()
	s := New(Config{Launch: l, Probes: cfg.Probes, Notify: cfg.Notify, ReadyTimeout: cfg.ReadyTimeout, Log: log, Reaper: rp, Steering: cfg.Steering})
	defer s.steer.closeAll()
	if old != nil && cfg.Steering != SteeringKernel {
		s.steer.mu.Lock()
		s.steer.dark(gen, old)
		s.steer.mu.Unlock()
	}
	in, err := s.startReady(ctx, gen, old)
	if err != nil && ctx.Err() != nil {
		return nil, fmt.Errorf("%w before the new instance was ready: it was killed with its process group; %s and the old instance are untouched: %w", ErrInterrupted, cfg.Pidfile, context.Cause(ctx))
	}
	if err != nil {
		if tail := fileTail(logPath, offset, 5); tail != "" && !strings.Contains(err.Error(), "last stderr") {
			err = fmt.Errorf("%w; last lines of %s: %s", err, logPath, tail)
		}
		return nil, err
	}
	in.closeNotify()
	if ctx.Err() != nil {
		killGroupAndWait(in)
		return nil, fmt.Errorf("%w before the pidfile named the new instance: it was killed; %s and the old instance are untouched: %w", ErrInterrupted, cfg.Pidfile, context.Cause(ctx))
	}
	gens := []StateGen{swapGen(in, StateServing)}
	if old != nil {
		// Draining with its stop pending until the stop signal has gone
		// (the final state write): a swap killed during the cutover
		// leaves the next one to send it.
		draining := swapGen(old, StateDraining)
		draining.DrainDeadline, draining.StopPending = time.Now().Add(l.DrainTimeout), true
		gens = append(gens, draining)
	}
	for _, o := range others {
		if o.DrainDeadline().IsZero() {
			o.setDrainDeadline(time.Now().Add(l.DrainTimeout))
		}
		g := swapGen(o, StateDraining)
		g.DrainDeadline = o.DrainDeadline()
		if j := slices.IndexFunc(rec.Others, func(r StateGen) bool { return r.Generation == o.Gen && r.PID == o.PID }); j >= 0 {
			g.KeeperPID, g.KeeperStartTicks = rec.Others[j].KeeperPID, rec.Others[j].KeeperStartTicks
		}
		gens = append(gens, g)
	}
	// The state first: a pidfile must never name a PID that its state
	// file does not describe.
	err = writeSwapState(cfg.Pidfile, gens)
	if err == nil {
		err = writeFileAtomic(cfg.Pidfile, []byte(strconv.Itoa(in.PID)+"\n"), 0o644)
	}
	if err != nil {
		killGroupAndWait(in)
		return nil, fmt.Errorf("new instance killed: %w", err)
	}
	// From here on the handover is finished whatever ctx says.
	stopNote := context.AfterFunc(ctx, func() {
		log.Warn("interrupted after the pidfile named the new instance: finishing the handover",
			KeyGeneration, gen, KeyPID, in.PID, "pidfile", cfg.Pidfile)
	})
	defer stopNote()
	log.Info("generation ready", KeyGeneration, gen, KeyPID, in.PID, "pidfile", cfg.Pidfile)
	res := &SwapResult{Generation: gen, PID: in.PID}
	if old == nil && len(others) == 0 {
		return res, nil
	}
	// draining: the generations still draining once the port is handed
	// over (their listeners gone), for the drain keeper.
	var draining []*Instance
	if old != nil {
		res.OldPID = old.PID
		s.swapCutover(in, old, time.Now().Add(l.DrainTimeout))
		if old.PGID <= 0 {
			// Taken over without a process group of its own: signalled
			// by PID alone, and waited for here, as no keeper can
			// adopt it.
			start := time.Now()
			out := stopInstance(old, &l, l.DrainTimeout, nil, log)
			res.OldKilled = out.Killed
			logStopped(log, old, out, start)
		} else {
			// The drain deadline runs from the stop signal, and is on
			// disk before it: a swap killed from here on leaves it to
			// the next one.
			start := time.Now()
			deadline := start.Add(l.DrainTimeout)
			old.setDrainDeadline(deadline)
			gens[1].DrainDeadline = deadline
			if err := writeSwapState(cfg.Pidfile, gens); err != nil {
				log.Warn("cannot rewrite the state file", "path", SwapStatePath(cfg.Pidfile), KeyError, err)
			}
			out, gone := handOver(old, &l, deadline, true, log)
			res.OldKilled = out.Killed
			if gone {
				logStopped(log, old, out, start)
			} else {
				logUntracked(log, old, out.Untracked)
				draining = append(draining, old)
				res.OldDraining, res.OldDrainDeadline = true, deadline
			}
		}
		s.steer.mu.Lock()
		s.steer.compact()
		s.steer.mu.Unlock()
	}
	for _, o := range others {
		out, gone := handOver(o, &l, o.DrainDeadline(), o.State() != StateDraining, log)
		logUntracked(log, o, out.Untracked)
		if gone {
			log.Info("recorded generation retired", KeyGeneration, o.Gen, KeyPID, o.PID, "killed", out.Killed)
			continue
		}
		draining = append(draining, o)
	}
	final := []StateGen{gens[0]}
	if len(draining) > 0 {
		final = append(final, s.keepDraining(cfg, lf, rec.Others, draining, res)...)
	}
	if err := writeSwapState(cfg.Pidfile, final); err != nil {
		log.Warn("cannot rewrite the state file", "path", SwapStatePath(cfg.Pidfile), KeyError, err)
	}
	return res, nil
}

// handOver retires o: it sends the stop signal (if stop), then waits until
// no process of o's group listens on an address shared with SO_REUSEPORT
// (the port is handed over) or the group is empty, up to deadline. A group
// that still listens at the deadline never handed over: it is SIGKILLed.
// gone: the group is empty (exited, or killed); otherwise it drains on,
// listening no more.
func handOver(o *Instance, l *Launch, deadline time.Time, stop bool, log *slog.Logger) (out stopOutcome, gone bool) {
	sockets := o.listenersAtStop(time.Now())
	if stop {
		sendStop(o, l, log)
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	listenersGone(ctx, o)
	cancel()
	if !o.groupEmpty() && !time.Now().Before(deadline) {
		killGroupAndWait(o)
		out.Killed = true
	}
	out.Untracked = proc.SocketHolders(sockets, o.StartTicks)
	return out, out.Killed || o.groupEmpty()
}

// keepDraining hands the generations still draining after the handover to
// a drain keeper (see keeper.go), all but those whose keeper, recorded in
// the state file (recorded), still runs; it returns their entries for the
// state file, each naming its keeper. If the keeper cannot be started,
// Swap keeps their deadlines itself: it waits until each group is empty
// or SIGKILLs it at its deadline, and returns none.
func (s *Supervisor) keepDraining(cfg SwapConfig, logf *os.File, recorded []StateGen, draining []*Instance, res *SwapResult) []StateGen {
	log := s.log
	entries := make([]StateGen, len(draining))
	var order KeeperOrder
	var handed []int // indexes into entries
	for i, o := range draining {
		entries[i] = swapGen(o, StateDraining)
		entries[i].DrainDeadline = o.DrainDeadline()
		if j := slices.IndexFunc(recorded, func(g StateGen) bool {
			return g.Generation == o.Gen && g.PID == o.PID && g.StartTicks == o.StartTicks
		}); j >= 0 && recorded[j].keeperAlive() {
			entries[i].KeeperPID, entries[i].KeeperStartTicks = recorded[j].KeeperPID, recorded[j].KeeperStartTicks
			log.Info("a drain keeper started by an earlier swap watches this generation", KeyGeneration, o.Gen, KeyPID, o.PID,
				"keeper_pid", recorded[j].KeeperPID, "drain_deadline", o.DrainDeadline())
			continue
		}
		order.Generations = append(order.Generations, entries[i])
		handed = append(handed, i)
	}
	if len(handed) == 0 {
		return entries
	}
	order.Pidfile, order.LogFormat, order.LogLevel = cfg.Pidfile, cfg.LogFormat, cfg.LogLevel
	pid, ticks, err := startKeeper(order, logf)
	if err != nil {
		log.Warn("cannot start the drain keeper: swap waits for the draining generations itself", KeyError, err)
		for _, o := range draining {
			start := time.Now()
			killed := drainUntil(o, o.DrainDeadline())
			log.Log(context.Background(), logLevel(killed), "instance exited", KeyGeneration, o.Gen, KeyPID, o.PID,
				"killed", killed, KeyDuration, time.Since(start).Round(time.Millisecond))
			if o.PID == res.OldPID && res.OldDraining {
				res.OldDraining, res.OldKilled = false, killed
			}
		}
		return nil
	}
	res.KeeperPID = pid
	for _, i := range handed {
		entries[i].KeeperPID, entries[i].KeeperStartTicks = pid, ticks
		log.Info("handed over: the generation drains in the background; the drain keeper SIGKILLs its group at the deadline if it is still there",
			KeyGeneration, entries[i].Generation, KeyPID, entries[i].PID, "drain_deadline", entries[i].DrainDeadline, "keeper_pid", pid)
	}
	return entries
}

// logLevel is Warn for a kill, else Info.
func logLevel(killed bool) slog.Level {
	if killed {
		return slog.LevelWarn
	}
	return slog.LevelInfo
}

// swapOld decides what to do with the process the pidfile names: the
// instance to retire (nil: a first deploy) and the next generation number.
// A live process that cannot be verified is an error (nothing touched)
// unless cfg.Takeover.
func swapOld(cfg SwapConfig, rec *pidRecord, log *slog.Logger) (*Instance, int, error) {
	if rec == nil {
		return nil, 1, nil
	}
	gen := max(rec.Gen, rec.MaxGen) + 1
	st, err := proc.ReadStat(rec.PID)
	if err != nil || st.State == 'Z' || st.State == 'X' {
		// The leader has exited, but a wrapper (sh -c 'srv & ...') may
		// have left its server serving in the group: retire those of its
		// members that are ours (see proc.Target).
		if rec.Ticks != 0 && rec.PGID == rec.PID && rec.PGID != unix.Getpgrp() {
			if old := adoptRecorded(rec.Gen, rec.PID, rec.PGID, rec.Ticks, rec.Seen, rec.Health); old != nil {
				log.Warn("pidfile names a process that has exited, but its process group still runs: retiring the group",
					"pidfile", cfg.Pidfile, KeyPID, rec.PID, "pids", old.target.Members())
				return old, gen, nil
			}
		}
		log.Warn("pidfile names a process that is gone; first deploy", "pidfile", cfg.Pidfile, KeyPID, rec.PID)
		return nil, gen, nil
	}
	if rec.Ticks != 0 {
		if st.StartTime != rec.Ticks {
			log.Warn("pidfile names a reused PID (start time differs); not signalling it; first deploy",
				"pidfile", cfg.Pidfile, KeyPID, rec.PID, "want_start", rec.Ticks, "have_start", st.StartTime)
			return nil, gen, nil
		}
		if err := proc.Verify(rec.PID, rec.PGID, rec.Ticks); err != nil {
			rec.Why = err.Error()
		} else {
			if rec.Legacy {
				log.Info("pidfile of the previous format (PID STARTTIME GENERATION HEALTH_ADDR) verified: migrating it to the PID alone, with a state file beside it",
					"pidfile", cfg.Pidfile, "state", SwapStatePath(cfg.Pidfile), KeyPID, rec.PID)
			}
			old := adopt(rec.Gen, rec.PID, rec.PGID, rec.Ticks, rec.Seen, rec.Health)
			if rec.PGID != rec.PID || rec.PGID == unix.Getpgrp() {
				old.PGID = 0 // not a group of its own: signal the PID alone
			}
			return old, gen, nil
		}
	}
	if !cfg.Takeover {
		return nil, 0, fmt.Errorf("%w: pidfile %s names pid %d, which swap cannot verify as an instance it started (%s); nothing touched. To retire it anyway (a pidfile written by another tool), pass --takeover",
			ErrUsage, cfg.Pidfile, rec.PID, rec.Why)
	}
	log.Warn("taking over from a pidfile swap cannot verify (--takeover)", "pidfile", cfg.Pidfile, KeyPID, rec.PID, "reason", rec.Why)
	old := adopt(rec.Gen, rec.PID, st.PGID, st.StartTime, 0, rec.Health)
	if st.PGID != rec.PID || st.PGID == unix.Getpgrp() {
		old.PGID = 0
	}
	return old, gen, nil
}

// swapOthers adopts the generations the state file names besides the
// pidfile's (rec.Others) that still have processes of ours. A draining one
// whose drain deadline has passed is SIGKILLed with its group now; the
// others are returned, to be retired after the handover: a draining one
// drains on to its deadline, another (serving, or starting: a swap killed
// before its pidfile named it) gets the stop signal then.
func swapOthers(cfg SwapConfig, rec *pidRecord, log *slog.Logger) []*Instance {
	if rec == nil {
		return nil
	}
	var out []*Instance
	for _, g := range rec.Others {
		if g.PGID != g.PID || g.PGID == unix.Getpgrp() {
			log.Warn("state file names a process that does not lead a group of its own; never signalling it",
				"pidfile", cfg.Pidfile, KeyGeneration, g.Generation, KeyPID, g.PID)
			continue
		}
		in := adoptRecorded(g.Generation, g.PID, g.PGID, g.StartTicks, g.LeaderSeenTicks, g.HealthAddr)
		if in == nil {
			continue
		}
		if g.State != StateDraining {
			out = append(out, in)
			continue
		}
		if g.StopPending {
			// A swap killed during its cutover: this generation was
			// never told to stop. It gets its stop signal after this
			// swap's cutover, as a serving one would, and its drain
			// deadline counts from then.
			log.Warn("state file names a generation whose stop signal a killed swap never sent: it gets it after the handover",
				"pidfile", cfg.Pidfile, KeyGeneration, g.Generation, KeyPID, g.PID)
			out = append(out, in)
			continue
		}
		in.setState(StateDraining)
		in.setDrainDeadline(g.DrainDeadline)
		if !g.DrainDeadline.After(time.Now()) {
			log.Warn("state file names a draining generation past its drain deadline: killing its process group",
				"pidfile", cfg.Pidfile, KeyGeneration, g.Generation, KeyPID, g.PID, "drain_deadline", g.DrainDeadline)
			killGroupAndWait(in)
			continue
		}
		log.Info("state file names a draining generation: it drains until its deadline, then is killed",
			"pidfile", cfg.Pidfile, KeyGeneration, g.Generation, KeyPID, g.PID, "drain_deadline", g.DrainDeadline)
		out = append(out, in)
	}
	return out
}

// adoptRecorded adopts a recorded generation if its process group still
// has processes of ours: its leader verified in /proc, or, the leader gone,
// members that started after it (see proc.Target). Nil: nothing to retire.
func adoptRecorded(gen, pid, pgid int, ticks, seen uint64, haddr string) *Instance {
	if pid <= 1 || pgid != pid || ticks == 0 {
		return nil
	}
	in := adopt(gen, pid, pgid, ticks, seen, haddr)
	if in.groupEmpty() {
		in.target.Close()
		return nil
	}
	return in
}

// drainUntil waits until in's process group is empty or deadline has
// passed, then SIGKILLs what is left of it. It reports whether it killed.
func drainUntil(in *Instance, deadline time.Time) bool {
	for !in.groupEmpty() {
		if !time.Now().Before(deadline) {
			killGroupAndWait(in)
			return true
		}
		time.Sleep(groupPollInterval)
	}
	return false
}

// swapGen is the state of an instance in a swap state file.
func swapGen(in *Instance, state string) StateGen {
	return StateGen{Generation: in.Gen, PID: in.PID, PGID: in.PGID, StartTicks: in.StartTicks,
		Started: in.Started, State: state, HealthAddr: in.HealthAddr, LeaderSeenTicks: in.leaderSeen()}
}

// writeSwapState writes the state file beside pidfile.
func writeSwapState(pidfile string, gens []StateGen) error {
	b, err := json.MarshalIndent(StateFile{Name: filepath.Base(pidfile), Generations: gens}, "", "  ")
	if err != nil {
		return fmt.Errorf("state file %s: %w", SwapStatePath(pidfile), err)
	}
	return writeFileAtomic(SwapStatePath(pidfile), append(b, '\n'), 0o644)
}

// fileTail returns up to n last lines of path after offset.
func fileTail(path string, offset int64, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return ""
	}
	if fi.Size()-offset > 8192 {
		offset = fi.Size() - 8192
	}
	buf := make([]byte, fi.Size()-offset)
	if _, err := f.ReadAt(buf, offset); err != nil {
		return ""
	}
	t := newTail(8192)
	t.Write(buf)
	return t.Lines(n)
}
