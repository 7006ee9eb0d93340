//go:build linux

package main

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/changeover-dev/changeover/internal/netnstest"
)

// shadowRefusalBound is how soon a reload to a generation that listens
// beside the steered address must be refused: far below the ready timeout
// the test gives (shadowReadyTimeout), which is when the coverage check
// alone would refuse it.
const (
	shadowRefusalBound = 5 * time.Second
	shadowReadyTimeout = 20 * time.Second
)

// What the refused generation costs: between its listen and the
// supervisor's hold on its address (one poll of the supervisor's watch, its
// /proc scan, the loop's placeholder: tens of ms of the whole reload here,
// under -race) the kernel gives it the clients of 127.0.0.1, and it
// answers them: shadowAnswersBound bounds those answers. No request may
// fail: it is stopped gracefully once what it queued is served, and the
// SYNs that reach its address meanwhile are dropped by the hold and
// retransmitted to generation 1 (a delay of about 1 s, counted apart;
// shadowDelayedBound leaves room for a loaded machine).
const (
	shadowAnswersBound = 400
	shadowDelayedBound = 200
)

// TestRealServersSteeredShadowingAddress: nginx serves on a wildcard
// address under the saturating load (clients connect to 127.0.0.1), and a
// reload brings a generation that listens on another address of the same
// port that the kernel prefers for those clients: a more specific one
// (127.0.0.1:P beside 0.0.0.0:P), or an AF_INET wildcard beside a
// dual-stack [::]:P. Its listeners form a reuseport group of their own,
// which the supervisor's steering program does not see, so it cannot start
// dark. The reload must be refused soon (not at the ready deadline), with
// an error naming both addresses, while generation 1 keeps serving; the
// requests answered by the refused generation, and those that failed, are
// counted (REALSERVER-SHADOWING lines): none may fail, and the answers of
// the refused generation and the delayed requests are bounded (not 0: see
// shadowAnswersBound). The clients wait patientTimeout for an answer, so a
// SYN the hold dropped counts as delayed, not failed.
func TestRealServersSteeredShadowingAddress(t *testing.T) {
	if !netnstest.Run(t) {
		return
	}
	requireServer(t, nginxServer)
	for _, tc := range []struct {
		name                       string
		serving, shadowing         string // nginx listen directives, %d the port
		servingAddr, shadowingAddr string // as the error names them, %d the port
	}{
		{"v4-specific-in-v4-wildcard", "0.0.0.0:%d", "127.0.0.1:%d", "0.0.0.0:%d", "127.0.0.1:%d"},
		{"v4-wildcard-beside-dual-stack", "[::]:%d ipv6only=off", "0.0.0.0:%d", "[::]:%d", "0.0.0.0:%d"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newNobodyWorld(t, nginxServer)
			port := netip.MustParseAddrPort(w.addr).Port()
			w.listen = fmt.Sprintf(tc.serving, port)
			w.setVersion("v1", 2)
			w.ready(1)
			w.ready(2) // its readiness would pass at once: the refusal must not wait for it
			_, done := w.startSupervisor("--notify=false", "--health", "http://{health_addr}/",
				"--health", "exec:test -e "+w.dir+"/ready-$CHANGEOVER_GENERATION",
				"--ready-timeout", shadowReadyTimeout.String(), "--drain-timeout", "10s", "--stop-signal", "QUIT")
			g1 := w.waitServing(done, 1)
			answeredBy(t, w.addr, 10, "v1", g1.PGID)

			load := startPatientPIDLoad(t, w.addr, steeredClients, 60*time.Second)
			load.progress(t, 300)
			w.listen = fmt.Sprintf(tc.shadowing, port)
			w.setVersion("v2", 2)
			began := time.Now()
			code, out, stderr := cli("reload", "--control", w.sock)
			took := time.Since(began)
			load.progress(t, 300) // generation 1 goes on serving after the refusal
			answeredBy(t, w.addr, 20, "v1", g1.PGID)
			load.stop()

			load.mu.Lock()
			never, v1 := load.byVersion["v2"], load.byVersion["v1"]
			load.mu.Unlock()
			failed, sent, delayed := load.failed.Load(), load.sent.Load(), load.delayed.Load()
			msg := strings.TrimSpace(out + stderr)
			t.Logf("REALSERVER-SHADOWING %s: reload exit %d after %v; %d failed of %d requests (%v), %d delayed over %v; %d answers from the refused generation, %d from generation 1; %q",
				tc.name, code, took.Round(time.Millisecond), failed, sent, load.errs, delayed, delayedAfter, never, v1, msg)

			servingAddr, shadowingAddr := fmt.Sprintf(tc.servingAddr, port), fmt.Sprintf(tc.shadowingAddr, port)
			if code == 0 {
				t.Fatalf("the reload to a generation on %s beside the steered %s succeeded", shadowingAddr, servingAddr)
			}
			if !strings.Contains(msg, shadowingAddr) || !strings.Contains(msg, servingAddr) {
				t.Errorf("the refusal %q does not name both %s and %s", msg, shadowingAddr, servingAddr)
			}
			if took > shadowRefusalBound {
				t.Errorf("refused after %v: want within %v (the ready timeout is %v)", took, shadowRefusalBound, shadowReadyTimeout)
			}
			if failed > 0 {
				t.Errorf("%d failed requests (%v): want none", failed, load.errs)
			}
			if never > shadowAnswersBound || delayed > shadowDelayedBound {
				t.Errorf("%d answers from the refused generation, %d delayed requests: want at most %d and %d",
					never, delayed, shadowAnswersBound, shadowDelayedBound)
			}
			st, err := w.status()
			if err != nil || st.Serving != 1 {
				t.Errorf("after the refusal: serving generation %d (%v), want 1", st.Serving, err)
			}
			if t.Failed() {
				t.Logf("run output:\n%s", w.out.String())
			}
		})
	}
}
