//go:build linux

package supervisor

import (
	"bufio"
	"log/slog"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/changeover-dev/changeover/internal/proc"
)

// orphanMember starts `sh -c 'sleep 60 & echo $!'` in a session of its
// own and reaps the shell: the group's leader is gone and its number is
// free, and the sleep is left in the group. It returns the group and the
// sleep's PID and start time; the sleep is killed at cleanup.
func orphanMember(t *testing.T) (pgid, leaderTicks uint64, member int, memberTicks uint64) {
	t.Helper()
	cmd := exec.Command("sh", "-c", "sleep 60 & echo $!; read _")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	leaderTicks, _ = proc.StartTime(cmd.Process.Pid)
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	member, err = strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Kill(member, unix.SIGKILL) })
	memberTicks, _ = proc.StartTime(member)
	in.Close()
	_ = cmd.Wait()
	return uint64(cmd.Process.Pid), leaderTicks, member, memberTicks
}

// TestStopNeverSignalsReusedGroup: every stop and kill path (the stop
// signal, the SIGKILL at the deadline, the kill of a failed instance)
// decides whom to signal from /proc at the moment it signals, not from a
// verification made earlier. (Issue 11 review: swap verified the old PID,
// the new instance took up to --ready-timeout to get ready, and meanwhile
// the old PID could be reused; kill(-pgid) then hit the new owner's group.)
func TestStopNeverSignalsReusedGroup(t *testing.T) {
	discard := slog.New(slog.DiscardHandler)
	stopAll := func(in *Instance) {
		sendStop(in, &Launch{}, discard)
		in.signal(unix.SIGKILL)
		killGroupAndWait(in)
	}
	t.Run("leader PID reused", func(t *testing.T) {
		// The recorded leader started earlier than the process now at
		// its PID, which leads a group of that number: a reused PID.
		pid, ticks := startVictim(t)
		in := adopt(1, pid, pid, ticks-1, proc.NowTicks(), "")
		stopAll(in)
		time.Sleep(100 * time.Millisecond)
		if !proc.Alive(pid, ticks) {
			t.Errorf("pid %d, whose start time is not the recorded one, was signalled", pid)
		}
	})
	t.Run("leader gone, member older than it", func(t *testing.T) {
		// A member that started before the recorded leader cannot be
		// one of its processes: the group number was reused.
		pgid, _, member, memberTicks := orphanMember(t)
		in := adopt(1, int(pgid), int(pgid), memberTicks+1, proc.NowTicks(), "")
		stopAll(in)
		time.Sleep(100 * time.Millisecond)
		if !proc.Alive(member, memberTicks) {
			t.Errorf("pid %d, started before the recorded leader of group %d, was signalled", member, pgid)
		}
	})
	t.Run("leader gone, member of ours", func(t *testing.T) {
		pgid, leaderTicks, member, memberTicks := orphanMember(t)
		// The leader was last seen alive after the member started (the
		// state file records when): the member is ours.
		in := adopt(1, int(pgid), int(pgid), leaderTicks, memberTicks, "")
		killGroupAndWait(in)
		if proc.Alive(member, memberTicks) {
			t.Errorf("pid %d, left in group %d by its recorded leader, survived its kill", member, pgid)
		}
	})
	t.Run("leader gone, member started after the leader was last seen alive", func(t *testing.T) {
		// Review 2: once every process of the recorded group has gone,
		// its number can be taken by a daemon (setsid, fork, its leader
		// exits), whose members all started after the recorded leader.
		// Only members started by the time the leader was last seen
		// alive are known to be its.
		pgid, leaderTicks, member, memberTicks := orphanMember(t)
		in := adopt(1, int(pgid), int(pgid), leaderTicks, memberTicks-1, "")
		if reach := in.target.Members(); slices.Contains(reach, member) {
			t.Fatalf("a group signal would reach %v, pid %d among them", reach, member)
		}
		stopAll(in)
		time.Sleep(100 * time.Millisecond)
		if !proc.Alive(member, memberTicks) {
			t.Errorf("pid %d, started after the recorded leader of group %d was last seen alive, was signalled", member, pgid)
		}
	})
}

// TestAdoptsLeaderlessRefusedGroup (review 2): a refused generation held
// when its supervisor died, whose leader had exited (a wrapper: sh -c
// 'server & wait', its sh killed at the stop signal) while its server
// still ran, was not adopted (the state reader wanted a live leader) and
// served the shadowing address for ever. Its members that started by the
// time its leader was last seen alive are adopted, to be killed.
func TestAdoptsLeaderlessRefusedGroup(t *testing.T) {
	pgid, leaderTicks, member, memberTicks := orphanMember(t)
	path := filepath.Join(t.TempDir(), "run.state")
	s := New(Config{Name: "t", StateFile: path})
	s.saveState(StateFile{Name: "t", Generations: []StateGen{{
		Generation: 2, PID: int(pgid), PGID: int(pgid), StartTicks: leaderTicks, State: StateRefused,
		LeaderSeenTicks: memberTicks,
	}}})
	got := s.adoptFromState()
	if len(got.gens) != 1 || !got.gens[0].refused {
		t.Fatalf("adopted %+v, want generation 2 as refused (its member pid %d still runs)", got.gens, member)
	}
	killGroupAndWait(got.gens[0].in)
	if proc.Alive(member, memberTicks) {
		t.Errorf("pid %d, the refused generation's server, survived the kill of its adopted group", member)
	}
}
