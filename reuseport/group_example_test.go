//go:build linux

package reuseport_test

import (
	"errors"
	"log"
	"net/netip"

	"github.com/changeover-dev/changeover/reuseport"
)

// A supervisor steering a handover between two generations of a server
// that knows nothing of it. oldInodes and newInodes are the inodes of each
// generation's listeners on the address (from /proc/PID/fd or
// reuseport.ListeningSockets).
func ExampleGroup() {
	addr := netip.MustParseAddrPort("127.0.0.1:8080")
	var oldInodes, newInodes []uint64 // found by the supervisor

	g := reuseport.NewGroup(addr, reuseport.GroupOptions{Probe: netip.MustParseAddr("127.83.0.1")})
	defer g.Close() // when nothing serves any more
	err := g.Dark(oldInodes)
	var refused *reuseport.PlaceholderError
	if errors.As(err, &refused) {
		log.Printf("steering through the kernel path: %v", err) // another uid
		return
	}
	// ... start the new generation; once its listeners are seen:
	_ = g.ProbeTo(newInodes) // the health probe reaches it, nobody else does
	// ... once it is healthy:
	_ = g.Cutover(newInodes)
	// ... wait until the old members' accept queues are empty, then:
	_ = g.PrepareDepartures(len(oldInodes))
	// ... stop the old generation; call g.Sync() as its members go, and
	// once they are gone:
	_ = g.Compact()
}
