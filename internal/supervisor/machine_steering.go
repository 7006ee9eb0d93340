//go:build linux

package supervisor

import (
	"log/slog"
	"time"
)

// The machine's decisions when the supervisor owns the port's steering
// (machineConfig.Steered; the I/O is in steering.go):
//
//   - Before a generation starts beside a serving one, the serving one's
//     groups go dark on its listeners (ActDark): the new one joins and
//     receives nothing until it is promoted.
//   - On promotion, new connections go to the new generation (ActCutover);
//     the old one gets its stop signal only at EvCutOver, once its
//     listeners' accept queues are empty and the handshakes seen at the
//     switch are done (or the cutover's deadline passed). Until then it
//     keeps accepting what was queued on it; the machine counts it as
//     draining, with its stop pending.
//   - Once the old generation's listeners are gone, the placeholders it no
//     longer needs are closed (ActCompact).
//   - When nothing serves (a crash, a stop), every placeholder is closed
//     (ActUnsteer): clients are refused rather than queued on a member
//     that never accepts.
//
//   - A new generation that listens on an address shadowing a steered one
//     (EvShadowing, shadow.go) fails as one that is not ready, but is not
//     killed at once: the kill would reset what it accepted and queued.
//     Its shadowing addresses are held (ActHold: their new connections go
//     to a placeholder of the supervisor, whose full queue drops the SYN;
//     the client retransmits it 1 s, 3 s, 7 s later), it gets its stop
//     signal once its listeners there are quiet (EvCutOver, as an old
//     generation's after a cutover), and the hold ends once its listeners
//     are gone (ActRelease): the retransmitted SYNs then reach the steered
//     address. Every client of the held address waits while the hold
//     lasts, for a generation that was never ready: refusedGrace bounds
//     the quiet wait, and again the time its listeners may stay open after
//     the stop signal (TimerHold), after which its group is SIGKILLed. The
//     reload is answered once its listeners are gone (the port is back to
//     the serving generation alone), and what it accepted drains to its
//     drain deadline in the background. Where the address cannot be held
//     (EvHoldFailed), it is killed, as before.
//   - A supervisor killed during a hold takes the hold's placeholders
//     with it, and the refused generation then gets the held address's
//     connections: the state file records it as refused (StateRefused),
//     and the supervisor that adopts it kills it at once (machine.start).
//
// Where the placeholders cannot join (another uid), the loop falls back
// to the kernel path for that handover and reports EvCutOver at once: the
// machine decides the same, the order of the signals stays.

// cutover switches the port to g, the promoted generation, and holds old's
// stop signal until EvCutOver.
func (m *machine) cutover(now time.Time, g, old *gen) {
	old.stage = stDraining
	old.cutover = true
	old.stopped = now
	// The wait for a quiet cutover is bounded by the drain timeout (the
	// loop reports EvCutOver by then; TimerCutover if it does not); the
	// drain deadline then counts from the stop signal, as the instance
	// is told (CHANGEOVER_DRAIN_TIMEOUT: runner cuts its last requests
	// just before it).
	old.deadline = now.Add(m.cfg.DrainTimeout)
	m.emit(Action{Kind: ActCutover, Gen: g.n, Old: old.n, At: old.deadline})
	m.emit(Action{Kind: ActSave}) // with its stop pending: an adopting supervisor sends it
	m.emit(Action{Kind: ActTimer, Timer: TimerID{TimerCutover, old.n}, At: old.deadline})
	// Its listeners are watched from its stop signal (retire): they do
	// not close before it, and the loop's watch needs the sockets known
	// at the stop to look for them cheaply.
	m.handedOver(now, old)
}

// cutOver handles EvCutOver: ev.Gen's listeners are quiet, so its stop
// signal goes now, unless it is gone or was stopped meanwhile.
func (m *machine) cutOver(ev Event) {
	g := m.gen(ev.Gen)
	if g == nil || !g.cutover {
		return
	}
	g.cutover = false
	if g.empty {
		return
	}
	m.retire(ev.Now, g)
}

// retirePending sends the stop signal to every generation whose signal
// waits for its cutover (a stop of the supervisor does not wait for it).
func (m *machine) retirePending(now time.Time) {
	for _, g := range m.gens {
		if g.cutover {
			g.cutover = false
			if !g.empty {
				m.log(slog.LevelInfo, "stopping before the cutover was quiet", KeyGeneration, g.n)
				m.retire(now, g)
			}
		}
	}
}

// unsteer closes every placeholder: nothing serves any more.
func (m *machine) unsteer() {
	if m.cfg.Steered {
		m.emit(Action{Kind: ActUnsteer})
	}
}

// refuseShadowing handles EvShadowing: the starting generation listens on
// an address that shadows a steered one. Its deploy fails (answered once
// its listeners are gone, refusedGone); the generation is held and drains
// as an old one after a cutover, its stop signal pending until EvCutOver
// (by refusedGrace). Not steered, it is killed as any generation that is
// not ready.
func (m *machine) refuseShadowing(ev Event) {
	d := m.current(ev.Gen, dWaitReady)
	if d == nil {
		return
	}
	g := m.gen(d.gen)
	if !m.cfg.Steered || g.exited {
		m.failDeploy(ev.Now, ev.Err)
		return
	}
	m.log(slog.LevelError, "generation refused; previous keeps serving; it is stopped once what it accepted is served",
		KeyGeneration, d.gen, KeyError, ev.Err, KeyDuration, ev.Now.Sub(d.began).Round(time.Millisecond))
	g.stage, g.cutover, g.held, g.refused = stDraining, true, true, true
	g.stopped = ev.Now
	g.deadline = ev.Now.Add(m.refusedGrace()) // the bound of the quiet wait: its address is held meanwhile
	m.emit(Action{Kind: ActHold, Gen: g.n, At: g.deadline})
	m.emit(Action{Kind: ActSave}) // refused while held: an adopting supervisor kills it
	m.emit(Action{Kind: ActTimer, Timer: TimerID{TimerCutover, g.n}, At: g.deadline})
	m.watch(g)
	d.stage, d.err = dFailing, ev.Err
}

// holdFailed handles EvHoldFailed: the refused generation's addresses
// could not be held, so it is killed, unless its stop signal went already.
func (m *machine) holdFailed(ev Event) {
	g := m.gen(ev.Gen)
	if g == nil || !g.held {
		return
	}
	m.release(g)
	if !g.cutover || g.empty {
		return
	}
	g.cutover = false
	g.stage = stFailed
	m.log(slog.LevelWarn, "cannot hold the refused generation's address: SIGKILL of its process group", KeyGeneration, g.n, KeyError, ev.Err)
	m.kill(ev.Now, g)
}

// refusedGrace bounds each of the two waits of a held address: for the
// refused generation's listeners there to be quiet, then for them to close
// after its stop signal. While it lasts every new client of that address
// waits (a dropped SYN, retransmitted 1 s, 3 s, 7 s later) for a
// generation that was never ready, so the grace is short: long enough for
// a server to serve what it queued at the refusal (a few milliseconds)
// and to close its listeners at its stop signal; --drain-timeout where
// that is shorter.
const refusedGrace = time.Second

func (m *machine) refusedGrace() time.Duration {
	if m.cfg.DrainTimeout > 0 {
		return min(refusedGrace, m.cfg.DrainTimeout)
	}
	return refusedGrace
}

// holdTimer handles TimerHold: the refused generation still listens
// refusedGrace after its stop signal (retire set g.stopped; before it, the
// cutover's wait is TimerCutover's), so its address is still held: its
// group is SIGKILLed (what it still serves is lost; the hold ends once its
// listeners are gone).
func (m *machine) holdTimer(ev Event) {
	g := m.gen(ev.Timer.Gen)
	if g == nil || !g.held || g.cutover || !g.listening || g.empty || ev.Now.Before(g.stopped.Add(m.refusedGrace())) {
		return
	}
	m.log(slog.LevelWarn, "refused generation still listens after its stop signal: SIGKILL of its process group, to end the hold of its address",
		KeyGeneration, g.n, KeyPID, g.pid, "waited", m.refusedGrace())
	m.kill(ev.Now, g)
}

// refusedGone answers the reload that g failed, refused for a shadowing
// address, once its listeners are gone (the hold released): the port is
// back to the serving generation alone, and a reload queued meanwhile can
// begin. g finishes draining in the background.
func (m *machine) refusedGone(now time.Time, g *gen) {
	if d := m.deploy; d != nil && d.stage == dFailing && d.gen == g.n && g.refused && !g.empty {
		m.concludeFailure(now)
	}
}

// release ends the hold on g's shadowing addresses, if there is one.
func (m *machine) release(g *gen) {
	if g.held {
		g.held = false
		// On disk first, no longer refused (its listeners are gone): a
		// supervisor killed between the two lets it finish its drain.
		m.emit(Action{Kind: ActSave})
		m.emit(Action{Kind: ActRelease, Gen: g.n})
	}
}
