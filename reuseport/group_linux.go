//go:build linux

package reuseport

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// Group is the caller's handle on one reuseport group, through placeholder
// members of its own: see "Steering through placeholders" in the package
// doc. Its methods are not safe for concurrent use; the supervisor calls
// them from one goroutine (its action handlers).
type Group struct {
	addr netip.AddrPort
	opts GroupOptions
	log  *slog.Logger

	key    groupKey // the group's family, v6only and device, once known
	uid    int
	joined bool // key and uid are known: Dark has run once

	// The model of the kernel's slot array (struct sock_reuseport's
	// socks[0..num_socks)): blocks of members whose order inside the
	// block is unknown, each holding as many positions as members.
	blocks []*block
	n      int               // num_socks
	where  map[uint64]*block // member inode -> its block
	phs    map[uint64]*placeholder

	serving, probed []uint64 // the rule, as members
	// departing: members that served before the last Cutover and have
	// not left yet. Their departures move the placeholders that
	// PrepareDepartures appended, so Compact closes none while one is
	// still in the group.
	departing     map[uint64]bool
	attached      []uint32 // serving slots of the program last attached
	attachedProbe []uint32
}

// block is a set of members that hold a set of slots, one each, in an
// order that is not known (listeners seen appearing at once).
type block struct {
	pos     []int
	members []uint64
}

// placeholder is a member of the group that this process owns. It listens
// with a backlog of 0 and holds one "plug" connection in its accept queue,
// so its queue is full: a SYN that reaches it anyway is dropped (not
// queued, not reset) and the client retransmits it a second later, when the
// program sends it elsewhere. Verified on 6.18 (TestPlaceholderDropsSYN).
type placeholder struct {
	fd    int
	ino   uint64
	plugs []int // client ends of the plug connections in its queue
}

// NewGroup returns the handle on the reuseport group of the TCP listeners
// on addr. It opens nothing: [Group.Dark] does, the first time.
func NewGroup(addr netip.AddrPort, opts GroupOptions) *Group {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Group{
		addr:  netip.AddrPortFrom(addr.Addr().WithZone(""), addr.Port()),
		opts:  opts,
		log:   log,
		where: map[uint64]*block{},
		phs:   map[uint64]*placeholder{},
	}
}

// Dark steers every new connection to the serving members (inodes of
// listeners on the group's address, as [Inode] or [ListeningSockets] give
// them) and none to any other member, present or joining later. The
// supervisor calls it before it starts a new generation. The first call
// learns the group's family, IPV6_V6ONLY, bound device and owner from the
// serving members and opens the first placeholder; a refusal by the kernel
// is a [*PlaceholderError].
func (g *Group) Dark(serving []uint64) error {
	if len(serving) == 0 {
		return fmt.Errorf("reuseport: Dark %s: no serving member", g.addr)
	}
	if !g.joined {
		if err := g.learn(serving[0]); err != nil {
			return err
		}
	}
	if err := g.sync(); err != nil {
		return err
	}
	g.serving, g.probed = slices.Clone(serving), nil
	if len(g.phs) == 0 {
		return g.addPlaceholder()
	}
	return g.apply(nil)
}

// Hold steers every new connection of the group to a placeholder of its
// own, whose full queue drops the SYN: the client retransmits it about a
// second later, and the group's members (members: its listeners now, as
// [Inode] or [ListeningSockets] give them) get nothing new. Call it on a
// group this Group does not steer yet. It is [Group.Dark] on members (the
// first placeholder joins, plugged while everything still goes to them; a
// refusal by the kernel is a [*PlaceholderError]), [Group.Cutover] to that
// placeholder, and [Group.PrepareDepartures] for every other member, so
// that they leave in any order without moving the slot the program
// targets.
//
// The supervisor holds the address of a generation it refused (one whose
// address shadows a steered one) while that generation serves what it has
// queued and stops; [Group.Close] ends the hold: with no member left, the
// address has no listener, and the retransmitted SYNs go to whichever
// listener the kernel finds next.
func (g *Group) Hold(members []uint64) error {
	if len(g.phs) > 0 {
		return fmt.Errorf("reuseport: Hold %s: the group is already steered (%d placeholders)", g.addr, len(g.phs))
	}
	if err := g.Dark(members); err != nil {
		return err
	}
	h := g.handle()
	if err := g.Cutover([]uint64{h.ino}); err != nil {
		return err
	}
	n := 0
	for m := range g.where {
		if g.phs[m] == nil {
			n++
		}
	}
	return g.PrepareDepartures(n)
}

// ProbeTo routes the connections from GroupOptions.Probe to members (the
// new generation, dark for everyone else); nil routes them with everyone's.
func (g *Group) ProbeTo(members []uint64) error {
	if err := g.ready("ProbeTo"); err != nil {
		return err
	}
	if !g.opts.Probe.IsValid() && len(members) > 0 {
		return fmt.Errorf("reuseport: ProbeTo %s: GroupOptions.Probe is not set", g.addr)
	}
	g.probed = slices.Clone(members)
	return g.apply(nil)
}

// Cutover switches every new connection, the probe's too, to next with one
// setsockopt. The members that served before get none from then on; the
// caller waits for their accept queues to empty before it stops them.
func (g *Group) Cutover(next []uint64) error {
	if len(next) == 0 {
		return fmt.Errorf("reuseport: Cutover %s: no member to switch to", g.addr)
	}
	if err := g.ready("Cutover"); err != nil {
		return err
	}
	g.departing = map[uint64]bool{}
	for _, m := range g.serving {
		if !slices.Contains(next, m) {
			g.departing[m] = true
		}
	}
	g.serving, g.probed = slices.Clone(next), nil
	return g.apply(nil)
}

// PrepareDepartures appends n placeholders to the group: call it after
// [Group.Cutover] and before stopping the n members that served before.
// When a member leaves, the kernel moves the group's last member into its
// slot; with n placeholders last, every departure, in any order, moves a
// placeholder, and the slots the program targets never move.
func (g *Group) PrepareDepartures(n int) error {
	if err := g.ready("PrepareDepartures"); err != nil {
		return err
	}
	for range n {
		if err := g.addPlaceholder(); err != nil {
			return err
		}
	}
	return nil
}

// Trailing reports whether every slot that members (listeners in the
// group, as [Inode] or [ListeningSockets] give them) hold comes after
// every slot the program steers to, after a look at the group (as
// [Group.Sync]). Their departures then need no [Group.PrepareDepartures]:
// when one leaves, the kernel moves the group's last member into its slot,
// and while one of them is still there the last member is past the
// steered slots too, so the steered members never move. A generation that
// joined while another served and leaves without serving (refused) is
// such; the members of a generation that served before a cutover are not.
func (g *Group) Trailing(members []uint64) (bool, error) {
	if err := g.ready("Trailing"); err != nil {
		return false, err
	}
	if err := g.apply(nil); err != nil {
		return false, err
	}
	serving, probe, err := g.targets()
	if err != nil {
		return false, err
	}
	last := -1
	for _, s := range slices.Concat(serving, probe) {
		last = max(last, int(s))
	}
	for _, m := range members {
		b := g.where[m]
		if b == nil {
			return false, nil // not a member: nothing to say of it
		}
		if slices.ContainsFunc(b.pos, func(p int) bool { return p <= last }) {
			return false, nil
		}
	}
	return true, nil
}

// Sync looks at the group (sock_diag) and updates the model with the
// members that joined or left since the last look. If a steered member
// left and another moved into a slot the program targets, it attaches the
// program again for the new slots. An error wrapping [ErrSlotsUnknown]
// means the steering can no longer be trusted.
func (g *Group) Sync() error {
	if err := g.ready("Sync"); err != nil {
		return err
	}
	return g.apply(nil)
}

// Compact closes the placeholders that are no longer needed, keeping one
// (the handle through which the program is attached), without ever letting
// the program target a slot that a move could empty: the last member moves
// into a closed placeholder's slot, so when that member is steered to, the
// program first stops targeting its slot, and targets it again at its new
// one after the close. A placeholder that only a move of the one member
// the serving (or probed) generation has could remove stays: a later
// Compact, while a new generation is dark and last, removes it. While a
// member that served before the last Cutover is still in the group (a
// socket lingers a moment after its last process let go of it), Compact
// closes nothing: that member's departure moves a placeholder that
// PrepareDepartures appended. Call it when no other member is about to
// leave.
func (g *Group) Compact() error {
	if err := g.ready("Compact"); err != nil {
		return err
	}
	if err := g.sync(); err != nil {
		return err
	}
	for m := range g.departing {
		if g.where[m] != nil {
			g.log.Info("placeholders kept: a member that served before the cutover is still in the group",
				"addr", g.addr, "inode", m, "placeholders", len(g.phs))
			return nil
		}
		delete(g.departing, m)
	}
	for len(g.phs) > 1 {
		last := g.blockAt(g.n - 1)
		if len(last.members) == 1 && g.phs[last.members[0]] != nil {
			if err := g.closePlaceholder(g.phs[last.members[0]]); err != nil {
				return err
			}
			continue
		}
		p, err := g.exactPlaceholder()
		if err != nil {
			return err
		}
		if p == nil {
			break
		}
		// The last member moves into p's slot: stop targeting the last
		// slot first if it is targeted and another slot can take its share.
		without := g.n - 1
		if err := g.apply(&without); err != nil {
			if errors.Is(err, errWouldEmpty) {
				g.log.Info("placeholder kept: only a move of a steered member could remove it",
					"addr", g.addr, "placeholders", len(g.phs))
				break
			}
			return err
		}
		if err := g.closePlaceholder(p); err != nil {
			return err
		}
		if err := g.apply(nil); err != nil {
			return err
		}
	}
	return nil
}

// Placeholders returns how many placeholder members the group holds.
func (g *Group) Placeholders() int { return len(g.phs) }

// Close closes every placeholder. The program stays with the group as long
// as it has members; with none left, the port refuses connections instead
// of queueing them on a placeholder that never accepts. Call it when
// nothing serves any more, or to give up steering.
func (g *Group) Close() error {
	var errs []error
	for _, p := range g.phs {
		errs = append(errs, p.close())
	}
	clear(g.phs)
	g.blocks, g.n, g.where, g.joined = nil, 0, map[uint64]*block{}, false
	return errors.Join(errs...)
}

func (g *Group) ready(op string) error {
	if !g.joined || len(g.phs) == 0 {
		return fmt.Errorf("reuseport: %s %s: the group has no placeholder yet (call Dark first)", op, g.addr)
	}
	return nil
}

// learn reads the family, v6only, device and owner of the listener ino.
func (g *Group) learn(ino uint64) error {
	socks, err := diagTCP(1 << tcpListen)
	if err != nil {
		return err
	}
	for _, s := range socks {
		if uint64(s.Inode) == ino {
			if !SameAddr(s.Local, g.addr) {
				return fmt.Errorf("reuseport: listener %d is on %s, not on %s", ino, s.Local, g.addr)
			}
			g.key, g.uid, g.joined = s.groupKey, int(s.UID), true
			return nil
		}
	}
	return fmt.Errorf("reuseport: no listener with inode %d on %s", ino, g.addr)
}

// members lists the inodes of the group's members now.
func (g *Group) members() (map[uint64]bool, error) {
	socks, err := diagTCP(1 << tcpListen)
	if err != nil {
		return nil, err
	}
	out := map[uint64]bool{}
	for _, s := range socks {
		if s.groupKey == g.key && int(s.UID) == g.uid && SameAddr(s.Local, g.addr) {
			out[uint64(s.Inode)] = true
		}
	}
	return out, nil
}

// sync applies to the model the joins and departures seen since the last
// look. One departure is exact. When several members left, or members
// both joined and left, between two looks, the order they did it in
// decides who moved where: every block that the departures touched, and
// the block of the newcomers, merge into one (their slots are known as a
// set only, which matters only if the program must target some of them
// and not others; placeholders in such a block are located again by
// Compact).
func (g *Group) sync() error {
	now, err := g.members()
	if err != nil {
		return err
	}
	var joins, departures []uint64
	for ino := range now {
		if g.where[ino] == nil {
			joins = append(joins, ino)
		}
	}
	for ino := range g.where {
		if !now[ino] {
			departures = append(departures, ino)
		}
	}
	slices.Sort(joins)
	slices.Sort(departures)
	var touched []*block
	for _, ino := range departures {
		g.serving = remove(g.serving, ino)
		g.probed = remove(g.probed, ino)
		if p := g.phs[ino]; p != nil { // closed behind our back: forget it
			p.close()
			delete(g.phs, ino)
		}
		touched = append(touched, g.leave(ino)...)
	}
	var merged *block
	if len(joins) > 0 {
		merged = g.join(joins)
	}
	if len(departures) > 1 || len(departures) > 0 && len(joins) > 0 {
		for _, t := range touched {
			if !slices.Contains(g.blocks, t) {
				continue
			}
			if merged == nil {
				merged = t
			} else {
				merged = g.merge(merged, t)
			}
		}
	}
	return nil
}

func (g *Group) join(inos []uint64) *block {
	b := &block{members: inos}
	for range inos {
		b.pos = append(b.pos, g.n)
		g.n++
	}
	g.blocks = append(g.blocks, b)
	for _, ino := range inos {
		g.where[ino] = b
	}
	return b
}

// leave applies the kernel's rule for a member that leaves
// (__reuseport_detach_sock): the last member moves into its slot. It
// returns the blocks whose members or slots changed.
func (g *Group) leave(ino uint64) []*block {
	b := g.where[ino]
	delete(g.where, ino)
	last := g.n - 1
	c := g.blockAt(last)
	g.n--
	switch {
	case c == b: // the block loses a member and its last slot
		b.members = remove(b.members, ino)
		b.pos = remove(b.pos, last)
		if len(b.members) == 0 {
			g.drop(b)
			return nil
		}
		return []*block{b}
	case len(b.members) == 1: // a known slot: one of c's members moves to it
		c.pos = append(remove(c.pos, last), b.pos[0])
		slices.Sort(c.pos)
		g.drop(b)
		return []*block{c}
	case len(c.members) == 1: // a known member moves to one of b's slots
		moved := c.members[0]
		b.members = append(remove(b.members, ino), moved)
		g.where[moved] = b
		g.drop(c)
		return []*block{b}
	default: // an unknown member of c moves to an unknown slot of b
		b.members = remove(b.members, ino)
		c.pos = remove(c.pos, last)
		return []*block{g.merge(b, c)}
	}
}

// merge makes one block of a and b.
func (g *Group) merge(a, b *block) *block {
	if a == b {
		return a
	}
	a.members = append(a.members, b.members...)
	a.pos = append(a.pos, b.pos...)
	slices.Sort(a.pos)
	for _, m := range b.members {
		g.where[m] = a
	}
	g.drop(b)
	return a
}

func (g *Group) drop(b *block) {
	g.blocks = slices.DeleteFunc(g.blocks, func(x *block) bool { return x == b })
}

func (g *Group) blockAt(pos int) *block {
	for _, b := range g.blocks {
		if slices.Contains(b.pos, pos) {
			return b
		}
	}
	panic(fmt.Sprintf("reuseport: group model has no slot %d of %d", pos, g.n))
}

func remove[T comparable](s []T, v T) []T {
	return slices.DeleteFunc(s, func(x T) bool { return x == v })
}

// slots returns the slots the members hold, sorted.
func (g *Group) slots(members []uint64) ([]uint32, error) {
	want := map[uint64]bool{}
	for _, m := range members {
		want[m] = true
	}
	var out []uint32
	seen := map[*block]bool{}
	for _, m := range members {
		b := g.where[m]
		if b == nil {
			return nil, fmt.Errorf("reuseport: listener %d is not a member of the group on %s", m, g.addr)
		}
		if seen[b] {
			continue
		}
		seen[b] = true
		for _, o := range b.members {
			if !want[o] {
				return nil, fmt.Errorf("%w: on %s, listener %d shares slots %v with %d in an unknown order",
					ErrSlotsUnknown, g.addr, m, b.pos, o)
			}
		}
		for _, p := range b.pos {
			out = append(out, uint32(p))
		}
	}
	slices.Sort(out)
	return out, nil
}

// errWouldEmpty: leaving out a slot would leave a rule without any.
var errWouldEmpty = errors.New("reuseport: no slot would be left to steer to")

// apply brings the model up to date and attaches the program for the
// rule, unless it is the one attached already. without, if not nil, is a
// slot the program must not target (it is about to be vacated).
func (g *Group) apply(without *int) error {
	if err := g.sync(); err != nil {
		return err
	}
	if len(g.serving) == 0 {
		return nil // every serving member left: nothing to steer to (Close)
	}
	serving, probe, err := g.targets()
	if err != nil {
		return err
	}
	if without != nil {
		skip := func(s uint32) bool { return int(s) == *without }
		hadProbe := len(probe) > 0
		serving = slices.DeleteFunc(serving, skip)
		probe = slices.DeleteFunc(probe, skip)
		if len(serving) == 0 || hadProbe && len(probe) == 0 {
			return errWouldEmpty
		}
	}
	if slices.Equal(serving, g.attached) && slices.Equal(probe, g.attachedProbe) {
		return nil
	}
	if err := g.attach(serving, probe, nil); err != nil {
		return err
	}
	g.attached, g.attachedProbe = serving, probe
	return nil
}

// attach builds and attaches the program, with an extra first route if
// plug is not nil.
func (g *Group) attach(serving, probe []uint32, plug *route) error {
	r := slotRule{Serving: serving}
	if plug != nil {
		r.Routes = append(r.Routes, *plug)
	}
	if len(probe) > 0 {
		r.Routes = append(r.Routes, route{Src: g.opts.Probe, Slots: probe})
	}
	prog, err := r.program()
	if err != nil {
		return err
	}
	h := g.handle()
	if h == nil {
		return fmt.Errorf("reuseport: steer %s: no placeholder to attach the program through", g.addr)
	}
	if err := attachProgram(h.fd, prog); err != nil {
		return fmt.Errorf("reuseport: attach the steering program to %s (serving slots %v, probe slots %v): %w",
			g.addr, serving, probe, err)
	}
	return nil
}

func (g *Group) handle() *placeholder {
	var h *placeholder
	for _, p := range g.phs {
		if h == nil || p.ino < h.ino {
			h = p
		}
	}
	return h
}

// exactPlaceholder returns a placeholder whose slot is known exactly,
// locating the placeholders of a block made only of placeholders if
// needed; nil if there is none.
func (g *Group) exactPlaceholder() (*placeholder, error) {
	for _, b := range g.blocks {
		if len(b.members) == 1 && g.phs[b.members[0]] != nil && b.pos[0] != g.n-1 {
			return g.phs[b.members[0]], nil
		}
	}
	for _, b := range g.blocks {
		if len(b.members) > 1 && !slices.ContainsFunc(b.members, func(m uint64) bool { return g.phs[m] == nil }) {
			if err := g.locate(b); err != nil {
				return nil, err
			}
			return g.exactPlaceholder()
		}
	}
	return nil, nil
}

// addPlaceholder opens a placeholder, which joins the group last, and
// plugs its accept queue.
func (g *Group) addPlaceholder() error {
	if err := g.sync(); err != nil {
		return err
	}
	first := len(g.phs) == 0
	p, err := g.openPlaceholder()
	if err != nil {
		return err
	}
	g.phs[p.ino] = p
	if first {
		// The group may have no program yet: the kernel's hash can give
		// the placeholder clients until one is attached. Attach the rule
		// at once, through it, for the slots the model knows (it joined
		// last, so they have not moved); plug relays whoever came in
		// before.
		if serving, probe, err := g.targets(); err == nil {
			_ = g.attach(serving, probe, nil)
		}
	}
	now, err := g.members()
	if err != nil {
		return err
	}
	if !now[p.ino] {
		return fmt.Errorf("reuseport: placeholder %d on %s did not join the group", p.ino, g.addr)
	}
	var others []uint64
	for ino := range now {
		if g.where[ino] == nil && ino != p.ino {
			others = append(others, ino)
		}
	}
	if len(others) > 0 {
		// Someone joined too: who came first is unknown.
		if err := g.sync(); err != nil {
			return err
		}
	} else {
		g.join([]uint64{p.ino})
	}
	b := g.where[p.ino]
	if len(b.members) != 1 {
		g.log.Warn("placeholder joined beside another member: not plugged", "addr", g.addr, "inode", p.ino)
		return g.apply(nil)
	}
	return g.plug(p, b.pos[0])
}

// targets returns the slots the program steers to now: the serving
// generation's, and the probed generation's (nil when none is probed).
func (g *Group) targets() (serving, probe []uint32, err error) {
	if serving, err = g.slots(g.serving); err != nil {
		return nil, nil, err
	}
	if len(g.probed) > 0 {
		if probe, err = g.slots(g.probed); err != nil {
			return nil, nil, err
		}
	}
	return serving, probe, nil
}

// plug routes one connection of ours to p's slot, so that p's accept
// queue (backlog 0) is full, then attaches the program for the rule. The
// connection landing on p also checks the model: it is where the model
// says p is.
func (g *Group) plug(p *placeholder, slot int) error {
	serving, probe, err := g.targets()
	if err != nil {
		return err
	}
	before, err := queueLen(p.fd)
	if err != nil {
		return err
	}
	if before > 0 {
		// It joined with no program attached (the group's first one), and
		// the kernel's hash gave it clients before the program did: they
		// are relayed to the serving members (the program routes the
		// relay's connections there), and the queue is plugged as usual.
		g.log.Warn("connections reached a placeholder before the group had a program: relayed to the serving members",
			"addr", g.addr, "stranded", before)
		if err := g.attach(serving, probe, nil); err != nil {
			return err
		}
		g.relayStranded(p, before)
	}
	switch {
	case g.key.Ifindex != 0:
		// A plug from loopback would not reach a group bound to a device.
		g.log.Warn("placeholder not plugged: the listeners are bound to a device", "addr", g.addr)
	default:
		if err := g.connectPlug(p, slot, serving, probe); err != nil {
			return err
		}
	}
	if err := g.attach(serving, probe, nil); err != nil {
		return err
	}
	g.attached, g.attachedProbe = serving, probe
	return nil
}

// connectPlug connects from a port of ours, routed to slot, and waits for
// the connection to reach p's accept queue.
func (g *Group) connectPlug(p *placeholder, slot int, serving, probe []uint32) error {
	src, dst, err := g.plugAddrs()
	if err != nil {
		return err
	}
	fd, port, err := boundSocket(src)
	if err != nil {
		return err
	}
	if err := g.attach(serving, probe, &route{Src: src, Port: port, Slots: []uint32{uint32(slot)}}); err != nil {
		unix.Close(fd)
		return err
	}
	before, err := queueLen(p.fd)
	if err != nil {
		unix.Close(fd)
		return err
	}
	want := before + 1
	// A blocking connect interrupted by a signal (the Go runtime preempts
	// with SIGURG) returns EINTR while the handshake goes on in the kernel
	// (connect(2): "the connection is established asynchronously"); the
	// accept-queue poll below sees it arrive, so EINTR is not a failure.
	if err := unix.Connect(fd, sockaddr(netip.AddrPortFrom(dst, g.addr.Port()))); err != nil && err != unix.EINTR {
		unix.Close(fd)
		return fmt.Errorf("reuseport: plug the placeholder at slot %d of %s from %s:%d: %w", slot, g.addr, src, port, err)
	}
	p.plugs = append(p.plugs, fd)
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(time.Millisecond) {
		q, err := queueLen(p.fd)
		if err != nil {
			return err
		}
		if q >= want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: the connection routed to slot %d of %s did not reach placeholder %d",
				ErrSlotsUnknown, slot, g.addr, p.ino)
		}
	}
}

// locate finds the slot of each placeholder of b, a block made only of
// placeholders (the slots that the members of a generation left), by
// routing one connection to each slot in turn while the placeholders have
// room for it (listen again with a larger backlog: that only changes the
// backlog, the socket keeps its slot).
func (g *Group) locate(b *block) error {
	serving, probe, err := g.targets()
	if err != nil {
		return err
	}
	src, dst, err := g.plugAddrs()
	if err != nil {
		return err
	}
	// A listener's queue takes connections while it holds no more than
	// its backlog (sk_acceptq_is_full is ack_backlog > max_ack_backlog):
	// a backlog equal to the queue length leaves room for exactly one.
	left := slices.Clone(b.members)
	base := map[uint64]int{}
	for _, m := range left {
		q, err := queueLen(g.phs[m].fd)
		if err != nil {
			return err
		}
		base[m] = q
		if err := unix.Listen(g.phs[m].fd, q); err != nil {
			return fmt.Errorf("reuseport: locate placeholders on %s: %w", g.addr, err)
		}
	}
	found := map[int]uint64{}
	for _, slot := range b.pos {
		fd, port, err := boundSocket(src)
		if err != nil {
			return err
		}
		if err := g.attach(serving, probe, &route{Src: src, Port: port, Slots: []uint32{uint32(slot)}}); err != nil {
			unix.Close(fd)
			return err
		}
		// EINTR: the handshake goes on; see connectPlug.
		if err := unix.Connect(fd, sockaddr(netip.AddrPortFrom(dst, g.addr.Port()))); err != nil && err != unix.EINTR {
			unix.Close(fd)
			return fmt.Errorf("reuseport: locate the placeholder at slot %d of %s: %w", slot, g.addr, err)
		}
		var hit *placeholder
		for deadline := time.Now().Add(2 * time.Second); hit == nil; time.Sleep(time.Millisecond) {
			for _, m := range left {
				if q, err := queueLen(g.phs[m].fd); err == nil && q > base[m] {
					hit = g.phs[m]
				}
			}
			if hit == nil && time.Now().After(deadline) {
				unix.Close(fd)
				return fmt.Errorf("%w: the connection routed to slot %d of %s reached no placeholder", ErrSlotsUnknown, slot, g.addr)
			}
		}
		hit.plugs = append(hit.plugs, fd)
		unix.Listen(hit.fd, 0) // full again
		left = remove(left, hit.ino)
		found[slot] = hit.ino
	}
	g.drop(b)
	for slot, ino := range found {
		nb := &block{pos: []int{slot}, members: []uint64{ino}}
		g.blocks = append(g.blocks, nb)
		g.where[ino] = nb
	}
	if err := g.attach(serving, probe, nil); err != nil {
		return err
	}
	g.attached, g.attachedProbe = serving, probe
	return nil
}

// closePlaceholder closes p and applies the kernel's move to the model.
func (g *Group) closePlaceholder(p *placeholder) error {
	err := p.close()
	delete(g.phs, p.ino)
	g.leave(p.ino)
	return err
}

func (p *placeholder) close() error {
	for _, fd := range p.plugs {
		unix.Close(fd)
	}
	p.plugs = nil
	return unix.Close(p.fd)
}

// openPlaceholder opens a listening socket on the group's address with the
// group's family, v6only and device, SO_REUSEPORT and a backlog of 0.
func (g *Group) openPlaceholder() (*placeholder, error) {
	fd, err := unix.Socket(int(g.key.Family), unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("reuseport: placeholder for %s: %w", g.addr, err)
	}
	fail := func(what string, err error) (*placeholder, error) {
		unix.Close(fd)
		return nil, fmt.Errorf("reuseport: placeholder for %s: %s: %w", g.addr, what, err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		return fail("set SO_REUSEPORT", err)
	}
	// As every server's listener (Go sets it too): a connection accepted
	// from it (a relayed one) that ends in TIME_WAIT inherits the flag,
	// and without it would keep the address from being bound again once
	// the group is gone.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return fail("set SO_REUSEADDR", err)
	}
	if g.key.Family == unix.AF_INET6 {
		v := 0
		if g.key.V6Only {
			v = 1
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, v); err != nil {
			return fail("set IPV6_V6ONLY", err)
		}
	}
	if g.key.Ifindex != 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_BINDTOIFINDEX, int(g.key.Ifindex)); err != nil {
			return fail(fmt.Sprintf("bind to device %d", g.key.Ifindex), err)
		}
	}
	sa := sockaddr(g.addr)
	if g.key.Family == unix.AF_INET6 && g.addr.Addr().Is4() {
		sa = &unix.SockaddrInet6{Port: int(g.addr.Port()), Addr: g.addr.Addr().As16()}
	}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.EADDRINUSE) {
			return nil, &PlaceholderError{Addr: g.addr, UID: g.uid, EUID: os.Geteuid(), Err: err}
		}
		return nil, fmt.Errorf("reuseport: placeholder for %s: bind: %w", g.addr, err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		return fail("listen", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fail("fstat", err)
	}
	return &placeholder{fd: fd, ino: st.Ino}, nil
}

// loopbackIfindex is LOOPBACK_IFINDEX (include/net/flow.h): lo is
// interface 1 in every network namespace.
const loopbackIfindex = 1

// plugAddrs returns the source and destination of a plug connection: an
// address whose connections to the group's port the kernel gives to this
// group, and to no other listener of the port. Its listener lookup picks a
// group before any steering program runs, the most specific first
// (Socket.Shadows): beside a listener on 127.0.0.1:P (nginx's "listen 80;
// listen 127.0.0.1:80;"), a plug to 127.0.0.1:P for a group on 0.0.0.0:P
// reaches that listener, never the placeholder. So the destination is the
// group's own address if it is specific; for a wildcard, the first of
// 127.0.0.1, 127.0.0.2, ... (the whole of 127.0.0.0/8 is local, on lo)
// that no other listener of the port takes ahead of the group (read from
// the listening sockets now), and ::1 for an IPv6 group where none is,
// or where the group takes no IPv4. The source is the destination. An
// error says that every such address is taken by another listener first.
func (g *Group) plugAddrs() (src, dst netip.Addr, err error) {
	self := g.socket()
	all, err := ListeningSockets()
	if err != nil {
		return netip.Addr{}, netip.Addr{}, err
	}
	var others []Socket
	for _, s := range all {
		if s.Addr.Port() == g.addr.Port() && !s.SameGroup(self) && (s.Dev == 0 || s.Dev == loopbackIfindex) {
			others = append(others, s)
		}
	}
	// ours: a connection to d reaches the group: the group takes it, and
	// every other listener that takes it comes after the group.
	ours := func(d netip.Addr) bool {
		conn := Socket{Addr: netip.AddrPortFrom(d, g.addr.Port()), V6Only: d.Is6()}
		if !self.Overlaps(conn) {
			return false
		}
		for _, s := range others {
			if s.Overlaps(conn) && !self.Shadows(s) {
				return false
			}
		}
		return true
	}
	var candidates []netip.Addr
	if a := g.addr.Addr().Unmap(); !a.IsUnspecified() {
		candidates = append(candidates, a)
	} else {
		// Each other listener takes at most one specific address first:
		// one more candidate than there are is enough.
		lo := netip.AddrFrom4([4]byte{127, 0, 0, 1})
		for range len(others) + 1 {
			candidates = append(candidates, lo)
			lo = lo.Next()
		}
		candidates = append(candidates, netip.IPv6Loopback())
	}
	for _, d := range candidates {
		if ours(d) {
			return d, d, nil
		}
	}
	return netip.Addr{}, netip.Addr{}, fmt.Errorf("reuseport: plug a placeholder of %s: another listener of port %d takes every address it could connect to (%v, ...) before the group",
		g.addr, g.addr.Port(), candidates[0])
}

// socket returns the group as ListeningSockets lists its members.
func (g *Group) socket() Socket {
	a := g.addr.Addr()
	if g.key.Family == unix.AF_INET6 {
		a = netip.AddrFrom16(a.As16())
	} else {
		a = a.Unmap()
	}
	return Socket{Addr: netip.AddrPortFrom(a, g.addr.Port()), V6Only: g.key.V6Only, Dev: int(g.key.Ifindex)}
}

// boundSocket returns a TCP socket bound to src and an ephemeral port, with
// a connect timeout.
func boundSocket(src netip.Addr) (fd int, port uint16, err error) {
	fam := unix.AF_INET
	if src.Is6() {
		fam = unix.AF_INET6
	}
	fd, err = unix.Socket(fam, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, 0, fmt.Errorf("reuseport: plug socket: %w", err)
	}
	tv := unix.Timeval{Sec: 2}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
		unix.Close(fd)
		return -1, 0, fmt.Errorf("reuseport: plug socket: %w", err)
	}
	if err := unix.Bind(fd, sockaddr(netip.AddrPortFrom(src, 0))); err != nil {
		unix.Close(fd)
		return -1, 0, fmt.Errorf("reuseport: plug socket: bind %s: %w", src, err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return -1, 0, fmt.Errorf("reuseport: plug socket: %w", err)
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		port = uint16(sa.Port)
	case *unix.SockaddrInet6:
		port = uint16(sa.Port)
	}
	return fd, port, nil
}

func sockaddr(ap netip.AddrPort) unix.Sockaddr {
	if ap.Addr().Is4() {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	}
	return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
}

func queueLen(fd int) (int, error) {
	info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return 0, fmt.Errorf("reuseport: read a placeholder's TCP_INFO: %w", err)
	}
	return int(info.Unacked), nil
}

// String describes the group as the model has it, for logs: its address,
// its slots (members in an unknown order share a bracket; placeholders are
// marked p), and the slots the program steers to.
func (g *Group) String() string {
	slots := make([]string, g.n)
	for _, b := range g.blocks {
		var names []string
		for _, m := range b.members {
			if g.phs[m] != nil {
				names = append(names, fmt.Sprintf("p%d", m))
			} else {
				names = append(names, fmt.Sprint(m))
			}
		}
		for i, pos := range b.pos {
			if pos < len(slots) {
				if len(b.members) == 1 {
					slots[pos] = names[0]
				} else {
					slots[pos] = fmt.Sprintf("%v#%d", names, i)
				}
			}
		}
	}
	return fmt.Sprintf("%s slots %v serving %v probe %v", g.addr, slots, g.attached, g.attachedProbe)
}
