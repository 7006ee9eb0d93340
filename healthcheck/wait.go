package healthcheck

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"time"
)

// ErrNotHealthy is returned (wrapped) by Wait when the probes did not pass in
// time.
var ErrNotHealthy = errors.New("not healthy")

// Policy says how often and how long to probe. Zero (or negative) fields take
// their defaults: Timeout 2s, Interval 100ms, Successes 1, Deadline 30s.
type Policy struct {
	Timeout   time.Duration // bound on one Check call
	Interval  time.Duration // pause between the end of one round and the start of the next
	Successes int           // consecutive passes each probe needs
	Deadline  time.Duration // bound on the whole Wait, from its start
}

// Default values for the zero fields of a Policy.
const (
	DefaultTimeout   = 2 * time.Second
	DefaultInterval  = 100 * time.Millisecond
	DefaultSuccesses = 1
	DefaultDeadline  = 30 * time.Second
)

// withDefaults returns a copy of p with zero or negative fields set to their
// defaults.
func (p Policy) withDefaults() Policy {
	if p.Timeout <= 0 {
		p.Timeout = DefaultTimeout
	}
	if p.Interval <= 0 {
		p.Interval = DefaultInterval
	}
	if p.Successes <= 0 {
		p.Successes = DefaultSuccesses
	}
	if p.Deadline <= 0 {
		p.Deadline = DefaultDeadline
	}
	return p
}

// NotHealthyError is the error Wait returns when the probes did not pass in
// time. It wraps ErrNotHealthy, the reason Wait stopped (Cause) and the last
// error of every failing probe, so errors.Is and errors.As see all of them.
type NotHealthyError struct {
	// Deadline is the Policy.Deadline in force.
	Deadline time.Duration
	// Cause is context.DeadlineExceeded when Policy.Deadline expired, or
	// the cause of the caller's context otherwise.
	Cause error
	// Failures lists the probes that had not passed enough times, in the
	// order they were given to Wait.
	Failures []ProbeFailure
}

// ProbeFailure describes one probe that did not pass enough times.
type ProbeFailure struct {
	Probe  Probe
	Passes int   // consecutive passes at the end
	Err    error // last failure; nil if the probe never failed, only ran out of time
}

// Error lists every failing probe with its last error.
func (e *NotHealthyError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "healthcheck: %v", ErrNotHealthy)
	if errors.Is(e.Cause, context.DeadlineExceeded) {
		fmt.Fprintf(&b, " within %v", e.Deadline)
	} else if e.Cause != nil {
		fmt.Fprintf(&b, " (%v)", e.Cause)
	}
	fmt.Fprintf(&b, ": %d probe(s) failing", len(e.Failures))
	for _, f := range e.Failures {
		fmt.Fprintf(&b, "; %s: ", f.Probe)
		if f.Err != nil {
			b.WriteString(f.Err.Error())
		} else {
			fmt.Fprintf(&b, "passed %d time(s) in a row, not enough", f.Passes)
		}
	}
	return b.String()
}

// Unwrap returns ErrNotHealthy, Cause and the last error of each failing
// probe.
func (e *NotHealthyError) Unwrap() []error {
	errs := []error{ErrNotHealthy}
	if e.Cause != nil {
		errs = append(errs, e.Cause)
	}
	for _, f := range e.Failures {
		if f.Err != nil {
			errs = append(errs, f.Err)
		}
	}
	return errs
}

// Wait runs every probe until each has passed p.Successes times in a row, or
// returns an error wrapping ErrNotHealthy with the last failure of each (a
// *NotHealthyError).
//
// Probes run in rounds: all probes that still need passes are checked
// concurrently, each attempt bounded by p.Timeout, and the next round starts
// p.Interval after the previous one finished. A failure resets that probe's
// count to zero; once a probe has passed p.Successes times in a row it is done
// and is not checked again. The first round starts at once. Wait gives up
// when p.Deadline has passed since it was called or when ctx is done. With no
// probes it returns nil at once.
func Wait(ctx context.Context, p Policy, probes ...Probe) error {
	if len(probes) == 0 {
		return nil
	}
	p = p.withDefaults()
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, p.Deadline)
	defer cancel()

	passes := make([]int, len(probes))
	lastErr := make([]error, len(probes))
	results := make([]error, len(probes))
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return notHealthy(parent, ctx, p, probes, passes, lastErr)
		case <-timer.C:
		}
		if ctx.Err() != nil {
			return notHealthy(parent, ctx, p, probes, passes, lastErr)
		}

		var wg sync.WaitGroup
		for i, pr := range probes {
			if passes[i] >= p.Successes {
				continue
			}
			wg.Go(func() {
				actx, cancel := context.WithTimeout(ctx, p.Timeout)
				defer cancel()
				results[i] = pr.Check(actx)
			})
		}
		wg.Wait()

		done := true
		for i := range probes {
			if passes[i] >= p.Successes {
				continue
			}
			switch err := results[i]; {
			case err == nil:
				passes[i]++
			case ctx.Err() != nil && lastErr[i] != nil:
				// Cut short by the overall deadline: the previous
				// failure says more than "context deadline exceeded".
				passes[i] = 0
			default:
				passes[i] = 0
				lastErr[i] = err
			}
			if passes[i] < p.Successes {
				done = false
			}
		}
		if done {
			return nil
		}
		timer.Reset(p.Interval)
	}
}

// notHealthy builds Wait's error once ctx (derived from parent) is done.
func notHealthy(parent, ctx context.Context, p Policy, probes []Probe, passes []int, lastErr []error) error {
	e := &NotHealthyError{Deadline: p.Deadline, Cause: context.DeadlineExceeded}
	if parent.Err() != nil {
		e.Cause = context.Cause(parent)
	} else if cause := context.Cause(ctx); cause != nil {
		e.Cause = cause
	}
	for i, pr := range probes {
		if passes[i] < p.Successes {
			e.Failures = append(e.Failures, ProbeFailure{Probe: pr, Passes: passes[i], Err: lastErr[i]})
		}
	}
	return e
}

// FreeLoopbackAddr returns a loopback HOST:PORT that was free a moment ago:
// it binds port 0 of a random address of 127.0.0.0/8 (else of 127.0.0.1),
// reads the port the kernel chose and closes the listener. Another process
// could take it before the caller binds it; on a random address of 127/8
// that is unlikely.
func FreeLoopbackAddr() (string, error) {
	// A random address of 127.0.0.0/8 rather than 127.0.0.1: the port is
	// free when we look, and the instance binds it a moment later; other
	// processes take ephemeral ports on 127.0.0.1 all the time, hardly ever
	// on 127.83.17.201. Where the kernel does not route all of 127/8 to
	// loopback, 127.0.0.1 it is.
	ip := fmt.Sprintf("127.%d.%d.%d", rand.IntN(254)+1, rand.IntN(256), rand.IntN(254)+1)
	l, err := net.Listen("tcp", ip+":0")
	if err != nil {
		l, err = net.Listen("tcp", "127.0.0.1:0")
	}
	if err != nil {
		return "", fmt.Errorf("healthcheck: find a free loopback port: %w", err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		return "", fmt.Errorf("healthcheck: close listener on %s: %w", addr, err)
	}
	return addr, nil
}
