//go:build linux

package supervisor

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/changeover-dev/changeover/internal/proc"
)

// The state file (NAME.state beside the control socket) is rewritten on
// every change. When run starts and finds one whose serving instance is
// still alive with the same start time (its supervisor was SIGKILLed and the
// instance kept serving), it adopts that instance: generation N+1 starts
// normally and the adopted one is retired through a normal handover
// (SIGTERM, exit detected by polling /proc since it is not our child,
// SIGKILL of its process group after the drain deadline).

// StateFile is the JSON written to Config.StateFile.
type StateFile struct {
	Name          string     `json:"name"`
	SupervisorPID int        `json:"supervisor_pid"`
	SupervisorST  uint64     `json:"supervisor_start_ticks"`
	Generations   []StateGen `json:"generations"`
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
}

func (s *Supervisor) saveState() {
	if s.cfg.StateFile == "" {
		return
	}
	s.mu.Lock()
	if s.stopping && s.serving == nil {
		s.mu.Unlock()
		return
	}
	st := StateFile{Name: s.cfg.Name, SupervisorPID: os.Getpid()}
	st.SupervisorST, _ = proc.StartTime(os.Getpid())
	for _, in := range s.insts {
		state := in.State()
		if state == StateExited || state == StateFailed {
			continue
		}
		st.Generations = append(st.Generations, StateGen{
			Generation: in.Gen, PID: in.PID, PGID: in.PGID, StartTicks: in.StartTicks,
			Started: in.Started, State: state, HealthAddr: in.HealthAddr,
		})
	}
	b, err := json.MarshalIndent(st, "", "  ")
	s.mu.Unlock()
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

// adoptFromState adopts the serving instance of a previous supervisor, if
// the state file names one that is still alive.
func (s *Supervisor) adoptFromState() *Instance {
	if s.cfg.StateFile == "" {
		return nil
	}
	b, err := os.ReadFile(s.cfg.StateFile)
	if err != nil {
		return nil
	}
	var st StateFile
	if err := json.Unmarshal(b, &st); err != nil {
		s.log.Warn("ignoring unreadable state file", "path", s.cfg.StateFile, KeyError, err)
		return nil
	}
	if st.SupervisorPID != os.Getpid() && proc.Alive(st.SupervisorPID, st.SupervisorST) {
		s.log.Warn("state file belongs to a live supervisor; not adopting", "path", s.cfg.StateFile, KeyPID, st.SupervisorPID)
		return nil
	}
	var best *StateGen
	for i, g := range st.Generations {
		if g.State == StateServing && proc.Alive(g.PID, g.StartTicks) && (best == nil || g.Generation > best.Generation) {
			best = &st.Generations[i]
		}
	}
	// Generations of the dead supervisor that are not serving (a half-done
	// reload) are killed: nobody would ever promote them.
	for _, g := range st.Generations {
		if (best == nil || g.PID != best.PID) && proc.Alive(g.PID, g.StartTicks) && g.PGID == g.PID {
			s.log.Warn("killing leftover generation of a previous supervisor", KeyGeneration, g.Generation, KeyPID, g.PID)
			_ = proc.KillGroup(g.PGID, 9)
		}
	}
	if best == nil {
		return nil
	}
	in := adopt(best.Generation, best.PID, best.PGID, best.StartTicks, best.HealthAddr)
	s.mu.Lock()
	s.gen = best.Generation
	s.serving = in
	s.insts = append(s.insts, in)
	s.mu.Unlock()
	s.log.Info("adopted serving instance of a previous supervisor", KeyGeneration, in.Gen, KeyPID, in.PID)
	return in
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
