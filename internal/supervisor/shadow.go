//go:build linux

package supervisor

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/changeover-dev/changeover/internal/proc"
	"github.com/changeover-dev/changeover/reuseport"
)

// A new generation that listens on another address of a steered port, one
// the kernel prefers for some of the steered address's clients (127.0.0.1:P
// beside 0.0.0.0:P, 0.0.0.0:P beside a dual-stack [::]:P:
// reuseport.Socket.Shadows), forms a reuseport group of its own: the
// kernel picks it before the steering program of the steered group runs,
// so the generation takes those clients while it starts, dark or not. Its
// start is refused as soon as such a listener of its process group is
// seen (EvShadowing, with a *ShadowError).
//
// It is not killed: that would reset what it accepted and what its
// queues hold. The machine has its shadowing addresses held instead
// (ActHold, hold below): a placeholder of the supervisor joins each of its
// groups there and the group sends it every new connection
// (reuseport.Group.Hold), whose SYN its full queue drops; the client
// retransmits it about a second later. The generation serves what it
// queued; once its listeners there are quiet (waitQuiet, the rule of a
// cutover) it gets its stop signal, and once its listeners are gone the
// hold's placeholders close (ActRelease): the address has no listener
// left, and the retransmitted SYNs reach the steered address's group. The
// cost is the answers it gave in the window between its listen and the
// hold (about one poll, shadowPoll, and the hold's own setup), and a delay
// of about a second for the clients that came during the hold. The hold
// is short: refusedGrace (1 s) bounds the quiet wait, and again the time
// its listeners may stay open after its stop signal, after which its group
// is SIGKILLed (machine_steering.go). Where a placeholder cannot join
// (another uid), it is killed as before (EvHoldFailed). A supervisor
// SIGKILLed during a hold takes the placeholders with it: the refused
// generation then gets the held address's connections until the next
// supervisor adopts it, and kills it (StateRefused in the state file).
//
// Why not steer the shadowing group to the old generation instead (a
// relay from the placeholder): the relay would have to reach the old
// generation through an address that the shadowing group does not take,
// and the servers would see the relay's address.

// shadowPoll is how often a steered generation's start is looked at for a
// listener that shadows a steered address: one sock_diag dump of the
// listening sockets; /proc is read only when such a listener appears.
const shadowPoll = 5 * time.Millisecond

// ShadowError says that a new generation listens on an address that
// shadows a steered one (reuseport.Socket.Shadows). It unwraps to
// ErrNotReady: the generation fails as one that is not ready.
type ShadowError struct {
	Gen, PID   int            // the new generation
	Addr       netip.AddrPort // where it listens
	Steered    netip.AddrPort // the steered address it shadows
	ServingGen int            // the generation that serves Steered
}

func (e *ShadowError) Error() string {
	return fmt.Sprintf("generation %d (pid %d) listens on %s beside the steered %s: the kernel gives it connections for %s before any steering program runs, "+
		"so it cannot start dark; listen on %s as generation %d does (or change the address with --steering kernel)",
		e.Gen, e.PID, e.Addr, e.Steered, e.Steered, e.Steered, e.ServingGen)
}

func (e *ShadowError) Unwrap() error { return ErrNotReady }

// steeredAddrs returns the addresses steered for the handover into gen
// (none if it is not steered).
func (st *steering) steeredAddrs(gen int) []netip.AddrPort {
	st.mu.Lock()
	defer st.mu.Unlock()
	if !st.steered(gen) {
		return nil
	}
	out := make([]netip.AddrPort, 0, len(st.groups))
	for addr := range st.groups {
		out = append(out, addr)
	}
	return out
}

// shadowing returns a *ShadowError if a listener of in's process group
// shadows an address steered for the handover into in, which starts beside
// generation serving. ignore holds the shadowing listeners already found
// to be other processes' (not refused: not in's); it grows.
func (st *steering) shadowing(in *Instance, serving int, ignore map[uint64]bool) error {
	addrs := st.steeredAddrs(in.Gen)
	if len(addrs) == 0 {
		return nil
	}
	all, err := reuseport.ListeningSockets()
	if err != nil {
		return nil // cannot tell; the coverage check still refuses it at ready
	}
	var steered []reuseport.Socket
	for _, s := range all {
		if slices.Contains(addrs, s.Addr) {
			steered = append(steered, s)
		}
	}
	type suspect struct{ s, steered reuseport.Socket }
	var suspects []suspect
	for _, s := range all {
		if ignore[s.Inode] || slices.ContainsFunc(steered, s.SameGroup) {
			continue
		}
		if i := slices.IndexFunc(steered, s.Shadows); i >= 0 {
			suspects = append(suspects, suspect{s, steered[i]})
		}
	}
	if len(suspects) == 0 {
		return nil
	}
	held, err := proc.GroupListenInodes(in.PGID)
	if err != nil {
		return nil
	}
	for _, x := range suspects {
		if held[x.s.Inode] {
			return &ShadowError{Gen: in.Gen, PID: in.PID, Addr: x.s.Addr, Steered: x.steered.Addr, ServingGen: serving}
		}
		ignore[x.s.Inode] = true
	}
	return nil
}

// watchShadowing polls shadowing every shadowPoll until it finds a
// shadowing listener (returned), in exits or ctx is done (nil).
func (st *steering) watchShadowing(ctx context.Context, in *Instance, serving int) error {
	ignore := map[uint64]bool{}
	for {
		if err := st.shadowing(in, serving, ignore); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-in.Done():
			return nil
		case <-time.After(shadowPoll):
		}
	}
}

// hold holds in's listening addresses that shadow a steered one: each
// group there sends its new connections to a placeholder of the supervisor
// (reuseport.Group.Hold). It returns in's listeners on those addresses,
// for the quiet wait. The groups are kept in st.holds until release.
func (st *steering) hold(in *Instance) (map[netip.AddrPort][]reuseport.Socket, error) {
	byAddr, err := st.listenersOf(in)
	if err != nil {
		return nil, fmt.Errorf("generation %d's listeners: %w", in.Gen, err)
	}
	var steered []reuseport.Socket
	all, err := reuseport.ListeningSockets()
	if err != nil {
		return nil, fmt.Errorf("list listening sockets: %w", err)
	}
	for _, s := range all {
		if st.groups[s.Addr] != nil {
			steered = append(steered, s)
		}
	}
	held := map[netip.AddrPort][]reuseport.Socket{}
	groups := map[netip.AddrPort]*reuseport.Group{}
	st.holds[in.Gen] = groups
	for addr, socks := range byAddr {
		if !slices.ContainsFunc(steered, socks[0].Shadows) {
			continue
		}
		g := reuseport.NewGroup(addr, reuseport.GroupOptions{Logger: st.log})
		groups[addr] = g
		if err := g.Hold(inodesOf(socks)); err != nil {
			return nil, fmt.Errorf("hold %s: %w", addr, err)
		}
		held[addr] = socks
	}
	if len(held) == 0 {
		return nil, fmt.Errorf("generation %d has no listener that shadows a steered address any more", in.Gen)
	}
	return held, nil
}

// release closes the placeholders that hold gen's addresses; it returns
// how many addresses were held.
func (st *steering) release(gen int) int {
	n := len(st.holds[gen])
	for addr, g := range st.holds[gen] {
		if err := g.Close(); err != nil {
			st.log.Warn("cannot close the placeholders of a hold", KeyGeneration, gen, "addr", addr, KeyError, err)
		}
	}
	delete(st.holds, gen)
	return n
}

// performHold does ActHold: hold in's shadowing addresses, then report
// EvCutOver for it once its listeners there are quiet (by a.At), or
// EvHoldFailed at once. Called with st.mu held.
func (l *runLoop) performHold(a Action) {
	s := l.s
	in := l.insts[a.Gen]
	if in == nil {
		s.post(Event{Kind: EvHoldFailed, Gen: a.Gen, Err: fmt.Errorf("generation %d is not known", a.Gen)})
		return
	}
	held, err := l.steer.hold(in)
	if err != nil {
		s.post(Event{Kind: EvHoldFailed, Gen: a.Gen, Err: err}) // the machine logs it
		return
	}
	addrs := make([]string, 0, len(held))
	for addr := range held {
		addrs = append(addrs, addr.String())
	}
	slices.Sort(addrs)
	s.log.Info("refused generation's address held: its new connections are dropped and retransmitted; it is stopped once what it queued is served",
		KeyGeneration, a.Gen, "addrs", addrs, "listeners", listenerCount(held))
	l.goPost(func() Event {
		s.waitQuietLogged(l.ctx, a.Gen, held, a.At, "the refused generation's listeners were not quiet by the deadline", "refused generation's listeners quiet")
		return Event{Kind: EvCutOver, Gen: a.Gen}
	})
}
