package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"syscall"
	"testing"
	"time"
)

func TestClassify(t *testing.T) {
	cases := []struct {
		err  error
		want uint8
	}{
		{nil, kindOK},
		{&net.OpError{Op: "read", Err: os.NewSyscallError("read", syscall.ECONNRESET)}, kindReset},
		{fmt.Errorf("get: %w", io.EOF), kindEOF},
		{io.ErrUnexpectedEOF, kindEOF},
		{&net.OpError{Op: "dial", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}, kindRefused},
		{fmt.Errorf("x: %w", context.DeadlineExceeded), kindTimeout},
		{os.ErrDeadlineExceeded, kindTimeout},
		{fmt.Errorf("something else"), kindOther},
	}
	for _, c := range cases {
		if got := classify(c.err); got != c.want {
			t.Errorf("classify(%v) = %s, want %s", c.err, kindNames[got], kindNames[c.want])
		}
	}
}

func TestSummarize(t *testing.T) {
	ms := int64(time.Millisecond)
	var ss []sample
	// 10 s, one OK request every 10 ms with 1 ms latency ...
	for i := int64(0); i < 1000; i++ {
		ss = append(ss, sample{start: i * 10 * ms, lat: ms, pid: 1})
	}
	// ... plus a slow request and two failures near the restart at 5 s.
	ss = append(ss, sample{start: 5000 * ms, lat: 100 * ms, pid: 2})
	ss = append(ss, sample{start: 5001 * ms, lat: ms, kind: kindReset})
	ss = append(ss, sample{start: 5002 * ms, lat: ms, kind: kind5xx})
	ss[0].retries = 2 // two silent retries of a request that succeeded, one of another
	ss[1].retries = 1
	res := &runResult{Restarts: []restartEvent{{AtSec: 5}}}
	summarize(res, ss, 10*time.Second)
	if res.Retries != 3 {
		t.Errorf("silent retries = %d, want 3", res.Retries)
	}
	if len(res.Failures) != int(numKinds)-1 {
		t.Errorf("failure kinds: %v, want every kind but ok", res.Failures)
	}
	if res.Requests != 1003 || res.Failed != 2 || res.Failures["reset"] != 1 || res.Failures["5xx"] != 1 {
		t.Fatalf("counts: %+v", res)
	}
	if res.FailedNearRestart != 2 || res.PerRestart != 2 {
		t.Errorf("near/per restart: %d %v", res.FailedNearRestart, res.PerRestart)
	}
	if res.NearRestart.MaxMs != 100 || res.Steady.MaxMs != 1 {
		t.Errorf("latency: steady %+v near %+v", res.Steady, res.NearRestart)
	}
	// steady: 8 s of the 10 s, 800 OK requests
	if res.Steady.N != 800 || res.SteadyRPS < 99 || res.SteadyRPS > 101 {
		t.Errorf("steady: n=%d rps=%v", res.Steady.N, res.SteadyRPS)
	}
	if len(res.Timeline) != 101 || res.Timeline[50].Failed != 2 {
		t.Errorf("timeline: %d buckets, bucket 50 %+v", len(res.Timeline), res.Timeline[50])
	}
}

func TestClassifyAnswer(t *testing.T) {
	body := []byte("version=1.2 pid=77\n")
	cases := []struct {
		name    string
		status  int
		body    []byte
		bodyErr error
		want    uint8
	}{
		{"complete", 200, body, nil, kindOK},
		{"cut short", 200, body[:5], io.ErrUnexpectedEOF, kindCutShort},
		{"reset in the body", 200, body[:5], &net.OpError{Op: "read", Err: os.NewSyscallError("read", syscall.ECONNRESET)}, kindCutShort},
		{"timeout in the body", 200, nil, os.ErrDeadlineExceeded, kindTimeout},
		{"404", 404, body, nil, kind4xx},
		{"500", 500, body, nil, kind5xx},
		{"304", 304, nil, nil, kindOther},
		{"no pid", 200, []byte("version=1\n"), nil, kindBadBody},
		{"no version", 200, []byte("pid=77\n"), nil, kindBadBody},
		{"garbage pid", 200, []byte("version=1 pid=x\n"), nil, kindBadBody},
		// Any PID is not enough: it must be one of the bench's own server
		// instances (here 77), not whatever else answers on the port.
		{"a pid that is not the bench's server", 200, []byte("version=1.2 pid=78\n"), nil, kindStranger},
	}
	isServer := func(pid int32) bool { return pid == 77 }
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := classifyAnswer(c.status, c.body, c.bodyErr, isServer); got != c.want {
				t.Errorf("classifyAnswer(%d, %q, %v) = %s, want %s", c.status, c.body, c.bodyErr, kindNames[got], kindNames[c.want])
			}
		})
	}
}

func TestComputeCutover(t *testing.T) {
	ms := int64(time.Millisecond)
	const oldPID, newPID = 10, 20
	// Restart 1 at 1 s: the new instance got fresh connections from 1.030 s,
	// but one fresh connection at 1.050 s still went to the old one (a
	// request queued there), and a keep-alive request at 1.200 s too.
	// Restart 2 at 3 s, old gone at 3.1 s, after which the load stopped.
	ss := []sample{
		{start: 900 * ms, pid: oldPID, fresh: true},
		{start: 1010 * ms, pid: oldPID, fresh: true},
		{start: 1030 * ms, pid: newPID, fresh: true},
		{start: 1050 * ms, pid: oldPID, fresh: true},
		{start: 1060 * ms, kind: kindRefused, fresh: true},
		{start: 1070 * ms, pid: newPID, fresh: true},
		{start: 1200 * ms, pid: oldPID},
		{start: 1300 * ms, pid: newPID, fresh: true},
		{start: 3050 * ms, pid: newPID, fresh: true},
	}
	slices.Reverse(ss) // clients' samples arrive out of order
	evs := []restartEvent{
		{AtSec: 1, OldPID: oldPID, NewPID: newPID, OldGoneMs: 400},
		{AtSec: 3, OldPID: newPID, NewPID: 0, OldGoneMs: 100},
	}
	computeCutover(evs, ss)
	if got := evs[0]; got.FirstNewByLoadMs != 30 || got.AllNewByLoadMs != 70 || got.WithoutLoad {
		t.Errorf("restart 1: first new %v ms, all new %v ms, without load %v; want 30, 70, false",
			got.FirstNewByLoadMs, got.AllNewByLoadMs, got.WithoutLoad)
	}
	if got := evs[1]; got.FirstNewByLoadMs != -1 || got.AllNewByLoadMs != -1 || !got.WithoutLoad {
		t.Errorf("restart 2: first new %v ms, all new %v ms, without load %v; want -1, -1, true",
			got.FirstNewByLoadMs, got.AllNewByLoadMs, got.WithoutLoad)
	}
}
