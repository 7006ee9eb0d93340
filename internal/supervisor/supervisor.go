//go:build linux

package supervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/changeover-dev/changeover/healthcheck"
	"github.com/changeover-dev/changeover/internal/proc"
	"github.com/changeover-dev/changeover/internal/reaper"
)

// Log keys.
const (
	KeyGeneration = "generation"
	KeyPID        = "pid"
	KeyDuration   = "duration"
	KeyError      = "error"
)

// Config configures a Supervisor.
type Config struct {
	Name         string
	Launch       Launch
	Probes       []string // --health specs; may contain {health_addr}
	Notify       bool     // wait for READY=1
	ReadyTimeout time.Duration
	StateFile    string // "" = none
	Log          *slog.Logger
	Reaper       *reaper.Reaper

	BackoffMin, BackoffMax time.Duration
	CrashLimit             int           // more crashes than this ...
	CrashWindow            time.Duration // ... within this window: give up

	// SDNotify sends a message to systemd (nil: not under systemd).
	SDNotify func(state string)
}

// Result is the outcome of one reload (or start).
type Result struct {
	Generation int           `json:"generation"`
	OK         bool          `json:"ok"`
	Error      string        `json:"error,omitempty"`
	Started    time.Time     `json:"started"`
	Duration   time.Duration `json:"duration_ns"`
	Err        error         `json:"-"`
}

// GenStatus describes one generation.
type GenStatus struct {
	Generation int       `json:"generation"`
	PID        int       `json:"pid"`
	PGID       int       `json:"pgid"`
	State      string    `json:"state"`
	Started    time.Time `json:"started"`
	HealthAddr string    `json:"health_addr"`
	Path       string    `json:"path,omitempty"`
	Adopted    bool      `json:"adopted,omitempty"`
	Exit       string    `json:"exit,omitempty"`
}

// Status is a snapshot of the supervisor.
type Status struct {
	Name        string      `json:"name"`
	PID         int         `json:"pid"`
	Serving     int         `json:"serving_generation"`
	Reloading   bool        `json:"reloading"`
	Generations []GenStatus `json:"generations"`
	LastReload  *Result     `json:"last_reload,omitempty"`
}

// Supervisor supervises generations of one command.
type Supervisor struct {
	cfg Config
	log *slog.Logger

	mu        sync.Mutex
	gen       int
	serving   *Instance
	insts     []*Instance
	last      *Result
	reloading int           // deploys running (two when a replacement starts during a drain)
	pending   bool          // a reload was asked for and has not started yet
	waiters   []chan Result // callers waiting for the next reload to start
	stopping  bool
	crashes   []time.Time

	kick      chan struct{}
	promoted  chan struct{} // a deploy made a new instance the serving one
	stopReq   chan struct{}
	hurry     chan struct{}
	stopOnce  sync.Once
	hurryOnce sync.Once
	readySent atomic.Bool // READY=1 went to systemd: later deploys are reloads
}

// New returns a Supervisor; call Run.
func New(cfg Config) *Supervisor {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.SDNotify == nil {
		cfg.SDNotify = func(string) {}
	}
	return &Supervisor{
		cfg: cfg, log: cfg.Log,
		kick: make(chan struct{}, 1), promoted: make(chan struct{}, 1), stopReq: make(chan struct{}), hurry: make(chan struct{}),
	}
}

// RequestReload asks for a reload without waiting (SIGHUP).
func (s *Supervisor) RequestReload() { s.enqueue(nil) }

// Reload asks for a reload and waits for the outcome of the first reload
// that starts after this call.
func (s *Supervisor) Reload(ctx context.Context) Result {
	ch := make(chan Result, 1)
	if !s.enqueue(ch) {
		return Result{Error: ErrStopping.Error(), Err: ErrStopping}
	}
	select {
	case r := <-ch:
		return r
	case <-ctx.Done():
		return Result{Error: ctx.Err().Error(), Err: ctx.Err()}
	}
}

func (s *Supervisor) enqueue(ch chan Result) bool {
	s.mu.Lock()
	if s.stopping {
		s.mu.Unlock()
		return false
	}
	s.pending = true
	if ch != nil {
		s.waiters = append(s.waiters, ch)
	}
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
	return true
}

// Stop asks Run to drain the serving instance and return.
func (s *Supervisor) Stop() { s.stopOnce.Do(func() { close(s.stopReq) }) }

// Hurry makes a running stop (or drain) SIGKILL right away.
func (s *Supervisor) Hurry() { s.hurryOnce.Do(func() { close(s.hurry) }) }

// Status returns a snapshot.
func (s *Supervisor) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Status{Name: s.cfg.Name, PID: os.Getpid(), Reloading: s.reloading > 0}
	if s.serving != nil {
		st.Serving = s.serving.Gen
	}
	for _, in := range s.insts {
		st.Generations = append(st.Generations, GenStatus{
			Generation: in.Gen, PID: in.PID, PGID: in.PGID, State: in.State(), Started: in.Started,
			HealthAddr: in.HealthAddr, Path: in.Path, Adopted: in.Adopted, Exit: in.ExitStatus(),
		})
	}
	if s.last != nil {
		r := *s.last
		st.LastReload = &r
	}
	return st
}

// Run starts generation 1 (or adopts a previous supervisor's instance),
// then handles reloads, crashes and stop until ctx is done or Stop is called.
// It returns nil after a graceful stop.
func (s *Supervisor) Run(ctx context.Context) error {
	defer s.cleanup()
	if s.cfg.StateFile != "" {
		// Kept only if we are killed: then the next supervisor adopts.
		defer os.Remove(s.cfg.StateFile)
	}
	adopted := s.adoptFromState()
	firstCtx, firstCancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-s.stopReq:
			firstCancel()
		case <-firstCtx.Done():
		}
	}()
	first := s.deploy(firstCtx)
	s.finish(first, false)
	if errors.Is(first.Err, ErrStopping) || firstCtx.Err() != nil {
		// Stopped while generation 1 was starting: it has been killed.
		firstCancel()
		cancel := func() {}
		return s.shutdown(cancel, nil)
	}
	firstCancel()
	if !first.OK {
		s.mu.Lock()
		serving := s.serving
		s.mu.Unlock()
		if serving == nil {
			s.mu.Lock()
			s.stopping = true
			s.mu.Unlock()
			return first.Err
		}
		s.log.Warn("new generation failed; the adopted instance keeps serving",
			KeyGeneration, adopted.Gen, KeyPID, adopted.PID)
	}
	s.sdReady()

	opCtx, opCancel := context.WithCancel(context.Background())
	defer opCancel()
	var (
		worker   chan Result
		repl     chan Result // a replacement for an instance that crashed while worker drained its predecessor
		restartC <-chan time.Time
	)
	startWorker := func() {
		worker = make(chan Result, 1)
		w := worker
		go func() { w <- s.deploy(opCtx) }()
	}
	idle := func() bool { return worker == nil && repl == nil }
	// settle follows the end of a deploy (the worker's or a replacement's):
	// once neither runs, restart after a failure with nothing serving, or
	// start the reload that was asked for meanwhile.
	settle := func(r Result) error {
		s.finish(r, true)
		s.mu.Lock()
		noServing, pending := s.serving == nil, s.pending
		s.mu.Unlock()
		switch {
		case !idle():
		case noServing && !r.OK:
			d, err := s.crashed()
			if err != nil {
				return s.fail(opCancel, err, worker, repl)
			}
			restartC = time.After(d)
		case pending:
			startWorker()
		}
		return nil
	}
	for {
		s.mu.Lock()
		serving := s.serving
		s.mu.Unlock()
		var servingDone <-chan struct{}
		if serving != nil {
			servingDone = serving.done
		}
		select {
		case <-ctx.Done():
			return s.shutdown(opCancel, worker, repl)
		case <-s.stopReq:
			return s.shutdown(opCancel, worker, repl)
		case <-s.promoted:
			// The serving instance changed under a running deploy: watch
			// the new one (it may crash while its predecessor drains).
		case <-s.kick:
			if idle() {
				startWorker()
			}
		case r := <-worker:
			worker = nil
			if err := settle(r); err != nil {
				return err
			}
		case r := <-repl:
			repl = nil
			if err := settle(r); err != nil {
				return err
			}
		case <-servingDone:
			s.mu.Lock()
			crashed := s.serving == serving
			// Whether a deploy had promoted it and is retiring its
			// predecessor, decided now: a deploy still starting its
			// instance may promote it while we log this crash.
			retiring := false
			if crashed {
				s.serving = nil
				serving.setState(StateExited)
				retiring = s.drainingLocked()
			}
			s.mu.Unlock()
			if !crashed {
				continue
			}
			s.saveState()
			killGroupAndWait(serving) // leftovers of its group may hold the ports
			serving.closeNotify()
			d, crashErr := s.crashed()
			if crashErr == nil && retiring && worker != nil && repl == nil {
				// It crashed after it took over, while the running deploy
				// drains its predecessor, which has handed the ports over:
				// nothing serves them. Start a replacement now, no backoff
				// (the crash still counts toward --crash-limit).
				s.log.Warn("serving instance crashed while its predecessor drains; starting a replacement now",
					KeyGeneration, serving.Gen, KeyPID, serving.PID)
				repl = make(chan Result, 1)
				r := repl
				go func() { r <- s.deploy(opCtx) }()
			}
			serving.tail.settle(500 * time.Millisecond)
			s.log.Error("serving instance exited", KeyGeneration, serving.Gen, KeyPID, serving.PID,
				"status", serving.ExitStatus(), KeyDuration, time.Since(serving.Started).Round(time.Millisecond),
				"stderr", serving.StderrTail())
			s.cfg.SDNotify(fmt.Sprintf("STATUS=generation %d exited (%s); restarting", serving.Gen, serving.ExitStatus()))
			if crashErr != nil {
				return s.fail(opCancel, crashErr, worker, repl)
			}
			if worker == nil {
				restartC = time.After(d)
			}
		case <-restartC:
			restartC = nil
			s.mu.Lock()
			need, next := s.serving == nil, s.gen+1
			if need {
				s.pending = true
			}
			s.mu.Unlock()
			if need && idle() {
				s.log.Info("restarting", KeyGeneration, next)
				startWorker()
			}
		}
	}
}

// crashed records a crash and returns the backoff before the restart, or
// ErrCrashLoop.
func (s *Supervisor) crashed() (time.Duration, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	s.crashes = append(s.crashes, now)
	s.crashes = slices.DeleteFunc(s.crashes, func(t time.Time) bool { return now.Sub(t) > s.cfg.CrashWindow })
	n := len(s.crashes)
	if n > s.cfg.CrashLimit {
		return 0, fmt.Errorf("%w: %d crashes within %v (limit %d)", ErrCrashLoop, n, s.cfg.CrashWindow, s.cfg.CrashLimit)
	}
	d := s.cfg.BackoffMin
	for i := 1; i < n && d < s.cfg.BackoffMax; i++ {
		d *= 2
	}
	return min(d, s.cfg.BackoffMax), nil
}

func (s *Supervisor) fail(cancel context.CancelFunc, err error, workers ...chan Result) error {
	s.log.Error("giving up", KeyError, err)
	_ = s.shutdown(cancel, workers...)
	return err
}

// drainingLocked reports whether a deploy is retiring an instance (it
// has promoted its new one). s.mu is held.
func (s *Supervisor) drainingLocked() bool {
	return slices.ContainsFunc(s.insts, func(in *Instance) bool { return in.State() == StateDraining })
}

// finish records a result and answers the waiters that were attached to it.
func (s *Supervisor) finish(r Result, reload bool) {
	s.mu.Lock()
	s.last = &r
	s.mu.Unlock()
	if reload {
		s.cfg.SDNotify("READY=1\n" + s.sdStatus())
	}
}

func (s *Supervisor) sdStatus() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.serving == nil {
		return "STATUS=no generation serving"
	}
	return fmt.Sprintf("STATUS=generation %d serving (pid %d)", s.serving.Gen, s.serving.PID)
}

func (s *Supervisor) sdReady() {
	s.cfg.SDNotify(fmt.Sprintf("READY=1\nMAINPID=%d\n%s", os.Getpid(), s.sdStatus()))
	s.readySent.Store(true)
}

// deploy starts the next generation, waits until it is ready, promotes it
// and retires the previous one. Waiters queued before it started get its
// result.
func (s *Supervisor) deploy(ctx context.Context) (res Result) {
	start := time.Now()
	s.mu.Lock()
	waiters := s.waiters
	s.waiters, s.pending = nil, false
	s.reloading++
	s.gen++
	gen, old := s.gen, s.serving
	stopping := s.stopping
	s.mu.Unlock()
	defer func() {
		res.Generation, res.Started, res.Duration = gen, start, time.Since(start)
		if res.Err != nil {
			res.Error = res.Err.Error()
		}
		s.mu.Lock()
		s.reloading--
		s.mu.Unlock()
		for _, w := range waiters {
			w <- res
		}
	}()
	if stopping {
		return Result{Err: ErrStopping}
	}
	if s.readySent.Load() {
		// Every deploy after the first READY=1 is a reload to systemd,
		// also one that a SIGHUP asked for while nothing served (a crash
		// restart's backoff): Type=notify-reload waits for this message.
		var ts unix.Timespec
		_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
		s.cfg.SDNotify(fmt.Sprintf("RELOADING=1\nMONOTONIC_USEC=%d\nSTATUS=starting generation %d", ts.Nano()/1000, gen))
	}
	if old != nil {
		s.log.Info("reload started", KeyGeneration, gen, "old_generation", old.Gen, "old_pid", old.PID)
	}
	in, err := s.startReady(ctx, gen, old)
	if err != nil {
		msg := "generation failed"
		if old != nil {
			msg = "generation failed; previous keeps serving"
		}
		s.log.Error(msg, KeyGeneration, gen, KeyError, err, KeyDuration, time.Since(start).Round(time.Millisecond))
		return Result{Err: err}
	}
	s.mu.Lock()
	s.serving = in
	in.setState(StateServing)
	if old != nil {
		old.setState(StateDraining)
	}
	s.mu.Unlock()
	select {
	case s.promoted <- struct{}{}:
	default:
	}
	s.saveState()
	s.log.Info("generation ready", KeyGeneration, gen, KeyPID, in.PID, KeyDuration, time.Since(start).Round(time.Millisecond))
	if old != nil {
		s.retire(old)
		s.log.Info("reload done", KeyGeneration, gen, KeyPID, in.PID, KeyDuration, time.Since(start).Round(time.Millisecond))
	}
	return Result{OK: true}
}

// startReady resolves, checks, starts and waits for generation gen.
func (s *Supervisor) startReady(ctx context.Context, gen int, old *Instance) (*Instance, error) {
	l := &s.cfg.Launch
	path, dir, err := l.Resolve()
	if err != nil {
		return nil, err
	}
	env, err := l.baseEnv()
	if err != nil {
		return nil, err
	}
	if old != nil {
		if err := s.checkProbes(old); err != nil {
			return nil, err
		}
	}
	if len(l.Checks) > 0 {
		cctx, cancel := context.WithTimeout(ctx, s.cfg.ReadyTimeout)
		err := l.RunChecks(cctx, s.cfg.Reaper, dir, append(env, healthcheck.EnvGeneration+"="+strconv.Itoa(gen)))
		cancel()
		if err != nil {
			return nil, err
		}
	}
	in, err := startInstance(s.cfg.Reaper, l, gen, path, dir, env)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.insts = append(s.insts, in)
	s.trimLocked()
	s.mu.Unlock()
	s.saveState()
	s.log.Info("generation started", KeyGeneration, gen, KeyPID, in.PID, "path", path, "health_addr", in.HealthAddr)
	err = s.waitReady(ctx, in)
	if err == nil && old != nil {
		err = checkCoverage(in, old)
	}
	if err != nil {
		in.setState(StateFailed)
		killGroupAndWait(in)
		in.closeNotify()
		s.saveState()
		return nil, err
	}
	return in, nil
}

func (s *Supervisor) waitReady(ctx context.Context, in *Instance) error {
	var probes []healthcheck.Probe
	for _, spec := range s.cfg.Probes {
		p, err := healthcheck.Parse(spec, in.HealthAddr)
		if err != nil {
			return fmt.Errorf("health probe %q: %w", spec, err)
		}
		if ex, ok := p.(healthcheck.Exec); ok {
			// The instance's environment and working directory; Exec adds
			// Env to ours, so blank our own NOTIFY_SOCKET (systemd's).
			ex.Env = append(in.probeEnv[:len(in.probeEnv):len(in.probeEnv)], healthcheck.EnvNotifySocket+"=")
			ex.Dir = in.Dir
			p = ex
		}
		probes = append(probes, p)
	}
	if !s.cfg.Notify && len(probes) == 0 {
		p, err := healthcheck.Parse("http://{health_addr}/", in.HealthAddr)
		if err != nil {
			return fmt.Errorf("default health probe: %w", err)
		}
		probes = append(probes, p)
	}
	return waitReady(ctx, in, s.cfg.Notify, probes, s.cfg.ReadyTimeout)
}

// checkProbes refuses probes aimed at a port that the old instance serves:
// the old instance would answer them.
func (s *Supervisor) checkProbes(old *Instance) error {
	addrs, err := proc.GroupListenAddrs(old.PGID)
	if err != nil {
		return nil // cannot tell; nothing to refuse
	}
	for _, spec := range s.cfg.Probes {
		t, ok := ProbeTarget(spec)
		if !ok {
			continue
		}
		for _, a := range addrs {
			if a.String() != old.HealthAddr && proc.Covers(a, t) {
				return fmt.Errorf("%w: --health %s targets %s, which generation %d (pid %d) listens on, so the old instance would answer it; use {health_addr} for the new instance's own address",
					ErrProbeSharedPort, spec, t, old.Gen, old.PID)
			}
		}
	}
	return nil
}

// checkCoverage fails if the new instance does not listen on an address
// that the old one serves (its health address aside).
func checkCoverage(in, old *Instance) error {
	oldAddrs, err := proc.GroupListenAddrs(old.PGID)
	if err != nil {
		return nil
	}
	oldAddrs = slices.DeleteFunc(oldAddrs, func(a netip.AddrPort) bool { return a.String() == old.HealthAddr })
	newAddrs, err := proc.GroupListenAddrs(in.PGID)
	if err != nil {
		return nil
	}
	if miss := proc.Missing(newAddrs, oldAddrs); len(miss) > 0 {
		return fmt.Errorf("%w: new instance does not listen on %s, which generation %d serves", ErrNotReady, miss[0], old.Gen)
	}
	return nil
}

// retire drains old: SIGTERM, wait up to the drain timeout, SIGKILL.
func (s *Supervisor) retire(old *Instance) {
	start := time.Now()
	drain := s.cfg.Launch.DrainTimeout
	s.cfg.SDNotify(fmt.Sprintf("EXTEND_TIMEOUT_USEC=%d", (drain + 10*time.Second).Microseconds()))
	s.log.Info("draining", KeyGeneration, old.Gen, KeyPID, old.PID)
	old.setDrainDeadline(time.Now().Add(drain))
	s.saveState()
	out := stopInstance(old, &s.cfg.Launch, drain, s.hurry, s.log)
	old.setState(StateExited)
	old.closeNotify()
	s.saveState()
	logStopped(s.log, old, out, start)
}

// logStopped logs how a retired instance ended, and the processes it left
// behind outside its process group.
func logStopped(log *slog.Logger, in *Instance, out stopOutcome, start time.Time) {
	lvl := slog.LevelInfo
	if out.Killed {
		lvl = slog.LevelWarn
	}
	log.Log(context.Background(), lvl, "instance exited", KeyGeneration, in.Gen, KeyPID, in.PID,
		"status", in.ExitStatus(), "killed", out.Killed, KeyDuration, time.Since(start).Round(time.Millisecond))
	for _, pid := range out.Untracked {
		log.Warn("a process started by this generation left its process group (setsid or daemonized) and still holds its listening socket; it is not tracked, drained or killed",
			KeyGeneration, in.Gen, KeyPID, pid, "pgid", in.PGID)
	}
}

func (s *Supervisor) shutdown(cancel context.CancelFunc, workers ...chan Result) error {
	s.cfg.SDNotify("STOPPING=1\nSTATUS=stopping")
	s.mu.Lock()
	s.stopping = true
	waiters := s.waiters
	s.waiters = nil
	s.mu.Unlock()
	for _, w := range waiters {
		w <- Result{Err: ErrStopping, Error: ErrStopping.Error()}
	}
	cancel()
	for _, w := range workers {
		if w != nil {
			s.finish(<-w, false)
		}
	}
	s.mu.Lock()
	serving := s.serving
	s.serving = nil
	s.mu.Unlock()
	if serving != nil {
		s.retire(serving)
	}
	if s.cfg.StateFile != "" {
		_ = os.Remove(s.cfg.StateFile)
	}
	s.log.Info("stopped")
	return nil
}

func (s *Supervisor) cleanup() {
	s.mu.Lock()
	insts := s.insts
	s.mu.Unlock()
	for _, in := range insts {
		in.closeNotify()
	}
}

// trimLocked forgets old exited generations, keeping the last few.
func (s *Supervisor) trimLocked() {
	const keep = 8
	for len(s.insts) > keep {
		i := slices.IndexFunc(s.insts, func(in *Instance) bool {
			st := in.State()
			return st == StateExited || st == StateFailed
		})
		if i < 0 {
			return
		}
		s.insts = slices.Delete(s.insts, i, i+1)
	}
}
