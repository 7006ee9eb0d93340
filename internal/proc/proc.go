//go:build linux

package proc

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Stat is the part of /proc/PID/stat the supervisor uses.
type Stat struct {
	PID       int
	State     byte   // R, S, D, Z, ...
	PPID      int    // parent
	PGID      int    // process group
	StartTime uint64 // clock ticks after boot (field 22)
}

// ErrNoProcess means the PID is not (or no longer) in /proc.
var ErrNoProcess = errors.New("no such process")

// ReadStat parses /proc/PID/stat. It reads the file with one open, one
// read and one close into a buffer on the stack, and parses without
// allocating: the supervisor reads every process's stat to list a process
// group, on the path from a new generation's readiness to the old one's
// stop signal.
func ReadStat(pid int) (Stat, error) {
	var path [32]byte
	p := append(append(append(path[:0], "/proc/"...), strconv.Itoa(pid)...), "/stat"...)
	var buf [1024]byte
	b, err := readSmall(string(p), buf[:])
	if err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) {
			return Stat{}, fmt.Errorf("read stat of pid %d: %w", pid, ErrNoProcess)
		}
		return Stat{}, fmt.Errorf("read stat of pid %d: %w", pid, err)
	}
	return parseStat(pid, b)
}

// readSmall reads the file at path into buf (a /proc file that fits) and
// returns what it read; a longer file is an error.
func readSmall(path string, buf []byte) ([]byte, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	for errors.Is(err, unix.EINTR) {
		fd, err = unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	n := 0
	for n < len(buf) {
		m, err := unix.Read(fd, buf[n:])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if m == 0 {
			return buf[:n], nil
		}
		n += m
	}
	return nil, fmt.Errorf("%s: longer than %d bytes", path, len(buf))
}

func parseStat(pid int, b []byte) (Stat, error) {
	// The command name is in parentheses and may contain anything, so split
	// after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return Stat{}, fmt.Errorf("parse stat of pid %d: no ')' in %q", pid, b)
	}
	// Fields 3 (state), 4 (ppid), 5 (pgrp) and 22 (starttime), counted
	// from 1 as proc(5) does, split on spaces without allocating.
	var f [20][]byte
	n := 0
	for rest := b[i+2:]; n < len(f); {
		rest = bytes.TrimLeft(rest, " \n")
		if len(rest) == 0 {
			break
		}
		j := bytes.IndexAny(rest, " \n")
		if j < 0 {
			j = len(rest)
		}
		f[n], rest = rest[:j], rest[j:]
		n++
	}
	if n < len(f) {
		return Stat{}, fmt.Errorf("parse stat of pid %d: %d fields", pid, n)
	}
	st := Stat{PID: pid, State: f[0][0]}
	var err error
	if st.PPID, err = atoi(f[1]); err != nil {
		return Stat{}, fmt.Errorf("parse ppid of pid %d: %w", pid, err)
	}
	if st.PGID, err = atoi(f[2]); err != nil {
		return Stat{}, fmt.Errorf("parse pgid of pid %d: %w", pid, err)
	}
	if st.StartTime, err = parseUint(f[19]); err != nil {
		return Stat{}, fmt.Errorf("parse start time of pid %d: %w", pid, err)
	}
	return st, nil
}

// atoi parses a decimal int, with an optional '-' (a process with no
// controlling terminal has tpgid -1; pgrp and ppid are never negative).
func atoi(b []byte) (int, error) {
	neg := len(b) > 0 && b[0] == '-'
	if neg {
		b = b[1:]
	}
	u, err := parseUint(b)
	if err != nil || u > 1<<62 {
		return 0, fmt.Errorf("not a number: %q", b)
	}
	if neg {
		return -int(u), nil
	}
	return int(u), nil
}

// parseUint parses a decimal uint64 without allocating.
func parseUint(b []byte) (uint64, error) {
	if len(b) == 0 || len(b) > 19 {
		return 0, fmt.Errorf("not a number: %q", b)
	}
	var u uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("not a number: %q", b)
		}
		u = u*10 + uint64(c-'0')
	}
	return u, nil
}

// StartTime returns the start time of pid in clock ticks after boot.
func StartTime(pid int) (uint64, error) {
	st, err := ReadStat(pid)
	return st.StartTime, err
}

// Alive reports whether pid exists, is not a zombie, and (if start is not 0)
// was started at start: a reused PID is not the same process.
func Alive(pid int, start uint64) bool {
	if pid <= 0 {
		return false
	}
	st, err := ReadStat(pid)
	if err != nil || st.State == 'Z' || st.State == 'X' {
		return false
	}
	return start == 0 || st.StartTime == start
}

// clkTck is USER_HZ; 100 on every Linux architecture Go supports.
const clkTck = 100

// StartWallTime converts a start time in ticks to wall-clock time.
func StartWallTime(ticks uint64) time.Time {
	var info unix.Sysinfo_t
	if err := unix.Sysinfo(&info); err != nil {
		return time.Time{}
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return time.Time{}
	}
	boot := time.Now().Add(-time.Duration(ts.Nano()))
	return boot.Add(time.Duration(ticks) * time.Second / clkTck)
}

// pids lists every numeric entry of /proc.
func pids() ([]int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list /proc: %w", err)
	}
	out := make([]int, 0, len(ents))
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			out = append(out, pid)
		}
	}
	return out, nil
}

// GroupMembers lists the live (non-zombie) processes of process group pgid.
func GroupMembers(pgid int) []int {
	all, err := pids()
	if err != nil {
		return nil
	}
	var out []int
	for _, pid := range all {
		st, err := ReadStat(pid)
		if err == nil && st.PGID == pgid && st.State != 'Z' && st.State != 'X' {
			out = append(out, pid)
		}
	}
	return out
}

// ZombieChildren lists zombie children of parent whose process group is not
// skipPGID.
func ZombieChildren(parent, skipPGID int) []Stat {
	all, err := pids()
	if err != nil {
		return nil
	}
	var out []Stat
	for _, pid := range all {
		st, err := ReadStat(pid)
		if err == nil && st.PPID == parent && st.State == 'Z' && st.PGID != skipPGID {
			out = append(out, st)
		}
	}
	return out
}

// KillGroup sends sig to process group pgid. It refuses pgid <= 1 and the
// caller's own group, and treats an empty group as success.
func KillGroup(pgid int, sig unix.Signal) error {
	if pgid <= 1 || pgid == unix.Getpgrp() {
		return fmt.Errorf("kill process group %d: refused (own or invalid group)", pgid)
	}
	if err := unix.Kill(-pgid, sig); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("kill process group %d with %v: %w", pgid, sig, err)
	}
	return nil
}

// SocketInodes returns the inodes of the sockets pid has open.
func SocketInodes(pid int) map[uint64]bool {
	dir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	out := map[uint64]bool{}
	for _, e := range ents {
		l, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil || !strings.HasPrefix(l, "socket:[") || !strings.HasSuffix(l, "]") {
			continue
		}
		if ino, err := strconv.ParseUint(l[len("socket:["):len(l)-1], 10, 64); err == nil {
			out[ino] = true
		}
	}
	return out
}

// CheckOwnNamespace fails unless /proc shows this process's own PID
// namespace. Every reader here (process groups, start times, zombie
// children, sockets) relies on it; a PID namespace made without mounting
// its own proc (unshare --pid --fork without --mount-proc) shows the host's
// PIDs, and the supervisor would reap, wait for and compare the wrong
// processes.
func CheckOwnNamespace() error {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return fmt.Errorf("read /proc/self/stat: %w", err)
	}
	pid, _, _ := strings.Cut(string(b), " ")
	if pid != strconv.Itoa(os.Getpid()) {
		return fmt.Errorf("/proc belongs to another PID namespace (it calls this process %s, the process itself %d): mount a proc for this namespace, for example unshare --pid --fork --mount-proc", pid, os.Getpid())
	}
	return nil
}

// SocketHolders returns the live processes started at or after since (clock
// ticks after boot) that hold one of the listening sockets inodes. A
// process that inherited a socket from a process group and then left the
// group (setsid, as a daemonizing server does) still holds the same socket,
// so the same inode. Only the sockets that still listen are looked for: a
// closed one has no holder, and the scan reads every descriptor of every
// process (tens of milliseconds past a server with 10,000 connections), so
// it is skipped when none still listens (the usual case at a handover).
func SocketHolders(inodes map[uint64]bool, since uint64) []int {
	if len(inodes) == 0 {
		return nil
	}
	if listening, err := ListeningSockets(); err == nil {
		if !slices.ContainsFunc(listening, func(l Listener) bool { return inodes[l.Inode] }) {
			return nil
		}
	}
	all, err := pids()
	if err != nil {
		return nil
	}
	var out []int
	for _, pid := range all {
		st, err := ReadStat(pid)
		if err != nil || st.State == 'Z' || st.State == 'X' || st.StartTime < since {
			continue
		}
		for ino := range SocketInodes(pid) {
			if inodes[ino] {
				out = append(out, pid)
				break
			}
		}
	}
	return out
}

// GroupEmpty reports whether no live (non-zombie) process is left in
// process group pgid.
func GroupEmpty(pgid int) bool {
	if pgid <= 1 {
		return true // not a group we could signal
	}
	if err := unix.Kill(-pgid, 0); errors.Is(err, unix.ESRCH) {
		return true
	}
	// kill(2) also finds zombies, which hold nothing: look closer.
	return len(GroupMembers(pgid)) == 0
}

// ErrNotRecorded means a live process is not the one that was recorded: its
// PID was reused, or it is in another process group.
var ErrNotRecorded = errors.New("not the recorded process")

// Verify checks that pid is the process that was recorded as started at
// start (clock ticks after boot) in process group pgid, reading both from
// /proc. It is the test to pass before a recorded process is signalled. A
// start time of 0 (not recorded) matches nothing, and a process that cannot
// be read is unknown: both are errors, and an error means never signal.
func Verify(pid, pgid int, start uint64) error {
	if pid <= 1 || pgid <= 1 {
		return fmt.Errorf("%w: pid %d, process group %d recorded", ErrNotRecorded, pid, pgid)
	}
	if start == 0 {
		return fmt.Errorf("%w: pid %d: no start time recorded, so it cannot be told from a reused PID", ErrNotRecorded, pid)
	}
	st, err := ReadStat(pid)
	if err != nil {
		return fmt.Errorf("verify pid %d: %w", pid, err)
	}
	if st.State == 'Z' || st.State == 'X' {
		return fmt.Errorf("verify pid %d: %w (exited)", pid, ErrNoProcess)
	}
	if st.StartTime != start {
		return fmt.Errorf("%w: pid %d has start time %d, recorded %d (a reused PID)", ErrNotRecorded, pid, st.StartTime, start)
	}
	if st.PGID != pgid {
		return fmt.Errorf("%w: pid %d is in process group %d, recorded %d", ErrNotRecorded, pid, st.PGID, pgid)
	}
	return nil
}
