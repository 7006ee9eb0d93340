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
	"strings"
	"sync"
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

	// MaxDraining is how many old generations may drain at once (a reload
	// is done at the handover, and the old one drains in the background);
	// a reload beyond it waits for one to finish, up to ReadyTimeout.
	// Default (0): 4.
	MaxDraining int

	// SDNotify sends a message to systemd (nil: not under systemd).
	SDNotify func(state string)

	// Steering is who steers the port at a handover: SteeringSupervisor
	// (the default, ""), through placeholder members (steering.go), or
	// SteeringKernel.
	Steering string
}

// DefaultMaxDraining is Config.MaxDraining's default.
const DefaultMaxDraining = 4

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
	Generation    int       `json:"generation"`
	PID           int       `json:"pid"`
	PGID          int       `json:"pgid"`
	State         string    `json:"state"`
	Started       time.Time `json:"started"`
	HealthAddr    string    `json:"health_addr"`
	Path          string    `json:"path,omitempty"`
	Adopted       bool      `json:"adopted,omitempty"`
	Exit          string    `json:"exit,omitempty"`
	DrainDeadline time.Time `json:"drain_deadline,omitzero"`
	// Handover is the path of the handover into this generation:
	// PathSupervisor or PathKernel (empty: it was started alone).
	Handover string `json:"handover,omitempty"`
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

// Supervisor supervises generations of one command. Its decisions are a
// state machine (machine.go) fed with events; Run is the loop that turns
// what happens into events and performs the actions that come back:
//
//	post(Event{Kind: EvStart, Adopted: ..., LastGen: ...}) // from the state file
//	for {
//		for _, ev := range takeInbox() { // reloads, stops, exits, readiness, listeners gone, timers
//			ev.Now = time.Now()
//			for _, a := range machine.Step(ev) {
//				perform(a) // start, stop, kill, arm a timer, answer, notify, save, log, ...
//			}
//			if the step's last action was ActExit {
//				return its Err
//			}
//		}
//		wait for the next event
//	}
//
// Performing an action never blocks on a process: what takes time (the
// checks, readiness, watching an exit or listeners) runs in a goroutine
// that posts its outcome as the next event.
type Supervisor struct {
	cfg Config
	log *slog.Logger
	os  processLayer
	now func() time.Time // the events' clock

	stepped func(Event) // tests: called after each event's actions
	relays  *relayPool  // the next generation's stderr relay, started ahead

	mu     sync.Mutex
	inbox  []Event
	ended  bool // Run returned: no more events
	status Status
	last   *Result
	kick   chan struct{}

	steer *steering // Run's, for readiness checks that route their probes (nil outside Run)
}

// New returns a Supervisor; call Run.
func New(cfg Config) *Supervisor {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.SDNotify == nil {
		cfg.SDNotify = func(string) {}
	}
	if cfg.MaxDraining <= 0 {
		cfg.MaxDraining = DefaultMaxDraining
	}
	s := &Supervisor{cfg: cfg, log: cfg.Log, kick: make(chan struct{}, 1), now: time.Now, relays: &relayPool{}, steer: newSteering(cfg.Log)}
	s.os = s.realProcesses()
	s.status = Status{Name: cfg.Name, PID: os.Getpid()}
	return s
}

// post queues an event for Run; false once Run has returned.
func (s *Supervisor) post(ev Event) bool {
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return false
	}
	s.inbox = append(s.inbox, ev)
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
	return true
}

// RequestReload asks for a reload without waiting (SIGHUP).
func (s *Supervisor) RequestReload() { s.post(Event{Kind: EvReloadAsked}) }

// Reload asks for a reload and waits for the outcome of the first reload
// that starts after this call: done when the new generation serves and
// the old one has closed its listeners (it drains in the background).
func (s *Supervisor) Reload(ctx context.Context) Result {
	ch := make(chan Result, 1)
	if !s.post(Event{Kind: EvReloadAsked, Waiter: ch}) {
		return Result{Error: ErrStopping.Error(), Err: ErrStopping}
	}
	select {
	case r := <-ch:
		return r
	case <-ctx.Done():
		return Result{Error: ctx.Err().Error(), Err: ctx.Err()}
	}
}

// Stop asks Run to drain every generation and return.
func (s *Supervisor) Stop() { s.post(Event{Kind: EvStopAsked}) }

// Hurry makes a running stop (or drain) SIGKILL right away.
func (s *Supervisor) Hurry() { s.post(Event{Kind: EvHurry}) }

// Status returns a snapshot.
func (s *Supervisor) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.status
	st.Generations = slices.Clone(st.Generations)
	if s.last != nil {
		r := *s.last
		st.LastReload = &r
	}
	return st
}

// processLayer is everything Run does to processes and files. Tests
// replace it to drive the real loop without processes.
type processLayer struct {
	// adopt reads the state file of a previous supervisor and returns the
	// generations it left alive.
	adopt func() adoption
	// prepare resolves generation gen's command and runs the checks.
	prepare func(ctx context.Context, gen int, serving *Instance) (*prepared, error)
	// start starts the process (it does not wait for readiness).
	start func(gen int, p *prepared) (*Instance, error)
	// waitReady returns when in is ready (and covers old's shared
	// addresses) or not by deadline.
	waitReady func(ctx context.Context, in *Instance, deadline time.Time, old *Instance) error
	stop      func(in *Instance) error // the stop signal to the group
	kill      func(in *Instance) error // SIGKILL to the group
	// listenersGone returns once no process of in's group listens on a
	// shared address (or ctx is done).
	listenersGone func(ctx context.Context, in *Instance)
	// groupEmpty returns once no process is left in in's group.
	groupEmpty func(ctx context.Context, in *Instance)
	save       func(StateFile)
}

// prepared is what a generation starts with: resolved before its checks.
type prepared struct {
	path, dir string
	env       []string
}

// adoption is what a previous supervisor left: its live generations, and
// the last generation number it gave.
type adoption struct {
	gens    []adoptedInstance
	lastGen int
}

// adoptedInstance is a live generation of a previous supervisor.
type adoptedInstance struct {
	in       *Instance
	draining bool
	deadline time.Time
	leftover bool // starting when its supervisor died: the machine kills it
	// stopPending: draining, its stop signal not sent yet (cutover)
	stopPending bool
	refused     bool // refused and held when its supervisor died: the machine kills it
}

// runLoop is Run's own state: the machine and what performs its actions.
type runLoop struct {
	s       *Supervisor
	m       *machine
	steer   *steering
	ctx     context.Context
	wg      sync.WaitGroup
	insts   map[int]*Instance
	timers  map[TimerID]time.Time
	cancels map[int]context.CancelFunc

	// stopSockets: the listening sockets of a generation's group when its
	// stop signal went, to name the processes outside the group (setsid, a
	// daemonizing server) that still hold one once the group is empty.
	stopSockets map[int]map[uint64]bool

	mu   sync.Mutex
	prep map[int]*prepared
}

// Run starts generation 1 (or adopts a previous supervisor's instances),
// then handles reloads, crashes and stops until ctx is done or Stop is
// called. It returns nil after a graceful stop, the generation's error if
// generation 1 fails, ErrCrashLoop past the crash limit.
func (s *Supervisor) Run(ctx context.Context) error {
	ctxRun, cancel := context.WithCancel(context.Background())
	l := &runLoop{
		s: s, ctx: ctxRun,
		m: newMachine(machineConfig{
			ReadyTimeout: s.cfg.ReadyTimeout, DrainTimeout: s.cfg.Launch.DrainTimeout,
			BackoffMin: s.cfg.BackoffMin, BackoffMax: s.cfg.BackoffMax,
			CrashLimit: s.cfg.CrashLimit, CrashWindow: s.cfg.CrashWindow,
			MaxDraining: s.cfg.MaxDraining, PID: os.Getpid(),
			Steered: s.cfg.Steering != SteeringKernel,
		}),
		steer: s.steer,
		insts: map[int]*Instance{}, timers: map[TimerID]time.Time{},
		cancels: map[int]context.CancelFunc{}, prep: map[int]*prepared{},
		stopSockets: map[int]map[uint64]bool{},
	}
	defer func() {
		cancel()
		l.wg.Wait()
		l.steer.closeAll()
		for _, in := range l.insts {
			in.closeNotify()
		}
		s.relays.close()
	}()
	adopted := s.os.adopt()
	start := Event{Kind: EvStart, LastGen: adopted.lastGen}
	for _, a := range adopted.gens {
		l.insts[a.in.Gen] = a.in
		start.Adopted = append(start.Adopted, AdoptedGen{Gen: a.in.Gen, PID: a.in.PID, Draining: a.draining, Deadline: a.deadline, Leftover: a.leftover, StopPending: a.stopPending, Refused: a.refused})
	}
	s.post(start)
	for _, a := range adopted.gens {
		l.watchExit(a.in) // after EvStart: its exit is about a generation the machine knows
	}

	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	done := ctx.Done()
	for {
		batch := s.takeInbox()
		for i, ev := range batch {
			ev.Now = s.now()
			exit, exitErr := false, error(nil)
			for _, a := range l.m.Step(ev) {
				if a.Kind == ActExit {
					exit, exitErr = true, a.Err
					continue
				}
				l.perform(a)
			}
			if s.stepped != nil {
				s.stepped(ev)
			}
			if exit {
				s.end(batch[i+1:])
				return exitErr
			}
			if ev.Kind == EvGroupEmpty {
				l.reportUntracked(ev.Gen)
			}
		}
		s.publish(l)
		l.armTimer(timer)
		select {
		case <-done:
			done = nil
			s.post(Event{Kind: EvStopAsked})
		case <-s.kick:
		case <-timer.C:
			now := s.now()
			for id, at := range l.timers {
				if !now.Before(at) {
					delete(l.timers, id)
					s.post(Event{Kind: EvTimer, Timer: id})
				}
			}
		}
	}
}

func (s *Supervisor) takeInbox() []Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	evs := s.inbox
	s.inbox = nil
	return evs
}

// end refuses further events and answers the waiters still queued (those
// of rest, the events taken with the last one, and those of the inbox): Run
// never leaves a client waiting.
func (s *Supervisor) end(rest []Event) {
	s.mu.Lock()
	s.ended = true
	evs := append(rest, s.inbox...)
	s.inbox = nil
	s.status.Reloading = false
	s.mu.Unlock()
	for _, ev := range evs {
		if ev.Waiter != nil {
			ev.Waiter <- Result{Err: ErrStopping, Error: ErrStopping.Error()}
		}
	}
	if s.cfg.StateFile != "" {
		// Kept only if we are killed: then the next supervisor adopts.
		_ = os.Remove(s.cfg.StateFile)
	}
}

// armTimer sets t to the earliest armed timer.
func (l *runLoop) armTimer(t *time.Timer) {
	var first time.Time
	for _, at := range l.timers {
		if first.IsZero() || at.Before(first) {
			first = at
		}
	}
	if first.IsZero() {
		t.Stop()
		return
	}
	t.Reset(max(first.Sub(l.s.now()), 0))
}

// perform does one action.
func (l *runLoop) perform(a Action) {
	s := l.s
	in := l.insts[a.Gen]
	switch a.Kind {
	case ActRunChecks:
		ctx, cancel := context.WithDeadline(l.ctx, a.At)
		l.cancels[a.Gen] = cancel
		serving := l.servingInstance()
		l.goPost(func() Event {
			defer cancel()
			p, err := s.os.prepare(ctx, a.Gen, serving)
			l.mu.Lock()
			l.prep[a.Gen] = p
			l.mu.Unlock()
			return Event{Kind: EvChecked, Gen: a.Gen, Err: err}
		})
	case ActCancel:
		if cancel := l.cancels[a.Gen]; cancel != nil {
			cancel()
		}
	case ActStart:
		delete(l.cancels, a.Gen)
		l.mu.Lock()
		p := l.prep[a.Gen]
		delete(l.prep, a.Gen)
		l.mu.Unlock()
		if p != nil {
			p.env = steeringEnv(p.env, l.m.cfg.Steered && l.steer.paths[a.Gen] != PathKernel)
		}
		in, err := s.os.start(a.Gen, p)
		if err != nil {
			s.post(Event{Kind: EvStarted, Gen: a.Gen, Err: err})
			return
		}
		l.insts[a.Gen] = in
		s.log.Info("generation started", KeyGeneration, a.Gen, KeyPID, in.PID, "path", in.Path, "health_addr", in.HealthAddr)
		s.post(Event{Kind: EvStarted, Gen: a.Gen, PID: in.PID})
		l.watchExit(in)
		old := l.insts[a.Old]
		l.goPost(func() Event {
			err := s.os.waitReady(l.ctx, in, a.At, old)
			if shadow := (*ShadowError)(nil); errors.As(err, &shadow) {
				return Event{Kind: EvShadowing, Gen: a.Gen, Err: err}
			}
			return Event{Kind: EvReady, Gen: a.Gen, Err: err}
		})
	case ActPromote:
		s.log.Info("generation ready", KeyGeneration, a.Gen, KeyPID, in.PID, KeyDuration, time.Since(in.Started).Round(time.Millisecond))
	case ActStop:
		s.log.Info("draining", KeyGeneration, a.Gen, KeyPID, in.PID, "deadline", a.At.Round(time.Millisecond))
		var sockets map[uint64]bool
		if in.PGID > 0 && !in.Adopted {
			sockets = in.listenersAtStop(s.now())
		}
		if steered := l.steer.prepareDepartures(in); steered != nil {
			in.noteSharedAtStop(steered)
		}
		if err := s.os.stop(in); err != nil {
			s.log.Warn("cannot send the stop signal", KeyGeneration, a.Gen, KeyError, err)
		}
		l.stopSockets[a.Gen] = sockets
	case ActKill:
		if in != nil {
			if err := s.os.kill(in); err != nil {
				s.log.Warn("cannot kill process group", KeyGeneration, a.Gen, KeyError, err)
			}
		}
	case ActWatch:
		if in != nil {
			l.goPost(func() Event {
				s.os.listenersGone(l.ctx, in)
				return Event{Kind: EvListenersGone, Gen: a.Gen}
			})
		}
	case ActTimer:
		l.timers[a.Timer] = a.At
	case ActAnswer:
		for _, w := range a.Waiters {
			select {
			case w <- a.Result:
			default:
			}
		}
		if !a.Result.Started.IsZero() { // a reload's outcome, also one refused
			r := a.Result
			s.mu.Lock()
			s.last = &r
			s.mu.Unlock()
		}
	case ActNotify:
		text := a.Text
		if strings.HasPrefix(text, "RELOADING=1\n") {
			var ts unix.Timespec
			_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
			text = fmt.Sprintf("RELOADING=1\nMONOTONIC_USEC=%d\n%s", ts.Nano()/1000, strings.TrimPrefix(text, "RELOADING=1\n"))
		}
		s.cfg.SDNotify(text)
	case ActSave:
		s.os.save(l.stateFile())
	case ActDark, ActCutover, ActCompact, ActUnsteer, ActHold, ActRelease:
		l.performSteering(a)
	case ActLog:
		if a.Gen != 0 && in != nil {
			// Its group was just SIGKILLed: the relay forwards the last
			// bytes and reaches EOF in a few milliseconds, or never (a
			// process outside the group holds the pipe). Wait for them
			// off the loop: the replacement must not wait for a log line.
			l.wg.Add(1)
			go func() {
				defer l.wg.Done()
				in.tail.settle(500 * time.Millisecond)
				args := append(slices.Clone(a.Args), KeyDuration, time.Since(in.Started).Round(time.Millisecond), "stderr", in.StderrTail())
				s.log.Log(context.Background(), a.Level, a.Msg, args...)
			}()
			return
		}
		s.log.Log(context.Background(), a.Level, a.Msg, a.Args...)
	}
}

// reportUntracked logs the processes outside gen's group that hold a
// listening socket the group held when its stop signal went.
func (l *runLoop) reportUntracked(gen int) {
	sockets, ok := l.stopSockets[gen]
	delete(l.stopSockets, gen)
	in := l.insts[gen]
	if !ok || in == nil || len(sockets) == 0 {
		return
	}
	for _, pid := range proc.SocketHolders(sockets, in.StartTicks) {
		l.s.log.Warn("a process started by this generation left its process group (setsid or daemonized) and still holds its listening socket; it is not tracked, drained or killed",
			KeyGeneration, gen, KeyPID, pid, "pgid", in.PGID)
	}
}

// logStopped logs how a retired instance ended (swap), and the processes
// it left behind outside its process group.
func logStopped(log *slog.Logger, in *Instance, out stopOutcome, start time.Time) {
	lvl := slog.LevelInfo
	if out.Killed {
		lvl = slog.LevelWarn
	}
	log.Log(context.Background(), lvl, "instance exited", KeyGeneration, in.Gen, KeyPID, in.PID,
		"status", in.ExitStatus(), "killed", out.Killed, KeyDuration, time.Since(start).Round(time.Millisecond))
	logUntracked(log, in, out.Untracked)
}

// logUntracked logs the processes outside in's group that hold a listening
// socket its group held when its stop began (swap).
func logUntracked(log *slog.Logger, in *Instance, untracked []int) {
	for _, pid := range untracked {
		log.Warn("a process started by this generation left its process group (setsid or daemonized) and still holds its listening socket; it is not tracked, drained or killed",
			KeyGeneration, in.Gen, KeyPID, pid, "pgid", in.PGID)
	}
}

// goPost runs f in a goroutine and posts the event it returns.
func (l *runLoop) goPost(f func() Event) {
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		l.s.post(f())
	}()
}

// watchExit reports EvExited when in's main process exits, then
// EvGroupEmpty when its process group is empty.
func (l *runLoop) watchExit(in *Instance) {
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		select {
		case <-in.Done():
		case <-l.ctx.Done():
			return
		}
		l.s.post(Event{Kind: EvExited, Gen: in.Gen, Status: in.ExitStatus()})
		l.s.os.groupEmpty(l.ctx, in)
		if l.ctx.Err() == nil {
			l.s.post(Event{Kind: EvGroupEmpty, Gen: in.Gen})
		}
	}()
}

func (l *runLoop) servingInstance() *Instance {
	if l.m.serving == nil {
		return nil
	}
	return l.insts[l.m.serving.n]
}

// publish copies the machine's view into the snapshot Status returns.
func (s *Supervisor) publish(l *runLoop) {
	st := Status{Name: s.cfg.Name, PID: os.Getpid()}
	if l.m.serving != nil {
		st.Serving = l.m.serving.n
	}
	st.Reloading = l.m.deploy != nil || l.m.queued != nil && l.m.queued.reload
	for _, g := range l.m.gens {
		in := l.insts[g.n]
		if in == nil {
			continue
		}
		state := g.stateName()
		in.setState(state)
		gs := GenStatus{
			Generation: g.n, PID: in.PID, PGID: in.PGID, State: state, Started: in.Started,
			HealthAddr: in.HealthAddr, Path: in.Path, Adopted: in.Adopted, Exit: in.ExitStatus(),
			Handover: l.steer.paths[g.n],
		}
		if g.stage == stDraining {
			gs.DrainDeadline = g.deadline
			in.setDrainDeadline(g.deadline)
		}
		st.Generations = append(st.Generations, gs)
	}
	s.mu.Lock()
	s.status = st
	s.mu.Unlock()
}

// stateFile is what a supervisor started after this one was killed needs:
// every generation that may still run, and the drain deadlines.
func (l *runLoop) stateFile() StateFile {
	st := StateFile{Name: l.s.cfg.Name, SupervisorPID: os.Getpid(), LastGeneration: l.m.lastGen}
	st.SupervisorST, _ = proc.StartTime(os.Getpid())
	for _, g := range l.m.gens {
		in := l.insts[g.n]
		if in == nil || g.empty || (g.stage != stStarting && g.stage != stServing && g.stage != stDraining) {
			continue
		}
		sg := StateGen{
			Generation: g.n, PID: in.PID, PGID: in.PGID, StartTicks: in.StartTicks,
			Started: in.Started, State: g.stateName(), HealthAddr: in.HealthAddr,
			LeaderSeenTicks: in.leaderSeen(),
		}
		if g.stage == stDraining && !g.held {
			sg.DrainDeadline, sg.StopPending = g.deadline, g.cutover
		}
		st.Generations = append(st.Generations, sg)
	}
	return st
}

// realProcesses is the process layer of a real supervisor.
func (s *Supervisor) realProcesses() processLayer {
	return processLayer{
		adopt:         s.adoptFromState,
		prepare:       s.prepare,
		start:         s.start,
		waitReady:     s.waitReadyCovering,
		stop:          func(in *Instance) error { sendStop(in, &s.cfg.Launch, s.log); return nil },
		kill:          func(in *Instance) error { in.signal(unix.SIGKILL); return nil },
		listenersGone: listenersGone,
		groupEmpty:    groupEmpty,
		save:          s.saveState,
	}
}

// prepare resolves the command and its environment, refuses probes aimed
// at the serving instance's ports, and runs the --check commands.
func (s *Supervisor) prepare(ctx context.Context, gen int, serving *Instance) (*prepared, error) {
	l := &s.cfg.Launch
	path, dir, err := l.Resolve()
	if err != nil {
		return nil, err
	}
	env, err := l.baseEnv()
	if err != nil {
		return nil, err
	}
	if serving != nil && slices.ContainsFunc(s.cfg.Probes, func(spec string) bool { _, ok := ProbeTarget(spec); return ok }) {
		// Only a probe with an address of its own can hit the old
		// instance's ports: without one, no scan of /proc.
		if err := s.checkProbes(serving); err != nil {
			return nil, err
		}
	}
	if len(l.Checks) > 0 {
		if err := l.RunChecks(ctx, s.cfg.Reaper, dir, append(env, healthcheck.EnvGeneration+"="+strconv.Itoa(gen))); err != nil {
			return nil, err
		}
	}
	return &prepared{path: path, dir: dir, env: env}, nil
}

func (s *Supervisor) start(gen int, p *prepared) (*Instance, error) {
	if p == nil {
		return nil, fmt.Errorf("%w: generation %d was not prepared", ErrStart, gen)
	}
	return startInstance(s.cfg.Reaper, &s.cfg.Launch, s.relays, gen, p.path, p.dir, p.env)
}

// coveragePoll is how often a ready instance's listeners are compared
// with the old one's, until the ready deadline.
const coveragePoll = 20 * time.Millisecond

// waitReadyCovering waits until in is ready and, if old still runs, until
// in listens on every address old shares with SO_REUSEPORT: a server may
// bind a port just after READY=1, so this is polled until the deadline.
// Where the handover is steered, it fails at once with a *ShadowError if
// in listens on an address that shadows a steered one (shadow.go): from
// its start, and once more when it is ready.
func (s *Supervisor) waitReadyCovering(ctx context.Context, in *Instance, deadline time.Time, old *Instance) error {
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	if old == nil || s.steer == nil {
		return s.waitReadyCovered(ctx, in, deadline, old)
	}
	ctx, refuse := context.WithCancelCause(ctx)
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		if err := s.steer.watchShadowing(ctx, in, old.Gen); err != nil {
			refuse(err)
		}
	}()
	err := s.waitReadyCovered(ctx, in, deadline, old)
	if err == nil {
		// Ready before the watch saw it: look once more.
		err = s.steer.shadowing(in, old.Gen, map[uint64]bool{})
	}
	refuse(nil)
	<-watched
	var shadow *ShadowError
	if cause := context.Cause(ctx); errors.As(cause, &shadow) {
		return cause
	}
	return err
}

// waitReadyCovered is waitReadyCovering without the watch for shadowing
// listeners.
func (s *Supervisor) waitReadyCovered(ctx context.Context, in *Instance, deadline time.Time, old *Instance) error {
	source, err := s.routeProbes(ctx, in, old)
	if err != nil {
		return err
	}
	if err := s.waitReady(ctx, in, time.Until(deadline), source); err != nil {
		return err
	}
	if old == nil {
		// Its listeners are read now, while it has no connection: the
		// next reload's steering reads them from here (see listenersOf);
		// the coverage check below reads them for a replacement.
		s.steer.mu.Lock()
		_, _ = s.steer.listenersOf(in)
		s.steer.mu.Unlock()
		return nil
	}
	for {
		err := s.checkCoverage(in, old)
		if err == nil {
			return nil
		}
		select {
		case <-old.Done():
			return nil // nothing left to cover
		case <-in.Done():
			in.tail.settle(time.Second)
			return fmt.Errorf("%w: generation %d (pid %d) %s; last stderr: %s", ErrExited, in.Gen, in.PID, in.ExitStatus(), in.StderrTail())
		case <-ctx.Done():
			if ctx.Err() == context.Canceled {
				return fmt.Errorf("generation %d: %w", in.Gen, ErrStopping)
			}
			return err
		case <-time.After(coveragePoll):
		}
	}
}

// waitReady waits until in is ready. Probes aimed at a shared address
// connect from source, if it is set (routeProbes).
func (s *Supervisor) waitReady(ctx context.Context, in *Instance, timeout time.Duration, source netip.Addr) error {
	var probes []healthcheck.Probe
	for _, spec := range s.cfg.Probes {
		p, err := healthcheck.Parse(spec, in.HealthAddr)
		if err != nil {
			return fmt.Errorf("health probe %q: %w", spec, err)
		}
		p = withSource(p, spec, source)
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
	return waitReady(ctx, in, s.cfg.Notify, probes, timeout)
}

// checkProbes refuses probes aimed at a port that the old instance serves:
// the old instance would answer them.
func (s *Supervisor) checkProbes(old *Instance) error {
	if s.cfg.Steering != SteeringKernel {
		return nil // routed to the new instance if the handover is steered (routeProbes)
	}
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

// sharedListenAddrs returns the addresses in's group listens on that are
// shared with SO_REUSEPORT (its health address and per-process ports,
// such as a pprof listener on :0, aside).
func sharedListenAddrs(in *Instance) ([]netip.AddrPort, error) {
	addrs, err := proc.GroupListenAddrs(in.PGID)
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(addrs, func(a netip.AddrPort) bool {
		return a.String() == in.HealthAddr || !reusePortShared(a)
	}), nil
}

// checkCoverage fails if the new instance does not listen on an address
// that the old one shares with SO_REUSEPORT. Both groups' members are read
// in one pass over /proc, with one sock_diag dump, and what the old group
// holds is kept for its stop signal, which follows at once when this
// passes (listenersAtStop, signalStop, listenersGone).
//
// The old group's descriptors are as many as its connections (tens of
// milliseconds to read with 10,000 open). If every listener on a shared
// address is on one the new group covers, the old group's shared
// listeners are the sockets there other than the new group's own and the
// supervisor's. Otherwise (another server shares some address with
// SO_REUSEPORT, or the old group listens where the new one does not) they
// come from the steering's read of the old group (steering.listenersOf:
// made once, when it was young, and checked against the dump).
func (s *Supervisor) checkCoverage(in, old *Instance) error {
	all, err := proc.ListeningSockets()
	if err != nil {
		return nil
	}
	members, err := proc.GroupsMembers(in.PGID, old.PGID)
	if err != nil {
		return nil
	}
	var newAddrs []netip.AddrPort
	// Not the old group's either: the supervisor's own sockets (the
	// placeholders of its steering, in the same reuseport groups).
	mine := proc.SocketInodes(os.Getpid())
	if mine == nil {
		mine = map[uint64]bool{}
	}
	for _, l := range proc.HeldBy(members[in.PGID], all) {
		newAddrs = append(newAddrs, l.Addr)
		mine[l.Inode] = true
	}
	covered := map[uint64]bool{} // the old group's shared listeners, if it has any
	uncovered := false
	for _, l := range all {
		switch {
		case mine[l.Inode] || l.Addr.String() == old.HealthAddr:
		case slices.ContainsFunc(newAddrs, func(h netip.AddrPort) bool { return proc.Covers(h, l.Addr) }):
			covered[l.Inode] = true
		case !uncovered && reusePortShared(l.Addr):
			uncovered = true
		}
	}
	if !uncovered {
		old.noteListening(covered, covered, members[old.PGID], time.Now())
		return nil
	}
	// The old group's listeners, as the steering last read them (its
	// descriptors are read again only if a listener appeared since).
	// The new group's read first: its listeners are then accounted for.
	s.steer.mu.Lock()
	_, err = s.steer.listenersOf(in)
	byAddr, errOld := s.steer.listenersOf(old)
	s.steer.mu.Unlock()
	err = errors.Join(err, errOld)
	if err != nil {
		return nil // cannot tell
	}
	inodes, shared := map[uint64]bool{}, map[uint64]bool{}
	var oldAddrs []netip.AddrPort
	for addr, socks := range byAddr {
		isShared := reusePortShared(addr)
		if isShared {
			oldAddrs = append(oldAddrs, addr)
		}
		for _, l := range socks {
			inodes[l.Inode] = true
			if isShared {
				shared[l.Inode] = true
			}
		}
	}
	old.noteListening(inodes, shared, members[old.PGID], time.Now())
	if miss := proc.Missing(newAddrs, oldAddrs); len(miss) > 0 {
		return fmt.Errorf("%w: new instance does not listen on %s, which generation %d serves", ErrNotReady, miss[0], old.Gen)
	}
	return nil
}

// Polling /proc and sock_diag costs a scan of every process; the waits
// below start fast (a runner instance closes its listener within
// milliseconds of SIGTERM) and slow down to pollMax.
const (
	pollMin = 5 * time.Millisecond
	pollMax = 100 * time.Millisecond
)

// poller sleeps between polls, longer each time, until ctx is done.
type poller struct{ d time.Duration }

func (p *poller) wait(ctx context.Context) bool {
	p.d = min(max(p.d*3/2, pollMin), pollMax)
	select {
	case <-ctx.Done():
		return false
	case <-time.After(p.d):
		return true
	}
}

// listenersGone returns once no process of in's group listens on a shared
// address, or its group is empty, or ctx is done. Where the listening
// sockets cannot be read, it waits for the group to be empty.
func listenersGone(ctx context.Context, in *Instance) {
	if shared := in.sharedAtStop(); len(shared) > 0 && socketsClosed(ctx, shared) {
		return
	}
	var p poller
	for {
		if in.groupEmpty() {
			return
		}
		if addrs, err := sharedListenAddrs(in); err == nil && len(addrs) == 0 {
			return
		}
		if !p.wait(ctx) {
			return
		}
	}
}

// groupEmpty returns once no process is left in in's group (the leader
// has exited), or ctx is done.
func groupEmpty(ctx context.Context, in *Instance) {
	var p poller
	for !in.groupEmpty() && p.wait(ctx) {
	}
	in.closeNotify()
}

// startReady prepares, starts and waits for generation gen outside Run
// (swap): the checks and the readiness share one deadline, ReadyTimeout.
// A generation that fails is killed with its group.
func (s *Supervisor) startReady(ctx context.Context, gen int, old *Instance) (*Instance, error) {
	deadline := time.Now().Add(s.cfg.ReadyTimeout)
	cctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	p, err := s.prepare(cctx, gen, old)
	if err != nil {
		return nil, err
	}
	p.env = steeringEnv(p.env, s.cfg.Steering != SteeringKernel && s.steer.path(gen) != PathKernel)
	in, err := s.start(gen, p)
	if err != nil {
		return nil, err
	}
	s.log.Info("generation started", KeyGeneration, gen, KeyPID, in.PID, "path", in.Path, "health_addr", in.HealthAddr)
	if err := s.waitReadyCovering(ctx, in, deadline, old); err != nil {
		in.setState(StateFailed)
		killGroupAndWait(in)
		in.closeNotify()
		return nil, err
	}
	return in, nil
}
