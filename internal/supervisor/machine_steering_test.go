//go:build linux

package supervisor

import (
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
	{ev: shadowing(2), want: "hold 2; timer cutover/2; watch 2", phase: phaseWaitingReady},
}

// shadowRows: a generation refused for a shadowing address (shadow.go)
// loses nothing it accepted: the supervisor holds its address (new SYNs
// dropped there, retransmitted a second later), stops it once what it
// queued is served, and ends the hold once its listeners are gone.
var shadowRows = []struct {
	name  string
	steps []step
}{
	{"held, stopped once quiet, released once its listeners are gone; the reload fails once its group is empty",
		seq(serving1, refused2, []step{
			{ev: cutOver(2), want: "stop 2; timer drain/2", phase: phaseWaitingReady},
			{ev: gone(2), want: "release 2"},
			{ev: empty(2), want: "answer 2 not-ready", phase: phaseServing},
		})},
	{"the address cannot be held (a placeholder refused): killed, as any generation that is not ready",
		seq(serving1, refused2, []step{
			{ev: holdFailed(2), want: "release 2; kill 2; timer kill-grace/2"},
			{ev: cutOver(2), want: ""},
			{ev: empty(2), want: "answer 2 not-ready", phase: phaseServing},
		})},
	{"never quiet: the stop signal at the cutover deadline, SIGKILL at the drain deadline",
		seq(serving1, refused2, []step{
			{ev: fire(TimerCutover, 2), after: 30 * time.Second, want: "stop 2; timer drain/2"},
			{ev: fire(TimerDrain, 2), after: 30 * time.Second, want: "kill 2; timer kill-grace/2"},
			{ev: empty(2), want: "release 2; answer 2 not-ready", phase: phaseServing},
		})},
	{"it exits by itself while held: released, the reload fails",
		seq(serving1, refused2, []step{
			{ev: exitedEv(2), want: ""},
			{ev: empty(2), want: "release 2; answer 2 not-ready", phase: phaseServing},
			{ev: cutOver(2), want: ""},
		})},
	{"a stop while held: its stop signal goes at once, with the serving one's",
		seq(serving1, refused2, []step{
			{ev: stop(), want: "answer 2 not-ready; unsteer; stop 2; timer drain/2; stop 1; timer drain/1; watch 1", phase: phaseStopping},
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
