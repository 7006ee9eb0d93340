//go:build linux

package proc

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Target is a recorded process: the one started at Start (clock ticks after
// boot) as PID, the leader of process group PID when it has one. Every
// signal to it or its group goes through Signal, which decides from /proc
// at the moment it signals whom the signal may reach; a verification made
// earlier (before a new instance took --ready-timeout to get ready) says
// nothing about a PID now.
//
// Kernel facts this relies on: a pidfd names one process, never a later
// one with the same PID, and pidfd_send_signal to it fails with ESRCH
// once it is gone. A PID number stays allocated while any process still
// has it as its process group (the kernel frees a struct pid only when no
// task uses it as PID, process group or session), so while the group has
// a member its number cannot be reused; a process at PID that is not the
// recorded one means the recorded group is gone.
type Target struct {
	PID   int
	Start uint64

	mu   sync.Mutex
	fd   int  // pidfd of the leader; -1 if none (pidfd_open unsupported, or it failed)
	gone bool // the leader is known to have exited
	// seen: the last time (clock ticks after boot, as start times) the
	// leader was verified alive as the recorded process; 0: never. Once
	// the leader is gone, only members that started by then are its
	// group's (see planGroupSignal).
	seen uint64
}

// NowTicks is the time now in clock ticks after boot, the unit of
// /proc/PID/stat's start times (0 if the clock cannot be read).
func NowTicks() uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return uint64(ts.Nano()) / uint64(time.Second/clkTck)
}

// Seen returns when the leader was last verified alive (clock ticks after
// boot; 0: never): what a state file records, so that a later process
// adopting the group knows which members are its own.
func (t *Target) Seen() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.seen
}

// NoteSeen records that the leader was verified alive at ticks (a record
// read from a state file, or a verification made elsewhere).
func (t *Target) NoteSeen(ticks uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.seen = max(t.seen, ticks)
}

// NewTarget records pid, started at start. It opens a pidfd on it and
// keeps it only if /proc, read after the open, shows that start time: the
// process the pidfd names is then the recorded one. For a child not yet
// reaped there is no race; for another process, call it where it was just
// verified.
func NewTarget(pid int, start uint64) *Target {
	t := &Target{PID: pid, Start: start, fd: -1}
	if pid <= 1 || start == 0 {
		t.gone = true
		return t
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		if !errors.Is(err, unix.ENOSYS) || !Alive(pid, start) {
			t.gone = true // no such process, or another one
		} else {
			t.seen = NowTicks() // no pidfd: verified in /proc
		}
		return t
	}
	if st, err := ReadStat(pid); err != nil || st.StartTime != start {
		unix.Close(fd)
		t.gone = true
		return t
	}
	t.fd, t.seen = fd, NowTicks()
	return t
}

// Close releases the pidfd and marks the leader as exited: call it once the
// leader's exit was seen (reaped, or gone from /proc). Its group can still
// be signalled (members only, see Signal).
func (t *Target) Close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.gone && t.seen != 0 {
		// Verified alive, and so until the exit the caller has just
		// seen: a member forked before that is its group's.
		t.seen = max(t.seen, NowTicks())
	}
	if t.fd >= 0 {
		unix.Close(t.fd)
		t.fd = -1
	}
	t.gone = true
}

// signalLeader sends sig to the recorded process alone: through its pidfd,
// else (no pidfd) after checking its start time in /proc.
func (t *Target) signalLeader(sig unix.Signal) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.gone {
		return fmt.Errorf("signal pid %d: %w", t.PID, ErrNoProcess)
	}
	if t.fd >= 0 {
		if err := unix.PidfdSendSignal(t.fd, sig, nil, 0); err != nil {
			return fmt.Errorf("signal pid %d with %v: %w", t.PID, sig, err)
		}
		return nil
	}
	if !Alive(t.PID, t.Start) {
		return fmt.Errorf("signal pid %d: %w", t.PID, ErrNoProcess)
	}
	if err := unix.Kill(t.PID, sig); err != nil {
		return fmt.Errorf("signal pid %d with %v: %w", t.PID, sig, err)
	}
	return nil
}

// Signal sends sig to the recorded process alone (group false, or when it
// does not lead a group other than the caller's), or to its process group,
// and returns the PIDs it was sent to. For the group it decides in /proc
// now (see planGroupSignal): the leader is still the recorded process, so
// the group is ours and gets one kill(2) (a process forked meanwhile gets
// it too); or the leader is gone and only members that started at or
// after the recorded start time get it, one at a time through a pidfd each,
// after reading again that they are still in the group; or the leader's
// PID is now another process, and nobody gets it.
func (t *Target) Signal(sig unix.Signal, group bool) []int {
	if !group || t.PID <= 1 || t.PID == unix.Getpgrp() {
		if t.signalLeader(sig) != nil {
			return nil
		}
		return []int{t.PID}
	}
	whole, pids := t.plan()
	if whole {
		if err := KillGroup(t.PID, sig); err != nil {
			return nil
		}
		return pids
	}
	var sent []int
	for _, pid := range pids {
		if signalMember(pid, t.PID, t.Start, t.Seen(), sig) == nil {
			sent = append(sent, pid)
		}
	}
	return sent
}

// SignalListed is Signal(sig, true) for a caller that listed the group's
// members a moment ago (listed, as GroupsListening does): if the process
// at PID is still the recorded leader of its group, the group gets one
// kill(2) at once, without reading all of /proc first, and listed is
// returned as the PIDs it reached (a process forked since gets the signal
// too, as with Signal, and is not named). Otherwise, or with listed nil,
// it is Signal(sig, true). Who gets the signal is decided as Signal
// decides it; only the list comes from earlier.
func (t *Target) SignalListed(sig unix.Signal, listed []int) []int {
	if listed == nil || t.PID <= 1 || t.PID == unix.Getpgrp() || t.Start == 0 {
		return t.Signal(sig, true)
	}
	leader, err := ReadStat(t.PID)
	if err != nil || leader.StartTime != t.Start || leader.PGID != t.PID || leader.State == 'Z' || leader.State == 'X' {
		return t.Signal(sig, true)
	}
	t.NoteSeen(NowTicks())
	if err := KillGroup(t.PID, sig); err != nil {
		return nil
	}
	return listed
}

// Members lists the live processes of the recorded group that a group
// Signal would reach now: empty once the group is gone or reused.
func (t *Target) Members() []int {
	if t.PID <= 1 {
		return nil
	}
	if err := unix.Kill(-t.PID, 0); errors.Is(err, unix.ESRCH) {
		return nil
	}
	_, pids := t.plan()
	return pids
}

// signalMember sends sig to pid through a pidfd opened first, after
// reading in /proc that it is still a live member of pgid started at or
// after start: the pidfd names the process that was read.
func signalMember(pid, pgid int, start, seen uint64, sig unix.Signal) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil && !errors.Is(err, unix.ENOSYS) {
		return fmt.Errorf("pidfd of pid %d: %w", pid, err)
	}
	st, serr := ReadStat(pid)
	if serr == nil && (st.PGID != pgid || st.StartTime < start || st.StartTime > seen || st.State == 'Z' || st.State == 'X') {
		serr = fmt.Errorf("%w: pid %d left process group %d or is another process", ErrNotRecorded, pid, pgid)
	}
	if serr != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		return serr
	}
	if errors.Is(err, unix.ENOSYS) { // no pidfd (Linux < 5.3): the check above is all there is
		return unix.Kill(pid, sig)
	}
	defer unix.Close(fd)
	return unix.PidfdSendSignal(fd, sig, nil, 0)
}

// procReader is what planGroupSignal reads of /proc; tests give it a fake.
type procReader interface {
	PIDs() ([]int, error)
	Stat(pid int) (Stat, error)
}

type procFS struct{}

func (procFS) PIDs() ([]int, error)       { return pids() }
func (procFS) Stat(pid int) (Stat, error) { return ReadStat(pid) }

// planGroupSignal decides who a signal to the group led by the process
// plan is planGroupSignal for t now; a leader verified alive is noted seen.
func (t *Target) plan() (whole bool, pids []int) {
	now := NowTicks()
	whole, pids = planGroupSignal(procFS{}, t.PID, t.Start, t.Seen())
	if whole {
		t.NoteSeen(now)
	}
	return whole, pids
}

// recorded as pgid, started at start, may reach:
//
//   - the process at PID pgid is the recorded one (start time and group,
//     as Verify checks): whole is true, the group is ours, and pids lists
//     its members;
//   - a process at PID pgid that is not the recorded one (another start
//     time; a zombie too): the PID was reused, so the recorded group is
//     gone (the kernel keeps a group's number while it has a member):
//     nobody;
//   - no process at PID pgid: the leader is gone. The members still in the
//     group that started at or after start, and at or before seen, when
//     the leader was last verified alive: a process of the recorded
//     leader's group was forked after it started and before it died. One
//     that started later is not known to be ours: once every process of
//     the recorded group has gone, the number can be reused by another
//     process that makes a group of its own and exits, leaving members
//     (a daemon's setsid and fork), and those started after our leader.
//     A seen of 0 (never verified) reaches nobody of a leaderless group.
//
// A start time of 0 (not recorded) reaches nobody.
func planGroupSignal(r procReader, pgid int, start, seen uint64) (whole bool, pids []int) {
	if pgid <= 1 || start == 0 {
		return false, nil
	}
	all, err := r.PIDs()
	if err != nil {
		return false, nil
	}
	leader, err := r.Stat(pgid)
	switch {
	case err != nil:
		// gone: members only
	case leader.StartTime != start:
		return false, nil
	case leader.PGID == pgid && leader.State != 'Z' && leader.State != 'X':
		whole = true
	}
	for _, pid := range all {
		st, err := r.Stat(pid)
		if err != nil || st.PGID != pgid || st.State == 'Z' || st.State == 'X' {
			continue
		}
		if whole || st.StartTime >= start && st.StartTime <= seen {
			pids = append(pids, pid)
		}
	}
	return whole, pids
}
