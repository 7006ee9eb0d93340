//go:build linux

package supervisor

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/changeover-dev/changeover/internal/private"
	"github.com/changeover-dev/changeover/internal/proc"
)

// The state file (the control socket's path with .state for .sock, see
// StatePath) is rewritten on every change. When run starts and finds one
// whose serving instance is still alive with the same start time and
// process group (its supervisor was SIGKILLed and the instance kept
// serving), it adopts that instance: generation N+1 starts normally and the
// adopted one is retired through a normal handover (SIGTERM, exit detected
// by polling /proc since it is not our child, SIGKILL of its process group
// after the drain deadline). Generations that were draining are adopted as
// draining: they finish, and are SIGKILLed only at the absolute deadline
// recorded for them. A generation recorded as refused (a shadowing
// generation whose address was held: machine_steering.go) is killed.
//
// The file is trusted only as far as loadState and proc.Verify allow: it
// and its directory must belong to our user and be writable by no one else,
// and a process it names is touched only if /proc shows the recorded start
// time and process group.

// StatePath is the state file of the supervisor whose control socket is
// controlSocket: the same path with .state for .sock (or .state added). Two
// supervisors with different control sockets never share one.
func StatePath(controlSocket string) string {
	return strings.TrimSuffix(controlSocket, ".sock") + ".state"
}

// StateFile is the JSON written to Config.StateFile. Readers ignore fields
// they do not know, so fields can be added.
type StateFile struct {
	Name          string     `json:"name"`
	SupervisorPID int        `json:"supervisor_pid"`
	SupervisorST  uint64     `json:"supervisor_start_ticks"`
	Generations   []StateGen `json:"generations"`
	// LastGeneration is the last generation number given, also to one
	// that failed or is gone: a supervisor started after this one was
	// killed goes on from it, so that numbers (in logs, status, results)
	// are never given twice.
	LastGeneration int `json:"last_generation,omitempty"`
}

// StateGen is one generation in the state file.
type StateGen struct {
	Generation int       `json:"generation"`
	PID        int       `json:"pid"`
	PGID       int       `json:"pgid"`
	StartTicks uint64    `json:"start_ticks"`
	Started    time.Time `json:"started"`
	State      string    `json:"state"`
	HealthAddr string    `json:"health_addr"`
	// DrainDeadline is when a draining generation gets SIGKILL (zero
	// unless State is draining).
	DrainDeadline time.Time `json:"drain_deadline,omitzero"`
	// StopPending: draining, its stop signal not sent yet (its cutover
	// was not quiet yet): an adopting supervisor sends it.
	StopPending bool `json:"stop_pending,omitempty"`
	// KeeperPID and KeeperStartTicks name the drain keeper (see keeper.go)
	// that a swap left watching this draining generation (swap's state
	// file only; zero: none). A later swap leaves the generation to it
	// while /proc shows that PID with that start time.
	KeeperPID        int    `json:"keeper_pid,omitempty"`
	KeeperStartTicks uint64 `json:"keeper_start_ticks,omitempty"`
	// LeaderSeenTicks is when the leader was last verified alive (clock
	// ticks after boot, as StartTicks). Once it is gone, only the members
	// of its group that started by then are signalled: the group's number
	// may since have been taken by another group (see proc.Target). Zero
	// (a state file of an earlier release): none of a leaderless group.
	LeaderSeenTicks uint64 `json:"leader_seen_ticks,omitempty"`
}

// keeperAlive reports whether the drain keeper recorded for g still runs.
func (g StateGen) keeperAlive() bool {
	return g.KeeperPID > 1 && g.KeeperStartTicks != 0 && proc.Alive(g.KeeperPID, g.KeeperStartTicks)
}

// verify checks, in /proc, that g's process is the one recorded: its start
// time and process group, and that it leads that group (the supervisor
// starts every generation as a group leader). An error means never signal.
func (g StateGen) verify() error {
	if g.PGID != g.PID {
		return fmt.Errorf("%w: pid %d recorded in process group %d, not one of its own", proc.ErrNotRecorded, g.PID, g.PGID)
	}
	return proc.Verify(g.PID, g.PGID, g.StartTicks)
}

// loadState reads the state file at path, refusing one that is not our
// user's alone (see private.OpenIn). Its directory is the user's and
// writable by no one else, or sticky (as /tmp), the rule for the control
// socket and the swap pidfile beside it. A missing file matches
// os.ErrNotExist.
func loadState(path string) (*StateFile, error) {
	b, err := private.ReadFileIn(path, private.DirOptions{Sticky: true})
	if err != nil {
		return nil, fmt.Errorf("state file: %w", err)
	}
	var st StateFile
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("state file %s: %w", path, err)
	}
	return &st, nil
}

// saveState writes st. Run calls it from its one goroutine, so the
// snapshots reach the file in the order the machine made them.
func (s *Supervisor) saveState(st StateFile) {
	if s.cfg.StateFile == "" {
		return
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err == nil {
		err = writeFileAtomic(s.cfg.StateFile, append(b, '\n'), 0o600)
	}
	if err != nil {
		s.log.Warn("cannot write state file", "path", s.cfg.StateFile, KeyError, err)
	}
}

// writeFileAtomic writes data to a temporary file beside path and renames it.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// adoptFromState returns the generations of a previous supervisor that
// are still alive and verified as ours: the serving one, and the draining
// ones with their deadlines. Others (a half-done reload) are returned as
// leftovers, for the machine to kill: nobody would ever promote them.
func (s *Supervisor) adoptFromState() adoption {
	if s.cfg.StateFile == "" {
		return adoption{}
	}
	st, err := loadState(s.cfg.StateFile)
	if errors.Is(err, os.ErrNotExist) {
		return adoption{}
	}
	if err != nil {
		s.log.Warn("not trusting the state file: adopting nothing, signalling nothing", "path", s.cfg.StateFile, KeyError, err)
		return adoption{}
	}
	if st.SupervisorPID != os.Getpid() && proc.Alive(st.SupervisorPID, st.SupervisorST) {
		s.log.Warn("state file belongs to a live supervisor; not adopting", "path", s.cfg.StateFile, KeyPID, st.SupervisorPID)
		return adoption{}
	}
	var best *StateGen
	var ours []StateGen
	var leaderless []*Instance // by index into ours; nil: its leader runs
	for _, g := range st.Generations {
		if err := g.verify(); err != nil {
			if !errors.Is(err, proc.ErrNoProcess) {
				s.log.Warn("state file names a process that is not the recorded one; never signalling it",
					KeyGeneration, g.Generation, KeyPID, g.PID, KeyError, err)
				continue
			}
			// Its leader has exited; members of its group that are
			// ours (see proc.Target) may still run: a wrapper's server.
			in := adoptRecorded(g.Generation, g.PID, g.PGID, g.StartTicks, g.LeaderSeenTicks, g.HealthAddr)
			if in == nil {
				continue
			}
			s.log.Warn("state file names a generation whose leader has exited while its process group still runs: adopting the group",
				KeyGeneration, g.Generation, KeyPID, g.PID, "pids", in.target.Members())
			if g.State == StateServing {
				g.State = StateStarting // no leader to serve as: a leftover, killed
			}
			ours, leaderless = append(ours, g), append(leaderless, in)
			continue
		}
		ours, leaderless = append(ours, g), append(leaderless, nil)
	}
	adoptOne := func(i int) *Instance {
		if in := leaderless[i]; in != nil {
			return in
		}
		g := ours[i]
		return adopt(g.Generation, g.PID, g.PGID, g.StartTicks, g.LeaderSeenTicks, g.HealthAddr)
	}
	for i, g := range ours {
		if g.State == StateServing && (best == nil || g.Generation > best.Generation) {
			best = &ours[i]
		}
	}
	out := adoption{lastGen: max(st.LastGeneration, 0)}
	for i, g := range ours {
		switch {
		case best != nil && g.PID == best.PID:
			out.gens = append(out.gens, adoptedInstance{in: adoptOne(i)})
		case g.State == StateRefused:
			// Held by the previous supervisor, whose placeholders died
			// with it: the machine kills it (machine_steering.go).
			out.gens = append(out.gens, adoptedInstance{in: adoptOne(i), refused: true})
		case g.State == StateDraining:
			in := adoptOne(i)
			in.setState(StateDraining)
			in.setDrainDeadline(g.DrainDeadline)
			out.gens = append(out.gens, adoptedInstance{in: in, draining: true, deadline: g.DrainDeadline, stopPending: g.StopPending})
		default:
			out.gens = append(out.gens, adoptedInstance{in: adoptOne(i), leftover: true})
		}
	}
	return out
}

// RemoveStaleNotifySockets removes notify sockets in dir left by
// supervisors that are gone (they are named notify-SUPERVISORPID-GEN.sock).
func RemoveStaleNotifySockets(dir string) {
	matches, _ := filepath.Glob(filepath.Join(dir, "notify-*-*.sock"))
	for _, m := range matches {
		var pid, gen int
		if _, err := fmt.Sscanf(filepath.Base(m), "notify-%d-%d.sock", &pid, &gen); err != nil {
			continue
		}
		if pid != os.Getpid() && !proc.Alive(pid, 0) {
			_ = os.Remove(m)
		}
	}
}
