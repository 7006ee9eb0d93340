//go:build linux

package proc

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/changeover-dev/changeover/reuseport"
)

// Listener is one TCP LISTEN socket (mirrors reuseport.Socket).
type Listener struct {
	Addr  netip.AddrPort
	Inode uint64
}

// ErrUnavailable means the listening sockets cannot be read on this system.
var ErrUnavailable = errors.New("listening sockets unavailable")

// listeningSockets lists every TCP LISTEN socket of the network namespace.
var listeningSockets = func() ([]Listener, error) {
	socks, err := reuseport.ListeningSockets()
	if err != nil {
		return nil, err
	}
	out := make([]Listener, len(socks))
	for i, s := range socks {
		out[i] = Listener{Addr: s.Addr, Inode: s.Inode}
	}
	return out, nil
}

// GroupListenAddrs returns the TCP addresses that the processes of process
// group pgid listen on, sorted and de-duplicated.
func GroupListenAddrs(pgid int) ([]netip.AddrPort, error) {
	if listeningSockets == nil {
		return nil, ErrUnavailable
	}
	all, err := listeningSockets()
	if err != nil {
		return nil, fmt.Errorf("list listening sockets: %w", err)
	}
	inodes := map[uint64]bool{}
	for _, pid := range GroupMembers(pgid) {
		for ino := range SocketInodes(pid) {
			inodes[ino] = true
		}
	}
	var out []netip.AddrPort
	for _, s := range all {
		if inodes[s.Inode] && !slices.Contains(out, s.Addr) {
			out = append(out, s.Addr)
		}
	}
	slices.SortFunc(out, func(a, b netip.AddrPort) int { return a.Compare(b) })
	return out, nil
}

// Covers reports whether a listener on have accepts the connections that
// a listener on want accepts: same port, and the same address or a
// wildcard of the same family.
func Covers(have, want netip.AddrPort) bool {
	if have.Port() != want.Port() {
		return false
	}
	h, w := have.Addr().Unmap(), want.Addr().Unmap()
	if h == w {
		return true
	}
	if h.IsUnspecified() {
		return h.Is4() == w.Is4() || have.Addr().Is6() // [::] usually accepts v4 too
	}
	return false
}

// Missing returns the addresses of want that nothing in have covers.
func Missing(have, want []netip.AddrPort) []netip.AddrPort {
	var out []netip.AddrPort
	for _, w := range want {
		if !slices.ContainsFunc(have, func(h netip.AddrPort) bool { return Covers(h, w) }) {
			out = append(out, w)
		}
	}
	return out
}

// GroupListenInodes returns the inodes of the TCP listening sockets that the
// processes of process group pgid hold.
func GroupListenInodes(pgid int) (map[uint64]bool, error) {
	if listeningSockets == nil {
		return nil, ErrUnavailable
	}
	all, err := listeningSockets()
	if err != nil {
		return nil, fmt.Errorf("list listening sockets: %w", err)
	}
	listening := make(map[uint64]bool, len(all))
	for _, s := range all {
		listening[s.Inode] = true
	}
	out := map[uint64]bool{}
	for _, pid := range GroupMembers(pgid) {
		for ino := range SocketInodes(pid) {
			if listening[ino] {
				out[ino] = true
			}
		}
	}
	return out, nil
}

// GroupSockets is what GroupsListening read of one process group.
type GroupSockets struct {
	Members   []int      // its live processes
	Listeners []Listener // the TCP listening sockets they hold
}

// ListeningSockets lists every TCP listening socket of the network
// namespace (one sock_diag dump).
func ListeningSockets() ([]Listener, error) {
	if listeningSockets == nil {
		return nil, ErrUnavailable
	}
	all, err := listeningSockets()
	if err != nil {
		return nil, fmt.Errorf("list listening sockets: %w", err)
	}
	return all, nil
}

// GroupsMembers lists the live processes of each process group in pgids,
// in one pass over /proc. Every group asked for has an entry.
func GroupsMembers(pgids ...int) (map[int][]int, error) {
	pidList, err := pids()
	if err != nil {
		return nil, err
	}
	out := make(map[int][]int, len(pgids))
	for _, g := range pgids {
		out[g] = nil
	}
	for _, pid := range pidList {
		st, err := ReadStat(pid)
		if err != nil || st.State == 'Z' || st.State == 'X' {
			continue
		}
		if m, ok := out[st.PGID]; ok {
			out[st.PGID] = append(m, pid)
		}
	}
	return out, nil
}

// HeldBy returns the sockets of listening (as ListeningSockets returned
// them) that one of pids holds open: every descriptor of each is read.
func HeldBy(pids []int, listening []Listener) []Listener {
	byInode := make(map[uint64]Listener, len(listening))
	for _, s := range listening {
		byInode[s.Inode] = s
	}
	var out []Listener
	for _, pid := range pids {
		for ino := range SocketInodes(pid) {
			if s, ok := byInode[ino]; ok && !slices.Contains(out, s) {
				out = append(out, s)
			}
		}
	}
	return out
}

// GroupsListening returns, for each process group in pgids, its live
// processes and the TCP listening sockets they hold: one pass over /proc
// and one sock_diag dump for all the groups (GroupListenAddrs and
// GroupListenInodes make one each per group). Every group asked for has
// an entry.
func GroupsListening(pgids ...int) (map[int]*GroupSockets, error) {
	all, err := ListeningSockets()
	if err != nil {
		return nil, err
	}
	members, err := GroupsMembers(pgids...)
	if err != nil {
		return nil, err
	}
	out := make(map[int]*GroupSockets, len(pgids))
	for g, m := range members {
		out[g] = &GroupSockets{Members: m, Listeners: HeldBy(m, all)}
	}
	return out, nil
}
