//go:build linux

package supervisor

import (
	"context"
	"time"

	"github.com/changeover-dev/changeover/reuseport"
)

// How listenersGone sees the handover end quickly. The old generation's
// server closes its listeners a few tens of milliseconds after its stop
// signal (runner: once it has steered the group and its queue is quiet),
// and the reload is done then. Reading which listening sockets its group
// holds means reading every file descriptor of every member, which takes
// tens of milliseconds for a server with 10,000 connections open, at each
// poll. The sockets its group listened on at the stop signal are known
// (the coverage check read them a moment before): once none of them is in
// the sock_diag dump any more (one netlink dump of the listening sockets,
// well under a millisecond), no process listens on them, its group
// included. A socket still listening after handoverWatch (held by a process
// that left the group, or a server slow to close) leaves the answer to the
// full check.
const (
	handoverWatch = time.Second
	handoverPoll  = 2 * time.Millisecond
)

// socketsClosed polls the listening sockets until none of inodes is among
// them (true), or handoverWatch has passed, a dump failed or ctx is done
// (false).
func socketsClosed(ctx context.Context, inodes map[uint64]bool) bool {
	deadline := time.Now().Add(handoverWatch)
	t := time.NewTicker(handoverPoll)
	defer t.Stop()
	for {
		socks, err := reuseport.ListeningSockets()
		if err != nil {
			return false
		}
		open := false
		for _, s := range socks {
			if inodes[s.Inode] {
				open = true
				break
			}
		}
		if !open {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
}
