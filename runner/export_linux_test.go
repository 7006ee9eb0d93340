//go:build linux

package runner

import "net"

// IsLeader reports whether ln (from r.Listen) is member 0 of its group as
// far as r knows: it may steer the group at its drain.
func IsLeader(r *Runner, ln net.Listener) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	l := r.lookupLocked(ln)
	return l != nil && l.leader.Load()
}
