package main

import (
	"cmp"
	"math"
	"slices"
	"time"
)

type latStats struct {
	N     int     `json:"n"`
	P50ms float64 `json:"p50_ms"`
	P99ms float64 `json:"p99_ms"`
	MaxMs float64 `json:"max_ms"`
}

type bucket struct {
	T      float64 `json:"t_s"`
	OK     int     `json:"ok"`
	Failed int     `json:"failed"`
	P99ms  float64 `json:"p99_ms"`
	MaxMs  float64 `json:"max_ms"`
}

type runResult struct {
	Method      string         `json:"method"`
	Title       string         `json:"title"`
	Mode        string         `json:"mode"`
	Scenario    string         `json:"scenario"`
	Clients     int            `json:"clients"`
	IdleConns   int            `json:"idle_conns,omitempty"`
	Note        string         `json:"note,omitempty"`
	Error       string         `json:"error,omitempty"`
	DurationSec float64        `json:"duration_s"`
	Requests    int            `json:"requests"`
	Failed      int            `json:"failed"`
	Failures    map[string]int `json:"failures"` // by kind (kindNames), zero kinds included
	// Retries counts the connections net/http's client used beyond the
	// first for one request: silent retries, each of which the server
	// lost without the client seeing a failure.
	Retries    int     `json:"silent_retries"`
	Per1000    float64 `json:"failed_per_1000"`
	PerRestart float64 `json:"failed_per_restart"`
	// Failures whose request started within ±1 s of a restart trigger.
	FailedNearRestart int            `json:"failed_near_restart"`
	Steady            latStats       `json:"latency_steady"`
	NearRestart       latStats       `json:"latency_near_restart"`
	SteadyRPS         float64        `json:"steady_rps"`
	RelBare           float64        `json:"throughput_vs_bare"`
	Restarts          []restartEvent `json:"restarts"`
	Supervisor        *supStats      `json:"supervisor,omitempty"`
	Idle              *idleResult    `json:"idle,omitempty"`
	Timeline          []bucket       `json:"timeline"`
}

const bucketDur = 100 * time.Millisecond

func percentiles(lat []int64) latStats {
	if len(lat) == 0 {
		return latStats{}
	}
	slices.Sort(lat)
	at := func(q float64) float64 {
		i := int(q * float64(len(lat)-1))
		return float64(lat[i]) / 1e6
	}
	return latStats{N: len(lat), P50ms: at(0.50), P99ms: at(0.99), MaxMs: float64(lat[len(lat)-1]) / 1e6}
}

// summarize fills res from the samples. Steady state is every request that
// started more than 1 s away from every restart trigger.
func summarize(res *runResult, ss []sample, total time.Duration) {
	res.Failures = map[string]int{}
	for k := kindOK + 1; k < numKinds; k++ {
		res.Failures[kindNames[k]] = 0
	}
	type win struct{ a, b int64 }
	var wins []win
	for _, r := range res.Restarts {
		at := int64(r.AtSec * 1e9)
		wins = append(wins, win{max(0, at-int64(time.Second)), min(int64(total), at+int64(time.Second))})
	}
	near := func(t int64) bool {
		for _, w := range wins {
			if t >= w.a && t < w.b {
				return true
			}
		}
		return false
	}
	// steady duration: total minus the union of the windows
	var covered, end int64
	for _, w := range wins { // triggers are in order
		a := max(w.a, end)
		if w.b > a {
			covered += w.b - a
			end = w.b
		}
	}
	steadyDur := time.Duration(int64(total) - covered)

	nb := int(total/bucketDur) + 1
	blat := make([][]int64, nb)
	res.Timeline = make([]bucket, nb)
	for i := range res.Timeline {
		res.Timeline[i].T = float64(i) * bucketDur.Seconds()
	}
	var steady, nearL []int64
	steadyOK := 0
	for _, s := range ss {
		res.Requests++
		res.Retries += int(s.retries)
		b := int(s.start / int64(bucketDur))
		if b < 0 {
			b = 0
		}
		if b >= nb {
			b = nb - 1
		}
		isNear := near(s.start)
		if s.kind != kindOK {
			res.Failed++
			res.Failures[kindNames[s.kind]]++
			res.Timeline[b].Failed++
			if isNear {
				res.FailedNearRestart++
			}
			continue
		}
		res.Timeline[b].OK++
		blat[b] = append(blat[b], s.lat)
		if isNear {
			nearL = append(nearL, s.lat)
		} else {
			steady = append(steady, s.lat)
			steadyOK++
		}
	}
	for i := range blat {
		if len(blat[i]) > 0 {
			p := percentiles(blat[i])
			res.Timeline[i].P99ms, res.Timeline[i].MaxMs = p.P99ms, p.MaxMs
		}
	}
	res.Steady = percentiles(steady)
	res.NearRestart = percentiles(nearL)
	if res.Requests > 0 {
		res.Per1000 = float64(res.Failed) * 1000 / float64(res.Requests)
	}
	if len(res.Restarts) > 0 {
		res.PerRestart = float64(res.Failed) / float64(len(res.Restarts))
	}
	if steadyDur > 0 {
		res.SteadyRPS = float64(steadyOK) / steadyDur.Seconds()
	}
}

// computeCutover fills, for each restart, what the load's own requests saw
// (FirstNewByLoadMs, AllNewByLoadMs) and whether the load was still running
// when the old instance was gone (WithoutLoad). A restart's window runs
// from its trigger to the next trigger (the last one: to the end). The new
// instance is the restart's NewPID, the one the prober found; when the
// prober found none, any PID other than OldPID that answered.
func computeCutover(evs []restartEvent, ss []sample) {
	ss = slices.Clone(ss)
	slices.SortFunc(ss, func(a, b sample) int { return cmp.Compare(a.start, b.start) })
	var lastStart int64 = -1
	if len(ss) > 0 {
		lastStart = ss[len(ss)-1].start
	}
	for i := range evs {
		ev := &evs[i]
		ev.FirstNewByLoadMs, ev.AllNewByLoadMs = -1, -1
		at := int64(ev.AtSec * 1e9)
		end := int64(math.MaxInt64)
		if i+1 < len(evs) {
			end = int64(evs[i+1].AtSec * 1e9)
		}
		// The load must have sent a request after the old instance was gone
		// (after the trigger, if it never went).
		needed := at
		if ev.OldGoneMs >= 0 {
			needed = at + int64(ev.OldGoneMs*1e6)
		}
		ev.WithoutLoad = lastStart < needed
		isNew := func(pid int32) bool {
			if ev.NewPID != 0 {
				return int(pid) == ev.NewPID
			}
			return pid != 0 && int(pid) != ev.OldPID
		}
		lo, _ := slices.BinarySearchFunc(ss, at, func(s sample, t int64) int { return cmp.Compare(s.start, t) })
		allNew := int64(-1) // start of the first fresh request to the new PID since the last fresh one that was not
		for _, s := range ss[lo:] {
			if s.start >= end {
				break
			}
			if ev.FirstNewByLoadMs < 0 && isNew(s.pid) {
				ev.FirstNewByLoadMs = float64(s.start-at) / 1e6
			}
			if !s.fresh {
				continue
			}
			switch {
			case !isNew(s.pid):
				allNew = -1
			case allNew < 0:
				allNew = s.start
			}
		}
		if allNew >= 0 {
			ev.AllNewByLoadMs = float64(allNew-at) / 1e6
		}
	}
}
