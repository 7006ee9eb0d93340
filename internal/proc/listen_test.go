//go:build linux

package proc

import (
	"net"
	"net/netip"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

// TestGroupsListening: one pass reports what GroupListenAddrs and
// GroupListenInodes report for each group, and nothing for a group with
// no process.
func TestGroupsListening(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	own := unix.Getpgrp()
	byGroup, err := GroupsListening(own, 1<<22)
	if err != nil {
		t.Fatal(err)
	}
	if g := byGroup[1<<22]; g == nil || len(g.Listeners)+len(g.Members) != 0 {
		t.Errorf("a group with no process: %+v", g)
	}
	addrs, err := GroupListenAddrs(own)
	if err != nil {
		t.Fatal(err)
	}
	inodes, err := GroupListenInodes(own)
	if err != nil {
		t.Fatal(err)
	}
	var gotAddrs []netip.AddrPort
	gotInodes := map[uint64]bool{}
	for _, l := range byGroup[own].Listeners {
		if !slices.Contains(gotAddrs, l.Addr) {
			gotAddrs = append(gotAddrs, l.Addr)
		}
		gotInodes[l.Inode] = true
	}
	slices.SortFunc(gotAddrs, func(a, b netip.AddrPort) int { return a.Compare(b) })
	if !slices.Equal(gotAddrs, addrs) {
		t.Errorf("addresses %v, GroupListenAddrs says %v", gotAddrs, addrs)
	}
	if len(gotInodes) != len(inodes) {
		t.Errorf("inodes %v, GroupListenInodes says %v", gotInodes, inodes)
	}
	for ino := range inodes {
		if !gotInodes[ino] {
			t.Errorf("inode %d missing", ino)
		}
	}
	if members := GroupMembers(own); !slices.Equal(byGroup[own].Members, members) {
		t.Errorf("members %v, GroupMembers says %v", byGroup[own].Members, members)
	}
	if !slices.Contains(gotAddrs, netip.MustParseAddrPort(ln.Addr().String())) {
		t.Errorf("own listener %s not reported: %v", ln.Addr(), gotAddrs)
	}
}
