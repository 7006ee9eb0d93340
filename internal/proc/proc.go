//go:build linux

package proc

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
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

// ReadStat parses /proc/PID/stat.
func ReadStat(pid int) (Stat, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH) {
			return Stat{}, fmt.Errorf("read stat of pid %d: %w", pid, ErrNoProcess)
		}
		return Stat{}, fmt.Errorf("read stat of pid %d: %w", pid, err)
	}
	return parseStat(pid, b)
}

func parseStat(pid int, b []byte) (Stat, error) {
	// The command name is in parentheses and may contain anything, so split
	// after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return Stat{}, fmt.Errorf("parse stat of pid %d: no ')' in %q", pid, b)
	}
	f := strings.Fields(string(b[i+2:]))
	// f[0] is field 3 (state); field N is f[N-3].
	if len(f) < 20 {
		return Stat{}, fmt.Errorf("parse stat of pid %d: %d fields", pid, len(f))
	}
	st := Stat{PID: pid, State: f[0][0]}
	var err error
	if st.PPID, err = strconv.Atoi(f[1]); err != nil {
		return Stat{}, fmt.Errorf("parse ppid of pid %d: %w", pid, err)
	}
	if st.PGID, err = strconv.Atoi(f[2]); err != nil {
		return Stat{}, fmt.Errorf("parse pgid of pid %d: %w", pid, err)
	}
	if st.StartTime, err = strconv.ParseUint(f[19], 10, 64); err != nil {
		return Stat{}, fmt.Errorf("parse start time of pid %d: %w", pid, err)
	}
	return st, nil
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
// ticks after boot) that hold one of the sockets inodes. A process that
// inherited a socket from a process group and then left the group (setsid,
// as a daemonizing server does) still holds the same socket, so the same
// inode.
func SocketHolders(inodes map[uint64]bool, since uint64) []int {
	if len(inodes) == 0 {
		return nil
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
