//go:build linux

package main

import (
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/changeover-dev/changeover/internal/netnstest"
	"github.com/changeover-dev/changeover/internal/proc"
	"github.com/changeover-dev/changeover/internal/supervisor"
)

// A refused shadowing generation that ignores its stop signal: nginx told
// to stop with WINCH, which it ignores when it runs in the foreground
// (daemon off), so it keeps its listeners and serves on. Its address is
// held (new SYNs dropped, retransmitted 1 s, 3 s, 7 s later) until its
// listeners are gone; the hold must stay short (review D1: it lasted until
// the SIGKILL at its drain deadline, 10 s here).
const (
	// stubbornReloadBound: the failed reload is answered once the hold is
	// released, at most about 2 s after the refusal (1 s for the quiet
	// wait, 1 s after the stop signal) with room for a loaded host.
	stubbornReloadBound = 5 * time.Second
	// stubbornAdoptBound: an adopting supervisor kills the refused
	// generation at once, and its next generation serves soon after.
	stubbornAdoptBound = 8 * time.Second
	stubbornDrain      = "10s"
)

// stubbornWorld serves generation 1 (nginx on 0.0.0.0:P, clients on
// 127.0.0.1:P) under a supervisor whose stop signal nginx ignores, and
// sets the next generation to listen on 127.0.0.1:P, which shadows it.
func stubbornWorld(t *testing.T) (w *nobodyWorld, flags []string, servingListen string) {
	requireServer(t, nginxServer)
	w = newNobodyWorld(t, nginxServer)
	port := netip.MustParseAddrPort(w.addr).Port()
	servingListen = fmt.Sprintf("0.0.0.0:%d", port)
	w.listen = servingListen
	w.setVersion("v1", 2)
	w.ready(1)
	w.ready(2)
	w.ready(3)
	flags = []string{"--notify=false", "--health", "http://{health_addr}/",
		"--health", "exec:test -e " + w.dir + "/ready-$CHANGEOVER_GENERATION",
		"--ready-timeout", "20s", "--drain-timeout", stubbornDrain, "--stop-signal", "WINCH"}
	return w, flags, servingListen
}

// stubbornServing is stubbornWorld under a supervisor, generation 1
// answering.
type stubbornServing struct {
	w             *nobodyWorld
	flags         []string // the supervisor's
	servingListen string   // generation 1's listen address
	cmd           *exec.Cmd
	done          chan struct{} // closed when the supervisor exits
	g1            supervisor.GenStatus
}

func startStubbornServing(t *testing.T) stubbornServing {
	var s stubbornServing
	s.w, s.flags, s.servingListen = stubbornWorld(t)
	s.cmd, s.done = s.w.startSupervisor(s.flags...)
	s.g1 = s.w.waitServing(s.done, 1)
	answeredBy(t, s.w.addr, 10, "v1", s.g1.PGID)
	return s
}

// TestRealServersShadowingRefusedStubborn: the reload to a generation on
// 127.0.0.1:P beside the steered 0.0.0.0:P is refused; that generation
// ignores its stop signal. Its hold must end within about 2 s (SIGKILL of
// its group), the reload answered then, and no client (patient: 10 s)
// may fail. Before: the hold lasted to its drain deadline (10 s), the
// reload was answered after it, and clients of the held address waited
// that long or failed.
func TestRealServersShadowingRefusedStubborn(t *testing.T) {
	if !netnstest.Run(t) {
		return
	}
	s := startStubbornServing(t)
	w, g1 := s.w, s.g1

	load := startPatientPIDLoad(t, w.addr, steeredClients, 60*time.Second)
	load.progress(t, 300)
	w.listen = fmt.Sprintf("127.0.0.1:%d", netip.MustParseAddrPort(w.addr).Port())
	w.setVersion("v2", 2)
	began := time.Now()
	code, out, stderr := cli("reload", "--control", w.sock)
	took := time.Since(began)
	load.progress(t, 300)
	answeredBy(t, w.addr, 20, "v1", g1.PGID)
	load.stop()

	load.mu.Lock()
	refused := load.byVersion["v2"]
	load.mu.Unlock()
	failed, sent, delayed := load.failed.Load(), load.sent.Load(), load.delayed.Load()
	t.Logf("REALSERVER-SHADOWING-STUBBORN: reload exit %d after %v; %d failed of %d requests (%v), %d delayed over %v; %d answers from the refused generation; %q",
		code, took.Round(time.Millisecond), failed, sent, load.errs, delayed, delayedAfter, refused, strings.TrimSpace(out+stderr))
	if code != 4 {
		t.Errorf("reload exit %d, want 4 (not ready)", code)
	}
	if took > stubbornReloadBound {
		t.Errorf("the failed reload answered after %v: want within %v (the hold ends once the refused generation's listeners are gone, at most about 2 s)", took, stubbornReloadBound)
	}
	if failed > 0 {
		t.Errorf("%d failed requests (%v): want none", failed, load.errs)
	}
	if !strings.Contains(w.out.String(), "refused generation still listens after its stop signal") {
		t.Errorf("no SIGKILL of the refused generation logged")
	}
	if t.Failed() {
		t.Logf("run output:\n%s", w.out.String())
	}
}

// TestRealServersShadowingRefusedSupervisorKilled: the supervisor is
// SIGKILLed while it holds a refused generation's address. Its
// placeholders die with it, and the refused generation takes the held
// address's clients. The state file must say so: the next supervisor kills
// the refused generation's group at once (before: it adopted it as
// draining with its stop pending, sent the stop signal it ignores, and
// let it serve the address until its drain deadline, 10 s).
func TestRealServersShadowingRefusedSupervisorKilled(t *testing.T) {
	if !netnstest.Run(t) {
		return
	}
	s := startStubbornServing(t)
	w, flags, servingListen, cmd, done := s.w, s.flags, s.servingListen, s.cmd, s.done

	w.listen = fmt.Sprintf("127.0.0.1:%d", netip.MustParseAddrPort(w.addr).Port())
	w.setVersion("v2", 2)
	reloaded := make(chan int, 1)
	go func() {
		code, _, _ := cli("reload", "--control", w.sock)
		reloaded <- code
	}()
	var g2 supervisor.GenStatus
	waitFor(t, 10*time.Second, "generation 2's address held", func() bool {
		if !strings.Contains(w.out.String(), "refused generation's address held") {
			return false
		}
		st, err := w.status()
		if err != nil {
			return false
		}
		g, ok := genByNumber(st, 2)
		g2 = g
		return ok && g.PGID > 1
	})
	if g2.State != supervisor.StateRefused {
		t.Errorf("generation 2 while its address is held: state %q, want %q", g2.State, supervisor.StateRefused)
	}
	t.Cleanup(func() {
		if g2.PGID > 1 && !proc.GroupEmpty(g2.PGID) {
			_ = syscall.Kill(-g2.PGID, syscall.SIGKILL)
		}
	})
	if err := cmd.Process.Kill(); err != nil {
		t.Fatalf("SIGKILL of the supervisor: %v", err)
	}
	<-done
	<-reloaded
	if proc.GroupEmpty(g2.PGID) {
		t.Fatalf("generation 2's group was gone when the supervisor was killed: the hold ended first, nothing to adopt")
	}

	// The refused generation takes the held address now (documented).
	w.listen = servingListen
	w.setVersion("v3", 2)
	adopted := time.Now()
	_, done2 := w.startSupervisor(flags...)
	waitFor(t, stubbornAdoptBound, "the refused generation's group killed by the adopting supervisor", func() bool {
		return proc.GroupEmpty(g2.PGID)
	})
	killed := time.Since(adopted)
	// Generation 1 ignores its stop signal too (WINCH), so the handover
	// to 3 lasts until its drain deadline: 3 serves once it is promoted.
	var g3 supervisor.GenStatus
	waitFor(t, 30*time.Second, "generation 3 serving", func() bool {
		select {
		case <-done2:
			t.Fatalf("run exited early:\n%s", w.out.String())
		default:
		}
		st, err := w.status()
		if err != nil || st.Serving != 3 {
			return false
		}
		g3, _ = genByNumber(st, 3)
		return true
	})
	served := time.Since(adopted)
	answeredBy(t, w.addr, 20, "v3", g3.PGID)
	t.Logf("REALSERVER-SHADOWING-ADOPT: the refused generation's group gone %v after the adopting supervisor started, generation 3 serving after %v",
		killed.Round(time.Millisecond), served.Round(time.Millisecond))
	if !strings.Contains(w.out.String(), "killing a refused generation") {
		t.Errorf("the adopting supervisor did not say it kills the refused generation")
	}
	if t.Failed() {
		t.Logf("run output:\n%s", w.out.String())
	}
}
