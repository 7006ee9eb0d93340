//go:build linux

package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/changeover-dev/changeover/internal/private"
	"github.com/changeover-dev/changeover/internal/proc"
)

// startVictim starts sleep in a session of its own, as a swap instance
// would be, and kills its group at cleanup.
func startVictim(t *testing.T) (pid int, ticks uint64) {
	t.Helper()
	cmd := exec.Command("sleep", "60")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid = cmd.Process.Pid
	t.Cleanup(func() { _ = unix.Kill(-pid, unix.SIGKILL); _ = cmd.Wait() })
	ticks, err := proc.StartTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	return pid, ticks
}

// sleepSwap is a SwapConfig whose instances are `sleep 60` (ready at once:
// no probe, no notify), killed by group at cleanup.
func sleepSwap(t *testing.T, pidfile string) SwapConfig {
	t.Cleanup(func() {
		if b, err := os.ReadFile(pidfile); err == nil {
			if pid, err := strconv.Atoi(strings.Fields(string(b) + " x")[0]); err == nil && pid > 1 {
				_ = proc.KillGroup(pid, unix.SIGKILL)
			}
		}
	})
	return SwapConfig{Pidfile: pidfile, Launch: Launch{Command: "sleep", Args: []string{"60"}, DrainTimeout: 2 * time.Second},
		Probes: []string{"exec:true"}, ReadyTimeout: 10 * time.Second}
}

// TestSecuritySwapPidfileOwner: a pidfile of the previous format (PID
// STARTTIME GEN ADDR) is trusted only if it is the user's and writable by
// no one else, as the state file is; a lock file of another user is
// refused. (Issue 11 review: the old format was read with os.ReadFile, so
// root's swap SIGTERMed the process another user's pidfile named.)
func TestSecuritySwapPidfileOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown to another user needs root")
	}
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, pidfile string)
	}{
		{"pidfile of another uid", func(t *testing.T, pidfile string) {
			if err := os.Chown(pidfile, 65534, 65534); err != nil {
				t.Fatal(err)
			}
		}},
		{"pidfile writable by others", func(t *testing.T, pidfile string) {
			if err := os.Chmod(pidfile, 0o666); err != nil {
				t.Fatal(err)
			}
		}},
		{"lock of another uid", func(t *testing.T, pidfile string) {
			if err := os.WriteFile(pidfile+".lock", nil, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(pidfile+".lock", 65534, 65534); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pid, ticks := startVictim(t)
			pidfile := filepath.Join(t.TempDir(), "a.pid")
			if err := os.WriteFile(pidfile, fmt.Appendf(nil, "%d %d 1 127.0.0.1:1\n", pid, ticks), 0o644); err != nil {
				t.Fatal(err)
			}
			tc.setup(t, pidfile)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			res, err := Swap(ctx, sleepSwap(t, pidfile))
			if !errors.Is(err, private.ErrNotPrivate) {
				t.Errorf("Swap = %+v, %v; want ErrNotPrivate", res, err)
			}
			if !proc.Alive(pid, ticks) {
				t.Errorf("pid %d named by an untrusted pidfile was signalled", pid)
			}
		})
	}
}

// TestSwapStickyDirectory: a pidfile in a sticky directory writable by all
// (as /tmp) works for every swap, not only the first: the files are
// checked to be ours instead of the directory. (Issue 11 review: the
// second swap refused the state file because of its directory.)
func TestSwapStickyDirectory(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, os.ModePerm|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	pidfile := filepath.Join(dir, "a.pid")
	cfg := sleepSwap(t, pidfile)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	first, err := Swap(ctx, cfg)
	if err != nil {
		t.Fatalf("first swap: %v", err)
	}
	t.Cleanup(func() { _ = proc.KillGroup(first.PID, unix.SIGKILL) })
	second, err := Swap(ctx, cfg)
	if err != nil {
		t.Fatalf("second swap: %v", err)
	}
	if second.OldPID != first.PID || second.Generation != 2 {
		t.Errorf("second swap = %+v, want generation 2 retiring pid %d", second, first.PID)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode()&(os.ModePerm|os.ModeSticky) != os.ModePerm|os.ModeSticky {
		t.Errorf("directory mode after swaps: %v (%v)", fi.Mode(), err)
	}
}
