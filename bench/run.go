package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// scenario is one measured run of one method.
type scenario struct {
	name      string // "load", "idle", "sleep"
	mode      string
	path      string
	clients   int
	timeout   time.Duration
	warmup    time.Duration
	restarts  int
	interval  time.Duration
	tail      time.Duration
	idleConns int
}

type restartEvent struct {
	AtSec        float64 `json:"at_s"`           // trigger, since the run's start
	NewServingMs float64 `json:"new_serving_ms"` // trigger -> first answer from a new PID (-1: never)
	OldGoneMs    float64 `json:"old_gone_ms"`    // trigger -> old PID gone (-1: never)
	OldPID       int     `json:"old_pid"`
	NewPID       int     `json:"new_pid"`
	// From the load's own requests (computeCutover): trigger -> start of
	// the first request answered by the new PID, and trigger -> start of
	// the first request on a fresh connection from which on every request
	// on a fresh connection (until the next trigger) was answered by the
	// new PID. -1: not seen.
	FirstNewByLoadMs float64 `json:"first_new_by_load_ms"`
	AllNewByLoadMs   float64 `json:"all_new_conns_by_load_ms"`
	// HandedOverMs: trigger -> the old PID holds none of the listening
	// sockets on the bench's address it held at the trigger (its
	// descriptors, polled every millisecond in /proc; gone counts), -1:
	// never. TriggerMs: trigger -> the method's own procedure returned
	// (changeover reload, changeover swap: both at the handover, the old
	// instance still draining; a signal returns at once).
	HandedOverMs float64 `json:"handed_over_ms"`
	TriggerMs    float64 `json:"trigger_returned_ms"`
	// WithoutLoad: the load had stopped before the old instance was gone
	// (or before the trigger), so the restart's losses were not measured.
	WithoutLoad bool   `json:"without_load,omitempty"`
	Error       string `json:"error,omitempty"`
}

type idleResult struct {
	Wanted int `json:"wanted"`
	Opened int `json:"opened"`
	FIN    int `json:"closed_fin"` // closed in order by the server (EOF)
	Reset  int `json:"closed_rst"` // reset
	Other  int `json:"closed_other"`
	Open   int `json:"still_open"` // open when the run ended
}

type benchCtx struct {
	serverBin  string
	changeover string
	changeErr  string
	tmp        string
	outDir     string
	runs       int
	servers    *serverPIDs // which PIDs are the bench's server instances
}

// runScenario runs one method under one scenario and returns what clients saw.
func runScenario(ctx context.Context, bc *benchCtx, mi methodInfo, sc scenario) *runResult {
	res := &runResult{Method: mi.name, Title: mi.title, Mode: sc.mode, Scenario: sc.name, Clients: sc.clients,
		IdleConns: sc.idleConns, Note: mi.note}
	if mi.needsChangeover && bc.changeover == "" {
		res.Error = "not available: " + bc.changeErr
		return res
	}
	bc.runs++
	dir := filepath.Join(bc.tmp, fmt.Sprintf("run%03d-%s-%s-%s", bc.runs, mi.name, sc.name, sc.mode))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		res.Error = err.Error()
		return res
	}
	defer func() {
		// Keep the logs of a run that went wrong.
		if res.Error == "" || bc.outDir == "" {
			return
		}
		keep := filepath.Join(bc.outDir, "tmp", filepath.Base(dir))
		logs, _ := filepath.Glob(filepath.Join(dir, "*.log"))
		if len(logs) > 0 && os.MkdirAll(keep, 0o755) == nil {
			for _, l := range logs {
				if b, err := os.ReadFile(l); err == nil {
					_ = os.WriteFile(filepath.Join(keep, filepath.Base(l)), b, 0o644)
				}
			}
			res.Error += " (logs: " + keep + ")"
		}
	}()
	logf, err := os.OpenFile(filepath.Join(dir, "server.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	defer logf.Close()
	addr, err := freePort()
	if err != nil {
		res.Error = err.Error()
		return res
	}
	e := &env{addr: addr, serverBin: bc.serverBin, changeover: bc.changeover, dir: dir, logf: logf}
	m := mi.make()
	defer tracked.killAll()
	defer m.stop(e)

	pr := newProber(addr, bc.servers.is)
	if err := m.start(e); err != nil {
		res.Error = "start: " + err.Error()
		return res
	}
	pid, err := pr.waitServing(20 * time.Second)
	if err != nil {
		res.Error = "start: " + err.Error()
		return res
	}
	e.curPID = pid

	var idle *idleSet
	if sc.idleConns > 0 {
		idle = openIdle(addr, sc.idleConns)
		res.Idle = &idleResult{Wanted: sc.idleConns, Opened: idle.opened}
	}

	restarts := sc.restarts
	if !mi.restart {
		restarts = 0
	}
	// The load runs at least for the planned schedule, and on until the last
	// old instance is gone plus the tail: a restart that overruns its slot
	// still happens under load, and so does the end of every drain. The
	// deadline only bounds the load if something hangs (each restart waits
	// at most restartLimit for the old instance).
	planned := sc.warmup + time.Duration(max(sc.restarts-1, 0))*sc.interval + sc.tail
	t0 := time.Now()
	stopLoad := make(chan struct{})
	cfg := loadConfig{addr: addr, mode: sc.mode, path: sc.path, clients: sc.clients, timeout: sc.timeout,
		maxReqs: 5_000_000, t0: t0, stop: stopLoad, isServer: bc.servers.is,
		deadline: t0.Add(planned + time.Duration(restarts)*(sc.interval+restartLimit+5*time.Second))}
	var samples []sample
	loadDone := make(chan struct{})
	go func() { samples = runLoad(ctx, cfg); close(loadDone) }()

	stopAt := t0.Add(planned)
	for i := 0; i < restarts; i++ {
		at := t0.Add(sc.warmup + time.Duration(i)*sc.interval)
		if d := time.Until(at); d > 0 {
			select {
			case <-time.After(d):
			case <-ctx.Done():
			}
		}
		if ctx.Err() != nil {
			break
		}
		ev := measureRestart(e, m, pr, i, t0)
		res.Restarts = append(res.Restarts, ev)
		progress("  %s/%s restart %d: new serving %s, old gone %s %s", mi.name, sc.mode, i+1,
			fmtMs(ev.NewServingMs), fmtMs(ev.OldGoneMs), ev.Error)
		if ev.OldGoneMs >= 0 {
			gone := t0.Add(time.Duration(ev.AtSec*float64(time.Second)) + time.Duration(ev.OldGoneMs*float64(time.Millisecond)))
			if end := gone.Add(sc.tail); end.After(stopAt) {
				stopAt = end
			}
		}
		if ev.Error != "" {
			res.Error = fmt.Sprintf("restart %d: %s", i+1, ev.Error)
			break
		}
	}
	select {
	case <-time.After(time.Until(stopAt)):
	case <-ctx.Done():
	case <-loadDone:
	}
	close(stopLoad)
	<-loadDone
	elapsed := time.Since(t0)
	if ctx.Err() != nil && res.Error == "" {
		res.Error = "interrupted"
	}
	if res.Error == "" && mi.restart && sc.restarts > 0 {
		// the last instance must still serve
		if _, err := pr.pid(); err != nil {
			res.Error = "after restarts: " + err.Error()
		}
	}
	if idle != nil {
		idle.finish(res.Idle)
	}
	m.stop(e)
	res.Supervisor = m.supervisor()
	res.DurationSec = elapsed.Seconds()
	computeCutover(res.Restarts, samples)
	summarize(res, samples, elapsed)
	return res
}

// restartLimit bounds each restart: the new instance must answer, and the
// old one be gone, within it.
const restartLimit = 60 * time.Second

// measureRestart triggers one restart and measures trigger -> first answer
// by a new PID (on fresh connections, every 5 ms) and trigger -> old PID gone.
func measureRestart(e *env, m method, pr *prober, n int, t0 time.Time) restartEvent {
	old := e.curPID
	if p, err := pr.pid(); err == nil {
		old = p
	}
	ev := restartEvent{OldPID: old, NewServingMs: -1, OldGoneMs: -1, FirstNewByLoadMs: -1, AllNewByLoadMs: -1,
		HandedOverMs: -1, TriggerMs: -1}
	listening := listeningFDs(old, e.addr) // read before the trigger: 10,000 descriptors take a while
	start := time.Now()
	ev.AtSec = start.Sub(t0).Seconds()
	const limit = restartLimit
	trig := make(chan error, 1)
	go func() {
		err := m.trigger(e, n)
		ev.TriggerMs = ms(time.Since(start))
		trig <- err
	}()

	var newPID atomic.Int64
	var wg sync.WaitGroup
	wg.Add(3)
	go func() {
		defer wg.Done()
		for time.Since(start) < limit {
			if gone(old) || len(listening) > 0 && !holdsAny(old, listening) {
				ev.HandedOverMs = ms(time.Since(start))
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	go func() {
		defer wg.Done()
		for time.Since(start) < limit {
			if p, err := pr.pid(); err == nil && p != old {
				ev.NewServingMs = ms(time.Since(start))
				newPID.Store(int64(p))
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	go func() {
		defer wg.Done()
		for time.Since(start) < limit {
			if gone(old) {
				ev.OldGoneMs = ms(time.Since(start))
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	wg.Wait()
	var terr error
	select {
	case terr = <-trig:
	case <-time.After(limit):
		terr = errors.New("restart procedure did not return")
	}
	ev.NewPID = int(newPID.Load())
	switch {
	case terr != nil:
		ev.Error = terr.Error()
	case ev.NewServingMs < 0:
		ev.Error = fmt.Sprintf("no new instance answered within %v", limit)
	case ev.OldGoneMs < 0:
		ev.Error = fmt.Sprintf("old instance %d still running after %v (%s)", old, limit, procState(old))
	}
	if ev.NewPID != 0 {
		e.curPID = ev.NewPID
	}
	return ev
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func fmtMs(v float64) string {
	if v < 0 {
		return "never"
	}
	return fmt.Sprintf("%.0fms", v)
}

// idleSet holds idle keep-alive connections that made one request each.
type idleSet struct {
	conns  []net.Conn
	opened int
	fin    atomic.Int64
	rst    atomic.Int64
	other  atomic.Int64
	wg     sync.WaitGroup
}

func openIdle(addr string, n int) *idleSet {
	checkLoopback(addr)
	s := &idleSet{}
	var mu sync.Mutex
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	deadline := time.Now().Add(60 * time.Second)
	for i := 0; i < n && time.Now().Before(deadline); i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				return
			}
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			br := bufio.NewReader(c)
			if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: bench\r\n\r\n"); err != nil {
				c.Close()
				return
			}
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				c.Close()
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			_ = c.SetDeadline(time.Time{})
			mu.Lock()
			s.conns = append(s.conns, c)
			mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				_, err := br.ReadByte()
				switch {
				case errors.Is(err, io.EOF):
					s.fin.Add(1)
				case errors.Is(err, syscall.ECONNRESET):
					s.rst.Add(1)
				case errors.Is(err, net.ErrClosed):
					// closed by the bench at the end: still open
				default:
					s.other.Add(1)
				}
			}()
		}()
	}
	wg.Wait()
	s.opened = len(s.conns)
	return s
}

func (s *idleSet) finish(r *idleResult) {
	r.FIN, r.Reset, r.Other = int(s.fin.Load()), int(s.rst.Load()), int(s.other.Load())
	r.Open = s.opened - r.FIN - r.Reset - r.Other
	for _, c := range s.conns {
		c.Close()
	}
	s.wg.Wait()
}
