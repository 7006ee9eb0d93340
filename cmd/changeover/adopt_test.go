//go:build linux

package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/changeover-dev/changeover/internal/proc"
)

// TestAdoptAfterSupervisorKilled: the instances of a SIGKILLed supervisor
// keep serving; the next supervisor adopts the serving one and retires it
// through a normal handover.
func TestAdoptAfterSupervisorKilled(t *testing.T) {
	e := newEnv(t)
	b := e.binary(e.runArgs("--drain-timeout", "5s")...)
	st := e.waitServing(nil, 1)
	gen1 := st.Generations[0]
	_ = syscall.Kill(b.cmd.Process.Pid, syscall.SIGKILL)
	b.exitCode(t, 5*time.Second)
	if got := get(e.addr); !strings.HasPrefix(got, "version=1 ") {
		t.Fatalf("instance did not survive its supervisor: %q", got)
	}
	e.setEnv("2")
	b2 := e.binary(e.runArgs("--drain-timeout", "5s")...)
	st = e.waitServing(nil, 2)
	waitFor(t, 10*time.Second, "adopted generation 1 retired", func() bool { return !proc.Alive(gen1.PID, 0) })
	if got := get(e.addr); !strings.HasPrefix(got, "version=2 ") {
		t.Errorf("served %q, want version 2", got)
	}
	if stale, _ := filepath.Glob(filepath.Join(e.dir, fmt.Sprintf("notify-%d-*.sock", b.cmd.Process.Pid))); len(stale) != 0 {
		t.Errorf("stale notify sockets of the killed supervisor left: %v", stale)
	}
	if !strings.Contains(b2.out.String(), "adopted") {
		t.Errorf("adoption not logged:\n%s", b2.out.String())
	}
	_ = b2.cmd.Process.Signal(syscall.SIGTERM)
	if code := b2.exitCode(t, 10*time.Second); code != 0 {
		t.Errorf("exit %d", code)
	}
	if alive := e.aliveHelpers(); len(alive) != 0 {
		t.Errorf("instances left: %v", alive)
	}
}
