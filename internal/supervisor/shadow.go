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
// seen, as a readiness failure; the machine then fails the generation as
// any other that is not ready (its group is SIGKILLed).
//
// Why not steer the shadowing group too (a placeholder of the supervisor
// in it, a program sending everything there, relayed to the old
// generation): the connections queued on the new generation's listeners
// before the program is attached are still lost when it stops, the relay
// would have to reach the old generation through an address that the
// shadowing group does not take, and the placeholder would then be a
// listener on the new address itself, whose queue is reset when it closes.
// It would move the loss, not remove it; the refusal keeps the window to
// one poll (shadowPoll) after the listen.

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
