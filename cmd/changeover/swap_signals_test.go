//go:build linux

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/changeover-dev/changeover/internal/proc"
)

// TestSwapNoFollow: swap's lock and log files are never opened through a
// symlink: a symlink planted at either is refused and its target untouched.
func TestSwapNoFollow(t *testing.T) {
	for _, which := range []string{".pid.lock", ".log"} {
		t.Run(which, func(t *testing.T) {
			e := newEnv(t)
			pidfile := filepath.Join(e.dir, "app.pid")
			victim := filepath.Join(e.dir, "victim")
			if err := os.WriteFile(victim, []byte("precious\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			link := strings.TrimSuffix(pidfile, ".pid") + which
			if err := os.Symlink(victim, link); err != nil {
				t.Fatal(err)
			}
			code, _, stderr := cli(e.swapArgs(pidfile)...)
			if code == 0 || !strings.Contains(stderr, link) {
				t.Errorf("swap with %s a symlink: exit %d, want an error naming it:\n%s", link, code, stderr)
			}
			if b, _ := os.ReadFile(victim); string(b) != "precious\n" {
				t.Errorf("the symlink's target was written: %q", b)
			}
			if n := len(e.helperPIDs()); n != 0 && which == ".pid.lock" {
				t.Errorf("%d instances started", n)
			}
			if alive := e.aliveHelpers(); len(alive) != 0 {
				t.Errorf("instances left: %v", alive)
			}
		})
	}
}

// TestSwapSignals: SIGTERM or SIGINT to swap before the new instance is
// ready kills the new instance's group and leaves the pidfile and the old
// instance as they were; after the pidfile names the new instance, swap
// finishes the handover and exits 0.
func TestSwapSignals(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run("before ready/"+sig.String(), func(t *testing.T) {
			e := newEnv(t)
			pidfile := filepath.Join(e.dir, "app.pid")
			if code, _, stderr := cli(e.swapArgs(pidfile)...); code != 0 {
				t.Fatalf("first swap: exit %d: %s", code, stderr)
			}
			before, _ := os.ReadFile(pidfile)
			pid1 := e.aliveHelpers()[0]
			e.setEnv("2", envReadyDelay+"=30s")
			b := e.binary(e.swapArgs(pidfile)...)
			var pid2 int
			waitFor(t, 10*time.Second, "the new instance started", func() bool {
				for _, p := range e.aliveHelpers() {
					if p != pid1 {
						pid2 = p
					}
				}
				return pid2 != 0
			})
			_ = b.cmd.Process.Signal(sig)
			start := time.Now()
			code := b.exitCode(t, 10*time.Second)
			if code == 0 {
				t.Errorf("swap interrupted before ready: exit 0:\n%s", b.out.String())
			}
			t.Logf("swap interrupted before ready: exit %d after %v", code, time.Since(start).Round(time.Millisecond))
			groupGone(t, pid2)
			if after, _ := os.ReadFile(pidfile); string(after) != string(before) {
				t.Errorf("pidfile changed: %q -> %q", before, after)
			}
			burst(t, e.addr, 20, "1", pid1)
		})
		t.Run("after the pidfile/"+sig.String(), func(t *testing.T) {
			e := newEnv(t)
			pidfile := filepath.Join(e.dir, "app.pid")
			e.setFault(faultOK, "1")
			if code, _, stderr := cli(e.swapArgs(pidfile)...); code != 0 {
				t.Fatalf("first swap: exit %d: %s", code, stderr)
			}
			pid1 := e.aliveHelpers()[0]
			// A request in flight keeps generation 1 draining for 2 s.
			slow := slowRequest(t, e.addr, 2*time.Second)
			accepted(t, e.addr)
			e.setFault(faultOK, "2")
			b := e.binary(e.swapArgs(pidfile)...)
			waitFor(t, 20*time.Second, "the pidfile naming the new instance", func() bool {
				bs, _ := os.ReadFile(pidfile)
				f := strings.Fields(string(bs))
				return len(f) > 0 && f[0] != strconv.Itoa(pid1)
			})
			_ = b.cmd.Process.Signal(sig)
			if code := b.exitCode(t, 15*time.Second); code != 0 {
				t.Errorf("swap signalled during the handover: exit %d, want 0 (handover finished):\n%s", code, b.out.String())
			}
			if got := <-slow; !strings.HasPrefix(got, fmt.Sprintf("version=1 pid=%d", pid1)) {
				t.Errorf("request in flight on the old instance answered %q", got)
			}
			// Started by an in-process swap, generation 1 is this test's
			// child: a zombie once it exits, which kill -0 still finds.
			waitFor(t, 5*time.Second, "generation 1's group empty", func() bool { return proc.GroupEmpty(pid1) })
			burst(t, e.addr, 20, "2", e.aliveHelpers()[0])
		})
	}
}
