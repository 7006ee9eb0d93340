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
	m.watch(old)
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
