//go:build linux

package supervisor

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// steeredReady2 continues serving1 (steered) with a reload whose generation
// 2 is ready: the port is cut over to it, 1's stop signal waits. 1's
// listeners are watched from its stop signal, not from the cutover: they
// cannot close before it, and the watch without the sockets known at the
// stop reads every descriptor of 1's group at each poll (tens of
// milliseconds each with 10,000 idle connections, through the whole quiet
// wait, and a poll slowed to 100 ms saw the close late).
var steeredReady2 = []step{
	{ev: reload(w1), want: "checks 2"},
	{ev: checked(2, nil), want: "dark 2; start 2"},
	{ev: started(2), want: ""},
	{ev: ready(2), want: "promote 2; cutover 2; timer cutover/1", phase: phaseCuttingOver},
}

// steeredRows: the machine's decisions when the supervisor owns the
// steering (machine_steering.go).
var steeredRows = []struct {
	name  string
	steps []step
}{
	{"generation 1 starts without dark (nothing serves); a reload goes dark first, stops the old one only at its cutover, compacts once its listeners are gone",
		seq(serving1, steeredReady2, []step{
			{ev: cutOver(1), want: "stop 1; timer drain/1; watch 1", phase: phaseHandingOver},
			{ev: gone(1), want: "compact; answer 2 ok", phase: phaseDraining},
			{ev: empty(1), want: "", phase: phaseServing},
		})},
	{"a generation that never becomes ready: the old one is never signalled",
		seq(serving1, []step{
			{ev: reload(w1), want: "checks 2"},
			{ev: checked(2, nil), want: "dark 2; start 2"},
			{ev: started(2), want: ""},
			{ev: notReady(2), want: "kill 2; timer kill-grace/2; watch 2"},
			{ev: empty(2), want: "answer 2 not-ready", phase: phaseServing},
		})},
	{"the old generation leaves during its cutover: no stop signal to an empty group",
		seq(serving1, steeredReady2, []step{
			{ev: empty(1), want: "compact; answer 2 ok", phase: phaseServing},
			{ev: cutOver(1), want: "", phase: phaseServing},
		})},
	{"a stop during the cutover stops both at once, the placeholders closed first",
		seq(serving1, steeredReady2, []step{
			{ev: stop(), want: "answer 2 ok; unsteer; stop 1; timer drain/1; watch 1; stop 2; timer drain/2; watch 2", phase: phaseStopping},
			{ev: cutOver(1), want: "", phase: phaseStopping},
		})},
	{"review 3: a cutover never reported quiet is bounded: the stop signal goes at its deadline, and the drain counts from the signal",
		seq(serving1, steeredReady2, []step{
			{ev: fire(TimerCutover, 1), after: 29 * time.Second, want: ""},
			{ev: fire(TimerCutover, 1), after: time.Second, want: "stop 1; timer drain/1; watch 1", phase: phaseHandingOver},
			{ev: fire(TimerDrain, 1), after: 29 * time.Second, want: ""},
			{ev: fire(TimerDrain, 1), after: time.Second, want: "kill 1; timer kill-grace/1"},
		})},
	{"the drain deadline counts from the stop signal at EvCutOver (CHANGEOVER_DRAIN_TIMEOUT, as runner cuts its requests)",
		seq(serving1, steeredReady2, []step{
			{ev: cutOver(1), after: 2 * time.Second, want: "stop 1; timer drain/1; watch 1"},
			{ev: fire(TimerCutover, 1), after: 28 * time.Second, want: ""},
			{ev: fire(TimerDrain, 1), after: 2 * time.Second, want: "kill 1; timer kill-grace/1"},
		})},
	{"the serving generation crashes: the placeholders are closed before the restart",
		seq(serving1, []step{
			{ev: exitedEv(1), want: "unsteer; kill 1; timer kill-grace/1; watch 1; checks 2"},
			{ev: checked(2, nil), want: ""},
			{ev: empty(1), want: "start 2", phase: phaseWaitingReady},
		})},
}

// refused2 continues serving1 (steered) with a reload whose generation 2
// listens on an address that shadows the steered one: it is refused, and
// held rather than killed.
var refused2 = []step{
	{ev: reload(w1), want: "checks 2"},
	{ev: checked(2, nil), want: "dark 2; start 2"},
	{ev: started(2), want: ""},
	{ev: shadowing(2), want: "hold 2; timer cutover/2; watch 2", phase: phaseHolding},
}

// shadowRows: a generation refused for a shadowing address (shadow.go)
// loses nothing it accepted: the supervisor holds its address (new SYNs
// dropped there, retransmitted a second later), stops it once what it
// queued is served, and ends the hold once its listeners are gone. The
// hold is short (refusedGrace, 1 s with these rows' 30 s drain timeout):
// a refused generation is not worth holding an address for long (review:
// one that ignored its stop signal held it for 2 x --drain-timeout, 20 s,
// every new client of that address waiting and its failed reload too).
var shadowRows = []struct {
	name  string
	steps []step
}{
	{"held, stopped once quiet, released once its listeners are gone; the reload fails then, and it finishes draining in the background",
		seq(serving1, refused2, []step{
			{ev: cutOver(2), want: "stop 2; timer drain/2; timer hold/2", phase: phaseHolding},
			{ev: gone(2), want: "release 2; answer 2 not-ready", phase: phaseDraining},
			{ev: fire(TimerHold, 2), after: time.Second, want: ""},
			{ev: empty(2), want: "", phase: phaseServing},
		})},
	{"the address cannot be held (a placeholder refused): killed, as any generation that is not ready",
		seq(serving1, refused2, []step{
			{ev: holdFailed(2), want: "release 2; kill 2; timer kill-grace/2"},
			{ev: cutOver(2), want: ""},
			{ev: empty(2), want: "answer 2 not-ready", phase: phaseServing},
		})},
	{"never quiet: the stop signal after the hold's grace (1 s), SIGKILL 1 s later if it still listens; the reload fails once its listeners are gone",
		seq(serving1, refused2, []step{
			{ev: fire(TimerCutover, 2), after: 999 * time.Millisecond, want: ""},
			{ev: fire(TimerCutover, 2), after: time.Millisecond, want: "stop 2; timer drain/2; timer hold/2"},
			{ev: fire(TimerHold, 2), after: 999 * time.Millisecond, want: ""},
			{ev: fire(TimerHold, 2), after: time.Millisecond, want: "kill 2; timer kill-grace/2"},
			{ev: gone(2), want: "release 2; answer 2 not-ready", phase: phaseDraining},
			{ev: empty(2), want: "", phase: phaseServing},
			{ev: fire(TimerDrain, 2), after: 30 * time.Second, want: "", phase: phaseServing},
		})},
	{"short drain timeout: the hold's grace is the drain timeout when it is shorter",
		seq(serving1, refused2, []step{
			{ev: fire(TimerCutover, 2), after: 500 * time.Millisecond, want: "stop 2; timer drain/2; timer hold/2"},
			{ev: fire(TimerHold, 2), after: 500 * time.Millisecond, want: "kill 2; timer kill-grace/2"},
			{ev: fire(TimerDrain, 2), want: ""},
			{ev: empty(2), want: "release 2; answer 2 not-ready", phase: phaseServing},
		})},
	{"a reload asked during the hold begins once the hold is released (no older generation listens then)",
		seq(serving1, refused2, []step{
			{ev: reload(w2), want: ""},
			{ev: cutOver(2), want: "stop 2; timer drain/2; timer hold/2"},
			{ev: gone(2), want: "release 2; answer 2 not-ready; checks 3", phase: phaseChecking},
			{ev: checked(3, nil), want: "dark 3; start 3", phase: phaseWaitingReady},
			{ev: empty(2), want: ""},
		})},
	{"it exits by itself while held: released, the reload fails",
		seq(serving1, refused2, []step{
			{ev: exitedEv(2), want: ""},
			{ev: empty(2), want: "release 2; answer 2 not-ready", phase: phaseServing},
			{ev: cutOver(2), want: ""},
		})},
	{"a stop while held: its stop signal goes at once, with the serving one's, and the same grace bounds its listeners",
		seq(serving1, refused2, []step{
			{ev: stop(), want: "answer 2 not-ready; unsteer; stop 2; timer drain/2; timer hold/2; stop 1; timer drain/1; watch 1", phase: phaseStopping},
			{ev: fire(TimerHold, 2), after: time.Second, want: "kill 2; timer kill-grace/2"},
			{ev: gone(2), want: "release 2"},
		})},
	{"a shadowing generation on the kernel path (not steered): killed",
		seq(serving1, []step{
			{ev: reload(w1), want: "checks 2"},
			{ev: checked(2, nil), want: "start 2"},
			{ev: started(2), want: ""},
			{ev: shadowing(2), want: "kill 2; timer kill-grace/2; watch 2"},
			{ev: empty(2), want: "answer 2 not-ready", phase: phaseServing},
		})},
}

func TestMachineShadowRefused(t *testing.T) {
	for _, row := range shadowRows {
		cfg := testConfig
		cfg.Steered = !strings.Contains(row.name, "kernel path")
		if strings.HasPrefix(row.name, "short drain timeout") {
			cfg.DrainTimeout = 500 * time.Millisecond
		}
		t.Run(row.name, func(t *testing.T) { runRow(t, cfg, row.steps) })
	}
}

func TestMachineSteered(t *testing.T) {
	cfg := testConfig
	cfg.Steered = true
	for _, row := range steeredRows {
		t.Run(row.name, func(t *testing.T) { runRow(t, cfg, row.steps) })
	}
}

// A supervisor killed during a cutover leaves the old generation in the
// state file as draining with its stop signal still to send: the next one
// must send it (review 3 of issue 10: it was saved as plain draining, and
// the adopting supervisor never stopped it).
func TestStateFileDuringCutover(t *testing.T) {
	cfg := testConfig
	cfg.Steered = true
	m := newMachine(cfg)
	now := t0
	for _, s := range seq(serving1, steeredReady2) {
		ev := s.ev
		ev.Now = now
		m.Step(ev)
	}
	l := &runLoop{s: New(Config{Name: "t"}), m: m, insts: map[int]*Instance{
		1: {Gen: 1, PID: 101, PGID: 101}, 2: {Gen: 2, PID: 102, PGID: 102},
	}}
	var g1 *StateGen
	st := l.stateFile()
	for i := range st.Generations {
		if st.Generations[i].Generation == 1 {
			g1 = &st.Generations[i]
		}
	}
	if g1 == nil || g1.State != StateDraining || !g1.StopPending {
		t.Fatalf("generation 1 in the state file during its cutover: %+v, want draining with its stop pending", g1)
	}
}

// A supervisor killed during a hold takes the hold's placeholders with it:
// the refused generation then gets the held address's connections. The
// state file records it as refused (not draining with its stop pending,
// which an adopter let drain for up to --drain-timeout, answering every
// request of that address from a generation that was never ready), also
// once its stop signal went.
func TestStateFileDuringHold(t *testing.T) {
	cfg := testConfig
	cfg.Steered = true
	m := newMachine(cfg)
	now := t0
	l := &runLoop{s: New(Config{Name: "t"}), m: m, insts: map[int]*Instance{
		1: {Gen: 1, PID: 101, PGID: 101}, 2: {Gen: 2, PID: 102, PGID: 102},
	}}
	state := func(n int) *StateGen {
		st := l.stateFile()
		for i := range st.Generations {
			if st.Generations[i].Generation == n {
				return &st.Generations[i]
			}
		}
		return nil
	}
	for _, s := range seq(serving1, refused2) {
		ev := s.ev
		ev.Now = now
		m.Step(ev)
	}
	if g2 := state(2); g2 == nil || g2.State != StateRefused {
		t.Fatalf("generation 2 in the state file while held: %+v, want state %q", g2, StateRefused)
	}
	m.Step(Event{Kind: EvCutOver, Gen: 2, Now: now})
	if g2 := state(2); g2 == nil || g2.State != StateRefused {
		t.Fatalf("generation 2 in the state file after its stop signal, still held: %+v, want state %q", g2, StateRefused)
	}
	if g1 := state(1); g1 == nil || g1.State != StateServing {
		t.Fatalf("generation 1 in the state file during the hold: %+v, want serving", g1)
	}
	// Its listeners gone, the hold released: what it accepted may finish.
	if acts := m.Step(Event{Kind: EvListenersGone, Gen: 2, Now: now}); !slices.ContainsFunc(acts, func(a Action) bool { return a.Kind == ActSave }) {
		t.Fatalf("the hold's release saves no state file: %v", acts)
	}
	if g2 := state(2); g2 == nil || g2.State != StateDraining || g2.DrainDeadline.IsZero() {
		t.Fatalf("generation 2 in the state file once released: %+v, want draining with its deadline", g2)
	}
}
