//go:build linux

package supervisor

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"
)

// The supervisor's decisions, as one state machine in the way of
// etcd-io/raft: machine.Step takes an Event (something that happened: a
// reload was asked for, an instance became ready or exited, its listeners
// closed, a timer fired) and returns the Actions that follow from it (start
// a generation, promote it, send a stop signal, kill a group, arm a timer,
// answer the waiters, ...). The machine does no I/O and reads no clock: the
// time comes in each event. Supervisor.Run performs the actions and turns
// everything that happens into the next events.
//
// The rules it keeps:
//
//   - At most one deploy (a reload, generation 1 or a crash replacement)
//     runs at a time; reloads asked for meanwhile coalesce into the next.
//   - No generation's process starts while an older one, other than the
//     serving one, still has a listener open (sock_diag): with runner's
//     steering a third member on the port sends traffic back to a draining
//     instance. Crash replacements wait for it too.
//   - A reload is done when the port is handed over: the old generation has
//     no listener left (or its group is empty). It finishes draining in the
//     background, up to its own deadline; at most MaxDraining generations
//     drain at once, and a reload beyond that waits for a slot (within the
//     ready timeout).
//   - Whenever nothing serves and nothing is starting, a restart is queued
//     (at once for the first crash in the window, with a doubling backoff
//     from the second), or the crash limit ends Run with ErrCrashLoop.
//   - Every waiter gets an answer, and a stop never waits on one.
//   - A process group is signalled only while the machine believes it has a
//     member (until its "group empty" event), and only for what the current
//     state says, never from a snapshot taken earlier.

// EventKind says what happened.
type EventKind int

// Event kinds.
const (
	EvStart         EventKind = iota // Run began; Adopted lists a previous supervisor's live generations
	EvReloadAsked                    // SIGHUP, the control socket or --watch; Waiter (may be nil) wants the result
	EvStopAsked                      // the first stop: drain and exit
	EvHurry                          // the second stop: SIGKILL every group now
	EvChecked                        // Gen's command was resolved and its --check commands ran; Err if refused
	EvStarted                        // Gen's process started (PID), or could not (Err)
	EvReady                          // Gen is ready (probes, READY=1, coverage), or not (Err)
	EvExited                         // Gen's main process exited (Status)
	EvListenersGone                  // sock_diag shows no listening socket of Gen's process group
	EvGroupEmpty                     // no process is left in Gen's process group
	EvTimer                          // Timer fired
	EvCutOver                        // Gen's listeners get no new connection and are quiet (steering: machine_steering.go)
	EvShadowing                      // Gen, starting, listens on an address that shadows a steered one (Err: the *ShadowError)
	EvHoldFailed                     // Gen's shadowing addresses could not be held (Err)
)

var eventNames = [...]string{"start", "reload", "stop", "hurry", "checked", "started", "ready", "exited",
	"listeners-gone", "group-empty", "timer", "cut-over", "shadowing", "hold-failed"}

func (k EventKind) String() string { return eventNames[k] }

// Event is one input of the machine.
type Event struct {
	Kind    EventKind
	Now     time.Time
	Gen     int
	PID     int           // EvStarted
	Err     error         // EvChecked, EvStarted, EvReady
	Status  string        // EvExited: how it ended
	Waiter  chan<- Result // EvReloadAsked: buffered (1); nil for SIGHUP and --watch
	Timer   TimerID       // EvTimer
	Adopted []AdoptedGen  // EvStart
	LastGen int           // EvStart: the last generation number a previous supervisor gave (state file)
}

// AdoptedGen is a live generation of a previous supervisor, read from the
// state file.
type AdoptedGen struct {
	Gen      int
	PID      int
	Draining bool // it was draining: let it finish, do not stop it again
	// StopPending: draining, but its stop signal was still to be sent (a
	// supervisor killed during a cutover): send it now, keep its deadline.
	StopPending bool      // Deadline is then the cutover's; the drain gets its own from the signal
	Deadline    time.Time // its absolute drain deadline (zero: now + drain timeout)
	Leftover    bool      // it was starting (a reload the previous supervisor never finished): kill it
	// Refused: refused for a shadowing address and held by the previous
	// supervisor, whose placeholders died with it: kill it at once.
	Refused bool
}

// TimerKind names what a timer is for.
type TimerKind int

// Timer kinds.
const (
	TimerBackoff   TimerKind = iota // the restart of a crashed instance is due
	TimerDrain                      // Gen's drain deadline: SIGKILL its group
	TimerKillGrace                  // Gen's group was SIGKILLed this long ago: stop waiting for it
	TimerSlot                       // a reload waited too long for a draining generation to finish
	TimerCutover                    // Gen's cutover was not quiet in time: send its stop signal anyway
	TimerHold                       // Gen, refused and held, still listens this long after its stop signal: SIGKILL its group
)

// TimerID identifies a timer; arming one again moves it.
type TimerID struct {
	Kind TimerKind
	Gen  int
}

func (t TimerID) String() string {
	name := [...]string{"backoff", "drain", "kill-grace", "slot", "cutover", "hold"}[t.Kind]
	if t.Gen == 0 {
		return name
	}
	return fmt.Sprintf("%s/%d", name, t.Gen)
}

// ActionKind says what to do.
type ActionKind int

// Action kinds.
const (
	ActRunChecks ActionKind = iota // resolve Gen's command, refuse probes aimed at a shared port, run --check until At
	ActStart                       // start Gen's process; then report EvReady by At (probes, READY=1, coverage of Old's shared addresses)
	ActPromote                     // Gen now serves
	ActStop                        // send Gen's group the stop signal; it drains until At
	ActKill                        // SIGKILL Gen's group
	ActCancel                      // cancel Gen's --check commands
	ActWatch                       // report EvListenersGone for Gen
	ActTimer                       // arm Timer at At
	ActAnswer                      // answer Waiters with Result (and record it as the last reload)
	ActNotify                      // send Text to systemd
	ActSave                        // write the state file
	ActLog                         // log Msg at Level with Args
	ActExit                        // Run returns Err
	ActDark                        // steering: the port's new connections go to Old's listeners only, before Gen starts
	ActCutover                     // steering: new connections go to Gen's listeners; report EvCutOver for Old once its are quiet, by At
	ActCompact                     // steering: the old generation's listeners are gone; close the placeholders no longer needed
	ActUnsteer                     // steering: nothing serves; close every placeholder (clients are refused, not queued)
	ActHold                        // steering: Gen's shadowing addresses drop new connections; report EvCutOver for Gen once its listeners there are quiet, by At (EvHoldFailed if they cannot be held)
	ActRelease                     // steering: close the placeholders that hold Gen's shadowing addresses
)

var actionNames = [...]string{"checks", "start", "promote", "stop", "kill", "cancel", "watch", "timer",
	"answer", "notify", "save", "log", "exit", "dark", "cutover", "compact", "unsteer", "hold", "release"}

func (k ActionKind) String() string { return actionNames[k] }

// Action is one output of the machine.
type Action struct {
	Kind    ActionKind
	Gen     int
	Old     int       // ActStart: the serving generation whose shared addresses Gen must cover (0: none)
	At      time.Time // deadline (ActRunChecks, ActStart, ActStop) or when (ActTimer)
	Timer   TimerID
	Waiters []chan<- Result
	Result  Result
	Text    string // ActNotify
	Level   slog.Level
	Msg     string
	Args    []any
	Err     error // ActExit
}

// String renders an action the way the table tests spell it.
func (a Action) String() string {
	switch a.Kind {
	case ActTimer:
		return "timer " + a.Timer.String()
	case ActAnswer:
		if a.Result.OK {
			return fmt.Sprintf("answer %d ok", a.Result.Generation)
		}
		return fmt.Sprintf("answer %d %s", a.Result.Generation, errName(a.Result.Err))
	case ActNotify:
		first, _, _ := strings.Cut(a.Text, "\n")
		return "notify " + first
	case ActSave:
		return "save"
	case ActLog:
		return "log " + a.Msg
	case ActExit:
		if a.Err == nil {
			return "exit ok"
		}
		return "exit " + errName(a.Err)
	case ActCompact, ActUnsteer:
		return a.Kind.String()
	}
	return fmt.Sprintf("%s %d", a.Kind, a.Gen)
}

// errName is a short name for the sentinel an error wraps.
func errName(err error) string {
	for _, e := range []struct {
		err  error
		name string
	}{
		{ErrStopping, "stopping"}, {ErrExited, "exited"}, {ErrExitedInHandover, "exited-in-handover"}, {ErrNotReady, "not-ready"},
		{ErrCheckFailed, "check-failed"}, {ErrStart, "start-failed"}, {ErrCrashLoop, "crash-loop"},
		{ErrTooManyDraining, "too-many-draining"}, {ErrProbeSharedPort, "probe-shared-port"},
	} {
		if errors.Is(err, e.err) {
			return e.name
		}
	}
	if err == nil {
		return "nil"
	}
	return "error"
}

// machineConfig holds what the machine needs of Config, defaults applied.
type machineConfig struct {
	ReadyTimeout, DrainTimeout time.Duration
	BackoffMin, BackoffMax     time.Duration
	CrashLimit                 int
	CrashWindow                time.Duration
	MaxDraining                int
	PID                        int // the supervisor's own, for MAINPID=
	// Steered: the supervisor owns the port's steering (machine_steering.go):
	// a new generation starts dark and the old one's stop signal waits
	// for the cutover. False: the kernel path.
	Steered bool
}

// killGrace is how long a SIGKILLed group may take to empty before the
// machine stops waiting for it (a process stuck in the kernel).
const killGrace = 5 * time.Second

// genStage is where one generation is.
type genStage int

const (
	stChecking genStage = iota // its command is resolved, --check runs
	stStarting                 // its process runs, not ready yet
	stServing
	stDraining // stop signal sent (retired, or stopped with the supervisor)
	stFailed   // never ready (or abandoned): killed
	stExited   // its group is empty
)

func (st genStage) String() string {
	return [...]string{StateStarting, StateStarting, StateServing, StateDraining, StateFailed, StateExited}[st]
}

// gen is the machine's view of one generation.
type gen struct {
	n         int
	pid       int
	stage     genStage
	crashed   bool      // it exited while serving
	adopted   bool      // started by a previous supervisor
	exited    bool      // its main process exited
	listening bool      // may still have a listening socket (until EvListenersGone)
	empty     bool      // its group is empty (or it never had a process)
	watched   bool      // ActWatch was emitted
	killed    bool      // ActKill was emitted while it was not empty
	deadline  time.Time // drain deadline (stDraining)
	stopped   time.Time // when its stop signal was decided (stDraining)
	cutover   bool      // its stop signal waits for EvCutOver (machine_steering.go)
	held      bool      // refused for a shadowing address: held (ActHold) until ActRelease
	refused   bool      // refused for a shadowing address (its reload is answered once its listeners are gone), or adopted as such
	status    string    // how its main process ended
}

// stateName is g's state in the status and the state file: its stage's,
// or StateRefused while its address is held (an adopter kills it).
func (g *gen) stateName() string {
	if g.held && g.stage == stDraining {
		return StateRefused
	}
	return g.stage.String()
}

// deployStage is where the running deploy is.
type deployStage int

const (
	dChecking    deployStage = iota // ActRunChecks sent
	dChecked                        // waiting until no older listener is open
	dStarting                       // ActStart sent, waiting for EvStarted
	dWaitReady                      // waiting for EvReady
	dHandingOver                    // promoted; waiting until the old generation has no listener left
	dFailing                        // failed: its generation is killed; answered once its group is empty
)

// deploy is one attempt to get a new generation serving.
type deploy struct {
	gen           int
	stage         deployStage
	reload        bool // asked for (waiters, SIGHUP, --watch), not only a restart
	restart       bool // a replacement for a crashed instance (not bound by MaxDraining)
	initial       bool // the deploy of EvStart (not bound by MaxDraining: it brings adopted ones to a known state)
	first         bool // generation 1 of a run that adopted nothing: failing ends Run
	aborted       bool // stop asked while its checks or start were running
	waiters       []chan<- Result
	notBefore     time.Time // a restart's backoff
	slotBy        time.Time // a reload waiting for a draining slot fails at this time
	began         time.Time
	deadline      time.Time // ready deadline: checks and readiness together
	checkedAt     time.Time // when its checks ended (dChecked): the wait for older listeners does not count
	restartQueued bool      // the serving one crashed while it failed (dFailing): that crash queued the restart
	old           int       // the generation it promoted over (dHandingOver)
	err           error     // why it failed (dFailing)
}

// machine is the supervisor's state. It is not safe for concurrent use:
// Supervisor.Run owns it.
type machine struct {
	cfg machineConfig

	gens      []*gen
	serving   *gen
	deploy    *deploy // running
	queued    *deploy // asked for, not begun
	lastGen   int
	crashes   []time.Time
	readySent bool      // READY=1 went to systemd: later deploys are reloads
	begun     bool      // EvStart was handled
	stopEarly EventKind // EvStopAsked or EvHurry asked before EvStart (0: none)
	stopping  bool
	exitErr   error // what Run returns once everything has stopped
	done      bool  // ActExit was emitted

	out []Action
}

func newMachine(cfg machineConfig) *machine {
	if cfg.MaxDraining < 1 {
		cfg.MaxDraining = 1
	}
	return &machine{cfg: cfg}
}

// Step handles one event and returns the actions to perform, in order.
func (m *machine) Step(ev Event) []Action {
	m.out = nil
	if m.done {
		if ev.Kind == EvReloadAsked {
			m.answer([]chan<- Result{ev.Waiter}, Result{Err: ErrStopping})
		}
		return m.take()
	}
	// Events about a process are facts, whatever the phase.
	switch ev.Kind {
	case EvExited:
		m.exited(ev)
	case EvListenersGone:
		if g := m.gen(ev.Gen); g != nil {
			g.listening = false
			m.release(g)
			m.handedOver(ev.Now, g)
			m.refusedGone(ev.Now, g)
		}
	case EvGroupEmpty:
		m.groupEmpty(ev)
	default:
		if m.stopping {
			m.stepStopping(ev)
		} else {
			m.stepRunning(ev)
		}
	}
	m.advance(ev.Now)
	return m.take()
}

func (m *machine) take() []Action {
	out := m.out
	m.out = nil
	return out
}

func (m *machine) emit(a Action) { m.out = append(m.out, a) }

func (m *machine) log(level slog.Level, msg string, args ...any) {
	m.emit(Action{Kind: ActLog, Level: level, Msg: msg, Args: args})
}

func (m *machine) gen(n int) *gen {
	for _, g := range m.gens {
		if g.n == n {
			return g
		}
	}
	return nil
}

// stepRunning handles the events of every phase but stopping.
func (m *machine) stepRunning(ev Event) {
	switch ev.Kind {
	case EvStart:
		if !m.begun {
			m.begun = true
			m.start(ev)
			if m.stopEarly != 0 {
				m.stepRunning(Event{Kind: m.stopEarly, Now: ev.Now})
			}
		}
	case EvReloadAsked:
		m.reloadAsked(ev)
	case EvStopAsked, EvHurry:
		if !m.begun {
			// Asked while Run read the state file: stop what it adopts.
			m.stopEarly = max(m.stopEarly, ev.Kind)
			return
		}
		m.beginStop(ev.Now, nil, ErrStopping)
		if ev.Kind == EvHurry {
			m.hurry(ev.Now)
		}
	case EvChecked:
		d := m.current(ev.Gen, dChecking)
		if d == nil {
			return
		}
		if ev.Err != nil {
			m.failDeploy(ev.Now, ev.Err)
			return
		}
		d.stage, d.checkedAt = dChecked, ev.Now // advance starts it once no older listener is open
	case EvStarted:
		m.started(ev)
	case EvReady:
		d := m.current(ev.Gen, dWaitReady)
		if d == nil {
			return
		}
		if ev.Err != nil {
			m.failDeploy(ev.Now, ev.Err)
			return
		}
		if g := m.gen(d.gen); g.exited { // also set by its group's emptying
			// Its exit raced its readiness (two goroutines post them): it
			// never serves.
			m.failDeploy(ev.Now, fmt.Errorf("%w: generation %d (pid %d) %s", ErrExited, g.n, g.pid, g.status))
			return
		}
		m.promote(ev.Now, d)
	case EvTimer:
		m.timer(ev)
	case EvCutOver:
		m.cutOver(ev)
	case EvShadowing:
		m.refuseShadowing(ev)
	case EvHoldFailed:
		m.holdFailed(ev)
	}
}

// stepStopping handles events once a stop was asked for: nothing new
// starts, every waiter is answered, and what was starting is dropped.
func (m *machine) stepStopping(ev Event) {
	switch ev.Kind {
	case EvReloadAsked:
		m.answer([]chan<- Result{ev.Waiter}, Result{Err: ErrStopping})
	case EvHurry:
		m.hurry(ev.Now)
	case EvChecked:
		if d := m.current(ev.Gen, dChecking); d != nil {
			m.gen(d.gen).empty, m.gen(d.gen).listening = true, false
			m.gen(d.gen).stage = stFailed
			m.deploy = nil
		}
	case EvStarted:
		m.started(ev)
	case EvReady:
		// A deploy is never left waiting for ready while stopping.
	case EvTimer:
		m.timer(ev)
	case EvCutOver:
		m.cutOver(ev)
	case EvHoldFailed:
		m.holdFailed(ev)
	case EvStart, EvStopAsked, EvShadowing:
		// A deploy is never left waiting for ready while stopping.
	}
}

// start handles EvStart: take over what a previous supervisor left
// running, then deploy generation 1 (or the next after the adopted one).
func (m *machine) start(ev Event) {
	d := &deploy{first: true, initial: true, began: ev.Now}
	if q := m.queued; q != nil {
		// Reloads asked for before Run began (while the state file was
		// read) are this deploy: it comes after the adoption.
		d.reload, d.waiters = true, q.waiters
	}
	// Numbers are never given twice, also across a supervisor restart:
	// the state file records the last one given, adopted or not.
	m.lastGen = max(m.lastGen, ev.LastGen)
	for _, a := range ev.Adopted {
		g := &gen{n: a.Gen, pid: a.PID, adopted: true, listening: true}
		m.gens = append(m.gens, g)
		m.lastGen = max(m.lastGen, a.Gen)
		if a.Leftover {
			// Nobody would ever promote it.
			m.log(slog.LevelWarn, "killing leftover generation of a previous supervisor", KeyGeneration, g.n, KeyPID, g.pid)
			g.stage = stFailed
			m.kill(ev.Now, g)
			continue
		}
		if a.Refused {
			// Its hold's placeholders died with the previous supervisor:
			// it now takes the address it shadows (machine_steering.go).
			m.log(slog.LevelWarn, "killing a refused generation whose address a previous supervisor held: the hold died with it",
				KeyGeneration, g.n, KeyPID, g.pid)
			g.stage, g.refused = stFailed, true
			m.kill(ev.Now, g)
			continue
		}
		if !a.Draining && (m.serving == nil || a.Gen > m.serving.n) {
			if m.serving != nil {
				m.retire(ev.Now, m.serving)
			}
			g.stage = stServing
			m.serving = g
			m.log(slog.LevelInfo, "adopted serving instance of a previous supervisor", KeyGeneration, g.n, KeyPID, g.pid)
			continue
		}
		if !a.Draining {
			m.retire(ev.Now, g)
			continue
		}
		g.stage = stDraining
		g.deadline = a.Deadline
		if g.deadline.IsZero() {
			g.deadline = ev.Now.Add(m.cfg.DrainTimeout)
		}
		if a.StopPending {
			m.log(slog.LevelInfo, "adopted draining instance whose stop signal was pending (its supervisor died during the cutover): sending it",
				KeyGeneration, g.n, KeyPID, g.pid)
			m.retire(ev.Now, g)
			continue
		}
		m.log(slog.LevelInfo, "adopted draining instance of a previous supervisor; it finishes its drain",
			KeyGeneration, g.n, KeyPID, g.pid, "deadline", g.deadline)
		m.emit(Action{Kind: ActTimer, Timer: TimerID{TimerDrain, g.n}, At: g.deadline})
		m.watch(g)
	}
	slices.SortFunc(m.gens, func(a, b *gen) int { return a.n - b.n })
	if m.serving != nil {
		d.first = false // failing leaves the adopted one serving
	}
	m.queued = d
}

// reloadAsked queues a reload, coalescing with one already queued. Asked
// for during a crash restart's backoff, it is that restart, now.
func (m *machine) reloadAsked(ev Event) {
	q := m.queued
	if q == nil {
		q = &deploy{began: ev.Now}
		m.queued = q
	}
	q.reload = true
	q.notBefore = time.Time{}
	if ev.Waiter != nil {
		q.waiters = append(q.waiters, ev.Waiter)
	}
}

// advance begins what can begin now, and ends Run once everything is
// stopped.
func (m *machine) advance(now time.Time) {
	if m.stopping {
		if m.deploy == nil && !slices.ContainsFunc(m.gens, func(g *gen) bool { return !g.empty }) {
			m.log(slog.LevelInfo, "stopped")
			m.emit(Action{Kind: ActExit, Err: m.exitErr}) // last: Run returns on it
			m.done = true
		}
		return
	}
	if !m.begun {
		return // reloads asked for before EvStart wait for the adoption
	}
	if m.deploy == nil && m.queued != nil {
		q := m.queued
		switch {
		case now.Before(q.notBefore):
		case !q.restart && !q.initial && m.serving != nil && m.draining() >= m.cfg.MaxDraining:
			if q.slotBy.IsZero() {
				q.slotBy = now.Add(m.cfg.ReadyTimeout)
				m.log(slog.LevelInfo, "reload waits for a draining generation to finish",
					"draining", m.draining(), "max_draining", m.cfg.MaxDraining)
				m.emit(Action{Kind: ActTimer, Timer: TimerID{Kind: TimerSlot}, At: q.slotBy})
			}
		default:
			m.begin(now)
		}
	}
	if d := m.deploy; d != nil && d.stage == dChecked && m.noOlderListener(d.gen) {
		d.stage = dStarting
		d.deadline = d.deadline.Add(now.Sub(d.checkedAt)) // the wait was not its own
		old := 0
		if m.serving != nil {
			old = m.serving.n
		}
		if old != 0 && m.cfg.Steered {
			m.emit(Action{Kind: ActDark, Gen: d.gen, Old: old})
		}
		m.emit(Action{Kind: ActStart, Gen: d.gen, Old: old, At: d.deadline})
	}
	// Nothing serves and nothing is starting: a restart must be queued.
	// Every path that leaves nothing serving queues one; this is the net.
	if m.begun && m.serving == nil && m.deploy == nil && m.queued == nil {
		m.log(slog.LevelError, "nothing serves and nothing is starting; restarting")
		m.queued = &deploy{restart: true, began: now}
		m.advance(now)
	}
}

// draining counts generations that drain.
func (m *machine) draining() int {
	n := 0
	for _, g := range m.gens {
		if g.stage == stDraining && !g.empty {
			n++
		}
	}
	return n
}

// noOlderListener reports whether every generation older than n, the
// serving one aside, has closed its listeners.
func (m *machine) noOlderListener(n int) bool {
	for _, g := range m.gens {
		if g.n < n && g != m.serving && g.listening && !g.empty {
			return false
		}
	}
	return true
}

// begin starts the queued deploy: the next generation's checks.
func (m *machine) begin(now time.Time) {
	d := m.queued
	m.queued = nil
	m.deploy = d
	m.lastGen++
	d.gen, d.stage, d.began = m.lastGen, dChecking, now
	d.deadline = now.Add(m.cfg.ReadyTimeout)
	m.gens = append(m.gens, &gen{n: d.gen, stage: stChecking, listening: true})
	m.emit(Action{Kind: ActSave}) // the number is taken, also if we are killed now
	if m.readySent {
		// Every deploy after the first READY=1 is a reload to systemd,
		// also a crash restart: Type=notify-reload waits for this message
		// after its SIGHUP, whatever the deploy.
		m.emit(Action{Kind: ActNotify, Text: fmt.Sprintf("RELOADING=1\nSTATUS=starting generation %d", d.gen)})
	}
	if m.serving != nil {
		m.log(slog.LevelInfo, "reload started", KeyGeneration, d.gen, "old_generation", m.serving.n, "old_pid", m.serving.pid)
	}
	m.emit(Action{Kind: ActRunChecks, Gen: d.gen, At: d.deadline})
}

// current returns the running deploy if it is generation n at stage st.
func (m *machine) current(n int, st deployStage) *deploy {
	if d := m.deploy; d != nil && d.gen == n && d.stage == st {
		return d
	}
	return nil
}

func (m *machine) started(ev Event) {
	d := m.current(ev.Gen, dStarting)
	if d == nil {
		return
	}
	g := m.gen(d.gen)
	if ev.Err != nil {
		g.empty, g.listening = true, false
		m.failDeploy(ev.Now, ev.Err)
		return
	}
	g.pid, g.stage = ev.PID, stStarting
	d.stage = dWaitReady
	m.emit(Action{Kind: ActSave})
	if d.aborted || m.stopping {
		// Stopped while it was being started: it never serves.
		g.stage = stFailed
		m.kill(ev.Now, g)
		m.deploy = nil
	}
}

// promote makes the deploy's generation the serving one and retires the
// one it replaces; the deploy is done once that one's listeners are gone.
func (m *machine) promote(now time.Time, d *deploy) {
	g := m.gen(d.gen)
	old := m.serving
	g.stage = stServing
	m.serving = g
	m.emit(Action{Kind: ActPromote, Gen: g.n})
	if old == nil {
		m.emit(Action{Kind: ActSave})
		m.finishDeploy(now, nil)
		return
	}
	d.stage, d.old = dHandingOver, old.n
	if m.cfg.Steered {
		m.cutover(now, g, old)
		return
	}
	m.retire(now, old)
	m.handedOver(now, old)
}

// retire sends g the stop signal and arms its drain deadline.
func (m *machine) retire(now time.Time, g *gen) {
	g.stage = stDraining
	g.stopped = now
	g.deadline = now.Add(m.cfg.DrainTimeout)
	m.emit(Action{Kind: ActSave}) // draining on disk before the signal: a supervisor killed now adopts it as such
	m.emit(Action{Kind: ActStop, Gen: g.n, At: g.deadline})
	m.emit(Action{Kind: ActTimer, Timer: TimerID{TimerDrain, g.n}, At: g.deadline})
	if g.held {
		// A refused generation keeps its address held until its listeners
		// are gone: it gets refusedGrace to close them.
		m.emit(Action{Kind: ActTimer, Timer: TimerID{TimerHold, g.n}, At: now.Add(m.refusedGrace())})
	}
	m.emit(Action{Kind: ActNotify, Text: fmt.Sprintf("EXTEND_TIMEOUT_USEC=%d", (m.cfg.DrainTimeout + 10*time.Second).Microseconds())})
	m.watch(g)
}

func (m *machine) watch(g *gen) {
	if !g.watched && !g.empty {
		g.watched = true
		m.emit(Action{Kind: ActWatch, Gen: g.n})
	}
}

// kill SIGKILLs g's group, if it may still have a member.
func (m *machine) kill(now time.Time, g *gen) {
	if g.empty || g.killed {
		return
	}
	g.killed = true
	m.emit(Action{Kind: ActKill, Gen: g.n})
	m.emit(Action{Kind: ActTimer, Timer: TimerID{TimerKillGrace, g.n}, At: now.Add(killGrace)})
	m.watch(g)
}

// handedOver ends the deploy handing over from g once g listens no more.
func (m *machine) handedOver(now time.Time, g *gen) {
	d := m.deploy
	if d == nil || d.stage != dHandingOver || d.old != g.n || (g.listening && !g.empty) {
		return
	}
	if m.cfg.Steered {
		m.emit(Action{Kind: ActCompact, Gen: d.gen})
	}
	m.finishDeploy(now, nil)
}

// finishDeploy ends the running deploy: its waiters get the result.
func (m *machine) finishDeploy(now time.Time, err error) {
	d := m.deploy
	m.deploy = nil
	res := Result{Generation: d.gen, OK: err == nil, Err: err, Started: d.began, Duration: now.Sub(d.began)}
	if err != nil {
		res.Error = err.Error()
	}
	if err == nil && d.old != 0 {
		m.log(slog.LevelInfo, "reload done", KeyGeneration, d.gen, KeyPID, m.gen(d.gen).pid, KeyDuration, res.Duration.Round(time.Millisecond))
	}
	m.answer(d.waiters, res)
	if m.stopping {
		return
	}
	status := "STATUS=no generation serving"
	if m.serving != nil {
		status = fmt.Sprintf("STATUS=generation %d serving (pid %d)", m.serving.n, m.serving.pid)
	}
	switch {
	case !m.readySent && m.serving != nil:
		m.readySent = true
		m.emit(Action{Kind: ActNotify, Text: fmt.Sprintf("READY=1\nMAINPID=%d\n%s", m.cfg.PID, status)})
	case m.readySent:
		m.emit(Action{Kind: ActNotify, Text: "READY=1\n" + status})
	}
}

func (m *machine) answer(waiters []chan<- Result, res Result) {
	if res.Err != nil && res.Error == "" {
		res.Error = res.Err.Error()
	}
	waiters = slices.DeleteFunc(slices.Clone(waiters), func(w chan<- Result) bool { return w == nil })
	m.emit(Action{Kind: ActAnswer, Waiters: waiters, Result: res})
}

// failDeploy fails the running deploy with err: its generation is
// killed, and the deploy ends once its group is empty, so that whoever
// hears of the failure finds nothing of it left.
func (m *machine) failDeploy(now time.Time, err error) {
	d := m.deploy
	g := m.gen(d.gen)
	if g.stage == stStarting || g.stage == stChecking {
		g.stage = stFailed
	}
	if g.pid == 0 {
		g.empty, g.listening = true, false
	}
	m.kill(now, g)
	m.emit(Action{Kind: ActSave})
	msg := "generation failed"
	if m.serving != nil {
		msg = "generation failed; previous keeps serving"
	}
	m.log(slog.LevelError, msg, KeyGeneration, d.gen, KeyError, err, KeyDuration, now.Sub(d.began).Round(time.Millisecond))
	d.stage, d.err = dFailing, err
	if g.empty {
		m.concludeFailure(now)
	}
}

// concludeFailure ends a failed deploy whose generation is gone: its
// waiters get the error; if nothing serves, that counts as a crash
// (generation 1 of a run ends it instead).
func (m *machine) concludeFailure(now time.Time) {
	d := m.deploy
	m.finishDeploy(now, d.err)
	switch {
	case m.serving != nil:
		if d.first {
			m.log(slog.LevelWarn, "new generation failed; the adopted instance keeps serving", KeyGeneration, m.serving.n, KeyPID, m.serving.pid)
		}
	case d.first && m.stopping:
		m.exitErr = d.err
	case m.stopping:
	case d.first:
		m.beginStop(now, d.err, fmt.Errorf("%w: generation %d failed: %w", ErrStopping, d.gen, d.err))
	case d.restartQueued:
		// Its old one crashed while it failed: that crash queued the
		// restart, and this failure is not another one.
	default:
		m.crashed(now, fmt.Sprintf("generation %d failed while nothing serves", d.gen))
	}
}

// exited handles EvExited: a generation's main process is gone.
func (m *machine) exited(ev Event) {
	g := m.gen(ev.Gen)
	if g == nil || g.exited {
		return
	}
	g.exited, g.status = true, ev.Status
	switch g.stage {
	case stServing:
		g.stage, g.crashed = stFailed, true
		m.serving = nil
		m.unsteer()
		m.kill(ev.Now, g) // leftovers of its group may hold the ports
		m.emit(Action{Kind: ActSave})
		// Gen set: the loop adds the instance's last stderr lines.
		m.emit(Action{Kind: ActLog, Gen: g.n, Level: slog.LevelError, Msg: "serving instance exited",
			Args: []any{KeyGeneration, g.n, KeyPID, g.pid, "status", g.status}})
		if m.stopping {
			return
		}
		if d := m.deploy; d != nil && d.stage == dHandingOver && d.gen == g.n {
			// It took over and died before the port was handed over: the
			// reload failed, whatever the old one's listeners do next.
			m.finishDeploy(ev.Now, fmt.Errorf("%w: generation %d (pid %d) %s", ErrExitedInHandover, g.n, g.pid, g.status))
		}
		m.crashed(ev.Now, fmt.Sprintf("generation %d exited (%s) while serving", g.n, g.status))
	case stStarting:
		// Its readiness check reports the exit, with its stderr.
		m.kill(ev.Now, g)
	case stDraining, stFailed:
		// Its group empties, or its deadline kills it.
	}
}

// crashed records a crash; over the limit it ends Run with ErrCrashLoop,
// else it queues a restart: at once for the first crash in the window
// (as soon as no older listener is open), then with a doubling backoff.
// A deploy already starting will serve instead.
func (m *machine) crashed(now time.Time, why string) {
	m.crashes = append(m.crashes, now)
	m.crashes = slices.DeleteFunc(m.crashes, func(t time.Time) bool { return now.Sub(t) > m.cfg.CrashWindow })
	n := len(m.crashes)
	if n > m.cfg.CrashLimit {
		err := fmt.Errorf("%w: %d crashes within %v (limit %d)", ErrCrashLoop, n, m.cfg.CrashWindow, m.cfg.CrashLimit)
		m.log(slog.LevelError, "giving up", KeyError, err)
		m.beginStop(now, err, fmt.Errorf("%w: %w", ErrStopping, err))
		return
	}
	if d := m.deploy; d != nil && d.stage < dHandingOver {
		m.log(slog.LevelWarn, "no replacement: the generation that is starting will serve", "why", why, KeyGeneration, d.gen)
		return
	}
	if d := m.deploy; d != nil && d.stage == dFailing {
		d.restartQueued = true
	}
	m.emit(Action{Kind: ActNotify, Text: fmt.Sprintf("STATUS=%s; restarting", why)})
	delay := time.Duration(0)
	if n > 1 {
		delay = m.cfg.BackoffMin
		for i := 2; i < n && delay < m.cfg.BackoffMax; i++ {
			delay *= 2
		}
		delay = min(delay, m.cfg.BackoffMax)
	}
	q := m.queued
	if q == nil {
		q = &deploy{began: now}
		m.queued = q
	}
	q.restart = true
	if q.reload || delay == 0 {
		q.notBefore = time.Time{}
		m.log(slog.LevelWarn, "starting a replacement now, once no older generation listens", "why", why)
		return
	}
	q.notBefore = now.Add(delay)
	m.log(slog.LevelWarn, "restarting after a backoff", "why", why, "backoff", delay, "crashes", n)
	m.emit(Action{Kind: ActTimer, Timer: TimerID{Kind: TimerBackoff}, At: q.notBefore})
}

// groupEmpty handles EvGroupEmpty: nothing of g is left.
func (m *machine) groupEmpty(ev Event) {
	g := m.gen(ev.Gen)
	if g == nil || g.empty {
		return
	}
	g.empty, g.listening = true, false
	m.release(g)
	if g == m.serving && !g.exited {
		// Not seen exiting first (an adopted instance, or a kill grace
		// that ran out): a crash all the same.
		m.exited(Event{Kind: EvExited, Now: ev.Now, Gen: g.n, Status: g.status})
	}
	g.exited = true
	if g.stage == stDraining || g.crashed {
		lvl := slog.LevelInfo
		if g.killed {
			lvl = slog.LevelWarn
		}
		args := []any{KeyGeneration, g.n, KeyPID, g.pid, "status", g.status, "killed", g.killed}
		if !g.stopped.IsZero() {
			args = append(args, KeyDuration, ev.Now.Sub(g.stopped).Round(time.Millisecond)) // since its stop signal
		}
		m.log(lvl, "instance exited", args...)
	}
	if g.stage == stDraining || g.stage == stServing {
		g.stage = stExited
	}
	m.emit(Action{Kind: ActSave})
	m.handedOver(ev.Now, g)
	if d := m.deploy; d != nil && d.stage == dFailing && d.gen == g.n {
		m.concludeFailure(ev.Now)
	}
	m.trim()
}

// trim forgets old generations that are gone, keeping the last few.
func (m *machine) trim() {
	const keep = 8
	for len(m.gens) > keep {
		i := slices.IndexFunc(m.gens, func(g *gen) bool { return g.empty && g != m.serving })
		if i < 0 || (m.deploy != nil && m.gens[i].n == m.deploy.gen) {
			return
		}
		m.gens = slices.Delete(m.gens, i, i+1)
	}
}

func (m *machine) timer(ev Event) {
	switch ev.Timer.Kind {
	case TimerBackoff:
		// advance begins the restart if it is due.
	case TimerDrain:
		if g := m.gen(ev.Timer.Gen); g != nil && g.stage == stDraining && !g.empty && !ev.Now.Before(g.deadline) {
			m.log(slog.LevelWarn, "drain deadline passed: SIGKILL of its process group", KeyGeneration, g.n, KeyPID, g.pid)
			m.kill(ev.Now, g)
		}
	case TimerKillGrace:
		if g := m.gen(ev.Timer.Gen); g != nil && !g.empty && g.killed {
			m.log(slog.LevelError, "process group still not empty after SIGKILL; no longer waiting for it",
				KeyGeneration, g.n, KeyPID, g.pid, "waited", killGrace)
			m.groupEmpty(Event{Kind: EvGroupEmpty, Now: ev.Now, Gen: g.n})
		}
	case TimerHold:
		m.holdTimer(ev)
	case TimerCutover:
		if g := m.gen(ev.Timer.Gen); g != nil && g.cutover && !ev.Now.Before(g.deadline) {
			m.log(slog.LevelWarn, "cutover not quiet by its deadline: sending the stop signal", KeyGeneration, g.n, KeyPID, g.pid)
			m.cutOver(Event{Kind: EvCutOver, Now: ev.Now, Gen: g.n})
		}
	case TimerSlot:
		q := m.queued
		if q == nil || q.slotBy.IsZero() || ev.Now.Before(q.slotBy) || q.restart || q.initial || m.serving == nil || m.draining() < m.cfg.MaxDraining {
			return
		}
		m.queued = nil
		err := fmt.Errorf("%w: %d generations still draining after %v (--max-draining %d)",
			ErrTooManyDraining, m.draining(), m.cfg.ReadyTimeout, m.cfg.MaxDraining)
		m.log(slog.LevelError, "reload refused", KeyError, err)
		if m.readySent {
			// systemd's notify-reload waits for RELOADING=1, then READY=1.
			m.emit(Action{Kind: ActNotify, Text: "RELOADING=1\nSTATUS=reload refused: too many generations draining"})
			m.emit(Action{Kind: ActNotify, Text: fmt.Sprintf("READY=1\nSTATUS=generation %d serving (pid %d)", m.serving.n, m.serving.pid)})
		}
		// No generation was made for it: the result names none.
		m.answer(q.waiters, Result{Err: err, Started: q.began, Duration: ev.Now.Sub(q.began)})
	}
}

// beginStop stops everything: the serving generation drains, what was
// starting is dropped, and every waiter is answered (queued ones with
// answerErr). Run then returns exitErr once every group is empty.
func (m *machine) beginStop(now time.Time, exitErr, answerErr error) {
	m.stopping = true
	m.exitErr = exitErr
	m.emit(Action{Kind: ActNotify, Text: "STOPPING=1\nSTATUS=stopping"})
	if q := m.queued; q != nil {
		m.queued = nil
		m.answer(q.waiters, Result{Err: answerErr, Started: q.began, Duration: now.Sub(q.began)})
	}
	if d := m.deploy; d != nil {
		g := m.gen(d.gen)
		switch d.stage {
		case dChecking:
			d.aborted = true
			m.emit(Action{Kind: ActCancel, Gen: d.gen})
			m.answer(d.waiters, Result{Generation: d.gen, Err: ErrStopping, Started: d.began, Duration: now.Sub(d.began)})
			d.waiters = nil
		case dChecked:
			g.stage, g.empty, g.listening = stFailed, true, false
			m.finishDeploy(now, ErrStopping)
		case dStarting:
			d.aborted = true
			m.answer(d.waiters, Result{Generation: d.gen, Err: ErrStopping, Started: d.began, Duration: now.Sub(d.began)})
			d.waiters = nil
		case dWaitReady:
			g.stage = stFailed
			m.kill(now, g)
			m.finishDeploy(now, ErrStopping)
		case dHandingOver:
			m.finishDeploy(now, nil) // it took over; it now stops with the rest
		case dFailing:
			m.concludeFailure(now)
		}
	}
	m.unsteer()
	m.retirePending(now)
	if g := m.serving; g != nil {
		m.serving = nil
		m.retire(now, g)
	}
}

// hurry SIGKILLs every group that may have a member.
func (m *machine) hurry(now time.Time) {
	for _, g := range m.gens {
		if !g.empty && g.pid != 0 {
			m.kill(now, g) // those killed already are on their way
		}
	}
}

// phase is where the supervisor is, as a whole: the rows of the matrix
// test, which checks every event in every phase.
type phase int

const (
	phaseStarting     phase = iota + 1 // a deploy waits to start its process: an older generation still listens (or before EvStart)
	phaseChecking                      // a deploy resolves its command and runs --check
	phaseWaitingReady                  // a deploy's process runs, not ready yet
	phaseHandingOver                   // promoted; the old generation still has a listener open
	phaseCuttingOver                   // promoted (steered); the old generation's stop signal waits for its listeners to be quiet
	phaseHolding                       // a deploy was refused for a shadowing address (steered): its address is held until its listeners are gone
	phaseDraining                      // one serves; older ones drain in the background
	phaseServing                       // one serves, nothing else runs
	phaseBackoff                       // nothing serves; a restart waits for its backoff
	phaseStopping                      // stop asked: everything drains, then Run returns
)

func (p phase) String() string {
	return [...]string{"?", "starting", "checking", "waiting-ready", "handing-over", "cutting-over", "holding", "draining", "serving", "backoff", "stopping"}[p]
}

func (m *machine) phase() phase {
	switch {
	case m.stopping:
		return phaseStopping
	case m.deploy != nil:
		switch m.deploy.stage {
		case dChecking:
			return phaseChecking
		case dFailing:
			if g := m.gen(m.deploy.gen); g != nil && g.held {
				return phaseHolding
			}
			return phaseWaitingReady
		case dStarting, dWaitReady:
			return phaseWaitingReady
		case dHandingOver:
			if g := m.gen(m.deploy.old); g != nil && g.cutover {
				return phaseCuttingOver
			}
			return phaseHandingOver
		}
		return phaseStarting
	case m.queued != nil && m.queued.restart && !m.queued.notBefore.IsZero():
		return phaseBackoff
	case m.draining() > 0:
		return phaseDraining
	case m.serving != nil:
		return phaseServing
	}
	return phaseStarting
}
