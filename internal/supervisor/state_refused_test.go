//go:build linux

package supervisor

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/changeover-dev/changeover/internal/proc"
)

// A state file that names a generation as refused (held when its
// supervisor died) is adopted for a kill: verified as every adopted
// generation is (start time, process group), and marked refused, neither
// draining nor serving.
func TestAdoptRefusedFromStateFile(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start sleep: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	pid := cmd.Process.Pid
	ticks, err := proc.StartTime(pid)
	if err != nil {
		t.Fatalf("start time of %d: %v", pid, err)
	}
	path := filepath.Join(t.TempDir(), "c.state")
	st := StateFile{Name: "t", LastGeneration: 2, Generations: []StateGen{
		{Generation: 2, PID: pid, PGID: pid, StartTicks: ticks, State: StateRefused},
	}}
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	s := New(Config{Name: "t", StateFile: path})
	got := s.adoptFromState()
	if len(got.gens) != 1 {
		t.Fatalf("adopted %d generations, want 1: %+v", len(got.gens), got.gens)
	}
	a := got.gens[0]
	if !a.refused || a.draining || a.leftover || a.in.PID != pid {
		t.Fatalf("adopted %+v (pid %d), want generation 2 refused, not draining, not a leftover", a, a.in.PID)
	}
}
