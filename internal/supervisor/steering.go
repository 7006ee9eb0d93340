//go:build linux

package supervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/changeover-dev/changeover/healthcheck"
	"github.com/changeover-dev/changeover/internal/proc"
	"github.com/changeover-dev/changeover/reuseport"
)

// The loop's side of supervisor-owned steering (the decisions are in
// machine_steering.go): one reuseport.Group per shared address, through
// placeholder members of the supervisor's own.

// EnvSteering tells an instance who owns its port's steering program:
// "supervisor" when the supervisor steers the handover; runner then
// attaches nothing itself.
const EnvSteering = "CHANGEOVER_STEERING"

// Steering modes (Config.Steering).
const (
	SteeringSupervisor = "supervisor" // the supervisor owns the program, through placeholders (default)
	SteeringKernel     = "kernel"     // the kernel path: runner steers itself, other servers are not steered
)

// Handover paths, as Status shows them for each generation started beside
// a serving one.
const (
	PathSupervisor = "supervisor"
	PathKernel     = "kernel"
)

// steerPoll is how often the cutover looks at the old listeners' queues
// and half-open connections. The wait ends after two quiet polls in a row
// (a connection leaves SYN_RECV a moment before it enters the accept
// queue: microseconds, in one softirq), so it lasts at least twice this,
// and for keep-alive clients, who open new connections only once the old
// generation drains after its stop signal, that is part of the cutover.
// A poll is one sock_diag dump of the listening sockets (tens of
// microseconds), and the half-open dumps while some are still waited for.
const steerPoll = 2 * time.Millisecond

// steering holds the groups of the port the supervisor steers. The loop
// calls it from its goroutine; a readiness check routes its probes
// (probeTo) from its own: mu serialises them.
type steering struct {
	log    *slog.Logger
	probe  netip.Addr // the source address of the supervisor's probes on a shared port
	mu     sync.Mutex
	groups map[netip.AddrPort]*reuseport.Group
	paths  map[int]string // generation -> the path of the handover into it
	reads  map[*Instance]listenerRead
	// holds: the groups that hold a refused generation's shadowing
	// addresses (shadow.go), by generation, until ActRelease.
	holds map[int]map[netip.AddrPort]*reuseport.Group
}

// listenerRead is what one read of a generation's descriptors found: the
// listening sockets its group held (its health address's included), and
// every other listening socket there was then.
type listenerRead struct {
	held, others map[uint64]bool
}

func newSteering(log *slog.Logger) *steering {
	// A random address of 127/8 (not 127.0.0.1, which the placeholders'
	// own connections come from): connections from it are the probes.
	probe := netip.AddrFrom4([4]byte{127, byte(rand.IntN(254) + 1), byte(rand.IntN(256)), byte(rand.IntN(254) + 1)})
	return &steering{log: log, probe: probe, groups: map[netip.AddrPort]*reuseport.Group{}, paths: map[int]string{},
		reads: map[*Instance]listenerRead{}, holds: map[int]map[netip.AddrPort]*reuseport.Group{}}
}

// path returns the path of the handover into gen ("" if none yet).
func (st *steering) path(gen int) string {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.paths[gen]
}

// listenersOf returns the listening sockets of in's process group on
// other addresses than its health address, by address.
//
// Which sockets a process holds only its descriptors say, one readlink
// each, as many as its connections: about 40 ms with 10,000 idle
// keep-alive connections, and a handover asks for the serving
// generation's listeners three times on the reload's path (before the
// start, at the cutover, before the stop signal), and the coverage check
// at each of its polls. So a generation's descriptors are read once, as a
// rule when it becomes ready and has no connection yet (waitReadyCovered:
// the coverage check's read of the new generation, or that of one with
// none before it), and later answers come from that read and one
// sock_diag dump of the listening sockets: the ones it held that still
// listen. That is exact while every listening socket in the dump is
// accounted for: held by it then, listening elsewhere then, the
// supervisor's own (placeholders, probes), or held by another generation
// at its own read. A socket that none of these explains (a listener
// opened since, by anyone in the network namespace) sends the answer to
// the descriptors again. Not seen: a socket that was listening elsewhere
// at the read and was passed into the generation since (SCM_RIGHTS).
func (st *steering) listenersOf(in *Instance) (map[netip.AddrPort][]reuseport.Socket, error) {
	all, err := reuseport.ListeningSockets()
	if err != nil {
		return nil, fmt.Errorf("list listening sockets: %w", err)
	}
	held, ok := st.stillHeld(in, all)
	if !ok {
		inodes := groupSockets(in.PGID)
		r := listenerRead{held: map[uint64]bool{}, others: map[uint64]bool{}}
		for _, s := range all {
			if inodes[s.Inode] {
				r.held[s.Inode] = true
			} else {
				r.others[s.Inode] = true
			}
		}
		st.reads[in], held = r, r.held
	}
	out := map[netip.AddrPort][]reuseport.Socket{}
	for _, s := range all {
		if held[s.Inode] && s.Addr.String() != in.HealthAddr {
			out[s.Addr] = append(out[s.Addr], s)
		}
	}
	return out, nil
}

// stillHeld answers listenersOf from in's last read, if every socket in
// all is accounted for (see listenersOf). Reads of generations that have
// exited are dropped here.
func (st *steering) stillHeld(in *Instance, all []reuseport.Socket) (map[uint64]bool, bool) {
	for other := range st.reads {
		select {
		case <-other.Done():
			delete(st.reads, other)
		default:
		}
	}
	r, ok := st.reads[in]
	if !ok {
		return nil, false
	}
	mine := proc.SocketInodes(os.Getpid())
	for _, s := range all {
		if r.held[s.Inode] || r.others[s.Inode] || mine[s.Inode] {
			continue
		}
		explained := false
		for other, o := range st.reads {
			if other != in && o.held[s.Inode] {
				explained = true
				break
			}
		}
		if !explained {
			return nil, false
		}
	}
	return r.held, true
}

// groupSockets returns the inodes of the sockets that the processes of
// process group pgid hold: one readlink per descriptor, as many as their
// connections (a variable: the tests count the reads).
var groupSockets = func(pgid int) map[uint64]bool {
	inodes := map[uint64]bool{}
	for _, pid := range proc.GroupMembers(pgid) {
		maps.Copy(inodes, proc.SocketInodes(pid))
	}
	return inodes
}

func inodesOf(socks []reuseport.Socket) []uint64 {
	out := make([]uint64, len(socks))
	for i, s := range socks {
		out[i] = s.Inode
	}
	return out
}

// dark makes every shared address of old, the serving generation, steer
// new connections to old's listeners only, before generation gen starts.
// Where it cannot (a placeholder refused: another uid, another network
// namespace; a read that fails), the handover into gen takes the kernel
// path, said in one log line.
func (st *steering) dark(gen int, old *Instance) {
	if old == nil {
		st.fallback(gen, errors.New("the serving generation is not known"))
		return
	}
	byAddr, err := st.listenersOf(old)
	if err != nil {
		st.fallback(gen, fmt.Errorf("generation %d's listeners: %w", old.Gen, err))
		return
	}
	for addr, g := range st.groups {
		if _, ok := byAddr[addr]; !ok {
			st.closeGroup(addr, g) // no longer served
		}
	}
	for addr, socks := range byAddr {
		g := st.groups[addr]
		if g == nil {
			g = reuseport.NewGroup(addr, reuseport.GroupOptions{Logger: st.log, Probe: st.probe})
		}
		err := g.Dark(inodesOf(socks))
		var refused *reuseport.PlaceholderError
		switch {
		case errors.As(err, &refused) && refused.UID == refused.EUID:
			// Not shared (no SO_REUSEPORT: a per-process port): nothing to steer.
			st.closeGroup(addr, g)
		case err != nil:
			st.closeGroup(addr, g)
			st.fallback(gen, err)
			return
		default:
			st.groups[addr] = g
		}
	}
	if len(st.groups) == 0 {
		st.fallback(gen, fmt.Errorf("generation %d shares no address with SO_REUSEPORT", old.Gen))
		return
	}
	st.paths[gen] = PathSupervisor
}

// fallback gives up steering for the handover into gen: every placeholder
// is closed and the kernel decides.
func (st *steering) fallback(gen int, why error) {
	st.closeAllLocked()
	st.paths[gen] = PathKernel
	st.log.Warn("handover through the kernel path: the supervisor cannot steer the port",
		KeyGeneration, gen, "reason", why.Error())
}

// steered reports whether the handover into gen is steered by the
// supervisor.
func (st *steering) steered(gen int) bool {
	return st.paths[gen] == PathSupervisor && len(st.groups) > 0
}

// cutover switches every group to in's listeners. It returns the old
// generation's listeners (by address) whose queues the caller waits for,
// or false if the handover is not (or no longer) steered.
func (st *steering) cutover(in, old *Instance) (map[netip.AddrPort][]reuseport.Socket, bool) {
	if !st.steered(in.Gen) || old == nil {
		return nil, false
	}
	next, err := st.listenersOf(in)
	if err == nil {
		var oldSocks map[netip.AddrPort][]reuseport.Socket
		oldSocks, err = st.listenersOf(old)
		for addr, g := range st.groups {
			if err != nil {
				break
			}
			socks := next[addr]
			if len(socks) == 0 {
				err = fmt.Errorf("generation %d does not listen on %s", in.Gen, addr)
				break
			}
			// While the new generation is dark and last, a placeholder
			// left by the last handover can go (see Group.Compact).
			if err = g.Compact(); err != nil {
				break
			}
			err = g.Cutover(inodesOf(socks))
		}
		if err == nil {
			return oldSocks, true
		}
	}
	// The port is not steered to the new generation: the kernel decides,
	// as without steering.
	st.closeAllLocked()
	st.paths[in.Gen] = PathKernel
	st.log.Warn("cutover failed: the handover goes on through the kernel path", KeyGeneration, in.Gen, KeyError, err)
	return nil, false
}

// prepareDepartures appends, to each group, as many placeholders as old
// has listeners in it, before old's stop signal: its listeners then leave
// in any order without moving the new generation's slots. None where
// old's listeners all come after the steered slots (Group.Trailing: a
// generation refused before it served). It returns the
// inodes of old's listeners on every address shared with SO_REUSEPORT,
// steered or not (nil if nothing is steered or they cannot be read): the
// stop's watch looks for them in the sock_diag dump.
func (st *steering) prepareDepartures(old *Instance) map[uint64]bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	if len(st.groups) == 0 {
		return nil
	}
	byAddr, err := st.listenersOf(old)
	if err != nil {
		st.log.Warn("cannot read the stopping generation's listeners; placeholders not added", KeyGeneration, old.Gen, KeyError, err)
		return nil
	}
	for addr, g := range st.groups {
		if n := len(byAddr[addr]); n > 0 {
			if trailing, err := g.Trailing(inodesOf(byAddr[addr])); err == nil && trailing {
				// A generation stopped without serving (refused): its
				// listeners joined after the serving ones and their
				// departures cannot move them. No placeholder, so no plug
				// connection, delays its stop signal.
				continue
			}
			if err := g.PrepareDepartures(n); err != nil {
				st.log.Warn("cannot add placeholders before a stop signal", KeyGeneration, old.Gen, "addr", addr, KeyError, err)
			}
		}
	}
	shared := map[uint64]bool{}
	for addr, socks := range byAddr {
		if _, steered := st.groups[addr]; steered || reusePortShared(addr) {
			for _, s := range socks {
				shared[s.Inode] = true
			}
		}
	}
	return shared
}

// compact closes the placeholders no longer needed once the old
// generation's listeners are gone. A group whose slots are no longer known
// is given up (the next handover starts it again).
func (st *steering) compact() {
	for addr, g := range st.groups {
		if err := g.Compact(); err != nil {
			st.log.Warn("cannot compact the placeholders; closing them", "addr", addr, KeyError, err)
			st.closeGroup(addr, g)
		}
	}
}

func (st *steering) closeGroup(addr netip.AddrPort, g *reuseport.Group) {
	if err := g.Close(); err != nil {
		st.log.Warn("cannot close placeholders", "addr", addr, KeyError, err)
	}
	delete(st.groups, addr)
}

// closeAll closes every placeholder, the holds' too.
func (st *steering) closeAll() {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.closeAllLocked()
	for gen := range st.holds {
		st.release(gen)
	}
}

func (st *steering) closeAllLocked() {
	for addr, g := range st.groups {
		st.closeGroup(addr, g)
	}
}

// waitQuiet returns once old's listeners are quiet by the rule of
// [reuseport.DrainWatch] (runner's rule: their accept queues empty and
// every connection half-open on their addresses at the cutover completed
// or given up on, twice in a row), or at deadline, or when ctx is done. It
// returns what was still waiting then. The queues are those of old's
// sockets only (by inode), several per address where old has several
// listeners on one; a failed sock_diag dump makes the poll not quiet and
// is retried at the next.
func waitQuiet(ctx context.Context, old map[netip.AddrPort][]reuseport.Socket, deadline time.Time) (queued, halfOpen int) {
	mine := map[uint64]bool{}
	addrs := make([]netip.AddrPort, 0, len(old))
	for addr, socks := range old {
		addrs = append(addrs, addr)
		for _, s := range socks {
			mine[s.Inode] = true
		}
	}
	watch := reuseport.NewDrainWatch(addrs, nil)
	// A failed dump is not logged: the watch dumps that address again at
	// each poll, and the cutover's caller logs what is left at the deadline.
	_ = watch.Start(time.Now())
	for {
		if !time.Now().Before(deadline) || ctx.Err() != nil {
			return watch.Waiting()
		}
		select {
		case <-ctx.Done():
		case <-time.After(steerPoll):
		}
		inQueues := 0 // over old's sockets
		socks, queueErr := reuseport.ListeningSockets()
		for _, s := range socks {
			if mine[s.Inode] {
				inQueues += s.Queue
			}
		}
		if quiet, _ := watch.Poll(time.Now(), inQueues, queueErr); quiet {
			return 0, 0
		}
	}
}

// waitQuietLogged is waitQuiet for generation gen's listeners socks, with
// its log lines: notQuiet (a warning, with what still waited) if the
// deadline came first, then quiet (with how long it took).
func (s *Supervisor) waitQuietLogged(ctx context.Context, gen int, socks map[netip.AddrPort][]reuseport.Socket, deadline time.Time, notQuiet, quiet string) {
	start := time.Now()
	if queued, halfOpen := waitQuiet(ctx, socks, deadline); queued+halfOpen > 0 {
		s.log.Warn(notQuiet, KeyGeneration, gen, "queued", queued, "half_open", halfOpen)
	}
	s.log.Info(quiet, KeyGeneration, gen, KeyDuration, time.Since(start).Round(time.Millisecond))
}

// listenerCount is the number of listeners in byAddr.
func listenerCount(byAddr map[netip.AddrPort][]reuseport.Socket) int {
	n := 0
	for _, s := range byAddr {
		n += len(s)
	}
	return n
}

// steeringEnv is the variable that tells an instance the supervisor owns
// the steering, if it does.
func steeringEnv(env []string, owned bool) []string {
	env = slices.DeleteFunc(slices.Clone(env), func(kv string) bool {
		return len(kv) > len(EnvSteering) && kv[:len(EnvSteering)+1] == EnvSteering+"="
	})
	if owned {
		env = append(env, EnvSteering+"="+SteeringSupervisor)
	}
	return env
}

// performSteering does the machine's steering actions.
func (l *runLoop) performSteering(a Action) {
	s := l.s
	l.steer.mu.Lock()
	defer l.steer.mu.Unlock()
	defer func() {
		for _, g := range l.steer.groups {
			s.log.Debug("steering", "action", a.Kind.String(), KeyGeneration, a.Gen, "group", g.String())
		}
	}()
	switch a.Kind {
	case ActDark:
		l.steer.dark(a.Gen, l.insts[a.Old])
	case ActCutover:
		in, old := l.insts[a.Gen], l.insts[a.Old]
		oldSocks, ok := (map[netip.AddrPort][]reuseport.Socket)(nil), false
		if in != nil {
			oldSocks, ok = l.steer.cutover(in, old)
		}
		if !ok {
			s.post(Event{Kind: EvCutOver, Gen: a.Old})
			return
		}
		s.log.Info("cut over: new connections go to the new generation", KeyGeneration, a.Gen,
			"old_generation", a.Old, "old_listeners", listenerCount(oldSocks))
		l.goPost(func() Event {
			s.waitQuietLogged(l.ctx, a.Old, oldSocks, a.At, "the old generation's listeners were not quiet by the deadline", "old listeners quiet")
			return Event{Kind: EvCutOver, Gen: a.Old}
		})
	case ActCompact:
		l.steer.compact()
	case ActUnsteer:
		l.steer.closeAllLocked()
	case ActHold:
		l.performHold(a)
	case ActRelease:
		if n := l.steer.release(a.Gen); n > 0 {
			s.log.Info("hold released: the refused generation's listeners are gone", KeyGeneration, a.Gen, "addrs", n)
		}
	}
}

// probeTo routes the supervisor's probes (connections from st.probe) to
// in's listeners on every steered address, once in listens on each of
// them (until ctx is done). False if the handover into in is not steered.
func (st *steering) probeTo(ctx context.Context, in *Instance) (bool, error) {
	for {
		st.mu.Lock()
		if !st.steered(in.Gen) {
			st.mu.Unlock()
			return false, nil
		}
		byAddr, err := st.listenersOf(in)
		missing := err != nil
		for addr := range st.groups {
			if len(byAddr[addr]) == 0 {
				missing = true
			}
		}
		if !missing {
			for addr, g := range st.groups {
				if err := g.ProbeTo(inodesOf(byAddr[addr])); err != nil {
					st.mu.Unlock()
					return true, fmt.Errorf("route the probes on %s to generation %d: %w", addr, in.Gen, err)
				}
			}
			st.mu.Unlock()
			return true, nil
		}
		st.mu.Unlock()
		select {
		case <-ctx.Done():
			return true, fmt.Errorf("generation %d does not listen on every steered address: %w", in.Gen, ctx.Err())
		case <-time.After(coveragePoll):
		}
	}
}

// covers reports whether a probe of target would reach a steered address.
func (st *steering) covers(target netip.AddrPort) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	for addr := range st.groups {
		if proc.Covers(addr, target) {
			return true
		}
	}
	return false
}

// routeProbes decides how the probes of in, which starts beside old, reach
// it. A probe aimed at an address that old serves would be answered by
// old, unless the supervisor steers the handover: then its connections
// come from the supervisor's probe address and the group routes them to
// in (ProbeTo), and routeProbes returns that address. It refuses such a
// probe, with ErrProbeSharedPort, where the handover is not steered or
// the probe cannot be routed (IPv6).
func (s *Supervisor) routeProbes(ctx context.Context, in, old *Instance) (netip.Addr, error) {
	if old == nil {
		return netip.Addr{}, nil
	}
	var shared []string
	for _, spec := range s.cfg.Probes {
		t, ok := ProbeTarget(spec)
		if !ok {
			continue
		}
		addrs, err := sharedListenAddrs(old)
		if err != nil {
			continue // cannot tell
		}
		for _, a := range addrs {
			if !proc.Covers(a, t) {
				continue
			}
			why := ""
			switch {
			case s.steer == nil || !s.steer.covers(a) || s.steer.path(in.Gen) != PathSupervisor:
				why = "the supervisor does not steer this handover"
			case !t.Addr().Unmap().Is4():
				why = "only probes over IPv4 can be routed by their source address"
			}
			if why != "" {
				return netip.Addr{}, fmt.Errorf("%w: --health %s targets %s, which generation %d (pid %d) listens on, so the old instance would answer it (%s); use {health_addr} for the new instance's own address",
					ErrProbeSharedPort, spec, t, old.Gen, old.PID, why)
			}
			shared = append(shared, spec)
		}
	}
	if len(shared) == 0 {
		return netip.Addr{}, nil
	}
	ok, err := s.steer.probeTo(ctx, in)
	if err != nil {
		return netip.Addr{}, err
	}
	if !ok {
		return netip.Addr{}, fmt.Errorf("%w: --health %s: the handover into generation %d is no longer steered", ErrProbeSharedPort, shared[0], in.Gen)
	}
	s.log.Info("health probes on the shared port are routed to the new generation", KeyGeneration, in.Gen, "source", s.steer.probe)
	return s.steer.probe, nil
}

// withSource makes an HTTP or TCP probe aimed at an address other than
// the instance's health address connect from source.
func withSource(p healthcheck.Probe, spec string, source netip.Addr) healthcheck.Probe {
	if !source.IsValid() {
		return p
	}
	if _, ok := ProbeTarget(spec); !ok {
		return p // {health_addr}, exec
	}
	switch p := p.(type) {
	case healthcheck.HTTP:
		p.Source = source
		return p
	case healthcheck.TCP:
		p.Source = source
		return p
	}
	return p
}

// swapCutover is the cutover of Swap, which has no loop: switch the port to
// in, wait until old's listeners are quiet (by deadline), and append the
// placeholders for old's departures. Nothing, where the handover is not
// steered.
func (s *Supervisor) swapCutover(in, old *Instance, deadline time.Time) {
	s.steer.mu.Lock()
	oldSocks, ok := s.steer.cutover(in, old)
	s.steer.mu.Unlock()
	if !ok {
		return
	}
	s.log.Info("cut over: new connections go to the new generation", KeyGeneration, in.Gen,
		"old_generation", old.Gen, "old_listeners", listenerCount(oldSocks))
	s.waitQuietLogged(context.Background(), old.Gen, oldSocks, deadline, "the old generation's listeners were not quiet by the deadline", "old listeners quiet")
	s.steer.prepareDepartures(old)
}
