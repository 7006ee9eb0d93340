//go:build linux

package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/changeover-dev/changeover/internal/proc"
)

// bystander is a process the supervisor did not start, in a process group
// of its own. Its process is waited for by the test: gone reports whether
// it was signalled.
type bystander struct {
	pid   int
	ticks uint64
	done  chan struct{}
}

func startBystander(t *testing.T) *bystander {
	t.Helper()
	cmd := exec.Command("sleep", "60")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	b := &bystander{pid: cmd.Process.Pid, done: make(chan struct{})}
	b.ticks, _ = proc.StartTime(b.pid)
	go func() { _ = cmd.Wait(); close(b.done) }()
	t.Cleanup(func() {
		_ = syscall.Kill(-b.pid, syscall.SIGKILL)
		<-b.done
	})
	return b
}

func (b *bystander) gone() bool {
	select {
	case <-b.done:
		return true
	default:
		return false
	}
}

// plantedGen is one generation of a state file written by someone else.
type plantedGen struct {
	Generation int    `json:"generation"`
	PID        int    `json:"pid"`
	PGID       int    `json:"pgid"`
	StartTicks uint64 `json:"start_ticks"`
	State      string `json:"state"`
	HealthAddr string `json:"health_addr"`
}

// plantState writes a state file for the supervisor of e where this
// version and the versions before it look for one (NAME.state beside the
// control socket, NAME the command's base name; and the control socket's
// path with .state for .sock).
func plantState(t *testing.T, e *env, mode os.FileMode, uid int, gens ...plantedGen) {
	t.Helper()
	b, err := json.Marshal(map[string]any{"name": "planted", "supervisor_pid": 0, "generations": gens})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{
		filepath.Join(filepath.Dir(e.sock), filepath.Base(e.exe)+".state"),
		strings.TrimSuffix(e.sock, ".sock") + ".state",
	} {
		if err := os.WriteFile(p, b, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, uid, uid); err != nil {
			t.Fatal(err)
		}
	}
}

// TestStateFileTrust: a state file is trusted only if it and its directory
// belong to the supervisor's user and no one else can write them, and a
// process it names is signalled only if its start time and process group,
// read from /proc, match what the file records. A process it names that
// fails any check is never signalled, whatever state the file gives it.
func TestStateFileTrust(t *testing.T) {
	if os.Getuid() != 0 {
		t.Fatal("needs root to plant files of another uid (CI runs as root)")
	}
	tests := []struct {
		name  string
		plant func(t *testing.T, e *env, a, b *bystander)
		code  int // exit of run when it is stopped (or refuses to start)
		want  string
	}{
		{"file of another uid", func(t *testing.T, e *env, a, b *bystander) {
			plantState(t, e, 0o600, nobodyUID, plantedGen{Generation: 3, PID: a.pid, PGID: a.pid, StartTicks: a.ticks, State: "starting"})
		}, 0, "not owned by"},
		{"file writable by others", func(t *testing.T, e *env, a, b *bystander) {
			plantState(t, e, 0o666, 0, plantedGen{Generation: 3, PID: a.pid, PGID: a.pid, StartTicks: a.ticks, State: "starting"})
		}, 0, "writable by others"},
		{"start time 0", func(t *testing.T, e *env, a, b *bystander) {
			plantState(t, e, 0o600, 0, plantedGen{Generation: 3, PID: a.pid, PGID: a.pid, State: "starting"})
		}, 0, "start time"},
		{"process group not the recorded one", func(t *testing.T, e *env, a, b *bystander) {
			// a with its true start time, but b's process group.
			plantState(t, e, 0o600, 0, plantedGen{Generation: 3, PID: a.pid, PGID: b.pid, StartTicks: a.ticks, State: "serving", HealthAddr: "127.0.0.1:1"})
		}, 0, "process group"},
		{"directory of another uid", func(t *testing.T, e *env, a, b *bystander) {
			plantState(t, e, 0o600, 0, plantedGen{Generation: 3, PID: a.pid, PGID: a.pid, StartTicks: a.ticks, State: "starting"})
			if err := os.Chown(filepath.Dir(e.sock), nobodyUID, nobodyUID); err != nil {
				t.Fatal(err)
			}
		}, exitError, "not owned by"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.sock = filepath.Join(e.dir, "rt", "app.sock")
			if err := os.Mkdir(filepath.Dir(e.sock), 0o755); err != nil {
				t.Fatal(err)
			}
			a, b := startBystander(t), startBystander(t)
			tc.plant(t, e, a, b)
			p := e.startInProcess("--drain-timeout", "2s")
			if gen := st0(e, p); !p.exited() {
				st := e.waitServing(p, gen)
				burst(t, e.addr, 5, "1", servingPID(t, st))
				p.cancel()
			}
			err := p.wait(t, 20*time.Second)
			if code := exitCode(err); code != tc.code {
				t.Errorf("run: exit %d (%v), want %d", code, err, tc.code)
			}
			logs := p.stderr.String()
			if err != nil {
				logs += err.Error()
			}
			if !strings.Contains(logs, tc.want) {
				t.Errorf("no word about the untrusted state (want %q):\n%s", tc.want, logs)
			}
			time.Sleep(100 * time.Millisecond) // a signal sent at the end has landed
			for name, x := range map[string]*bystander{"a": a, "b": b} {
				if x.gone() {
					t.Errorf("bystander %s (pid %d), named by a state file it should not trust, was killed", name, x.pid)
				}
			}
		})
	}
}

// st0 returns the generation that serves first: 1, unless the supervisor
// adopted a planted generation (which it must not).
func st0(e *env, p *inProcess) int {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) && !p.exited() {
		if st, err := e.status(); err == nil && st.Serving > 0 && !st.Reloading {
			return st.Serving
		}
		time.Sleep(20 * time.Millisecond)
	}
	return 1
}

// TestStateFilePerControlSocket: two supervisors of the same command with
// different control sockets in one directory keep separate state files: a
// SIGKILLed one, started again, adopts its own instance and not the
// other's, which is left alone.
func TestStateFilePerControlSocket(t *testing.T) {
	ea := newEnv(t)
	eb := newEnv(t)
	eb.sock = filepath.Join(ea.dir, "b.sock") // same directory as ea.sock
	ba := ea.binary(ea.runArgs("--drain-timeout", "2s")...)
	stA := ea.waitServing(nil, 1)
	bb := eb.binary(eb.runArgs("--drain-timeout", "2s")...)
	stB := eb.waitServing(nil, 1)
	a1, b1 := servingPID(t, stA), servingPID(t, stB)

	_ = syscall.Kill(ba.cmd.Process.Pid, syscall.SIGKILL)
	ba.exitCode(t, 5*time.Second)
	ea.setEnv("2")
	ba2 := ea.binary(ea.runArgs("--drain-timeout", "2s")...)
	stA = ea.waitServing(nil, 2)
	waitFor(t, 10*time.Second, "A's adopted generation 1 retired", func() bool { return !proc.Alive(a1, 0) })
	if g, ok := genByNumber(stA, 1); !ok || !g.Adopted {
		t.Errorf("A's generation 1 not adopted: %+v", stA.Generations)
	}
	burst(t, ea.addr, 20, "2", servingPID(t, stA))
	if st, err := eb.status(); err != nil || servingPID(t, st) != b1 || !proc.Alive(b1, 0) {
		t.Errorf("B touched by A's restart: %+v %v", st, err)
	}
	burst(t, eb.addr, 20, "1", b1)
	for _, b := range []*binProc{ba2, bb} {
		_ = b.cmd.Process.Signal(syscall.SIGTERM)
		if code := b.exitCode(t, 10*time.Second); code != 0 {
			t.Errorf("exit %d:\n%s", code, b.out.String())
		}
	}
	for _, e := range []*env{ea, eb} {
		if alive := e.aliveHelpers(); len(alive) != 0 {
			t.Errorf("instances left: %v", alive)
		}
	}
}
