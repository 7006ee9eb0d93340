package healthcheck

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// scripted is a Probe whose Check returns results in turn, then the last
// one forever.
type scripted struct {
	name    string
	results []error

	mu    sync.Mutex
	calls int
}

func (s *scripted) String() string { return s.name }

func (s *scripted) Check(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := min(s.calls, len(s.results)-1)
	s.calls++
	return s.results[i]
}

func (s *scripted) Calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

// fast is a Policy that does not dawdle between rounds.
var fast = Policy{Interval: time.Millisecond, Deadline: 10 * time.Second}

func TestWaitSucceedsAfterSuccesses(t *testing.T) {
	p := fast
	p.Successes = 3
	a := &scripted{name: "a", results: []error{nil}}
	b := &scripted{name: "b", results: []error{errors.New("warming up"), nil}}
	if err := Wait(t.Context(), p, a, b); err != nil {
		t.Fatalf("Wait: %v", err)
	}
	if got := a.Calls(); got != 3 {
		t.Errorf("probe a was checked %d times, want 3 (no checks once done)", got)
	}
	if got := b.Calls(); got != 4 {
		t.Errorf("probe b was checked %d times, want 4", got)
	}
}

func TestWaitFlappingResetsCount(t *testing.T) {
	p := fast
	p.Successes = 3
	flap := errors.New("flap")
	pr := &scripted{name: "flappy", results: []error{nil, nil, flap, nil, flap, nil, nil, nil}}
	if err := Wait(t.Context(), p, pr); err != nil {
		t.Fatalf("Wait: %v", err)
	}
	if got := pr.Calls(); got != 8 {
		t.Errorf("probe was checked %d times, want 8: every failure restarts the count", got)
	}
}

func TestWaitFlappingNeverPasses(t *testing.T) {
	p := Policy{Interval: time.Millisecond, Successes: 2, Deadline: 100 * time.Millisecond}
	var n atomic.Int64
	pr := probeFunc{name: "alternating", check: func(context.Context) error {
		if n.Add(1)%2 == 0 {
			return fmt.Errorf("flap %d", n.Load())
		}
		return nil
	}}
	err := Wait(t.Context(), p, pr)
	if !errors.Is(err, ErrNotHealthy) {
		t.Fatalf("Wait = %v, want ErrNotHealthy", err)
	}
	if !strings.Contains(err.Error(), "alternating: flap ") {
		t.Errorf("error %q does not contain the probe's last failure", err)
	}
}

// probeFunc adapts a function to Probe.
type probeFunc struct {
	name  string
	check func(context.Context) error
}

func (p probeFunc) String() string                  { return p.name }
func (p probeFunc) Check(ctx context.Context) error { return p.check(ctx) }

func TestWaitDeadline(t *testing.T) {
	ok := &scripted{name: "ok-probe", results: []error{nil}}
	boom := &scripted{name: "boom-probe", results: []error{errors.New("boom")}}
	never := probeFunc{name: "never", check: func(context.Context) error { return errors.New("still down") }}
	start := time.Now()
	err := Wait(t.Context(), Policy{Interval: 5 * time.Millisecond, Deadline: 100 * time.Millisecond}, ok, boom, never)
	if d := time.Since(start); d < 100*time.Millisecond || d > 5*time.Second {
		t.Errorf("Wait returned after %v, want about the 100ms deadline", d)
	}
	if !errors.Is(err, ErrNotHealthy) {
		t.Fatalf("Wait = %v, want ErrNotHealthy", err)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait = %v, want it to wrap context.DeadlineExceeded", err)
	}
	for _, want := range []string{"within 100ms", "2 probe(s) failing", "boom-probe: boom", "never: still down"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "ok-probe") {
		t.Errorf("error %q names a probe that passed", err)
	}
	var nh *NotHealthyError
	if !errors.As(err, &nh) || len(nh.Failures) != 2 || nh.Failures[0].Probe != boom {
		t.Errorf("errors.As(%v) = %+v, want two failures, boom-probe first", err, nh)
	}
}

func TestWaitKeepsRealFailureWhenDeadlineCutsAttempt(t *testing.T) {
	var n atomic.Int64
	pr := probeFunc{name: "slow", check: func(ctx context.Context) error {
		if n.Add(1) == 1 {
			return errors.New("connection refused, the real reason")
		}
		<-ctx.Done() // the next attempt hangs until the deadline
		return ctx.Err()
	}}
	err := Wait(t.Context(), Policy{Interval: time.Millisecond, Timeout: time.Minute, Deadline: 50 * time.Millisecond}, pr)
	if !errors.Is(err, ErrNotHealthy) || !strings.Contains(err.Error(), "the real reason") {
		t.Fatalf("Wait = %v, want ErrNotHealthy with the real reason", err)
	}
}

func TestWaitPerAttemptTimeout(t *testing.T) {
	var n atomic.Int64
	var firstDeadline time.Duration
	pr := probeFunc{name: "hangs-once", check: func(ctx context.Context) error {
		if n.Add(1) > 1 {
			return nil
		}
		d, ok := ctx.Deadline()
		if !ok {
			return errors.New("no deadline")
		}
		firstDeadline = time.Until(d)
		<-ctx.Done()
		return ctx.Err()
	}}
	p := Policy{Timeout: 20 * time.Millisecond, Interval: time.Millisecond, Deadline: time.Minute}
	if err := Wait(t.Context(), p, pr); err != nil {
		t.Fatalf("Wait: %v", err)
	}
	if firstDeadline <= 0 || firstDeadline > p.Timeout {
		t.Errorf("attempt deadline was %v away, want at most Policy.Timeout %v", firstDeadline, p.Timeout)
	}
	if got := n.Load(); got != 2 {
		t.Errorf("probe checked %d times, want 2", got)
	}
}

func TestWaitContextCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	var once sync.Once
	pr := probeFunc{name: "cancels", check: func(context.Context) error {
		once.Do(cancel)
		return errors.New("not yet")
	}}
	err := Wait(ctx, Policy{Interval: time.Millisecond}, pr)
	if !errors.Is(err, ErrNotHealthy) || !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait = %v, want ErrNotHealthy and context.Canceled", err)
	}
	if !strings.Contains(err.Error(), "cancels: not yet") {
		t.Errorf("error %q does not contain the last failure", err)
	}
}

func TestWaitNoProbes(t *testing.T) {
	if err := Wait(t.Context(), Policy{}); err != nil {
		t.Fatalf("Wait with no probes: %v", err)
	}
}

func TestPolicyDefaults(t *testing.T) {
	want := Policy{Timeout: 2 * time.Second, Interval: 100 * time.Millisecond, Successes: 1, Deadline: 30 * time.Second}
	if got := (Policy{}).withDefaults(); got != want {
		t.Errorf("Policy{}.withDefaults() = %+v, want %+v", got, want)
	}
	if got := (Policy{Timeout: -1, Interval: -1, Successes: -1, Deadline: -1}).withDefaults(); got != want {
		t.Errorf("negative fields: withDefaults() = %+v, want %+v", got, want)
	}
	custom := Policy{Timeout: time.Second, Interval: time.Second, Successes: 5, Deadline: time.Hour}
	if got := custom.withDefaults(); got != custom {
		t.Errorf("withDefaults() changed set fields: %+v, want %+v", got, custom)
	}
}

func TestWaitHTTPBecomesHealthy(t *testing.T) {
	var requests atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if requests.Add(1) <= 2 {
			http.Error(w, "warming up", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok"))
	}))
	defer srv.Close()
	probe, err := Parse("http://{health_addr}/healthz", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	p := fast
	p.Successes = 2
	if err := Wait(t.Context(), p, probe); err != nil {
		t.Fatalf("Wait: %v", err)
	}
	if got := requests.Load(); got != 4 {
		t.Errorf("server saw %d requests, want 4", got)
	}
}

func TestFreeLoopbackAddr(t *testing.T) {
	addr, err := FreeLoopbackAddr()
	if err != nil {
		t.Fatal(err)
	}
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().IsLoopback() || ap.Port() == 0 {
		t.Fatalf("FreeLoopbackAddr() = %q, want a loopback HOST:PORT", addr)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen on %s: %v", addr, err)
	}
	l.Close()
}
