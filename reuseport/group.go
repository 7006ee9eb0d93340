package reuseport

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
)

// ErrSlotsUnknown is returned (wrapped) by a [Group] when it cannot tell
// which slots of the group a set of members holds: members joined and left
// between two looks at the group in an order that matters, or the set to
// steer to shares an unordered block with other members. The caller
// should stop steering through the group (the kernel path).
var ErrSlotsUnknown = errors.New("reuseport: the group's slots are not known")

// GroupOptions configures a [Group]. The zero value works.
type GroupOptions struct {
	// Probe is the source address of the caller's health probes (for
	// example a 127/8 address its prober binds). Connections from it go to
	// the members given to [Group.ProbeTo] while other clients' go to the
	// serving ones. Zero: no probe routing.
	Probe netip.Addr
	// Logger receives the group's warnings (connections stranded on a
	// placeholder, placeholders left in place). Default: slog.Default().
	Logger *slog.Logger
}

// PlaceholderError says why the kernel would not let a placeholder member
// join a listener's group. It unwraps to the bind error
// (syscall.EADDRINUSE).
type PlaceholderError struct {
	Addr netip.AddrPort
	// UID owns the group's listeners; EUID is this process's effective
	// uid. The kernel groups only sockets of one effective uid, so a
	// different one is the usual reason.
	UID, EUID int
	Err       error
}

func (e *PlaceholderError) Error() string {
	if e.UID != e.EUID {
		return fmt.Sprintf("reuseport: cannot open a placeholder member of %s: its listeners belong to uid %d and this process runs as uid %d (the kernel groups only sockets of one effective uid): %v",
			e.Addr, e.UID, e.EUID, e.Err)
	}
	return fmt.Sprintf("reuseport: cannot open a placeholder member of %s (uid %d): the listener does not share its port (no SO_REUSEPORT): %v",
		e.Addr, e.UID, e.Err)
}

func (e *PlaceholderError) Unwrap() error { return e.Err }
