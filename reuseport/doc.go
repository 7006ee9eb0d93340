// Package reuseport binds listeners with SO_REUSEPORT so that two versions of
// a server can hold the same port at once, and exposes the few kernel facts a
// zero-loss handover needs.
//
// # Binding
//
// [Control] plugs into [net.ListenConfig] and sets SO_REUSEPORT (through
// github.com/libp2p/go-reuseport); [ListenConfig] chains it after any Control
// hook the caller already has. When the port is already held, the error is an
// [*AddrInUseError] that says why the kernel refused to let this socket join:
// the holder did not set SO_REUSEPORT, or it runs under another effective UID
// (the kernel only groups sockets of the same effective UID, so a process of
// another user cannot bind the port and steal its traffic).
//
// # The reuseport group and steering
//
// Every socket bound with SO_REUSEPORT to the same address and port (and
// same effective UID) is a member of one group. The kernel spreads new
// connections over the members by a hash of the 4-tuple, unless a classic
// BPF program is attached to the group (SO_ATTACH_REUSEPORT_CBPF), in which
// case the program's return value is the index of the member that gets the
// connection. Facts this package relies on, each checked by a test here on
// Linux 6.x:
//
//   - The index is the order of joining the group (listen order). When a
//     member leaves, the last member moves into its slot.
//   - An index out of range falls back to the hash.
//   - The program belongs to the group, not to the socket or process that
//     attached it: it outlives that process, and it only goes away with the
//     group (or with SO_DETACH_REUSEPORT_BPF) (TestSteering).
//   - A program attached before listen makes a group of that one socket: if
//     the socket is the first on its address, the group keeps the program
//     once it listens; if a group is already there, the socket cannot join
//     it, and listen fails with EADDRINUSE (TestProgramAttachedBeforeListen).
//     So a joining instance attaches right after its listen, and between the
//     two the group's program (or the hash, without one) decides.
//   - Attaching and detaching need no privilege.
//   - Sockets on one port with overlapping but different addresses (127.0.0.1
//     and 0.0.0.0, tcp4 0.0.0.0 and a dual-stack [::]) are separate groups,
//     and the kernel picks the listener before any program runs: the more
//     specific address first, and for an IPv4 client an AF_INET listener
//     before a dual-stack one (TestOverlappingAddressesAreSeparateGroups).
//     A group is one family, address, port, IPV6_V6ONLY, device and uid
//     ([Socket.SameGroup], [Socket.Overlaps]).
//   - Closing a listener resets every connection in its accept queue and its
//     half-open (SYN_RECV) requests (TestCloseResetsQueueWithoutMigrateReq),
//     unless net.ipv4.tcp_migrate_req=1 (Linux 5.14 and later, per network
//     namespace, default 0). Then they move to the other members, spread by
//     hash: the kernel asks only an eBPF program of type
//     BPF_SK_REUSEPORT_SELECT_OR_MIGRATE where to put them, never a classic
//     one, so a member that the program keeps dark gets its share
//     (TestMigrateReqIgnoresProgram).
//
// [Steer] attaches "return index N" to the group of a listener; [Dark] is
// Steer(l, 0), which every new instance attaches right after it listens: it
// keeps sending new connections to member 0, which is the serving instance
// as long as handovers are serialised (one serving member, at most one new
// one beside it), and neutralises any program left behind by an earlier
// handover.
//
// # Observing
//
// [AcceptQueueLen] reads a listener's accept-queue length (TCP_INFO's
// tcpi_unacked on a listening socket, what `ss -ltn` shows as Recv-Q).
// [ListeningSockets] lists every TCP listening socket of the network
// namespace, [GroupSize] how many of them share one address, and
// [HalfOpen] the peers of the connections still in SYN_RECV on an address,
// with how many times each one's SYN-ACK was retransmitted. [DrainWatch]
// puts these together into the rule of a handover: when listeners that new
// connections were steered away from are quiet, and can close losing none.
//
// # Steering through placeholders
//
// [Group] lets a supervisor own a group's program for servers that know
// nothing of it, through placeholder members of its own: sockets bound to
// the group's address with the family, IPV6_V6ONLY and bound device that
// sock_diag reports for the server's listener (the kernel groups only
// sockets that agree on these and on the effective uid), listening with a
// backlog of 0 and never accepted from. The slot rule:
//
//   - Dark: new connections are spread over the serving generation's slots
//     only (a hash of the client's address and port, modulo their count,
//     then a jump table); members that join later receive nothing.
//   - ProbeTo: connections from the supervisor's probe address (read from
//     the IP header through SKF_NET_OFF: IPv4, IPv6, and IPv4 on a
//     dual-stack listener) go to the new generation's slots instead.
//   - Cutover: one setsockopt switches the rule to the new generation's
//     slots.
//   - PrepareDepartures: a leaving member's slot gets the group's last
//     member, and an index past the end falls back to the hash over all
//     members, old ones included. So before the old generation is stopped,
//     as many placeholders as it has members are appended: every departure,
//     in any order, then moves a placeholder, and the new slots never move.
//   - Hold: every new connection goes to a placeholder, whose full queue
//     drops the SYN (the client retransmits it a second later), and one
//     placeholder per member is appended: the members get nothing new while
//     they stop; Close then leaves the address without a listener, and the
//     retransmitted SYNs go to the listener the kernel finds next (a wider
//     address's group, for a group that shadowed it).
//   - Compact: placeholders are closed afterwards, the program first
//     leaving out any slot a close would vacate; Close closes them all when
//     nothing serves, so that clients are refused rather than queued.
//
// The group's slot order is not visible from user space: Group keeps a
// model of it from the joins and departures it sees (sock_diag, by inode)
// and its own placeholders, as blocks of members whose order inside the
// block is unknown (a generation's listeners appearing at once), which is
// enough to target a whole generation. Each placeholder is checked against
// the model when it joins: a connection of the supervisor's own, routed to
// the slot the model gives it, must reach its queue. It goes to an address
// that no other listener of the port takes first (the kernel's listener
// lookup prefers the most specific address, before any program runs:
// [Socket.Shadows]): the group's own address, or for a wildcard one the
// first of 127.0.0.1, 127.0.0.2, ... that no listener of the port is bound
// to (nginx's "listen 80; listen 127.0.0.1:80;"), then ::1. That connection stays
// queued, so the placeholder's queue is full: a client SYN that reaches a
// placeholder anyway (a steered member that crashes) is dropped and
// retransmitted a second later, where the program then sends it, instead
// of being queued and reset. The group's very first placeholder joins
// before any program exists: the program is attached through it right
// after its listen(2), and a client the kernel's hash gave it in between
// is accepted and relayed to the serving members (the server then sees
// the supervisor's address for that connection). Placeholders whose order became unknown (a
// generation leaving all at once) are located again the same way, after a
// listen(2) that gives each room for one more connection (listening again
// changes only the backlog; the socket keeps its slot).
//
// Not covered: with net.ipv4.tcp_migrate_req=1 a closing listener's queue
// is spread over the remaining members by the hash, ignoring the program,
// so placeholders can receive such connections; with the listeners bound to
// a device, placeholders are not plugged (a loopback connection cannot reach
// them); where other listeners of the port take every such address first
// (a v6only [::] group beside [::1]), a placeholder cannot be added: the
// call returns an error at once.
//
// Everything but Control and ListenConfig is Linux-only; elsewhere it returns
// an error that matches [ErrNotSupported].
package reuseport
