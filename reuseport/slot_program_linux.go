//go:build linux

package reuseport

import (
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// slotRule is what a group's steering program decides: which slots (member
// indices, in the kernel's order) a new connection may go to.
type slotRule struct {
	// Serving are the slots that get the group's new connections, spread by
	// a hash of the client's address and port. Never empty.
	Serving []uint32
	// Routes send the connections of particular clients elsewhere; the
	// first that matches wins.
	Routes []route
}

// route sends the connections from one source address (and port) to Slots.
type route struct {
	// Src is the client's address. An IPv4 address (or its IPv4-mapped
	// form) matches IPv4 packets, which is also what a dual-stack listener
	// receives from an IPv4 client, and IPv6 packets from ::ffff:a.b.c.d;
	// an IPv6 address matches IPv6 packets.
	Src netip.Addr
	// Port is the client's port; 0 matches any.
	Port  uint16
	Slots []uint32
}

// skfNetOff is SKF_NET_OFF (linux/filter.h): a classic BPF load at
// skfNetOff+k reads byte k of the packet's network (IP) header. A reuseport
// program otherwise sees the packet from its TCP payload on (the kernel
// pulls the TCP header before it runs the program: reuseport_select_sock's
// hdr_len), so the IP header and the TCP ports are only reachable this way.
// BPF_IND loads with a negative K work the same way (X + K).
const skfNetOff = -0x100000

// netOff returns the BPF K operand for byte off of the IP header.
func netOff(off int) uint32 { return uint32(int32(skfNetOff + off)) }

// maxSlotsPerTable bounds a jump table (two instructions a slot) so that
// the whole program stays far below the kernel's 4096 instructions.
const maxSlotsPerTable = 1000

// program builds the classic BPF program for r:
//
//	M[2] = 0 (no route)
//	IPv4: X = 4*IHL, M[3] = sport, M[0] = saddr
//	      each route i with an IPv4 source: if saddr and sport match: M[2] = i+1
//	IPv6: X = 40, M[3] = sport, M[0] = last word of saddr
//	      each route i: if the 4 words of saddr and sport match: M[2] = i+1
//	hash = ((sport ^ M[0]) * 2654435761) >> 16
//	route i: ret Slots_i[hash % len(Slots_i)]; no route: ret Serving[hash % len(Serving)]
//
// The hash only spreads connections; it is stable for one client address
// and port, so a retransmitted SYN goes where the first one went. IPv6
// extension headers are not followed: with them the "port" is another
// field, which only changes the spread. A load outside the packet ends a
// classic program with return value 0, which would be slot 0: every load
// here is inside the IP and TCP headers the kernel has already checked.
func (r slotRule) program() ([]unix.SockFilter, error) {
	if len(r.Serving) == 0 {
		return nil, fmt.Errorf("reuseport: a steering program needs at least one serving slot")
	}
	if len(r.Serving) > maxSlotsPerTable {
		return nil, fmt.Errorf("reuseport: %d serving slots: more than %d", len(r.Serving), maxSlotsPerTable)
	}
	for _, rt := range r.Routes {
		if len(rt.Slots) == 0 || len(rt.Slots) > maxSlotsPerTable {
			return nil, fmt.Errorf("reuseport: route for %s: %d slots, want 1 to %d", rt.Src, len(rt.Slots), maxSlotsPerTable)
		}
	}
	a := asm{jt: map[int]string{}, jf: map[int]string{}, jumps: map[int]string{}, labels: map[string]int{}}
	a.op(unix.BPF_LD|unix.BPF_W|unix.BPF_IMM, 0)
	a.op(unix.BPF_ST, 2)
	a.op(unix.BPF_LD|unix.BPF_B|unix.BPF_ABS, netOff(0))
	a.op(unix.BPF_ALU|unix.BPF_RSH|unix.BPF_K, 4)
	a.jeq(6, "v6", "")

	// IPv4.
	a.op(unix.BPF_LDX|unix.BPF_B|unix.BPF_MSH, netOff(0))
	a.op(unix.BPF_LD|unix.BPF_H|unix.BPF_IND, netOff(0))
	a.op(unix.BPF_ST, 3)
	a.op(unix.BPF_LD|unix.BPF_W|unix.BPF_ABS, netOff(12))
	a.op(unix.BPF_ST, 0)
	for i, rt := range r.Routes {
		if !rt.Src.Unmap().Is4() {
			continue
		}
		skip := fmt.Sprintf("v4skip%d", i)
		a4 := rt.Src.Unmap().As4()
		a.op(unix.BPF_LD|unix.BPF_W|unix.BPF_MEM, 0)
		a.jeq(be32(a4[:]), "", skip)
		a.matchPort(rt.Port, skip)
		a.op(unix.BPF_LD|unix.BPF_W|unix.BPF_IMM, uint32(i+1))
		a.op(unix.BPF_ST, 2)
		a.ja("hash")
		a.label(skip)
	}
	a.ja("hash")

	// IPv6.
	a.label("v6")
	a.op(unix.BPF_LDX|unix.BPF_W|unix.BPF_IMM, 40)
	a.op(unix.BPF_LD|unix.BPF_H|unix.BPF_IND, netOff(0))
	a.op(unix.BPF_ST, 3)
	a.op(unix.BPF_LD|unix.BPF_W|unix.BPF_ABS, netOff(20))
	a.op(unix.BPF_ST, 0)
	for i, rt := range r.Routes {
		skip := fmt.Sprintf("v6skip%d", i)
		a16 := rt.Src.As16() // an IPv4 address gives ::ffff:a.b.c.d
		for w := range 4 {
			a.op(unix.BPF_LD|unix.BPF_W|unix.BPF_ABS, netOff(8+4*w))
			a.jeq(be32(a16[4*w:]), "", skip)
		}
		a.matchPort(rt.Port, skip)
		a.op(unix.BPF_LD|unix.BPF_W|unix.BPF_IMM, uint32(i+1))
		a.op(unix.BPF_ST, 2)
		a.ja("hash")
		a.label(skip)
	}

	a.label("hash")
	a.op(unix.BPF_LD|unix.BPF_W|unix.BPF_MEM, 3)
	a.op(unix.BPF_LDX|unix.BPF_W|unix.BPF_MEM, 0)
	a.op(unix.BPF_ALU|unix.BPF_XOR|unix.BPF_X, 0)
	a.op(unix.BPF_ALU|unix.BPF_MUL|unix.BPF_K, 2654435761)
	a.op(unix.BPF_ALU|unix.BPF_RSH|unix.BPF_K, 16)
	a.op(unix.BPF_ST, 1)
	if len(r.Routes) > 0 {
		a.op(unix.BPF_LD|unix.BPF_W|unix.BPF_MEM, 2)
		for i := range r.Routes {
			a.jeq(uint32(i+1), "", fmt.Sprintf("notroute%d", i))
			a.ja(fmt.Sprintf("route%d", i))
			a.label(fmt.Sprintf("notroute%d", i))
		}
		a.op(unix.BPF_LD|unix.BPF_W|unix.BPF_MEM, 1)
	}
	a.table(r.Serving)
	for i, rt := range r.Routes {
		a.label(fmt.Sprintf("route%d", i))
		a.op(unix.BPF_LD|unix.BPF_W|unix.BPF_MEM, 1)
		a.table(rt.Slots)
	}
	if len(a.insns) > 4096 {
		return nil, fmt.Errorf("reuseport: steering program of %d instructions is over the kernel's 4096", len(a.insns))
	}
	return a.assemble()
}

// matchPort jumps to skip unless the source port (M[3]) is port; port 0
// matches any.
func (a *asm) matchPort(port uint16, skip string) {
	if port == 0 {
		return
	}
	a.op(unix.BPF_LD|unix.BPF_W|unix.BPF_MEM, 3)
	a.jeq(uint32(port), "", skip)
}

// asm is a classic BPF assembler with labels: conditional jumps take 8-bit
// offsets, so they only ever target a nearby label; far ones go through ja.
type asm struct {
	insns  []unix.SockFilter
	jt, jf map[int]string // instruction index -> label of its true/false target
	jumps  map[int]string // ja instruction index -> label
	labels map[string]int
}

func (a *asm) op(code uint16, k uint32) {
	a.insns = append(a.insns, unix.SockFilter{Code: code, K: k})
}

// jeq compares A with k; an empty label falls through.
func (a *asm) jeq(k uint32, ifTrue, ifFalse string) {
	i := len(a.insns)
	a.op(unix.BPF_JMP|unix.BPF_JEQ|unix.BPF_K, k)
	if ifTrue != "" {
		a.jt[i] = ifTrue
	}
	if ifFalse != "" {
		a.jf[i] = ifFalse
	}
}

func (a *asm) ja(label string) {
	a.jumps[len(a.insns)] = label
	a.op(unix.BPF_JMP|unix.BPF_JA, 0)
}

func (a *asm) label(name string) {
	a.labels[name] = len(a.insns)
}

// table appends: A %= len(slots); return slots[A], through a jump table.
func (a *asm) table(slots []uint32) {
	if len(slots) == 1 {
		a.op(unix.BPF_RET|unix.BPF_K, slots[0])
		return
	}
	a.op(unix.BPF_ALU|unix.BPF_MOD|unix.BPF_K, uint32(len(slots)))
	for i, s := range slots[:len(slots)-1] {
		a.insns = append(a.insns,
			unix.SockFilter{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: uint32(i), Jt: 0, Jf: 1},
			unix.SockFilter{Code: unix.BPF_RET | unix.BPF_K, K: s})
	}
	a.op(unix.BPF_RET|unix.BPF_K, slots[len(slots)-1])
}

func (a *asm) assemble() ([]unix.SockFilter, error) {
	target := func(i int, label string) (int, error) {
		t, ok := a.labels[label]
		if !ok || t <= i {
			return 0, fmt.Errorf("reuseport: steering program: no label %q after instruction %d", label, i)
		}
		return t - i - 1, nil
	}
	for i, l := range a.jt {
		off, err := target(i, l)
		if err != nil {
			return nil, err
		}
		if off > 255 {
			return nil, fmt.Errorf("reuseport: steering program: conditional jump %d to %q too far", i, l)
		}
		a.insns[i].Jt = uint8(off)
	}
	for i, l := range a.jf {
		off, err := target(i, l)
		if err != nil {
			return nil, err
		}
		if off > 255 {
			return nil, fmt.Errorf("reuseport: steering program: conditional jump %d to %q too far", i, l)
		}
		a.insns[i].Jf = uint8(off)
	}
	for i, l := range a.jumps {
		off, err := target(i, l)
		if err != nil {
			return nil, err
		}
		a.insns[i].K = uint32(off)
	}
	return a.insns, nil
}

func be32(b []byte) uint32 {
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

// attachProgram attaches prog to the reuseport group of the socket fd.
func attachProgram(fd int, prog []unix.SockFilter) error {
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	return unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF, &fprog)
}
