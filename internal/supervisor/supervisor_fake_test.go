//go:build linux

package supervisor

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeProcesses is a process layer without processes: every outcome (a
// check finishing, readiness, an exit, listeners closing, a group
// emptying) happens when the test says so, and every effect on a process
// is recorded the way the machine's table renders it.
type fakeProcesses struct {
	mu       sync.Mutex
	effects  []string
	chans    map[string]chan error
	insts    map[int]*Instance
	startErr map[int]error
	adopted  []AdoptedGen
	lastGen  int // the state file's last generation
	quit     chan struct{}
}

func newFakeProcesses() *fakeProcesses {
	return &fakeProcesses{chans: map[string]chan error{}, insts: map[int]*Instance{},
		startErr: map[int]error{}, quit: make(chan struct{})}
}

func (f *fakeProcesses) record(e string) {
	f.mu.Lock()
	f.effects = append(f.effects, e)
	f.mu.Unlock()
}

func (f *fakeProcesses) recorded() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.effects)
}

// ch is the channel through which the test releases what for gen n.
func (f *fakeProcesses) ch(what string, n int) chan error {
	f.mu.Lock()
	defer f.mu.Unlock()
	key := fmt.Sprintf("%s/%d", what, n)
	c := f.chans[key]
	if c == nil {
		c = make(chan error, 1)
		f.chans[key] = c
	}
	return c
}

// release lets what for gen n happen, with err.
func (f *fakeProcesses) release(what string, n int, err error) {
	select {
	case f.ch(what, n) <- err:
	default:
	}
}

func (f *fakeProcesses) wait(ctx context.Context, what string, n int) error {
	select {
	case err := <-f.ch(what, n):
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-f.quit:
		return errors.New("test over")
	}
}

func (f *fakeProcesses) instance(n, pid int, adopted bool) *Instance {
	in := &Instance{Gen: n, PID: pid, PGID: pid, Adopted: adopted, state: StateStarting,
		done: make(chan struct{}), pgSet: make(chan struct{})}
	close(in.pgSet)
	f.mu.Lock()
	f.insts[n] = in
	f.mu.Unlock()
	return in
}

func (f *fakeProcesses) inst(n int) *Instance {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.insts[n]
}

// exit makes gen n's main process exit; false if it had exited or never
// started.
func (f *fakeProcesses) exit(n int, status string) bool {
	in := f.inst(n)
	if in == nil {
		return false
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	select {
	case <-in.done:
		return false
	default:
		in.exit = status
		close(in.done)
		return true
	}
}

func (f *fakeProcesses) layer() processLayer {
	return processLayer{
		adopt: func() adoption {
			out := adoption{lastGen: f.lastGen}
			for _, a := range f.adopted {
				out.gens = append(out.gens, adoptedInstance{in: f.instance(a.Gen, a.PID, true), draining: a.Draining, deadline: a.Deadline, leftover: a.Leftover, stopPending: a.StopPending, refused: a.Refused})
			}
			return out
		},
		prepare: func(ctx context.Context, n int, _ *Instance) (*prepared, error) {
			f.record(fmt.Sprintf("checks %d", n))
			err := f.wait(ctx, "checked", n)
			if ctx.Err() != nil {
				f.record(fmt.Sprintf("cancel %d", n))
			}
			return &prepared{}, err
		},
		start: func(n int, _ *prepared) (*Instance, error) {
			f.record(fmt.Sprintf("start %d", n))
			if err := f.startErr[n]; err != nil {
				return nil, err
			}
			return f.instance(n, 100+n, false), nil
		},
		waitReady: func(ctx context.Context, in *Instance, _ time.Time, _ *Instance) error {
			return f.wait(ctx, "ready", in.Gen)
		},
		stop: func(in *Instance) error { f.record(fmt.Sprintf("stop %d", in.Gen)); return nil },
		kill: func(in *Instance) error { f.record(fmt.Sprintf("kill %d", in.Gen)); return nil },
		listenersGone: func(ctx context.Context, in *Instance) {
			f.record(fmt.Sprintf("watch %d", in.Gen))
			_ = f.wait(ctx, "gone", in.Gen)
		},
		groupEmpty: func(ctx context.Context, in *Instance) { _ = f.wait(ctx, "empty", in.Gen) },
		save:       func(StateFile) {},
	}
}

// effectKinds are the actions the process layer sees.
var effectKinds = []string{"checks", "start", "stop", "kill", "cancel", "watch", "answer", "exit"}

func effectsOf(rendered string) []string {
	var out []string
	for _, e := range strings.Split(rendered, "; ") {
		kind, _, _ := strings.Cut(e, " ")
		if slices.Contains(effectKinds, kind) {
			out = append(out, e)
		}
	}
	return out
}

// contains reports whether have holds every element of want, counted.
func contains(have, want []string) bool {
	left := slices.Clone(have)
	for _, w := range want {
		i := slices.Index(left, w)
		if i < 0 {
			return false
		}
		left = slices.Delete(left, i, i+1)
	}
	return true
}

// TestSupervisorOverFakeProcesses drives the real Supervisor (Run, Reload,
// Stop, Hurry, the timers and goroutines of the loop) through the rows of
// the machine's table, over a process layer that runs nothing: each row's
// events are caused through the process layer or the public methods, and
// the effects on processes, the answers to Reload and Run's result must
// be those of the row.
func TestSupervisorOverFakeProcesses(t *testing.T) {
	for _, row := range machineRows {
		t.Run(row.name, func(t *testing.T) {
			f := newFakeProcesses()
			// Reloads before EvStart are asked for while Run reads the
			// state file; the loop posts EvStart itself.
			first := slices.IndexFunc(row.steps, func(s step) bool { return s.ev.Kind == EvStart })
			early := []EventKind{EvReloadAsked, EvStopAsked, EvHurry}
			if first < 0 || slices.ContainsFunc(row.steps[:first], func(s step) bool { return !slices.Contains(early, s.ev.Kind) || s.want != "" }) {
				t.Fatal("a row starts with EvStart, after reloads or stops that do nothing yet")
			}
			f.adopted, f.lastGen = row.steps[first].ev.Adopted, row.steps[first].ev.LastGen
			for _, s := range row.steps {
				if s.ev.Kind == EvStarted && s.ev.Err != nil {
					f.startErr[s.ev.Gen] = s.ev.Err
				}
			}
			s := New(Config{Name: "fake", ReadyTimeout: testConfig.ReadyTimeout,
				Launch:     Launch{DrainTimeout: testConfig.DrainTimeout},
				BackoffMin: testConfig.BackoffMin, BackoffMax: testConfig.BackoffMax,
				CrashLimit: testConfig.CrashLimit, CrashWindow: testConfig.CrashWindow, MaxDraining: testConfig.MaxDraining})
			s.os = f.layer()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			adopt := s.os.adopt
			s.os.adopt = func() adoption {
				for _, st := range row.steps[:first] {
					switch st.ev.Kind {
					case EvStopAsked:
						s.Stop()
					case EvHurry:
						s.Hurry()
					default:
						f.reloadAsked(ctx, s, st.ev.Waiter != nil, true)
					}
				}
				return adopt()
			}
			var stepMu sync.Mutex
			steps := map[string]int{}
			s.stepped = func(ev Event) {
				stepMu.Lock()
				steps[fmt.Sprintf("%v/%d", ev.Kind, ev.Gen)]++
				stepMu.Unlock()
			}
			stepCount := func(k EventKind, n int) int {
				stepMu.Lock()
				defer stepMu.Unlock()
				return steps[fmt.Sprintf("%v/%d", k, n)]
			}
			var clockMu sync.Mutex
			now := t0
			s.now = func() time.Time { clockMu.Lock(); defer clockMu.Unlock(); return now }

			runErr := make(chan error, 1)
			var ran atomic.Bool
			go func() {
				err := s.Run(ctx)
				ran.Store(true)
				f.record("exit " + map[bool]string{true: "ok", false: errName(err)}[err == nil])
				runErr <- err
			}()
			var want []string
			for i, st := range row.steps {
				if i < first {
					continue // asked for while the state file was read
				}
				clockMu.Lock()
				now = now.Add(st.after)
				clockMu.Unlock()
				ev := st.ev
				evGen := ev.Gen
				if ev.Kind == EvReloadAsked || ev.Kind == EvStopAsked || ev.Kind == EvHurry || ev.Kind == EvTimer {
					evGen = 0
				}
				before := stepCount(ev.Kind, evGen)
				must := true // the event surely reaches the loop
				switch ev.Kind {
				case EvReloadAsked:
					f.reloadAsked(ctx, s, ev.Waiter != nil, false)
				case EvStopAsked:
					s.Stop()
				case EvHurry:
					s.Hurry()
				case EvChecked:
					must = false // its checks may have been cancelled
					f.release("checked", ev.Gen, ev.Err)
				case EvReady:
					must = false // it may have been killed
					f.release("ready", ev.Gen, ev.Err)
				case EvExited:
					must = f.exit(ev.Gen, ev.Status)
				case EvListenersGone:
					must = false // it may not be watched
					f.release("gone", ev.Gen, nil)
				case EvGroupEmpty:
					must = f.exit(ev.Gen, "exit status 0") || f.inst(ev.Gen) != nil
					f.release("empty", ev.Gen, nil)
				case EvStarted, EvStart:
					before = -1 // the loop posts it itself
				case EvTimer:
					s.post(Event{Kind: EvTimer, Timer: ev.Timer})
				}
				// The event has been handled (a few cannot be known to
				// reach the loop: give them a moment).
				wait := 5 * time.Second
				if !must {
					wait = 200 * time.Millisecond
				}
				for deadline := time.Now().Add(wait); before >= 0 && stepCount(ev.Kind, evGen) == before && !ran.Load(); {
					if time.Now().After(deadline) {
						if must {
							t.Fatalf("step %d (%v gen %d) was not handled", i, ev.Kind, ev.Gen)
						}
						break
					}
					time.Sleep(time.Millisecond)
				}
				want = append(want, effectsOf(st.want)...)
				deadline := time.Now().Add(5 * time.Second)
				for !contains(f.recorded(), want) {
					if time.Now().After(deadline) {
						t.Fatalf("step %d (%v gen %d): effects %q, want them to include %q", i, ev.Kind, ev.Gen, f.recorded(), want)
					}
					time.Sleep(time.Millisecond)
				}
			}
			// Nothing more than the row's effects, once the loop is quiet.
			time.Sleep(20 * time.Millisecond)
			got := f.recorded()
			slices.Sort(got)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("effects (sorted) %q, want %q", got, want)
			}
			close(f.quit)
			for n := range 20 {
				f.exit(n, "killed at the end of the test")
			}
			s.Stop()
			s.Hurry()
			select {
			case <-runErr:
			case <-time.After(10 * time.Second):
				t.Fatal("Run did not return after the test's stop")
			}
		})
	}
}

// reloadAsked asks s for a reload: a SIGHUP's (no one waits), or a
// client's whose answer is recorded as an effect. With queued (the loop is
// not running yet: Run is in adopt), it returns once the request is in the
// inbox; else the caller waits for the loop to step it.
func (f *fakeProcesses) reloadAsked(ctx context.Context, s *Supervisor, waits, queued bool) {
	if !waits {
		s.RequestReload()
		return
	}
	inbox := func() int { s.mu.Lock(); defer s.mu.Unlock(); return len(s.inbox) }
	before := inbox()
	go func() {
		r := s.Reload(ctx)
		if r.OK {
			f.record(fmt.Sprintf("answer %d ok", r.Generation))
		} else {
			f.record(fmt.Sprintf("answer %d %s", r.Generation, errName(r.Err)))
		}
	}()
	for deadline := time.Now().Add(5 * time.Second); queued && inbox() <= before && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
}
