//go:build linux

package main

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/changeover-dev/changeover/internal/supervisor"
)

// TestBackToBackReloadsWhileDraining (issue 14): reloads follow one another
// while older generations still drain long requests. Each reload is done at
// the handover (the long requests are still running); each long request is
// answered by its own generation (version and PID); with --max-draining 2
// and two generations draining, a third reload waits the ready timeout and
// fails with the message, killing nothing; a reload that waits while a
// drain ends then goes through. No draining generation is killed early and
// the load loses no request.
func TestBackToBackReloadsWhileDraining(t *testing.T) {
	e := newEnv(t)
	// A -race server sleeps 1 s before it exits unless told.
	noSleep := "GORACE=atexit_sleep_ms=0"
	e.setFault(faultOK, "1", noSleep)
	const readyTimeout = 4 * time.Second
	p := e.startInProcess("--max-draining", "2", "--ready-timeout", readyTimeout.String(), "--drain-timeout", "60s")
	st := e.waitServing(p, 1)
	pid1 := servingPID(t, st)
	pgid1 := st.Generations[0].PGID
	load := startLoad(t, e.addr, 2)
	load.waitSent(t, 20)

	// Generation 1 gets a request of 3 s (its answer is checked) and one
	// held open until the test closes it (it keeps generation 1 draining).
	slow1 := slowRequest(t, e.addr, 3*time.Second)
	hold1 := holdRequest(t, e.addr)
	accepted(t, e.addr)
	e.setFault(faultOK, "2", noSleep)
	reloadOK(t, e, "generation 2")
	if len(slow1) != 0 {
		t.Errorf("the reload to generation 2 waited for generation 1's 3 s request (done at the handover, it must not)")
	}
	st = e.waitServing(p, 2)
	pid2 := servingPID(t, st)
	pgid2, _ := genByNumber(st, 2)

	slow2 := slowRequest(t, e.addr, 3*time.Second)
	hold2 := holdRequest(t, e.addr)
	accepted(t, e.addr)
	e.setFault(faultOK, "3", noSleep)
	reloadOK(t, e, "generation 3")
	st = e.waitServing(p, 3)
	pid3 := servingPID(t, st)
	for _, g := range []int{1, 2} {
		if gs, ok := genByNumber(st, g); !ok || gs.State != supervisor.StateDraining {
			t.Fatalf("generation %d after two back-to-back reloads: %+v, want draining", g, gs)
		}
	}

	// Two generations drain: a reload waits for a slot, and fails after
	// the ready timeout, killing nothing.
	e.setFault(faultOK, "4", noSleep)
	start := time.Now()
	code, _, stderr := cli("reload", "--control", e.sock)
	took := time.Since(start)
	if code == 0 || !strings.Contains(stderr, "too many generations draining") || !strings.Contains(stderr, "--max-draining 2") {
		t.Errorf("reload beyond --max-draining: exit %d, want a failure naming the bound: %s", code, stderr)
	}
	if took < readyTimeout {
		t.Errorf("reload beyond --max-draining failed after %v, before the ready timeout (%v): it must wait for a slot first", took, readyTimeout)
	}
	st, err := e.status()
	if err != nil {
		t.Fatal(err)
	}
	if st.Serving != 3 || servingPID(t, st) != pid3 {
		t.Errorf("after the refused reload: serving generation %d, want 3 (pid %d): %+v", st.Serving, pid3, st)
	}
	for _, g := range []int{1, 2} {
		if gs, ok := genByNumber(st, g); !ok || gs.State != supervisor.StateDraining {
			t.Errorf("generation %d after the refused reload: %+v, want still draining (never killed early)", g, gs)
		}
	}
	if _, ok := genByNumber(st, 4); ok {
		t.Errorf("the refused reload started generation 4: %+v", st)
	}

	// Each long request finishes on its own generation.
	if got := <-slow1; got != answerOf("1", pid1) {
		t.Errorf("generation 1's request answered %q, want %q", got, answerOf("1", pid1))
	}
	if got := <-slow2; got != answerOf("2", pid2) {
		t.Errorf("generation 2's request answered %q, want %q", got, answerOf("2", pid2))
	}

	// A reload that waits for a slot goes through once a drain ends.
	waits := strings.Count(p.stderr.String(), "reload waits for a draining generation to finish")
	reload := make(chan int, 1)
	go func() { c, _, _ := cli("reload", "--control", e.sock); reload <- c }()
	waitFor(t, readyTimeout/2, "the second reload waiting for a draining slot", func() bool {
		return strings.Count(p.stderr.String(), "reload waits for a draining generation to finish") > waits
	})
	hold1() // generation 1 has nothing left to drain: it exits, a slot frees
	select {
	case c := <-reload:
		if c != 0 {
			t.Errorf("the reload waiting for a slot: exit %d, want 0 once generation 1 left:\n%s", c, p.stderr.String())
		}
	case <-time.After(2 * readyTimeout):
		t.Fatal("the reload waiting for a slot never answered")
	}
	groupGone(t, pgid1)
	st = e.waitServing(p, 4)
	pid4 := servingPID(t, st)
	if gs, ok := genByNumber(st, 2); !ok || gs.State != supervisor.StateDraining {
		t.Errorf("generation 2 after the fourth reload: %+v, want still draining", gs)
	}
	hold2()
	groupGone(t, pgid2.PGID)

	load.waitSent(t, 20)
	sent, failed := load.report(t, "back-to-back reloads while older generations drain")
	if failed != 0 {
		t.Errorf("%d of %d requests failed", failed, sent)
	}
	burst(t, e.addr, 20, "4", pid4)
	out := p.stderr.String()
	for _, bad := range []string{"drain deadline passed", "killed=true"} {
		if strings.Contains(out, bad) {
			t.Errorf("a draining generation was killed (%q in the log):\n%s", bad, out)
		}
	}
}

// reloadOK runs `changeover reload` and fails the test unless it succeeds.
func reloadOK(t *testing.T, e *env, what string) {
	t.Helper()
	if code, _, stderr := cli("reload", "--control", e.sock); code != 0 {
		t.Fatalf("reload to %s: exit %d: %s", what, code, stderr)
	}
}

// holdRequest sends GET /sleep?duration=10m on a new connection to addr
// (so whoever serves addr now has it in flight) and returns a function
// that closes the connection: the handler returns, and the request no
// longer holds its generation's drain.
func holdRequest(t *testing.T, addr string) (release func()) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write([]byte("GET /sleep?duration=10m HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	return func() {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		_ = c.Close()
	}
}
