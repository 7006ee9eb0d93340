//go:build linux

package reuseport

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestStrandedOnFirstPlaceholderIsServed: the group's first placeholder
// joins before the group has a program, so the kernel's hash can give it a
// client before the program is attached. Such a client must be served by
// the serving member, not left in a queue nobody accepts from (and reset
// when the placeholder closes). The client is put there on purpose: a
// program routes the group's next connection to the placeholder's slot.
func TestStrandedOnFirstPlaceholderIsServed(t *testing.T) {
	l0 := listen(t, "127.0.0.1:0")
	addr := l0.Addr().String()
	go func() { // the serving member: answers one line per connection
		for {
			c, err := l0.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				line, _ := bufio.NewReader(c).ReadString('\n')
				fmt.Fprintf(c, "served %s", line)
			}()
		}
	}()
	g := NewGroup(netip.MustParseAddrPort(addr), GroupOptions{})
	defer g.Close()
	serving := inodes(t, []*net.TCPListener{l0})
	if err := g.learn(serving[0]); err != nil {
		t.Fatal(err)
	}
	if err := g.sync(); err != nil {
		t.Fatal(err)
	}
	g.serving = serving
	p, err := g.openPlaceholder()
	if err != nil {
		t.Fatal(err)
	}
	prog, _ := slotRule{Serving: []uint32{1}}.program() // the placeholder's slot
	if err := attachProgram(p.fd, prog); err != nil {
		t.Fatal(err)
	}
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		if q, _ := queueLen(p.fd); q == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the client did not reach the placeholder's queue")
		}
	}
	// What addPlaceholder does with the group's first placeholder.
	g.phs[p.ino] = p
	g.join([]uint64{p.ino})
	if err := g.plug(p, 1); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(c, "hello")
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second)) // a bound, not a timing
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || strings.TrimSpace(got) != "served hello" {
		t.Fatalf("the client stranded on the placeholder read %q, %v; want it served by the serving member", got, err)
	}
	if q, _ := queueLen(p.fd); q != 1 {
		t.Errorf("placeholder queue = %d after the plug, want 1 (full: SYNs dropped)", q)
	}
}
