//go:build linux

package supervisor

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// The machine's tests feed it events, as etcd-io/raft's do, with no
// process and no clock: each step is an event and the actions it must
// produce, rendered by Action.String. Logs, state saves and messages to
// systemd are left out of the rendering (rows that care ask for notify).

// testConfig is the machine configuration of every row.
var testConfig = machineConfig{
	ReadyTimeout: 10 * time.Second, DrainTimeout: 30 * time.Second,
	BackoffMin: time.Second, BackoffMax: 8 * time.Second,
	CrashLimit: 3, CrashWindow: time.Minute, MaxDraining: 2, PID: 42,
}

// t0 is the machine's time at the first step. It must lie in the future:
// TestSupervisorOverFakeProcesses runs the real loop on a clock that starts
// at t0, and the loop gives deadlines of that clock to real contexts (the
// checks'). At 2026-12-01 12:00 UTC, the value it had, every check was
// cancelled at once and every row failed.
var t0 = time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)

// step is one event and what it must do. after moves the clock first.
type step struct {
	ev     Event
	want   string // rendered actions, "; "-separated ("" = none)
	after  time.Duration
	notify string // if set, the messages to systemd, "; "-separated
	phase  phase  // if set (non-zero), the phase after the step
}

// waiter is a reload client's channel, named for the rows.
var (
	w1 = make(chan Result, 1)
	w2 = make(chan Result, 1)
)

func start(adopted ...AdoptedGen) Event { return Event{Kind: EvStart, Adopted: adopted} }
func reload(w chan Result) Event {
	if w == nil {
		return Event{Kind: EvReloadAsked}
	}
	return Event{Kind: EvReloadAsked, Waiter: w}
}
func stop() Event                    { return Event{Kind: EvStopAsked} }
func hurry() Event                   { return Event{Kind: EvHurry} }
func checked(n int, err error) Event { return Event{Kind: EvChecked, Gen: n, Err: err} }
func started(n int) Event            { return Event{Kind: EvStarted, Gen: n, PID: 100 + n} }
func startFailed(n int) Event {
	return Event{Kind: EvStarted, Gen: n, Err: fmt.Errorf("%w /bin/x: no such file", ErrStart)}
}
func ready(n int) Event { return Event{Kind: EvReady, Gen: n} }
func notReady(n int) Event {
	return Event{Kind: EvReady, Gen: n, Err: fmt.Errorf("%w: probe 503", ErrNotReady)}
}
func exitedEv(n int) Event          { return Event{Kind: EvExited, Gen: n, Status: "exit status 3"} }
func gone(n int) Event              { return Event{Kind: EvListenersGone, Gen: n} }
func empty(n int) Event             { return Event{Kind: EvGroupEmpty, Gen: n} }
func fire(k TimerKind, n int) Event { return Event{Kind: EvTimer, Timer: TimerID{k, n}} }
func cutOver(n int) Event           { return Event{Kind: EvCutOver, Gen: n} }
func shadowing(n int) Event {
	return Event{Kind: EvShadowing, Gen: n, Err: &ShadowError{Gen: n, PID: 100 + n, ServingGen: 1}}
}
func holdFailed(n int) Event {
	return Event{Kind: EvHoldFailed, Gen: n, Err: errors.New("reuseport: cannot open a placeholder member")}
}

// serving1 brings a machine to generation 1 serving.
var serving1 = []step{
	{ev: start(), want: "checks 1", phase: phaseChecking},
	{ev: checked(1, nil), want: "start 1", phase: phaseWaitingReady},
	{ev: started(1), want: ""},
	{ev: ready(1), want: "promote 1", notify: "READY=1", phase: phaseServing},
}

// serving2draining1 continues serving1 with a reload handed over: 2
// serves, 1 drains with its listeners closed.
var serving2draining1 = append(slices.Clone(serving1),
	step{ev: reload(nil), want: "checks 2", notify: "RELOADING=1"},
	step{ev: checked(2, nil), want: "start 2"},
	step{ev: started(2), want: ""},
	step{ev: ready(2), want: "promote 2; stop 1; timer drain/1; watch 1", phase: phaseHandingOver},
	step{ev: gone(1), want: "", notify: "READY=1", phase: phaseDraining},
)

func seq(parts ...[]step) []step {
	var out []step
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// machineRows is the table: the behaviour of the supervisor, each row a
// story. Rows named "defect N" failed on the core before the machine
// (issue 10); the process tests in cmd/changeover show it with processes.
var machineRows = []struct {
	name  string
	steps []step
}{
	{"generation 1 starts and serves", serving1},
	{"a reload is done at the handover; the old one drains in the background", seq(serving1, []step{
		{ev: reload(w1), want: "checks 2", phase: phaseChecking},
		{ev: checked(2, nil), want: "start 2", phase: phaseWaitingReady},
		{ev: started(2), want: ""},
		{ev: ready(2), want: "promote 2; stop 1; timer drain/1; watch 1", phase: phaseHandingOver},
		{ev: gone(1), want: "answer 2 ok", notify: "READY=1", phase: phaseDraining},
		{ev: exitedEv(1), want: ""},
		{ev: empty(1), want: "", phase: phaseServing},
	})},
	{"reloads asked while one runs coalesce into the next", seq(serving1, []step{
		{ev: reload(w1), want: "checks 2"},
		{ev: reload(w2), want: ""},
		{ev: reload(nil), want: ""},
		{ev: checked(2, nil), want: "start 2"},
		{ev: started(2), want: ""},
		{ev: ready(2), want: "promote 2; stop 1; timer drain/1; watch 1"},
		{ev: gone(1), want: "answer 2 ok; checks 3"},
		{ev: checked(3, nil), want: "start 3"},
		{ev: started(3), want: ""},
		{ev: ready(3), want: "promote 3; stop 2; timer drain/2; watch 2"},
		{ev: gone(2), want: "answer 3 ok"},
	})},
	{"a failed reload kills the new group; the old one keeps serving", seq(serving1, []step{
		{ev: reload(w1), want: "checks 2"},
		{ev: checked(2, nil), want: "start 2"},
		{ev: started(2), want: ""},
		{ev: notReady(2), want: "kill 2; timer kill-grace/2; watch 2", phase: phaseWaitingReady},
		{ev: exitedEv(2), want: ""},
		{ev: empty(2), want: "answer 2 not-ready", notify: "READY=1", phase: phaseServing},
	})},
	{"a check refuses the reload: nothing started, nothing killed", seq(serving1, []step{
		{ev: reload(w1), want: "checks 2"},
		{ev: checked(2, fmt.Errorf("%w: exit status 1", ErrCheckFailed)), want: "answer 2 check-failed", phase: phaseServing},
	})},
	{"an old one that ignores SIGTERM is killed at its deadline, then the reload is done", seq(serving1, []step{
		{ev: reload(w1), want: "checks 2"},
		{ev: checked(2, nil), want: "start 2"},
		{ev: started(2), want: ""},
		{ev: ready(2), want: "promote 2; stop 1; timer drain/1; watch 1"},
		{ev: fire(TimerDrain, 1), after: 29 * time.Second, want: ""},
		{ev: fire(TimerDrain, 1), after: time.Second, want: "kill 1; timer kill-grace/1"},
		{ev: exitedEv(1), want: ""},
		{ev: empty(1), want: "answer 2 ok"},
	})},
	{"defect 1: the replacement of a crash during the drain fails too: restart after a backoff", seq(serving1, []step{
		{ev: reload(w1), want: "checks 2"},
		{ev: checked(2, nil), want: "start 2"},
		{ev: started(2), want: ""},
		{ev: ready(2), want: "promote 2; stop 1; timer drain/1; watch 1"},
		{ev: gone(1), want: "answer 2 ok"},
		{ev: exitedEv(2), want: "kill 2; timer kill-grace/2; watch 2; checks 3", phase: phaseChecking},
		{ev: checked(3, nil), want: "", phase: phaseStarting},
		{ev: gone(2), want: "start 3", phase: phaseWaitingReady},
		{ev: started(3), want: ""},
		{ev: exitedEv(3), want: "kill 3; timer kill-grace/3; watch 3"},
		{ev: Event{Kind: EvReady, Gen: 3, Err: fmt.Errorf("%w: exit status 1", ErrExited)}, want: ""},
		{ev: empty(3), want: "timer backoff", phase: phaseBackoff},
		{ev: fire(TimerBackoff, 0), after: time.Second, want: "checks 4", phase: phaseChecking},
		{ev: checked(4, nil), want: "start 4"},
		{ev: started(4), want: ""},
		{ev: ready(4), want: "promote 4", phase: phaseDraining},
		{ev: empty(1), want: "", phase: phaseServing},
	})},
	{"defect 1: a crash while the old one still drains with its listener open waits for it", seq(serving1, []step{
		{ev: reload(nil), want: "checks 2"},
		{ev: checked(2, nil), want: "start 2"},
		{ev: started(2), want: ""},
		{ev: ready(2), want: "promote 2; stop 1; timer drain/1; watch 1"},
		{ev: exitedEv(2), want: "kill 2; timer kill-grace/2; watch 2; checks 3", phase: phaseChecking},
		{ev: checked(3, nil), want: "", phase: phaseStarting},
		{ev: gone(2), want: ""},
		{ev: gone(1), want: "start 3", phase: phaseWaitingReady},
	})},
	{"review: a new generation that exits during the handover fails the reload", seq(serving1, []step{
		{ev: reload(w1), want: "checks 2"},
		{ev: checked(2, nil), want: "start 2"},
		{ev: started(2), want: ""},
		{ev: ready(2), want: "promote 2; stop 1; timer drain/1; watch 1", phase: phaseHandingOver},
		{ev: exitedEv(2), want: "kill 2; timer kill-grace/2; watch 2; answer 2 exited-in-handover; checks 3", phase: phaseChecking},
		{ev: gone(1), want: ""},
		{ev: checked(3, nil), want: "", phase: phaseStarting},
		{ev: empty(2), want: "start 3", phase: phaseWaitingReady},
	})},
	{"defect 2: the first crash in the window restarts at once, the second after a backoff", seq(serving1, []step{
		{ev: exitedEv(1), want: "kill 1; timer kill-grace/1; watch 1; checks 2", notify: "STATUS=generation 1 exited (exit status 3) while serving; restarting; RELOADING=1", phase: phaseChecking},
		{ev: gone(1), want: ""},
		{ev: checked(2, nil), want: "start 2"},
		{ev: started(2), want: ""},
		{ev: ready(2), want: "promote 2", phase: phaseServing},
		{ev: exitedEv(2), after: 5 * time.Second, want: "kill 2; timer kill-grace/2; watch 2; timer backoff", phase: phaseBackoff},
		{ev: gone(2), want: ""},
		{ev: fire(TimerBackoff, 0), after: 500 * time.Millisecond, want: ""},
		{ev: fire(TimerBackoff, 0), after: 500 * time.Millisecond, want: "checks 3"},
	})},
	{"defect 2: a replacement waits for the crashed group's listeners, not a timer", seq(serving1, []step{
		{ev: exitedEv(1), want: "kill 1; timer kill-grace/1; watch 1; checks 2"},
		{ev: checked(2, nil), want: "", phase: phaseStarting},
		{ev: empty(1), want: "start 2", phase: phaseWaitingReady},
	})},
	{"the crash limit ends run with ErrCrashLoop", seq(serving1, []step{
		{ev: exitedEv(1), want: "kill 1; timer kill-grace/1; watch 1; checks 2"},
		{ev: empty(1), want: ""},
		{ev: checked(2, nil), want: "start 2"},
		{ev: started(2), want: ""},
		{ev: ready(2), want: "promote 2"},
		{ev: exitedEv(2), want: "kill 2; timer kill-grace/2; watch 2; timer backoff"},
		{ev: empty(2), want: ""},
		{ev: fire(TimerBackoff, 0), after: time.Second, want: "checks 3"},
		{ev: checked(3, nil), want: "start 3"},
		{ev: started(3), want: ""},
		{ev: ready(3), want: "promote 3"},
		{ev: exitedEv(3), want: "kill 3; timer kill-grace/3; watch 3; timer backoff"},
		{ev: empty(3), want: ""},
		{ev: fire(TimerBackoff, 0), after: 2 * time.Second, want: "checks 4"},
		{ev: checked(4, nil), want: "start 4"},
		{ev: started(4), want: ""},
		{ev: ready(4), want: "promote 4"},
		{ev: exitedEv(4), want: "kill 4; timer kill-grace/4; watch 4", notify: "STOPPING=1", phase: phaseStopping},
		{ev: reload(w1), want: "answer 0 stopping"},
		{ev: empty(4), want: "exit crash-loop"},
	})},
	{"crashes older than the window are forgotten", seq(serving1, []step{
		{ev: exitedEv(1), want: "kill 1; timer kill-grace/1; watch 1; checks 2"},
		{ev: empty(1), want: ""},
		{ev: checked(2, nil), want: "start 2"},
		{ev: started(2), want: ""},
		{ev: ready(2), want: "promote 2"},
		{ev: exitedEv(2), after: 2 * time.Minute, want: "kill 2; timer kill-grace/2; watch 2; checks 3"},
	})},
	{"defect 3: generation 1 fails while a reload waits: both answered, run exits", []step{
		{ev: start(), want: "checks 1"},
		{ev: reload(w1), want: ""},
		{ev: checked(1, nil), want: "start 1"},
		{ev: started(1), want: ""},
		{ev: notReady(1), want: "kill 1; timer kill-grace/1; watch 1", phase: phaseWaitingReady},
		{ev: exitedEv(1), want: ""},
		{ev: empty(1), want: "answer 0 stopping; exit not-ready"},
	}},
	{"defect 3: a stop while failed generation 1 is being killed: still exits with its error", []step{
		{ev: start(), want: "checks 1"},
		{ev: reload(w1), want: ""},
		{ev: checked(1, nil), want: "start 1"},
		{ev: started(1), want: ""},
		{ev: notReady(1), want: "kill 1; timer kill-grace/1; watch 1"},
		{ev: stop(), want: "answer 0 stopping", phase: phaseStopping},
		{ev: empty(1), want: "exit not-ready"},
	}},
	{"defect 3: a stop while generation 1 starts kills it and exits 0", []step{
		{ev: start(), want: "checks 1"},
		{ev: reload(w1), want: ""},
		{ev: checked(1, nil), want: "start 1"},
		{ev: started(1), want: ""},
		{ev: stop(), want: "answer 0 stopping; kill 1; timer kill-grace/1; watch 1", phase: phaseStopping},
		{ev: notReady(1), want: ""},
		{ev: empty(1), want: "exit ok"},
	}},
	{"defect 3: a stop during generation 1's checks cancels them and exits 0", []step{
		{ev: start(), want: "checks 1"},
		{ev: stop(), want: "cancel 1", phase: phaseStopping},
		{ev: reload(w1), want: "answer 0 stopping"},
		{ev: checked(1, errors.New("canceled")), want: "exit ok"},
	}},
	{"defect 4: the serving one crashes while the new one starts: no stop signal to its empty group", seq(serving1, []step{
		{ev: reload(w1), want: "checks 2"},
		{ev: checked(2, nil), want: "start 2"},
		{ev: started(2), want: ""},
		{ev: exitedEv(1), want: "kill 1; timer kill-grace/1; watch 1", phase: phaseWaitingReady},
		{ev: empty(1), want: ""},
		{ev: ready(2), want: "promote 2; answer 2 ok", phase: phaseServing},
	})},
	{"defect 4: a reload does not signal a group after its empty event", seq(serving1, []step{
		{ev: reload(nil), want: "checks 2"},
		{ev: exitedEv(1), want: "kill 1; timer kill-grace/1; watch 1"},
		{ev: empty(1), want: ""},
		{ev: hurry(), want: "cancel 2", phase: phaseStopping},
		{ev: checked(2, nil), want: "exit ok"},
	})},
	{"defect 5: a reload during a crash backoff is the restart, and no extra generation follows", seq(serving1, []step{
		{ev: exitedEv(1), want: "kill 1; timer kill-grace/1; watch 1; checks 2"},
		{ev: empty(1), want: ""},
		{ev: checked(2, nil), want: "start 2"},
		{ev: started(2), want: ""},
		{ev: ready(2), want: "promote 2"},
		{ev: exitedEv(2), want: "kill 2; timer kill-grace/2; watch 2; timer backoff", phase: phaseBackoff},
		{ev: empty(2), want: ""},
		{ev: reload(w1), want: "checks 3", notify: "RELOADING=1", phase: phaseChecking},
		{ev: checked(3, nil), want: "start 3"},
		{ev: started(3), want: ""},
		{ev: fire(TimerBackoff, 0), after: 5 * time.Second, want: "", phase: phaseWaitingReady},
		{ev: ready(3), want: "promote 3; answer 3 ok", phase: phaseServing},
		{ev: fire(TimerBackoff, 0), after: 5 * time.Second, want: "", phase: phaseServing},
	})},
	{"defect 5: a failed reload during a backoff counts as a crash and backs off", seq(serving1, []step{
		{ev: exitedEv(1), want: "kill 1; timer kill-grace/1; watch 1; checks 2"},
		{ev: empty(1), want: ""},
		{ev: checked(2, nil), want: "start 2"},
		{ev: started(2), want: ""},
		{ev: ready(2), want: "promote 2"},
		{ev: exitedEv(2), want: "kill 2; timer kill-grace/2; watch 2; timer backoff"},
		{ev: empty(2), want: ""},
		{ev: reload(w1), want: "checks 3"},
		{ev: checked(3, fmt.Errorf("%w: exit status 1", ErrCheckFailed)), want: "answer 3 check-failed; timer backoff", phase: phaseBackoff},
		{ev: fire(TimerBackoff, 0), after: 2 * time.Second, want: "checks 4"},
	})},
	{"defect 7: checks and readiness share one ready deadline", seq(serving1, []step{
		{ev: reload(nil), want: "checks 2"},
		{ev: checked(2, nil), after: 9 * time.Second, want: "start 2"},
	})},
	{"defect 7: a stop while handing over drains old and new at once", seq(serving1, []step{
		{ev: reload(w1), want: "checks 2"},
		{ev: checked(2, nil), want: "start 2"},
		{ev: started(2), want: ""},
		{ev: ready(2), want: "promote 2; stop 1; timer drain/1; watch 1"},
		{ev: stop(), want: "answer 2 ok; stop 2; timer drain/2; watch 2", notify: "STOPPING=1; EXTEND_TIMEOUT_USEC=40000000", phase: phaseStopping},
		{ev: empty(2), want: ""},
		{ev: empty(1), want: "exit ok"},
	})},
	{"a stop during a reload's readiness kills the new one, drains the old one", seq(serving1, []step{
		{ev: reload(w1), want: "checks 2"},
		{ev: checked(2, nil), want: "start 2"},
		{ev: started(2), want: ""},
		{ev: stop(), want: "kill 2; timer kill-grace/2; watch 2; answer 2 stopping; stop 1; timer drain/1; watch 1", phase: phaseStopping},
		{ev: ready(2), want: ""},
		{ev: empty(2), want: ""},
		{ev: hurry(), want: "kill 1; timer kill-grace/1"},
		{ev: empty(1), want: "exit ok"},
	})},
	{"a stop while a started event is on its way kills what started", seq(serving1, []step{
		{ev: reload(nil), want: "checks 2"},
		{ev: checked(2, nil), want: "start 2"},
		{ev: stop(), want: "stop 1; timer drain/1; watch 1"},
		{ev: started(2), want: "kill 2; timer kill-grace/2; watch 2"},
		{ev: empty(1), want: ""},
		{ev: empty(2), want: "exit ok"},
	})},
	{"the second stop SIGKILLs every group at once", seq(serving2draining1, []step{
		{ev: stop(), want: "stop 2; timer drain/2; watch 2"},
		{ev: hurry(), want: "kill 1; timer kill-grace/1; kill 2; timer kill-grace/2"},
		{ev: empty(1), want: ""},
		{ev: fire(TimerKillGrace, 2), after: killGrace, want: "exit ok"},
	})},
	{"review: generation numbers go on from the state file's last one after a supervisor restart", []step{
		{ev: Event{Kind: EvStart, LastGen: 7, Adopted: []AdoptedGen{{Gen: 5, PID: 105}}}, want: "checks 8"},
		{ev: checked(8, nil), want: "start 8"},
	}},
	{"review 2: a replacement that waited for an older listener gets its full ready time", seq(serving1, []step{
		{ev: reload(w1), want: "checks 2"},
		{ev: checked(2, nil), want: "start 2"},
		{ev: started(2), want: ""},
		{ev: ready(2), want: "promote 2; stop 1; timer drain/1; watch 1"},
		{ev: exitedEv(2), want: "kill 2; timer kill-grace/2; watch 2; answer 2 exited-in-handover; checks 3"},
		{ev: checked(3, nil), want: "", phase: phaseStarting},
		{ev: empty(2), want: ""},
		{ev: fire(TimerDrain, 1), after: 30 * time.Second, want: "kill 1; timer kill-grace/1"},
		{ev: empty(1), want: "start 3", phase: phaseWaitingReady},
	})},
	{"review 2: a reload that fails while its old one crashes: one crash, the restart follows at once", seq(serving1, []step{
		{ev: reload(w1), want: "checks 2"},
		{ev: checked(2, nil), want: "start 2"},
		{ev: started(2), want: ""},
		{ev: notReady(2), want: "kill 2; timer kill-grace/2; watch 2"},
		{ev: exitedEv(1), want: "kill 1; timer kill-grace/1; watch 1"},
		{ev: gone(1), want: ""},
		{ev: exitedEv(2), want: ""},
		{ev: empty(2), want: "answer 2 not-ready; checks 3", phase: phaseChecking},
	})},
	{"review 2: the first deploy after adopting is not held by --max-draining", []step{
		{ev: start(
			AdoptedGen{Gen: 1, PID: 101, Draining: true, Deadline: t0.Add(25 * time.Second)},
			AdoptedGen{Gen: 2, PID: 102, Draining: true, Deadline: t0.Add(25 * time.Second)},
			AdoptedGen{Gen: 3, PID: 103},
		), want: "timer drain/1; watch 1; timer drain/2; watch 2; checks 4", phase: phaseChecking},
		{ev: checked(4, nil), want: "", phase: phaseStarting},
		{ev: gone(1), want: ""},
		{ev: gone(2), want: "start 4"},
		{ev: started(4), want: ""},
		{ev: ready(4), want: "promote 4; stop 3; timer drain/3; watch 3"},
		{ev: gone(3), want: "", notify: "READY=1"},
	}},
	{"review 2: a reload asked before Run began waits for the adoption, then deploys after it", []step{
		{ev: reload(w1), want: ""},
		{ev: Event{Kind: EvStart, LastGen: 3, Adopted: []AdoptedGen{{Gen: 2, PID: 102, Draining: true}, {Gen: 3, PID: 103}}},
			want: "timer drain/2; watch 2; checks 4"},
		{ev: checked(4, nil), want: ""},
		{ev: gone(2), want: "start 4"},
		{ev: started(4), want: ""},
		{ev: ready(4), want: "promote 4; stop 3; timer drain/3; watch 3"},
		{ev: gone(3), want: "answer 4 ok"},
	}},
	{"review 2: a previous supervisor's half-done generation is killed by the machine", []step{
		{ev: start(AdoptedGen{Gen: 3, PID: 103, Leftover: true}, AdoptedGen{Gen: 2, PID: 102}),
			want: "kill 3; timer kill-grace/3; watch 3; checks 4"},
		{ev: checked(4, nil), want: ""},
		{ev: empty(3), want: "start 4"},
	}},
	{"a refused generation that a previous supervisor held is killed at adoption, not left to drain (its hold died with that supervisor)", []step{
		{ev: start(AdoptedGen{Gen: 1, PID: 101}, AdoptedGen{Gen: 2, PID: 102, Refused: true}),
			want: "kill 2; timer kill-grace/2; watch 2; checks 3"},
		{ev: checked(3, nil), want: ""},
		{ev: empty(2), want: "start 3"},
	}},
	{"review 3: a new generation whose exit is stepped before its ready is never promoted", seq(serving1, []step{
		{ev: reload(w1), want: "checks 2"},
		{ev: checked(2, nil), want: "start 2"},
		{ev: started(2), want: ""},
		{ev: exitedEv(2), want: "kill 2; timer kill-grace/2; watch 2"},
		{ev: ready(2), want: ""},
		{ev: empty(2), want: "answer 2 exited", phase: phaseServing},
	})},
	{"review 3: a crash replacement whose exit is stepped before its ready is a second crash", seq(serving1, []step{
		{ev: exitedEv(1), want: "kill 1; timer kill-grace/1; watch 1; checks 2"},
		{ev: empty(1), want: ""},
		{ev: checked(2, nil), want: "start 2"},
		{ev: started(2), want: ""},
		{ev: exitedEv(2), want: "kill 2; timer kill-grace/2; watch 2"},
		{ev: ready(2), want: ""},
		{ev: empty(2), want: "timer backoff", phase: phaseBackoff},
	})},
	{"review 3: a stop asked before Run began stops the adopted instances", []step{
		{ev: stop(), want: ""},
		{ev: start(AdoptedGen{Gen: 1, PID: 101}, AdoptedGen{Gen: 2, PID: 102, Leftover: true}),
			want: "kill 2; timer kill-grace/2; watch 2; stop 1; timer drain/1; watch 1", phase: phaseStopping},
		{ev: empty(2), want: ""},
		{ev: empty(1), want: "exit ok"},
	}},
	{"review 3: replacements that fail while reloads are queued count as crashes, up to the limit", seq(serving1, []step{
		{ev: exitedEv(1), want: "kill 1; timer kill-grace/1; watch 1; checks 2"},
		{ev: empty(1), want: ""},
		{ev: reload(nil), want: ""},
		{ev: checked(2, fmt.Errorf("%w: exit 1", ErrCheckFailed)), want: "checks 3"},
		{ev: reload(nil), want: ""},
		{ev: checked(3, fmt.Errorf("%w: exit 1", ErrCheckFailed)), want: "checks 4"},
		{ev: reload(nil), want: ""},
		{ev: checked(4, fmt.Errorf("%w: exit 1", ErrCheckFailed)), want: "exit crash-loop"},
	})},
	{"review 3: an adopted generation whose stop signal was pending (a cutover) gets it, and its drain deadline from then", []step{
		{ev: start(AdoptedGen{Gen: 1, PID: 101, Draining: true, StopPending: true, Deadline: t0.Add(20 * time.Second)}, AdoptedGen{Gen: 2, PID: 102}),
			want: "stop 1; timer drain/1; watch 1; checks 3"},
		{ev: fire(TimerDrain, 1), after: 20 * time.Second, want: ""},
		{ev: fire(TimerDrain, 1), after: 10 * time.Second, want: "kill 1; timer kill-grace/1"},
	}},
	{"back-to-back reloads while older generations drain, up to the bound", seq(serving2draining1, []step{
		{ev: reload(w1), want: "checks 3"},
		{ev: checked(3, nil), want: "start 3"},
		{ev: started(3), want: ""},
		{ev: ready(3), want: "promote 3; stop 2; timer drain/2; watch 2"},
		{ev: gone(2), want: "answer 3 ok", phase: phaseDraining},
		{ev: reload(w2), want: "timer slot", phase: phaseDraining},
		{ev: fire(TimerSlot, 0), after: 10 * time.Second, want: "answer 0 too-many-draining", notify: "RELOADING=1; READY=1", phase: phaseDraining},
		{ev: reload(w1), want: "timer slot"},
		{ev: empty(1), want: "checks 4", phase: phaseChecking},
		{ev: fire(TimerSlot, 0), after: 10 * time.Second, want: ""},
	})},
	{"a crash replacement is not held by the draining bound", seq(serving2draining1, []step{
		{ev: reload(nil), want: "checks 3"},
		{ev: checked(3, nil), want: "start 3"},
		{ev: started(3), want: ""},
		{ev: ready(3), want: "promote 3; stop 2; timer drain/2; watch 2"},
		{ev: gone(2), want: ""},
		{ev: exitedEv(3), want: "kill 3; timer kill-grace/3; watch 3; checks 4"},
		{ev: checked(4, nil), want: "", phase: phaseStarting},
		{ev: gone(3), want: "start 4"},
	})},
	{"issue 11 defect 3: adopted draining generations finish by their recorded deadline", []step{
		{ev: start(
			AdoptedGen{Gen: 1, PID: 101, Draining: true, Deadline: t0.Add(20 * time.Second)},
			AdoptedGen{Gen: 2, PID: 102},
		), want: "timer drain/1; watch 1; checks 3", phase: phaseChecking},
		{ev: checked(3, nil), want: "", phase: phaseStarting},
		{ev: gone(1), want: "start 3"},
		{ev: started(3), want: ""},
		{ev: ready(3), want: "promote 3; stop 2; timer drain/2; watch 2"},
		{ev: gone(2), want: ""},
		{ev: fire(TimerDrain, 1), after: 19 * time.Second, want: ""},
		{ev: empty(1), want: ""},
	}},
	{"issue 11 defect 3: an adopted draining generation past its deadline is killed", []step{
		{ev: start(AdoptedGen{Gen: 4, PID: 104, Draining: true, Deadline: t0.Add(-time.Second)}, AdoptedGen{Gen: 5, PID: 105}),
			want: "timer drain/4; watch 4; checks 6"},
		{ev: fire(TimerDrain, 4), want: "kill 4; timer kill-grace/4"},
	}},
	{"a failed generation after adoption leaves the adopted one serving", []step{
		{ev: start(AdoptedGen{Gen: 1, PID: 101}), want: "checks 2"},
		{ev: checked(2, nil), want: "start 2"},
		{ev: startFailed(2), want: "", notify: "READY=1", phase: phaseServing},
	}},
	{"generation 1 that cannot start ends run", []step{
		{ev: start(), want: "checks 1"},
		{ev: checked(1, nil), want: "start 1"},
		{ev: startFailed(1), want: "exit start-failed"},
	}},
	{"systemd: READY=1 once, RELOADING=1 and READY=1 around each reload, STOPPING=1", seq(serving1, []step{
		{ev: reload(nil), want: "checks 2", notify: "RELOADING=1"},
		{ev: checked(2, nil), want: "start 2", notify: ""},
		{ev: started(2), want: ""},
		{ev: ready(2), want: "promote 2; stop 1; timer drain/1; watch 1", notify: "EXTEND_TIMEOUT_USEC=40000000"},
		{ev: gone(1), want: "", notify: "READY=1"},
		{ev: stop(), want: "stop 2; timer drain/2; watch 2", notify: "STOPPING=1; EXTEND_TIMEOUT_USEC=40000000"},
	})},
	{"stale events of a generation that is gone are ignored", seq(serving1, []step{
		{ev: ready(7), want: ""},
		{ev: checked(7, nil), want: ""},
		{ev: started(7), want: ""},
		{ev: gone(7), want: ""},
		{ev: empty(7), want: ""},
		{ev: exitedEv(7), want: ""},
		{ev: fire(TimerDrain, 7), want: ""},
		{ev: ready(1), want: "", phase: phaseServing},
	})},
}

// render writes actions the way the rows spell them.
func render(acts []Action, notify bool) string {
	var out []string
	for _, a := range acts {
		switch a.Kind {
		case ActLog, ActSave:
			continue
		case ActNotify:
			if notify {
				out = append(out, strings.TrimPrefix(a.String(), "notify "))
			}
			continue
		case ActAnswer:
			if notify {
				continue
			}
			for range a.Waiters {
				out = append(out, a.String())
			}
			continue
		}
		if !notify {
			out = append(out, a.String())
		}
	}
	return strings.Join(out, "; ")
}

// invariants checks what must hold after every step.
func invariants(t *testing.T, m *machine, acts []Action) {
	t.Helper()
	for _, a := range acts {
		if a.Kind == ActLog && strings.HasPrefix(a.Msg, "nothing serves and nothing is starting") {
			t.Errorf("the safety net restarted: a path left nothing serving and nothing starting")
		}
	}
	for i, a := range acts {
		if a.Kind == ActExit && i != len(acts)-1 {
			t.Errorf("exit is action %d of %d: the loop returns on it, so what follows would never be done", i+1, len(acts))
		}
	}
	if m.done || m.stopping || !m.begun {
		return
	}
	if m.serving == nil && m.deploy == nil && m.queued == nil {
		t.Errorf("nothing serves and nothing is starting or queued")
	}
	listening := 0
	for _, g := range m.gens {
		if g.listening && !g.empty && g.pid != 0 && g.stage != stChecking {
			listening++
		}
	}
	if listening > 3 {
		t.Errorf("%d generations may listen at once", listening)
	}
}

func TestMachineTable(t *testing.T) {
	for _, row := range machineRows {
		t.Run(row.name, func(t *testing.T) { runRow(t, testConfig, row.steps) })
	}
}

// runRow feeds a new machine with cfg the row's steps and checks each
// step's actions, messages to systemd and phase, and the invariants.
func runRow(t *testing.T, cfg machineConfig, steps []step) {
	t.Helper()
	m := newMachine(cfg)
	now := t0
	for i, s := range steps {
		now = now.Add(s.after)
		ev := s.ev
		ev.Now = now
		acts := m.Step(ev)
		if got := render(acts, false); got != s.want {
			t.Errorf("step %d (%v gen %d): got actions\n\t%q\nwant\n\t%q", i, ev.Kind, ev.Gen, got, s.want)
		}
		if s.notify != "" {
			if got := render(acts, true); !notifyMatch(got, s.notify) {
				t.Errorf("step %d (%v gen %d): notify %q, want %q", i, ev.Kind, ev.Gen, got, s.notify)
			}
		}
		if s.phase != 0 && m.phase() != s.phase {
			t.Errorf("step %d (%v gen %d): phase %v, want %v", i, ev.Kind, ev.Gen, m.phase(), s.phase)
		}
		invariants(t, m, acts)
		for _, a := range acts {
			if a.Kind == ActStart && !a.At.After(now) {
				t.Errorf("step %d: start %d with its ready deadline passed (%v, now %v)", i, a.Gen, a.At.Sub(t0), now.Sub(t0))
			}
		}
		for _, w := range []chan Result{w1, w2} {
			select { // the loop's answers are buffered sends
			case <-w:
			default:
			}
		}
	}
}

// notifyMatch compares messages by their first line's key, so that rows
// need not spell PIDs and durations.
func notifyMatch(got, want string) bool {
	g, w := strings.Split(got, "; "), strings.Split(want, "; ")
	if len(g) != len(w) {
		return false
	}
	for i := range g {
		if !strings.HasPrefix(g[i], w[i]) {
			return false
		}
	}
	return true
}

func TestMachineDeadlines(t *testing.T) {
	m := newMachine(testConfig)
	now := t0
	stepAt := func(d time.Duration, ev Event) []Action {
		now = now.Add(d)
		ev.Now = now
		return m.Step(ev)
	}
	for _, s := range serving1 {
		stepAt(0, s.ev)
	}
	acts := stepAt(time.Second, reload(nil))
	i := slices.IndexFunc(acts, func(a Action) bool { return a.Kind == ActRunChecks })
	if i < 0 || !acts[i].At.Equal(t0.Add(11*time.Second)) {
		t.Fatalf("checks deadline: %v", acts)
	}
	acts = stepAt(9*time.Second, checked(2, nil))
	i = slices.IndexFunc(acts, func(a Action) bool { return a.Kind == ActStart })
	if i < 0 || !acts[i].At.Equal(t0.Add(11*time.Second)) || acts[i].Old != 1 {
		t.Fatalf("defect 7: the start after 9s of checks must keep the deadline of the reload (ready timeout 10s): %+v", acts)
	}
}
