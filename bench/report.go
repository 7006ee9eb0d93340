package main

import (
	"fmt"
	"io"
	"strings"
)

func printReport(w io.Writer, rep *report, modes []string) {
	fmt.Fprintf(w, "# changeover restart benchmark\n\n")
	fmt.Fprintf(w, "- date: %s\n- kernel (uname -r): %s\n- CPUs: %d\n- net.ipv4.tcp_migrate_req: %s\n- go: %s\n",
		rep.Date, rep.Kernel, rep.CPUs, rep.MigrateReq, rep.GoVersion)
	kind := "full"
	if rep.Quick {
		kind = "quick (-quick)"
	}
	fmt.Fprintf(w, "- run: %s; %d clients on 127.0.0.1; %d restarts, one every %gs; %.0fs in all\n",
		kind, rep.Clients, rep.Restarts, rep.IntervalSec, rep.ElapsedSec)
	fmt.Fprintf(w, "- changeover CLI: %s\n\n", rep.Changeover)

	for _, mode := range modes {
		fmt.Fprintf(w, "## %s\n\n", modeTitles[mode])
		fmt.Fprintln(w, "| method | requests | failed, by kind | failed per 1000 | failed per restart | silent retries | steady p50 / p99 / max ms | ±1 s of restart p50 / p99 / max ms | restart: new serving / old gone ms (mean; max) | supervisor RSS / CPU | steady req/s (vs bare) |")
		fmt.Fprintln(w, "|---|---:|---|---:|---:|---:|---|---|---|---|---|")
		for _, r := range rep.Runs {
			if r.Scenario != "load" || r.Mode != mode {
				continue
			}
			if r.Error != "" && r.Requests == 0 {
				fmt.Fprintf(w, "| %s | %s |||||||||\n", r.Title, r.Error)
				continue
			}
			title := r.Title
			if r.Error != "" {
				title += " (**error: " + r.Error + "**)"
			}
			fmt.Fprintf(w, "| %s | %d | %s | %.2f | %s | %d | %s | %s | %s | %s | %s |\n",
				title, r.Requests, failKinds(r), r.Per1000, perRestart(r), r.Retries, lat(r.Steady), lat(r.NearRestart),
				restartTimes(r), sup(r), rps(r))
		}
		fmt.Fprintln(w)
	}

	var idle, sleep []*runResult
	for _, r := range rep.Runs {
		switch r.Scenario {
		case "idle":
			idle = append(idle, r)
		case "sleep":
			sleep = append(sleep, r)
		}
	}
	if len(idle) > 0 {
		fmt.Fprintf(w, "## Idle keep-alive connections open at the restart (keep-alive GET load, 1 restart)\n\n")
		fmt.Fprintln(w, "| method | idle conns (opened) | restart: new serving / old gone ms | load requests | load failed (by kind) | silent retries | idle conns closed FIN / RST / other / still open |")
		fmt.Fprintln(w, "|---|---|---|---:|---|---:|---|")
		for _, r := range idle {
			if r.Error != "" && r.Requests == 0 {
				fmt.Fprintf(w, "| %s | %d | %s ||||\n", r.Title, r.IdleConns, r.Error)
				continue
			}
			ic := "-"
			opened := 0
			if r.Idle != nil {
				ic = fmt.Sprintf("%d / %d / %d / %d", r.Idle.FIN, r.Idle.Reset, r.Idle.Other, r.Idle.Open)
				opened = r.Idle.Opened
			}
			title := r.Title
			if r.Error != "" {
				title += " (**error: " + r.Error + "**)"
			}
			fmt.Fprintf(w, "| %s | %d (%d) | %s | %d | %d (%s) | %d | %s |\n", title, r.IdleConns, opened, restartTimes(r),
				r.Requests, r.Failed, failKinds(r), r.Retries, ic)
		}
		fmt.Fprintln(w)
	}
	if len(sleep) > 0 {
		fmt.Fprintf(w, "## Long in-flight requests (keep-alive GET /sleep?duration=2s, 1 restart)\n\n")
		fmt.Fprintln(w, "| method | requests | failed, by kind | silent retries | restart: new serving / old gone ms | ±1 s of restart p50 / p99 / max ms |")
		fmt.Fprintln(w, "|---|---:|---|---:|---|---|")
		for _, r := range sleep {
			if r.Error != "" && r.Requests == 0 {
				fmt.Fprintf(w, "| %s | %s ||||\n", r.Title, r.Error)
				continue
			}
			title := r.Title
			if r.Error != "" {
				title += " (**error: " + r.Error + "**)"
			}
			fmt.Fprintf(w, "| %s | %d | %s | %d | %s | %s |\n", title, r.Requests, failKinds(r), r.Retries, restartTimes(r), lat(r.NearRestart))
		}
		fmt.Fprintln(w)
	}

	fmt.Fprintln(w, "Notes:")
	fmt.Fprintln(w, "- *fd passing (grace/endless style)* is written in this bench the way facebookgo/grace and fvbock/endless work (fork/exec with the listener as fd 3, the child signals the parent once it serves, the parent drains with Shutdown); grace, endless and overseer are not served by the Go module proxy, so this row stands for them.")
	fmt.Fprintln(w, "- fd passing pitfall, as in grace/endless: os.StartProcess calls Fd() on the listener's *os.File, which puts the shared socket into blocking mode until the child sets it back; an accept() that the old process enters in that window blocks in the kernel, closing the listener does not wake it, and Shutdown waits for it. The old process then leaves only at its hammer (drain timeout 10 s, then exit), which shows as an old-gone time of about 11 s.")
	fmt.Fprintln(w, "- *naive SO_REUSEPORT*: start the new instance beside the old one, wait for it to print READY, SIGTERM the old one, which calls Shutdown at once: the design without the zero-loss work.")
	fmt.Fprintln(w, "- Failures are counted per request as the Go client saw them (net/http retries some idempotent requests on a keep-alive connection that the server closed; those retries are invisible here, as they are to a Go client). \"±1 s of restart\" counts requests that started within 1 s of a restart trigger; steady state is all other requests.")
	fmt.Fprintln(w, "- Restart time: trigger (signal sent / command started) → first answer from a new PID on a fresh connection (polled every 5 ms) → old PID gone (/proc, zombies count as gone).")
	fmt.Fprintln(w, "- Supervisor: changeover run is resident (peak RSS (VmHWM) and CPU seconds of the supervisor over the run, from /proc); changeover swap is one-shot (max peak RSS from /proc VmHWM, sampled every 5 ms, and mean CPU seconds per invocation from rusage); the other methods have no separate process.")
	fmt.Fprintln(w, "- Loopback and 2 shared cores: the load generator and the servers compete for the same CPUs, so throughput ratios are noisy (easily ±20% between runs): compare several runs before reading much into one ratio.")
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
