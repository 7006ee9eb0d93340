package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
)

// printReport writes the whole markdown report: the stamp, one table per
// load mode, the idle-connection and /sleep tables, and the notes that
// apply to this run.
func printReport(w io.Writer, rep *report) {
	fmt.Fprintf(w, "# changeover restart benchmark\n\n")
	writeStampList(w, rep)
	for _, mode := range reportModes(rep) {
		fmt.Fprintf(w, "## %s\n\n", modeTitles[mode])
		writeLoadTable(w, rep, mode)
		fmt.Fprintln(w)
	}
	if hasScenario(rep, "load") {
		fmt.Fprintf(w, "## Cutover, from the load's own requests\n\n")
		writeCutoverTable(w, rep)
		fmt.Fprintln(w)
	}
	if hasScenario(rep, "idle") {
		fmt.Fprintf(w, "## Idle keep-alive connections open at the restart (keep-alive GET load, 1 restart)\n\n")
		writeIdleTable(w, rep)
		fmt.Fprintln(w)
		fmt.Fprintf(w, "## Handover with idle keep-alive connections open\n\n")
		writeHandoverTable(w, rep)
		fmt.Fprintln(w)
	}
	if hasScenario(rep, "sleep") {
		fmt.Fprintf(w, "## Long in-flight requests (keep-alive GET /sleep?duration=2s, 1 restart)\n\n")
		writeSleepTable(w, rep)
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w, "Notes:")
	writeNotes(w, rep)
}

// reportModes lists the load modes of rep's load runs, in allModes' order.
func reportModes(rep *report) []string {
	var out []string
	for _, m := range allModes {
		for _, r := range rep.Runs {
			if r.Scenario == "load" && r.Mode == m {
				out = append(out, m)
				break
			}
		}
	}
	return out
}

func hasScenario(rep *report, name string) bool {
	for _, r := range rep.Runs {
		if r.Scenario == name {
			return true
		}
	}
	return false
}

// treeState says which code a report measured.
func treeState(rep *report) string {
	c := rep.Commit
	if len(c) > 12 && !strings.HasPrefix(c, "unknown") {
		c = c[:12]
	}
	if rep.Dirty {
		return fmt.Sprintf("commit %s, **tree dirty** (%d changed paths)", c, len(rep.DirtyPaths))
	}
	return fmt.Sprintf("commit %s, clean tree", c)
}

func runKind(rep *report) string {
	if rep.Name != "" {
		return fmt.Sprintf("%q (%s)", rep.Name, strings.Join(rep.Scenarios, ", "))
	}
	if rep.Quick {
		return "quick (-quick)"
	}
	return "full"
}

func writeStampList(w io.Writer, rep *report) {
	fmt.Fprintf(w, "- date: %s\n- code: %s\n- kernel (uname -r): %s\n- CPUs: %d\n- net.ipv4.tcp_migrate_req: %s\n- go: %s\n",
		rep.Date, treeState(rep), rep.Kernel, rep.CPUs, rep.MigrateReq, rep.GoVersion)
	for _, p := range rep.DirtyPaths {
		fmt.Fprintf(w, "  - `%s`\n", p)
	}
	fmt.Fprintf(w, "- run: %s; %d clients on 127.0.0.1; %d restarts, one every %gs; %.0fs in all\n",
		runKind(rep), rep.Clients, rep.Restarts, rep.IntervalSec, rep.ElapsedSec)
	if rep.Changeover != "" {
		fmt.Fprintf(w, "- changeover CLI: %s\n", rep.Changeover)
	}
	fmt.Fprintln(w)
}

// writeStampLine is the stamp in one sentence, for the README and docs.
func writeStampLine(w io.Writer, rep *report) {
	day := rep.Date
	if len(day) >= 10 {
		day = day[:10]
	}
	fmt.Fprintf(w, "%s run of %s (%.0f s), %s; Linux %s, %d CPUs, `tcp_migrate_req=%s`, %s; %d clients, %d restarts per run, one every %g s.\n",
		capitalize(runKind(rep)), day, rep.ElapsedSec, treeState(rep), rep.Kernel, rep.CPUs, rep.MigrateReq, rep.GoVersion,
		rep.Clients, rep.Restarts, rep.IntervalSec)
}

func capitalize(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// titleCell is a run's method title, with its error if it had one.
func titleCell(r *runResult) string {
	if r.Error != "" {
		return r.Title + " (**error: " + r.Error + "**)"
	}
	return r.Title
}

func writeLoadTable(w io.Writer, rep *report, mode string) {
	fmt.Fprintln(w, "| method | requests | failed, by kind | failed per 1000 | failed per restart | silent retries | steady p50 / p99 / max ms | ±1 s of restart p50 / p99 / max ms | restart: new serving / old gone ms (mean; max) | cutover seen by the load: first answer from new / all new connections to new, ms (mean; max) | supervisor RSS / CPU | steady req/s (vs bare) |")
	fmt.Fprintln(w, "|---|---:|---|---:|---:|---:|---|---|---|---|---|---|")
	for _, r := range rep.Runs {
		if r.Scenario != "load" || r.Mode != mode {
			continue
		}
		if r.Error != "" && r.Requests == 0 {
			fmt.Fprintf(w, "| %s | %s ||||||||||\n", r.Title, r.Error)
			continue
		}
		fmt.Fprintf(w, "| %s | %d | %s | %.2f | %s | %d | %s | %s | %s | %s | %s | %s |\n",
			titleCell(r), r.Requests, failKinds(r), r.Per1000, perRestart(r), r.Retries, lat(r.Steady), lat(r.NearRestart),
			restartTimes(r), loadCutover(r), sup(r), rps(r))
	}
}

func writeIdleTable(w io.Writer, rep *report) {
	fmt.Fprintln(w, "| method | idle conns (opened) | restart: new serving / old gone ms | load requests | load failed (by kind) | silent retries | idle conns closed FIN / RST / other / still open |")
	fmt.Fprintln(w, "|---|---|---|---:|---|---:|---|")
	for _, r := range rep.Runs {
		if r.Scenario != "idle" {
			continue
		}
		if r.Error != "" && r.Requests == 0 {
			fmt.Fprintf(w, "| %s | %d | %s |||||\n", r.Title, r.IdleConns, r.Error)
			continue
		}
		ic := "-"
		opened := 0
		if r.Idle != nil {
			ic = fmt.Sprintf("%d / %d / %d / %d", r.Idle.FIN, r.Idle.Reset, r.Idle.Other, r.Idle.Open)
			opened = r.Idle.Opened
		}
		failed := "0"
		if r.Failed > 0 {
			failed = fmt.Sprintf("%d (%s)", r.Failed, failKinds(r))
		}
		fmt.Fprintf(w, "| %s | %d (%d) | %s | %d | %s | %d | %s |\n", titleCell(r), r.IdleConns, opened, restartTimes(r),
			r.Requests, failed, r.Retries, ic)
	}
}

func writeSleepTable(w io.Writer, rep *report) {
	fmt.Fprintln(w, "| method | requests | failed, by kind | silent retries | restart: new serving / old gone ms | ±1 s of restart p50 / p99 / max ms |")
	fmt.Fprintln(w, "|---|---:|---|---:|---|---|")
	for _, r := range rep.Runs {
		if r.Scenario != "sleep" {
			continue
		}
		if r.Error != "" && r.Requests == 0 {
			fmt.Fprintf(w, "| %s | %s |||||\n", r.Title, r.Error)
			continue
		}
		fmt.Fprintf(w, "| %s | %d | %s | %d | %s | %s |\n", titleCell(r), r.Requests, failKinds(r), r.Retries, restartTimes(r), lat(r.NearRestart))
	}
}

// fdPassStuck reports whether a fd-passing restart showed the pitfall: the
// old instance left only at its hammer (the 10 s drain timeout).
func fdPassStuck(rep *report) bool {
	for _, r := range rep.Runs {
		if r.Method != "fdpass" {
			continue
		}
		for _, e := range r.Restarts {
			if e.OldGoneMs >= 9500 {
				return true
			}
		}
	}
	return false
}

func hasMethod(rep *report, name string) bool {
	for _, r := range rep.Runs {
		if r.Method == name {
			return true
		}
	}
	return false
}

// writeNotes writes the notes that apply to rep: a note about a method
// only when the run has it, the fd-passing pitfall only when a restart
// showed it, a warning for every restart that happened without load.
func writeNotes(w io.Writer, rep *report) {
	if n := restartsWithoutLoad(rep); n > 0 {
		fmt.Fprintf(w, "- **%d restarts happened without load** (the load had stopped before the old instance was gone; marked in the tables): their losses were not measured.\n", n)
	}
	if hasMethod(rep, "tableflip") || hasMethod(rep, "tableflip-careful") {
		fmt.Fprintln(w, "- *cloudflare/tableflip, as documented* drains as tableflip's README and example do: `Shutdown` as soon as `Exit()` is closed. `Shutdown` closes idle keep-alive connections at once, racing clients that send on them, and closes unanswered a request it reads just as it starts. *careful drain* is the same handover with the drain a careful user writes (the steps of changeover's `runner`): after `Exit()`, `Connection: close` on every response, close its own listener (the socket lives on in the new process), wait until its connections are gone or the 5 s keep-alive window has passed and until every accepted connection has sent its request, then `Shutdown`. The difference between the two rows is what the drain loses, not the handover.")
	}
	if hasMethod(rep, "fdpass") {
		fmt.Fprintln(w, "- *fd passing (grace/endless style)* is written in this bench the way facebookgo/grace and fvbock/endless work (fork/exec with the listener as fd 3, the child signals the parent once it serves, the parent drains with `Shutdown`); grace, endless and overseer are not served by the Go module proxy, so this row stands for them.")
	}
	if fdPassStuck(rep) {
		fmt.Fprintln(w, "- fd passing pitfall, as in grace/endless, seen in this run: `os.StartProcess` calls `Fd()` on the listener's `*os.File`, which puts the shared socket into blocking mode until the child sets it back; an `accept()` that the old process enters in that window blocks in the kernel, closing the listener does not wake it, and `Shutdown` waits for it. The old process then leaves only at its hammer (drain timeout 10 s, then exit): an old-gone time of about 11 s.")
	}
	if hasMethod(rep, "naive") {
		fmt.Fprintln(w, "- *naive SO_REUSEPORT*: start the new instance beside the old one, wait for it to print READY, SIGTERM the old one, which calls `Shutdown` at once: the design without the zero-loss work.")
	}
	fmt.Fprintln(w, "- A request counts as failed unless its answer is a complete 2xx whose body names the version and PID: *cut short* (the headers arrived, the body did not arrive whole), *4xx*, *5xx*, *no version/pid*, *not the bench's server* (the PID it names is not a process running the benchserver this run built), *refused*, *reset* and *EOF* (the connection was reset or closed before the answer's headers), *timeout* (5 s per request, 10 s for /sleep). *Silent retries* are requests that net/http's client sent again on a new connection, without reporting an error, after the server closed a reused keep-alive connection (counted with `httptrace`: each connection a request gets beyond the first): each is a request the server lost that a Go client hid; other clients may not retry. \"±1 s of restart\" counts requests that started within 1 s of a restart trigger; steady state is all other requests.")
	fmt.Fprintln(w, "- The load runs from before the first restart until the last old instance is gone plus a tail (at least 2 s).")
	fmt.Fprintln(w, "- Restart time: trigger (signal sent / command started) → first answer from a new PID on a fresh connection (a prober, every 5 ms) → old PID gone (/proc, zombies count as gone). Cutover seen by the load: trigger → start of the first load request answered by the new PID, and → start of the first request on a fresh connection from which on every request on a fresh connection was answered by the new PID (until the next trigger; \"-\" when the load opened none, as keep-alive clients rarely do).")
	if hasMethod(rep, "run") || hasMethod(rep, "swap") {
		fmt.Fprintln(w, "- Supervisor: changeover run is resident (peak RSS (VmHWM) and CPU seconds of the supervisor over the run, from /proc); changeover swap is one-shot (max peak RSS from /proc VmHWM, sampled every 5 ms, and mean CPU seconds per invocation from rusage); the other methods have no separate process.")
	}
	fmt.Fprintln(w, "- Loopback and shared cores: the load generator and the servers compete for the same CPUs, so throughput ratios are noisy (easily ±20% between runs): compare several runs before reading much into one ratio.")
}

func restartsWithoutLoad(rep *report) int {
	n := 0
	for _, r := range rep.Runs {
		n += countWithoutLoad(r)
	}
	return n
}

// meanMax formats the mean and max of the values >= 0 in vs as "mean; max"
// (ms, rounded), "-" if there is none.
func meanMax(vs []float64) string {
	var sum, mx float64
	n := 0
	for _, v := range vs {
		if v < 0 {
			continue
		}
		sum += v
		mx = max(mx, v)
		n++
	}
	if n == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f; %.0f", sum/float64(n), mx)
}

func loadCutover(r *runResult) string {
	if len(r.Restarts) == 0 {
		return "-"
	}
	var first, all []float64
	for _, e := range r.Restarts {
		first = append(first, e.FirstNewByLoadMs)
		all = append(all, e.AllNewByLoadMs)
	}
	return meanMax(first) + " / " + meanMax(all)
}

// failKinds lists the kinds that occurred, "kind N" each, in kindNames'
// order; "-" when there was no failure.
func failKinds(r *runResult) string {
	var parts []string
	for k := kindOK + 1; k < numKinds; k++ {
		if n := r.Failures[kindNames[k]]; n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", kindNames[k], n))
		}
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ", ")
}

func perRestart(r *runResult) string {
	if len(r.Restarts) == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f", r.PerRestart)
}

func lat(l latStats) string {
	if l.N == 0 {
		return "-"
	}
	return fmt.Sprintf("%s / %s / %s", fmtF(l.P50ms), fmtF(l.P99ms), fmtF(l.MaxMs))
}

func fmtF(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

func restartTimes(r *runResult) string {
	if len(r.Restarts) == 0 {
		return "-"
	}
	var sn, sg, mn, mg float64
	var nn, ng int
	for _, e := range r.Restarts {
		if e.NewServingMs >= 0 {
			sn += e.NewServingMs
			mn = max(mn, e.NewServingMs)
			nn++
		}
		if e.OldGoneMs >= 0 {
			sg += e.OldGoneMs
			mg = max(mg, e.OldGoneMs)
			ng++
		}
	}
	part := func(s, m float64, n int) string {
		if n == 0 {
			return "never"
		}
		return fmt.Sprintf("%.0f; %.0f", s/float64(n), m)
	}
	out := part(sn, mn, nn) + " / " + part(sg, mg, ng)
	if nn < len(r.Restarts) || ng < len(r.Restarts) {
		out += fmt.Sprintf(" (%d of %d restarts completed)", min(nn, ng), len(r.Restarts))
	}
	if n := countWithoutLoad(r); n > 0 {
		out += fmt.Sprintf(" (**%d without load**)", n)
	}
	return out
}

func sup(r *runResult) string {
	s := r.Supervisor
	if s == nil {
		if strings.HasPrefix(r.Method, "run") || r.Method == "swap" {
			return "?"
		}
		return "none"
	}
	if s.Kind == "per restart" {
		return fmt.Sprintf("%.1f MiB / %.3f s per swap", s.MaxRSSMB, s.CPUSec)
	}
	return fmt.Sprintf("%.1f MiB / %.2f s", s.MaxRSSMB, s.CPUSec)
}

func rps(r *runResult) string {
	if r.SteadyRPS == 0 {
		return "-"
	}
	if r.RelBare == 0 {
		return fmt.Sprintf("%.0f", r.SteadyRPS)
	}
	return fmt.Sprintf("%.0f (%.2f)", r.SteadyRPS, r.RelBare)
}

func countWithoutLoad(r *runResult) int {
	n := 0
	for _, e := range r.Restarts {
		if e.WithoutLoad {
			n++
		}
	}
	return n
}

// quantiles formats the p50, mean and max of the values >= 0 in vs as
// "p50; mean; max" (ms), with n, or "-".
func quantiles(vs []float64) string {
	var ok []float64
	for _, v := range vs {
		if v >= 0 {
			ok = append(ok, v)
		}
	}
	if len(ok) == 0 {
		return "-"
	}
	slices.Sort(ok)
	var sum float64
	for _, v := range ok {
		sum += v
	}
	p50 := ok[len(ok)/2]
	if len(ok)%2 == 0 {
		p50 = (ok[len(ok)/2-1] + ok[len(ok)/2]) / 2
	}
	return fmt.Sprintf("%s; %s; %s", fmtF(p50), fmtF(sum/float64(len(ok))), fmtF(ok[len(ok)-1]))
}

// writeCutoverTable is the cutover of every restarting method's load runs,
// from the load's own requests (start time, answering PID): trigger → the
// first request on a fresh connection from which on every request on a
// fresh connection went to the new instance, and → the first request
// answered by the new instance; p50, mean and max over the restarts, with
// the failures of the same runs.
func writeCutoverTable(w io.Writer, rep *report) {
	fmt.Fprintln(w, "| method | load | restarts | cutover: trigger → all new connections to the new instance, ms (p50; mean; max) | trigger → first answer from the new instance, ms (p50; mean; max) | failed / requests |")
	fmt.Fprintln(w, "|---|---|---:|---|---|---|")
	for _, r := range rep.Runs {
		if r.Scenario != "load" || len(r.Restarts) == 0 {
			continue
		}
		var all, first []float64
		for _, e := range r.Restarts {
			all = append(all, e.AllNewByLoadMs)
			first = append(first, e.FirstNewByLoadMs)
		}
		fmt.Fprintf(w, "| %s | %s | %d | %s | %s | %d / %d |\n", titleCell(r), modeTitles[r.Mode], len(r.Restarts),
			quantiles(all), quantiles(first), r.Failed, r.Requests)
	}
}

// writeHandoverTable is, for each method and number of idle keep-alive
// connections, every idle run's restart: trigger → the old instance holds
// no listening socket on the address (handed over), → the method's
// procedure returned (for changeover reload: the reload's own time), →
// the old instance gone.
func writeHandoverTable(w io.Writer, rep *report) {
	fmt.Fprintln(w, "| method | idle conns | runs | handed over: trigger → old instance holds no listener, ms (p50; mean; max) | trigger → its procedure returned, ms (p50; mean; max) | → old instance gone, ms (p50; mean; max) | load failed |")
	fmt.Fprintln(w, "|---|---:|---:|---|---|---|---:|")
	type key struct {
		method string
		idle   int
	}
	var keys []key
	rows := map[key][]*runResult{}
	for _, r := range rep.Runs {
		if r.Scenario != "idle" {
			continue
		}
		k := key{r.Method, r.IdleConns}
		if rows[k] == nil {
			keys = append(keys, k)
		}
		rows[k] = append(rows[k], r)
	}
	for _, k := range keys {
		var handed, trig, gone []float64
		failed := 0
		title := ""
		for _, r := range rows[k] {
			title = titleCell(r)
			failed += r.Failed
			for _, e := range r.Restarts {
				handed = append(handed, e.HandedOverMs)
				trig = append(trig, e.TriggerMs)
				gone = append(gone, e.OldGoneMs)
			}
		}
		fmt.Fprintf(w, "| %s | %d | %d | %s | %s | %s | %d |\n", title, k.idle, len(rows[k]), quantiles(handed), quantiles(trig), quantiles(gone), failed)
	}
}
