//go:build linux

package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fakeSystemd is a unixgram socket standing in for systemd's NOTIFY_SOCKET.
type fakeSystemd struct {
	mu   sync.Mutex
	msgs []string
}

func newFakeSystemd(t *testing.T) *fakeSystemd {
	path := filepath.Join(t.TempDir(), "sd.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeSystemd{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			f.mu.Lock()
			f.msgs = append(f.msgs, string(buf[:n]))
			f.mu.Unlock()
		}
	}()
	t.Cleanup(func() { conn.Close(); <-done })
	t.Setenv("NOTIFY_SOCKET", path)
	return f
}

func (f *fakeSystemd) all() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.msgs...)
}

// index returns the index of the first message at or after from that has
// every field, or -1.
func (f *fakeSystemd) index(from int, fields ...string) int {
	msgs := f.all()
	for i := from; i < len(msgs); i++ {
		ok := true
		for _, fl := range fields {
			ok = ok && strings.Contains("\n"+msgs[i]+"\n", "\n"+fl)
		}
		if ok {
			return i
		}
	}
	return -1
}

func TestSystemdNotify(t *testing.T) {
	sd := newFakeSystemd(t)
	e := newEnv(t)
	// The exec probe sees the instance's environment, not systemd's socket.
	p := e.startInProcess("--health", `exec:test -n "$CHANGEOVER_HEALTH_ADDR" && test -z "$NOTIFY_SOCKET"`)
	e.waitServing(p, 1)
	var ready int
	waitFor(t, 5*time.Second, "READY=1 with MAINPID", func() bool {
		ready = sd.index(0, "READY=1", fmt.Sprintf("MAINPID=%d", os.Getpid()))
		return ready >= 0
	})
	e.setEnv("2")
	if code, _, stderr := cli("reload", "--control", e.sock); code != 0 {
		t.Fatalf("reload: %d %s", code, stderr)
	}
	reloading := sd.index(ready+1, "RELOADING=1", "MONOTONIC_USEC=")
	if reloading < 0 {
		t.Fatalf("no RELOADING=1 with MONOTONIC_USEC after READY: %q", sd.all())
	}
	waitFor(t, 5*time.Second, "READY=1 after reload", func() bool { return sd.index(reloading+1, "READY=1") >= 0 })
	if sd.index(0, "STATUS=generation 2 serving") < 0 {
		t.Errorf("no STATUS for generation 2: %q", sd.all())
	}
	if code, _, _ := cli("stop", "--control", e.sock); code != 0 {
		t.Fatal("stop failed")
	}
	if err := p.wait(t, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if sd.index(reloading+1, "STOPPING=1") < 0 {
		t.Errorf("no STOPPING=1: %q", sd.all())
	}
	for _, m := range sd.all() {
		if strings.Contains(m, "serving 1") || strings.Contains(m, "serving 2") {
			t.Errorf("an instance's message reached the supervisor's systemd socket: %q", m)
		}
	}
}

// TestSystemdReloadDuringBackoff: a reload asked for while nothing serves
// (the serving instance crashed and its restart waits out the backoff) is
// still announced with RELOADING=1, which Type=notify-reload waits for after
// its SIGHUP.
func TestSystemdReloadDuringBackoff(t *testing.T) {
	sd := newFakeSystemd(t)
	e := newEnv(t)
	p := e.startInProcess("--restart-backoff", "1m")
	st := e.waitServing(p, 1)
	ready := -1
	waitFor(t, 5*time.Second, "READY=1", func() bool { ready = sd.index(0, "READY=1"); return ready >= 0 })
	// The first crash in the window is restarted at once; the second
	// waits out the backoff (a minute), with nothing serving.
	g1, _ := genByNumber(st, 1)
	syscall.Kill(-g1.PGID, syscall.SIGKILL)
	st = e.waitServing(p, 2)
	g2, _ := genByNumber(st, 2)
	syscall.Kill(-g2.PGID, syscall.SIGKILL)
	waitFor(t, 5*time.Second, "the second crash to be seen", func() bool {
		st, err := e.status()
		return err == nil && st.Serving == 0
	})
	ready = sd.index(ready+1, "READY=1") // generation 2's restart ended with one
	if ready < 0 {
		t.Fatalf("no READY=1 after generation 2's restart: %q", sd.all())
	}
	if code, _, stderr := cli("reload", "--control", e.sock); code != 0 {
		t.Fatalf("reload during the backoff: %d %s", code, stderr)
	}
	reloading := sd.index(ready+1, "RELOADING=1", "MONOTONIC_USEC=")
	if reloading < 0 {
		t.Fatalf("no RELOADING=1 for the reload during the backoff: %q", sd.all())
	}
	waitFor(t, 5*time.Second, "READY=1 after it", func() bool { return sd.index(reloading+1, "READY=1") >= 0 })
	if code, _, _ := cli("stop", "--control", e.sock); code != 0 {
		t.Fatal("stop failed")
	}
	if err := p.wait(t, 10*time.Second); err != nil {
		t.Fatal(err)
	}
}
