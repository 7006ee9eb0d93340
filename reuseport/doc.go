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
//     group (or with SO_DETACH_REUSEPORT_BPF). It can only be attached once the
//     socket listens (before that it would be attached to a group of its own
//     that is thrown away at listen).
//   - Attaching and detaching need no privilege.
//   - Closing a listener resets every connection in its accept queue and its
//     half-open (SYN_RECV) requests, unless net.ipv4.tcp_migrate_req=1 (Linux
//     5.14 and later, per network namespace, default 0), which migrates them to
//     another member of the group.
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
// [HalfOpen] the peers of the connections still in SYN_RECV on an address.
//
// Everything but Control and ListenConfig is Linux-only; elsewhere it returns
// an error that matches [ErrNotSupported].
package reuseport
