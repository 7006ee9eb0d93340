//go:build linux

package supervisor

import (
	"flag"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

var printMatrix = flag.Bool("print-matrix", false, "print the matrix cells as the machine computes them")

// matrixSetups bring a machine into each phase. new, serving and old name
// the generations the events are about (99: none such in that phase).
var matrixSetups = []struct {
	phase              phase
	steps              []step
	newG, serving, old int
}{
	{phaseStarting, seq(serving1, []step{
		{ev: exitedEv(1), want: "kill 1; timer kill-grace/1; watch 1; checks 2"},
		{ev: checked(2, nil), want: ""},
	}), 2, 99, 1},
	{phaseChecking, seq(serving1, []step{{ev: reload(w1), want: "checks 2"}}), 2, 1, 99},
	{phaseWaitingReady, seq(serving1, []step{
		{ev: reload(w1), want: "checks 2"},
		{ev: checked(2, nil), want: "start 2"},
		{ev: started(2), want: ""},
	}), 2, 1, 99},
	{phaseHandingOver, seq(serving1, []step{
		{ev: reload(w1), want: "checks 2"},
		{ev: checked(2, nil), want: "start 2"},
		{ev: started(2), want: ""},
		{ev: ready(2), want: "promote 2; stop 1; timer drain/1; watch 1"},
	}), 99, 2, 1},
	{phaseCuttingOver, seq(serving1, []step{
		{ev: reload(w1), want: "checks 2"},
		{ev: checked(2, nil), want: "dark 2; start 2"},
		{ev: started(2), want: ""},
		{ev: ready(2), want: "promote 2; cutover 2; timer cutover/1"},
	}), 99, 2, 1},
	// The refused generation is both the new one and the one whose stop
	// signal waits (old): the events about it are the hold's.
	{phaseHolding, seq(serving1, refused2), 2, 1, 2},
	{phaseDraining, serving2draining1, 99, 2, 1},
	{phaseServing, serving1, 99, 1, 99},
	{phaseBackoff, seq(serving1, []step{
		{ev: exitedEv(1), want: "kill 1; timer kill-grace/1; watch 1; checks 2"},
		{ev: empty(1), want: ""},
		{ev: checked(2, nil), want: "start 2"},
		{ev: started(2), want: ""},
		{ev: ready(2), want: "promote 2"},
		{ev: exitedEv(2), want: "kill 2; timer kill-grace/2; watch 2; timer backoff"},
	}), 99, 99, 2},
	{phaseStopping, seq(serving2draining1, []step{
		{ev: stop(), want: "stop 2; timer drain/2; watch 2"},
	}), 99, 99, 1},
}

// steeredPhases are set up with the supervisor owning the steering
// (machineConfig.Steered); the others with the kernel path.
var steeredPhases = map[phase]bool{phaseCuttingOver: true, phaseHolding: true}

// matrixEvents are the events of the matrix, made for a phase's roles.
var matrixEvents = []struct {
	name string
	ev   func(newG, serving, old int) Event
}{
	{"start", func(_, _, _ int) Event { return start() }},
	{"reload", func(_, _, _ int) Event { return reload(w1) }},
	{"stop", func(_, _, _ int) Event { return stop() }},
	{"hurry", func(_, _, _ int) Event { return hurry() }},
	{"checked new", func(n, _, _ int) Event { return checked(n, nil) }},
	{"check refused new", func(n, _, _ int) Event { return checked(n, fmt.Errorf("%w: exit 1", ErrCheckFailed)) }},
	{"started new", func(n, _, _ int) Event { return started(n) }},
	{"start failed new", func(n, _, _ int) Event { return startFailed(n) }},
	{"ready new", func(n, _, _ int) Event { return ready(n) }},
	{"not ready new", func(n, _, _ int) Event { return notReady(n) }},
	{"exited new", func(n, _, _ int) Event { return exitedEv(n) }},
	{"exited serving", func(_, s, _ int) Event { return exitedEv(s) }},
	{"exited old", func(_, _, o int) Event { return exitedEv(o) }},
	{"listeners gone serving", func(_, s, _ int) Event { return gone(s) }},
	{"listeners gone old", func(_, _, o int) Event { return gone(o) }},
	{"listeners gone new", func(n, _, _ int) Event { return gone(n) }},
	{"group empty new", func(n, _, _ int) Event { return empty(n) }},
	{"group empty serving", func(_, s, _ int) Event { return empty(s) }},
	{"group empty old", func(_, _, o int) Event { return empty(o) }},
	{"timer backoff", func(_, _, _ int) Event { return fire(TimerBackoff, 0) }},
	{"timer drain old", func(_, _, o int) Event { return fire(TimerDrain, o) }},
	{"timer kill-grace old", func(_, _, o int) Event { return fire(TimerKillGrace, o) }},
	{"timer slot", func(_, _, _ int) Event { return fire(TimerSlot, 0) }},
	{"timer cutover old", func(_, _, o int) Event { return fire(TimerCutover, o) }},
	{"timer hold old", func(_, _, o int) Event { return fire(TimerHold, o) }},
	{"cut over old", func(_, _, o int) Event { return cutOver(o) }},
	{"shadowing new", func(n, _, _ int) Event { return shadowing(n) }},
	{"hold failed new", func(n, _, _ int) Event { return holdFailed(n) }},
}

// matrixCells: for each phase and event, the actions and the phase after.
// A cell missing here fails the test: every event is decided in every
// phase. Timer events come an hour after the setup, past every deadline.
var matrixCells = map[string]string{
	"starting / cut over old":                "- → starting",
	"checking / cut over old":                "- → checking",
	"waiting-ready / cut over old":           "- → waiting-ready",
	"handing-over / cut over old":            "- → handing-over",
	"cutting-over / start":                   "- → cutting-over",
	"cutting-over / reload":                  "- → cutting-over",
	"cutting-over / stop":                    "answer 2 ok; unsteer; stop 1; timer drain/1; watch 1; stop 2; timer drain/2; watch 2 → stopping",
	"cutting-over / hurry":                   "answer 2 ok; unsteer; stop 1; timer drain/1; watch 1; stop 2; timer drain/2; watch 2; kill 1; timer kill-grace/1; kill 2; timer kill-grace/2 → stopping",
	"cutting-over / checked new":             "- → cutting-over",
	"cutting-over / check refused new":       "- → cutting-over",
	"cutting-over / started new":             "- → cutting-over",
	"cutting-over / start failed new":        "- → cutting-over",
	"cutting-over / ready new":               "- → cutting-over",
	"cutting-over / not ready new":           "- → cutting-over",
	"cutting-over / exited new":              "- → cutting-over",
	"cutting-over / exited serving":          "unsteer; kill 2; timer kill-grace/2; watch 2; answer 2 exited-in-handover; checks 3 → checking",
	"cutting-over / exited old":              "- → cutting-over",
	"cutting-over / listeners gone serving":  "- → cutting-over",
	"cutting-over / listeners gone old":      "compact; answer 2 ok → draining",
	"cutting-over / listeners gone new":      "- → cutting-over",
	"cutting-over / group empty new":         "- → cutting-over",
	"cutting-over / group empty serving":     "unsteer; answer 2 exited-in-handover; checks 3 → checking",
	"cutting-over / group empty old":         "compact; answer 2 ok → serving",
	"cutting-over / timer backoff":           "- → cutting-over",
	"cutting-over / timer drain old":         "kill 1; timer kill-grace/1; watch 1 → cutting-over",
	"cutting-over / timer kill-grace old":    "- → cutting-over",
	"cutting-over / timer slot":              "- → cutting-over",
	"cutting-over / cut over old":            "stop 1; timer drain/1; watch 1 → handing-over",
	"draining / cut over old":                "- → draining",
	"serving / cut over old":                 "- → serving",
	"backoff / cut over old":                 "- → backoff",
	"stopping / cut over old":                "- → stopping",
	"starting / shadowing new":               "- → starting",
	"starting / hold failed new":             "- → starting",
	"checking / shadowing new":               "- → checking",
	"checking / hold failed new":             "- → checking",
	"waiting-ready / shadowing new":          "kill 2; timer kill-grace/2; watch 2 → waiting-ready",
	"waiting-ready / hold failed new":        "- → waiting-ready",
	"handing-over / shadowing new":           "- → handing-over",
	"handing-over / hold failed new":         "- → handing-over",
	"cutting-over / shadowing new":           "- → cutting-over",
	"cutting-over / hold failed new":         "- → cutting-over",
	"draining / shadowing new":               "- → draining",
	"draining / hold failed new":             "- → draining",
	"serving / shadowing new":                "- → serving",
	"serving / hold failed new":              "- → serving",
	"backoff / shadowing new":                "- → backoff",
	"backoff / hold failed new":              "- → backoff",
	"stopping / shadowing new":               "- → stopping",
	"stopping / hold failed new":             "- → stopping",
	"starting / start":                       "- → starting",
	"starting / reload":                      "- → starting",
	"starting / stop":                        "- → stopping",
	"starting / hurry":                       "- → stopping",
	"starting / checked new":                 "- → starting",
	"starting / check refused new":           "- → starting",
	"starting / started new":                 "- → starting",
	"starting / start failed new":            "- → starting",
	"starting / ready new":                   "- → starting",
	"starting / not ready new":               "- → starting",
	"starting / exited new":                  "- → starting",
	"starting / exited serving":              "- → starting",
	"starting / exited old":                  "- → starting",
	"starting / listeners gone serving":      "- → starting",
	"starting / listeners gone old":          "start 2 → waiting-ready",
	"starting / listeners gone new":          "- → starting",
	"starting / group empty new":             "- → starting",
	"starting / group empty serving":         "- → starting",
	"starting / group empty old":             "start 2 → waiting-ready",
	"starting / timer backoff":               "- → starting",
	"starting / timer drain old":             "- → starting",
	"starting / timer kill-grace old":        "start 2 → waiting-ready",
	"starting / timer slot":                  "- → starting",
	"checking / start":                       "- → checking",
	"checking / reload":                      "- → checking",
	"checking / stop":                        "cancel 2; answer 2 stopping; stop 1; timer drain/1; watch 1 → stopping",
	"checking / hurry":                       "cancel 2; answer 2 stopping; stop 1; timer drain/1; watch 1; kill 1; timer kill-grace/1 → stopping",
	"checking / checked new":                 "start 2 → waiting-ready",
	"checking / check refused new":           "answer 2 check-failed → serving",
	"checking / started new":                 "- → checking",
	"checking / start failed new":            "- → checking",
	"checking / ready new":                   "- → checking",
	"checking / not ready new":               "- → checking",
	"checking / exited new":                  "- → checking",
	"checking / exited serving":              "kill 1; timer kill-grace/1; watch 1 → checking",
	"checking / exited old":                  "- → checking",
	"checking / listeners gone serving":      "- → checking",
	"checking / listeners gone old":          "- → checking",
	"checking / listeners gone new":          "- → checking",
	"checking / group empty new":             "- → checking",
	"checking / group empty serving":         "- → checking",
	"checking / group empty old":             "- → checking",
	"checking / timer backoff":               "- → checking",
	"checking / timer drain old":             "- → checking",
	"checking / timer kill-grace old":        "- → checking",
	"checking / timer slot":                  "- → checking",
	"waiting-ready / start":                  "- → waiting-ready",
	"waiting-ready / reload":                 "- → waiting-ready",
	"waiting-ready / stop":                   "kill 2; timer kill-grace/2; watch 2; answer 2 stopping; stop 1; timer drain/1; watch 1 → stopping",
	"waiting-ready / hurry":                  "kill 2; timer kill-grace/2; watch 2; answer 2 stopping; stop 1; timer drain/1; watch 1; kill 1; timer kill-grace/1 → stopping",
	"waiting-ready / checked new":            "- → waiting-ready",
	"waiting-ready / check refused new":      "- → waiting-ready",
	"waiting-ready / started new":            "- → waiting-ready",
	"waiting-ready / start failed new":       "- → waiting-ready",
	"waiting-ready / ready new":              "promote 2; stop 1; timer drain/1; watch 1 → handing-over",
	"waiting-ready / not ready new":          "kill 2; timer kill-grace/2; watch 2 → waiting-ready",
	"waiting-ready / exited new":             "kill 2; timer kill-grace/2; watch 2 → waiting-ready",
	"waiting-ready / exited serving":         "kill 1; timer kill-grace/1; watch 1 → waiting-ready",
	"waiting-ready / exited old":             "- → waiting-ready",
	"waiting-ready / listeners gone serving": "- → waiting-ready",
	"waiting-ready / listeners gone old":     "- → waiting-ready",
	"waiting-ready / listeners gone new":     "- → waiting-ready",
	"waiting-ready / group empty new":        "- → waiting-ready",
	"waiting-ready / group empty serving":    "- → waiting-ready",
	"waiting-ready / group empty old":        "- → waiting-ready",
	"waiting-ready / timer backoff":          "- → waiting-ready",
	"waiting-ready / timer drain old":        "- → waiting-ready",
	"waiting-ready / timer kill-grace old":   "- → waiting-ready",
	"waiting-ready / timer slot":             "- → waiting-ready",
	"handing-over / start":                   "- → handing-over",
	"handing-over / reload":                  "- → handing-over",
	"handing-over / stop":                    "answer 2 ok; stop 2; timer drain/2; watch 2 → stopping",
	"handing-over / hurry":                   "answer 2 ok; stop 2; timer drain/2; watch 2; kill 1; timer kill-grace/1; kill 2; timer kill-grace/2 → stopping",
	"handing-over / checked new":             "- → handing-over",
	"handing-over / check refused new":       "- → handing-over",
	"handing-over / started new":             "- → handing-over",
	"handing-over / start failed new":        "- → handing-over",
	"handing-over / ready new":               "- → handing-over",
	"handing-over / not ready new":           "- → handing-over",
	"handing-over / exited new":              "- → handing-over",
	"handing-over / exited serving":          "kill 2; timer kill-grace/2; watch 2; answer 2 exited-in-handover; checks 3 → checking",
	"handing-over / exited old":              "- → handing-over",
	"handing-over / listeners gone serving":  "- → handing-over",
	"handing-over / listeners gone old":      "answer 2 ok → draining",
	"handing-over / listeners gone new":      "- → handing-over",
	"handing-over / group empty new":         "- → handing-over",
	"handing-over / group empty serving":     "answer 2 exited-in-handover; checks 3 → checking",
	"handing-over / group empty old":         "answer 2 ok → serving",
	"handing-over / timer backoff":           "- → handing-over",
	"handing-over / timer drain old":         "kill 1; timer kill-grace/1 → handing-over",
	"handing-over / timer kill-grace old":    "- → handing-over",
	"handing-over / timer slot":              "- → handing-over",
	"draining / start":                       "- → draining",
	"draining / reload":                      "checks 3 → checking",
	"draining / stop":                        "stop 2; timer drain/2; watch 2 → stopping",
	"draining / hurry":                       "stop 2; timer drain/2; watch 2; kill 1; timer kill-grace/1; kill 2; timer kill-grace/2 → stopping",
	"draining / checked new":                 "- → draining",
	"draining / check refused new":           "- → draining",
	"draining / started new":                 "- → draining",
	"draining / start failed new":            "- → draining",
	"draining / ready new":                   "- → draining",
	"draining / not ready new":               "- → draining",
	"draining / exited new":                  "- → draining",
	"draining / exited serving":              "kill 2; timer kill-grace/2; watch 2; checks 3 → checking",
	"draining / exited old":                  "- → draining",
	"draining / listeners gone serving":      "- → draining",
	"draining / listeners gone old":          "- → draining",
	"draining / listeners gone new":          "- → draining",
	"draining / group empty new":             "- → draining",
	"draining / group empty serving":         "checks 3 → checking",
	"draining / group empty old":             "- → serving",
	"draining / timer backoff":               "- → draining",
	"draining / timer drain old":             "kill 1; timer kill-grace/1 → draining",
	"draining / timer kill-grace old":        "- → draining",
	"draining / timer slot":                  "- → draining",
	"serving / start":                        "- → serving",
	"serving / reload":                       "checks 2 → checking",
	"serving / stop":                         "stop 1; timer drain/1; watch 1 → stopping",
	"serving / hurry":                        "stop 1; timer drain/1; watch 1; kill 1; timer kill-grace/1 → stopping",
	"serving / checked new":                  "- → serving",
	"serving / check refused new":            "- → serving",
	"serving / started new":                  "- → serving",
	"serving / start failed new":             "- → serving",
	"serving / ready new":                    "- → serving",
	"serving / not ready new":                "- → serving",
	"serving / exited new":                   "- → serving",
	"serving / exited serving":               "kill 1; timer kill-grace/1; watch 1; checks 2 → checking",
	"serving / exited old":                   "- → serving",
	"serving / listeners gone serving":       "- → serving",
	"serving / listeners gone old":           "- → serving",
	"serving / listeners gone new":           "- → serving",
	"serving / group empty new":              "- → serving",
	"serving / group empty serving":          "checks 2 → checking",
	"serving / group empty old":              "- → serving",
	"serving / timer backoff":                "- → serving",
	"serving / timer drain old":              "- → serving",
	"serving / timer kill-grace old":         "- → serving",
	"serving / timer slot":                   "- → serving",
	"backoff / start":                        "- → backoff",
	"backoff / reload":                       "checks 3 → checking",
	"backoff / stop":                         "- → stopping",
	"backoff / hurry":                        "- → stopping",
	"backoff / checked new":                  "- → backoff",
	"backoff / check refused new":            "- → backoff",
	"backoff / started new":                  "- → backoff",
	"backoff / start failed new":             "- → backoff",
	"backoff / ready new":                    "- → backoff",
	"backoff / not ready new":                "- → backoff",
	"backoff / exited new":                   "- → backoff",
	"backoff / exited serving":               "- → backoff",
	"backoff / exited old":                   "- → backoff",
	"backoff / listeners gone serving":       "- → backoff",
	"backoff / listeners gone old":           "- → backoff",
	"backoff / listeners gone new":           "- → backoff",
	"backoff / group empty new":              "- → backoff",
	"backoff / group empty serving":          "- → backoff",
	"backoff / group empty old":              "- → backoff",
	"backoff / timer backoff":                "checks 3 → checking",
	"backoff / timer drain old":              "checks 3 → checking",
	"backoff / timer kill-grace old":         "checks 3 → checking",
	"backoff / timer slot":                   "checks 3 → checking",
	"stopping / start":                       "- → stopping",
	"stopping / reload":                      "answer 0 stopping → stopping",
	"stopping / stop":                        "- → stopping",
	"stopping / hurry":                       "kill 1; timer kill-grace/1; kill 2; timer kill-grace/2 → stopping",
	"stopping / checked new":                 "- → stopping",
	"stopping / check refused new":           "- → stopping",
	"stopping / started new":                 "- → stopping",
	"stopping / start failed new":            "- → stopping",
	"stopping / ready new":                   "- → stopping",
	"stopping / not ready new":               "- → stopping",
	"stopping / exited new":                  "- → stopping",
	"stopping / exited serving":              "- → stopping",
	"stopping / exited old":                  "- → stopping",
	"stopping / listeners gone serving":      "- → stopping",
	"stopping / listeners gone old":          "- → stopping",
	"stopping / listeners gone new":          "- → stopping",
	"stopping / group empty new":             "- → stopping",
	"stopping / group empty serving":         "- → stopping",
	"stopping / group empty old":             "- → stopping",
	"stopping / timer backoff":               "- → stopping",
	"stopping / timer drain old":             "kill 1; timer kill-grace/1 → stopping",
	"stopping / timer kill-grace old":        "- → stopping",
	"stopping / timer slot":                  "- → stopping",
	"starting / timer cutover old":           "- → starting",
	"checking / timer cutover old":           "- → checking",
	"waiting-ready / timer cutover old":      "- → waiting-ready",
	"handing-over / timer cutover old":       "- → handing-over",
	"cutting-over / timer cutover old":       "stop 1; timer drain/1; watch 1 → handing-over",
	"draining / timer cutover old":           "- → draining",
	"serving / timer cutover old":            "- → serving",
	"backoff / timer cutover old":            "checks 3 → checking",
	"stopping / timer cutover old":           "- → stopping",
	// A refused generation's hold (machine_steering.go): the quiet wait and
	// the wait for its listeners after its stop signal are its own timers;
	// its reload is answered once its listeners are gone.
	"starting / timer hold old":        "- → starting",
	"checking / timer hold old":        "- → checking",
	"waiting-ready / timer hold old":   "- → waiting-ready",
	"handing-over / timer hold old":    "- → handing-over",
	"cutting-over / timer hold old":    "- → cutting-over",
	"holding / start":                  "- → holding",
	"holding / reload":                 "- → holding",
	"holding / stop":                   "answer 2 not-ready; unsteer; stop 2; timer drain/2; timer hold/2; stop 1; timer drain/1; watch 1 → stopping",
	"holding / hurry":                  "answer 2 not-ready; unsteer; stop 2; timer drain/2; timer hold/2; stop 1; timer drain/1; watch 1; kill 1; timer kill-grace/1; kill 2; timer kill-grace/2 → stopping",
	"holding / checked new":            "- → holding",
	"holding / check refused new":      "- → holding",
	"holding / started new":            "- → holding",
	"holding / start failed new":       "- → holding",
	"holding / ready new":              "- → holding",
	"holding / not ready new":          "- → holding",
	"holding / exited new":             "- → holding",
	"holding / exited serving":         "unsteer; kill 1; timer kill-grace/1; watch 1 → holding",
	"holding / exited old":             "- → holding",
	"holding / listeners gone serving": "- → holding",
	"holding / listeners gone old":     "release 2; answer 2 not-ready → draining",
	"holding / listeners gone new":     "release 2; answer 2 not-ready → draining",
	"holding / group empty new":        "release 2; answer 2 not-ready → serving",
	"holding / group empty serving":    "unsteer → holding",
	"holding / group empty old":        "release 2; answer 2 not-ready → serving",
	"holding / timer backoff":          "- → holding",
	"holding / timer drain old":        "kill 2; timer kill-grace/2 → holding",
	"holding / timer kill-grace old":   "- → holding",
	"holding / timer slot":             "- → holding",
	"holding / timer cutover old":      "stop 2; timer drain/2; timer hold/2 → holding",
	"holding / timer hold old":         "- → holding",
	"holding / cut over old":           "stop 2; timer drain/2; timer hold/2 → holding",
	"holding / shadowing new":          "- → holding",
	"holding / hold failed new":        "release 2; kill 2; timer kill-grace/2 → waiting-ready",
	"draining / timer hold old":        "- → draining",
	"serving / timer hold old":         "- → serving",
	"backoff / timer hold old":         "checks 3 → checking",
	"stopping / timer hold old":        "- → stopping",
}

func TestMachineMatrix(t *testing.T) {
	var printed []string
	for _, setup := range matrixSetups {
		for _, me := range matrixEvents {
			key := setup.phase.String() + " / " + me.name
			t.Run(key, func(t *testing.T) {
				cfg := testConfig
				cfg.Steered = steeredPhases[setup.phase]
				m := newMachine(cfg)
				now := t0
				for i, s := range setup.steps {
					now = now.Add(s.after)
					ev := s.ev
					ev.Now = now
					if got := render(m.Step(ev), false); got != s.want {
						t.Fatalf("setup step %d: %q, want %q", i, got, s.want)
					}
				}
				if m.phase() != setup.phase {
					t.Fatalf("setup reaches %v, want %v", m.phase(), setup.phase)
				}
				ev := me.ev(setup.newG, setup.serving, setup.old)
				ev.Now = now
				if ev.Kind == EvTimer {
					ev.Now = now.Add(time.Hour)
				}
				acts := m.Step(ev)
				invariants(t, m, acts)
				got := render(acts, false)
				if got == "" {
					got = "-"
				}
				got += " → " + m.phase().String()
				printed = append(printed, fmt.Sprintf("\t%q: %q,", key, got))
				want, ok := matrixCells[key]
				if !ok {
					t.Errorf("no cell for %s (the machine does %q)", key, got)
					return
				}
				if got != want {
					t.Errorf("%s: got %q, want %q", key, got, want)
				}
			})
		}
	}
	if *printMatrix {
		fmt.Println(strings.Join(printed, "\n"))
	}
	for key := range matrixCells {
		ph, ev, _ := strings.Cut(key, " / ")
		if !slices.ContainsFunc(matrixSetups, func(s struct {
			phase              phase
			steps              []step
			newG, serving, old int
		}) bool {
			return s.phase.String() == ph
		}) || !slices.ContainsFunc(matrixEvents, func(e struct {
			name string
			ev   func(newG, serving, old int) Event
		}) bool {
			return e.name == ev
		}) {
			t.Errorf("cell %q names no phase or event of the matrix", key)
		}
	}
	for p := phaseStarting; p <= phaseStopping; p++ {
		if !slices.ContainsFunc(matrixSetups, func(s struct {
			phase              phase
			steps              []step
			newG, serving, old int
		}) bool {
			return s.phase == p
		}) {
			t.Errorf("no setup for phase %v", p)
		}
	}
}
