//go:build linux

package proc

import (
	"errors"
	"os/exec"
	"slices"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// fakeProc is a /proc of a few processes.
type fakeProc map[int]Stat

func (f fakeProc) PIDs() ([]int, error) {
	var out []int
	for pid := range f {
		out = append(out, pid)
	}
	slices.Sort(out)
	return out, nil
}

func (f fakeProc) Stat(pid int) (Stat, error) {
	if st, ok := f[pid]; ok {
		return st, nil
	}
	return Stat{}, ErrNoProcess
}

// TestPlanGroupSignal: who a group signal may reach, decided from /proc at
// the moment of the signal (issue 11 review: PID reuse between a verify
// and the kill(-pgid) that followed it).
func TestPlanGroupSignal(t *testing.T) {
	const pgid, start = 500, 1000
	for _, tc := range []struct {
		name  string
		procs fakeProc
		start uint64
		seen  uint64 // when the leader was last verified alive (0: never)
		whole bool
		pids  []int
	}{
		{"leader verified: the whole group", fakeProc{
			500: {PID: 500, State: 'S', PGID: 500, StartTime: 1000},
			501: {PID: 501, State: 'S', PGID: 500, StartTime: 1001},
			502: {PID: 502, State: 'Z', PGID: 500, StartTime: 1002},
			600: {PID: 600, State: 'S', PGID: 600, StartTime: 1003},
		}, start, 2000, true, []int{500, 501}},
		{"leader PID reused by another process: nobody", fakeProc{
			500: {PID: 500, State: 'S', PGID: 500, StartTime: 9000},
			501: {PID: 501, State: 'S', PGID: 500, StartTime: 9001},
		}, start, 2000, false, nil},
		{"leader PID reused by a zombie: nobody", fakeProc{
			500: {PID: 500, State: 'Z', PGID: 500, StartTime: 9000},
			501: {PID: 501, State: 'S', PGID: 500, StartTime: 9001},
		}, start, 2000, false, nil},
		{"leader gone: members started at or after it", fakeProc{
			499: {PID: 499, State: 'S', PGID: 500, StartTime: 999},
			501: {PID: 501, State: 'S', PGID: 500, StartTime: 1000},
			502: {PID: 502, State: 'S', PGID: 500, StartTime: 1500},
			503: {PID: 503, State: 'S', PGID: 7, StartTime: 1500},
		}, start, 2000, false, []int{501, 502}},
		{"leader a zombie of ours: members started after it", fakeProc{
			500: {PID: 500, State: 'Z', PGID: 500, StartTime: 1000},
			501: {PID: 501, State: 'S', PGID: 500, StartTime: 1200},
		}, start, 2000, false, []int{501}},
		{"leader gone, a member started after the leader was last seen alive: the number may be another group's (review 2: a daemon whose leader exited took it), nobody of it", fakeProc{
			501: {PID: 501, State: 'S', PGID: 500, StartTime: 1500},
			502: {PID: 502, State: 'S', PGID: 500, StartTime: 2500},
		}, start, 2000, false, []int{501}},
		{"leader gone, never seen alive since its start was recorded: nobody", fakeProc{
			501: {PID: 501, State: 'S', PGID: 500, StartTime: 1500},
		}, start, 0, false, nil},
		{"no start time recorded: nobody", fakeProc{
			500: {PID: 500, State: 'S', PGID: 500, StartTime: 1000},
		}, 0, 2000, false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			whole, pids := planGroupSignal(tc.procs, pgid, tc.start, tc.seen)
			if whole != tc.whole || !slices.Equal(pids, tc.pids) {
				t.Errorf("planGroupSignal = %v %v, want %v %v", whole, pids, tc.whole, tc.pids)
			}
		})
	}
}

// TestTargetLeaderGone: once Close marks the leader gone, it alone is never
// signalled again.
func TestTargetLeaderGone(t *testing.T) {
	tg := NewTarget(1<<22+7, 5) // no such PID
	if pids := tg.Signal(0, false); pids != nil {
		t.Errorf("Signal to a missing pid reached %v", pids)
	}
	tg.Close()
	if err := tg.signalLeader(0); !errors.Is(err, ErrNoProcess) {
		t.Errorf("signalLeader after Close: %v, want ErrNoProcess", err)
	}
}

// TestTargetSignalListed: the group of a recorded leader gets the signal,
// and the listed members are named; a leader that is not the recorded
// process (another start time) gets nothing, as with Signal.
func TestTargetSignalListed(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	cmd.SysProcAttr = &unix.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() { _ = unix.Kill(-cmd.Process.Pid, unix.SIGKILL); <-done })
	pid := cmd.Process.Pid
	ticks, err := StartTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	if got := NewTarget(pid, ticks+1).SignalListed(unix.SIGTERM, []int{pid}); got != nil {
		t.Errorf("a leader with another start time was signalled: %v", got)
	}
	select {
	case <-done:
		t.Fatal("the process got the signal meant for another start time")
	default:
	}
	if got := NewTarget(pid, ticks).SignalListed(unix.SIGTERM, []int{pid}); !slices.Equal(got, []int{pid}) {
		t.Errorf("SignalListed = %v, want [%d]", got, pid)
	}
	<-done
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGTERM {
		t.Errorf("the leader ended %v, want killed by SIGTERM", cmd.ProcessState)
	}
}
