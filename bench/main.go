// Command bench restarts the same server under each restart method while
// clients load it over loopback, and prints what the clients saw.
//
//	cd bench && go run .          # full comparison
//	cd bench && go run . -quick   # short one, < 3 minutes on 2 cores
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

var (
	flagQuick    = flag.Bool("quick", false, "short run (under 3 minutes on 2 cores): fewer restarts, no idle-connection or /sleep runs")
	flagClients  = flag.Int("clients", 8, "concurrent clients")
	flagRestarts = flag.Int("restarts", 0, "restarts per run (default 10, -quick 2)")
	flagInterval = flag.Duration("interval", 0, "time between restarts (default 3s, -quick 2s)")
	flagMethods  = flag.String("methods", "", "comma list of methods (default all but run-reload): bare,run,run-reload,swap,tableflip,tableflip-careful,fdpass,naive,stopstart")
	flagScens    = flag.String("scenarios", "", "comma list of scenarios (default load,idle,sleep; -quick: load): load (restarts under load), idle (one restart with idle keep-alive connections open), sleep (one restart during 2 s requests)")
	flagIdle     = flag.String("idle", "100,1000,10000", "idle scenario: comma list of idle keep-alive connection counts (0: none)")
	flagIdleRuns = flag.Int("idle-runs", 1, "idle scenario: runs of each method at each count")
	flagModes    = flag.String("modes", "", "comma list of load modes (default all): newconn,keepalive,post")
	flagOut      = flag.String("out", "results", "directory for the JSON and SVG results")
	flagName     = flag.String("name", "", "name of the run and of its results files, NAME.json, NAME.md... (default full, -quick: quick)")
	flagTables   = flag.Bool("tables", false, "run no bench: regenerate the tables between <!-- bench:table NAME FILE BEGIN/END --> markers in the markdown files given as arguments, from the results JSON FILE (relative to bench/)")
)

var progressStart = time.Now()

// progress prints one line to stderr.
func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%6.1fs] %s\n", time.Since(progressStart).Seconds(), fmt.Sprintf(format, args...))
}

func main() {
	flag.Parse()
	code := 0
	func() {
		defer func() {
			if r := recover(); r != nil {
				tracked.killAll()
				panic(r)
			}
		}()
		code = run()
	}()
	tracked.killAll()
	os.Exit(code)
}

type report struct {
	Date       string `json:"date"`
	Kernel     string `json:"kernel"`
	CPUs       int    `json:"cpus"`
	MigrateReq string `json:"tcp_migrate_req"`
	GoVersion  string `json:"go_version"`
	// Commit is the repository's HEAD when the bench started; Dirty says
	// whether the work tree differed from it (DirtyPaths: git status
	// --porcelain, at most 20 lines), so a figure can be traced to code.
	Commit      string       `json:"commit"`
	Dirty       bool         `json:"dirty"`
	DirtyPaths  []string     `json:"dirty_paths,omitempty"`
	Quick       bool         `json:"quick"`
	Name        string       `json:"name,omitempty"` // -name: a focused run
	Scenarios   []string     `json:"scenarios,omitempty"`
	Clients     int          `json:"clients"`
	Restarts    int          `json:"restarts"`
	IntervalSec float64      `json:"interval_s"`
	Changeover  string       `json:"changeover"`
	ElapsedSec  float64      `json:"elapsed_s"`
	Runs        []*runResult `json:"runs"`
}

func run() int {
	if *flagTables {
		return runTables(flag.Args())
	}
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "unexpected arguments %q (only -tables takes files)\n", flag.Args())
		return 2
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	go func() {
		<-ctx.Done()
		// A second signal ends the bench at once, still killing what it started.
		c := make(chan os.Signal, 1)
		signal.Notify(c, os.Interrupt, syscall.SIGTERM)
		<-c
		tracked.killAll()
		os.Exit(130)
	}()

	restarts, interval := *flagRestarts, *flagInterval
	if restarts <= 0 {
		restarts = 10
		if *flagQuick {
			restarts = 2
		}
	}
	if interval <= 0 {
		interval = 3 * time.Second
		if *flagQuick {
			interval = 2 * time.Second
		}
	}
	if *flagClients < 1 || *flagClients > 1000 {
		fmt.Fprintln(os.Stderr, "-clients must be 1..1000")
		return 2
	}
	methods, err := pickMethods(*flagMethods)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	modes, err := pickModes(*flagModes)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if _, err := os.Stat(filepath.Join("cmd", "benchserver")); err != nil {
		fmt.Fprintln(os.Stderr, "run the bench from its directory: cd bench && go run .")
		return 2
	}
	raiseNoFile()

	tmp, err := os.MkdirTemp("", "changeover-bench-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	tracked.dir = tmp
	bc := &benchCtx{tmp: tmp, outDir: *flagOut}
	progress("building benchserver and changeover into %s", tmp)
	bc.serverBin = filepath.Join(tmp, "benchserver")
	bc.servers = newServerPIDs(bc.serverBin)
	if out, err := goBuild(".", bc.serverBin, "./cmd/benchserver"); err != nil {
		fmt.Fprintf(os.Stderr, "build benchserver: %v\n%s", err, out)
		return 1
	}
	needCO := false
	for _, m := range methods {
		needCO = needCO || m.needsChangeover
	}
	if needCO {
		bin := filepath.Join(tmp, "changeover")
		if out, err := goBuild("..", bin, "./cmd/changeover"); err != nil {
			bc.changeErr = "../cmd/changeover does not build (" + firstLine(out, err) + ")"
			progress("%s", bc.changeErr)
		} else {
			bc.changeover = bin
		}
	}

	commit, dirtyPaths, err := gitStamp("..")
	if err != nil {
		progress("no commit stamp: %v", err)
		commit = "unknown (" + err.Error() + ")"
	}
	rep := &report{
		Date: time.Now().UTC().Format(time.RFC3339), Kernel: kernel(), CPUs: runtime.NumCPU(),
		MigrateReq: readTrim("/proc/sys/net/ipv4/tcp_migrate_req"), GoVersion: runtime.Version(),
		Quick: *flagQuick, Clients: *flagClients, Restarts: restarts, IntervalSec: interval.Seconds(),
		Commit: commit, Dirty: len(dirtyPaths) > 0, DirtyPaths: dirtyPaths,
		Changeover: map[bool]string{true: "built from ../cmd/changeover", false: bc.changeErr}[bc.changeover != ""],
	}
	if !needCO {
		rep.Changeover = ""
	}
	if *flagName != "" {
		if strings.ContainsAny(*flagName, "/\\ ") || strings.HasPrefix(*flagName, ".") {
			fmt.Fprintf(os.Stderr, "-name %q: want a plain file name\n", *flagName)
			return 2
		}
		rep.Name = *flagName
	}

	var plan []func() *runResult
	warm := 2 * time.Second
	if *flagQuick {
		warm = 1500 * time.Millisecond
	}
	scens, err := pickScenarios(*flagScens, *flagQuick)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	idleCounts, err := pickCounts(*flagIdle)
	if err != nil || *flagIdleRuns < 1 {
		fmt.Fprintf(os.Stderr, "-idle wants counts such as 0,10000 and -idle-runs at least 1: %v\n", err)
		return 2
	}
	for _, sc := range []string{"load", "idle", "sleep"} {
		if scens[sc] {
			rep.Scenarios = append(rep.Scenarios, sc)
		}
	}
	for _, mode := range modes {
		if !scens["load"] {
			break
		}
		for _, mi := range methods {
			sc := scenario{name: "load", mode: mode, path: "/", clients: *flagClients, timeout: 5 * time.Second,
				warmup: warm, restarts: restarts, interval: interval, tail: max(interval, 2*time.Second)}
			plan = append(plan, func() *runResult { return runScenario(ctx, bc, mi, sc) })
		}
	}
	if scens["idle"] {
		for _, n := range idleCounts {
			for range *flagIdleRuns {
				for _, mi := range methods {
					if !mi.restart {
						continue
					}
					sc := scenario{name: "idle", mode: modeKeepAlive, path: "/", clients: *flagClients, timeout: 5 * time.Second,
						warmup: 1500 * time.Millisecond, restarts: 1, interval: 3 * time.Second, tail: 3 * time.Second, idleConns: n}
					plan = append(plan, func() *runResult { return runScenario(ctx, bc, mi, sc) })
				}
			}
		}
	}
	if scens["sleep"] {
		for _, mi := range methods {
			if !mi.restart {
				continue
			}
			sc := scenario{name: "sleep", mode: modeKeepAlive, path: "/sleep?duration=2s", clients: *flagClients,
				timeout: 10 * time.Second, warmup: 2500 * time.Millisecond, restarts: 1, interval: 5 * time.Second, tail: 4 * time.Second}
			plan = append(plan, func() *runResult { return runScenario(ctx, bc, mi, sc) })
		}
	}

	for i, f := range plan {
		if ctx.Err() != nil {
			break
		}
		r := f()
		rep.Runs = append(rep.Runs, r)
		status := fmt.Sprintf("%d requests, %d failed", r.Requests, r.Failed)
		if r.Error != "" {
			status += "; " + r.Error
		}
		progress("[%d/%d] %s %s %s: %s", i+1, len(plan), r.Scenario, r.Mode, r.Method, status)
	}
	relativeToBare(rep.Runs)
	rep.ElapsedSec = time.Since(progressStart).Seconds()

	printReport(os.Stdout, rep)

	if err := os.MkdirAll(*flagOut, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	prefix := "full"
	if *flagQuick {
		prefix = "quick"
	}
	if rep.Name != "" {
		prefix = rep.Name
	}
	jb, _ := json.MarshalIndent(rep, "", "  ")
	jpath := filepath.Join(*flagOut, prefix+".json")
	if err := os.WriteFile(jpath, jb, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var md strings.Builder
	printReport(&md, rep)
	mpath := filepath.Join(*flagOut, prefix+".md")
	if err := os.WriteFile(mpath, []byte(md.String()), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if !hasScenario(rep, "load") {
		// The plots show the load runs.
		progress("wrote %s and %s (%.0fs in all)", jpath, mpath, time.Since(progressStart).Seconds())
		if ctx.Err() != nil {
			return 130
		}
		return 0
	}
	hpath := filepath.Join(*flagOut, prefix+"-headline.svg")
	if err := writeHeadline(hpath, rep); err != nil {
		fmt.Fprintln(os.Stderr, "headline plot:", err)
		return 1
	}
	spath := filepath.Join(*flagOut, prefix+".svg")
	if err := writePlot(spath, rep, modes); err != nil {
		fmt.Fprintln(os.Stderr, "plot:", err)
		return 1
	}
	progress("wrote %s, %s, %s and %s (%.0fs in all)", jpath, mpath, hpath, spath, time.Since(progressStart).Seconds())
	if ctx.Err() != nil {
		return 130
	}
	return 0
}

// runTables is the -tables mode: regenerate the marked tables in files.
func runTables(files []string) int {
	if len(files) == 0 {
		fmt.Fprintf(os.Stderr, "-tables needs markdown files, e.g. go run . -tables ../README.md\nmarkers: <!-- bench:table NAME results/full.json BEGIN --> ... <!-- bench:table NAME END -->; NAME is one of %s\n", tableNames())
		return 2
	}
	changed, err := regenerateTables(".", files)
	for _, f := range changed {
		fmt.Fprintln(os.Stderr, "updated", f)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if len(changed) == 0 {
		fmt.Fprintln(os.Stderr, "tables already up to date")
	}
	return 0
}

func pickMethods(s string) ([]methodInfo, error) {
	if s == "" {
		var out []methodInfo
		for _, m := range methodInfos {
			if m.name != "run-reload" { // the same supervisor as run; asked for by name
				out = append(out, m)
			}
		}
		return out, nil
	}
	var out []methodInfo
	for _, n := range strings.Split(s, ",") {
		mi, ok := lookupMethod(strings.TrimSpace(n))
		if !ok {
			return nil, fmt.Errorf("unknown method %q", n)
		}
		out = append(out, mi)
	}
	return out, nil
}

func pickScenarios(s string, quick bool) (map[string]bool, error) {
	if s == "" {
		if quick {
			return map[string]bool{"load": true}, nil
		}
		return map[string]bool{"load": true, "idle": true, "sleep": true}, nil
	}
	out := map[string]bool{}
	for _, n := range strings.Split(s, ",") {
		n = strings.TrimSpace(n)
		if n != "load" && n != "idle" && n != "sleep" {
			return nil, fmt.Errorf("unknown scenario %q (load, idle, sleep)", n)
		}
		out[n] = true
	}
	return out, nil
}

func pickCounts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 0 || n > 100_000 {
			return nil, fmt.Errorf("bad count %q", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func pickModes(s string) ([]string, error) {
	if s == "" {
		return allModes, nil
	}
	var out []string
	for _, n := range strings.Split(s, ",") {
		n = strings.TrimSpace(n)
		if _, ok := modeTitles[n]; !ok {
			return nil, fmt.Errorf("unknown mode %q (newconn, keepalive, post)", n)
		}
		out = append(out, n)
	}
	return out, nil
}

func goBuild(dir, out, pkg string) ([]byte, error) {
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = dir
	return cmd.CombinedOutput()
}

// gitStamp returns the HEAD commit of the repository at dir and the lines of
// `git status --porcelain` (at most 20; untracked files count, since go
// build compiles them; ignored ones, such as earlier results, do not).
// It runs before the bench writes anything.
func gitStamp(dir string) (commit string, dirty []string, err error) {
	out, err := exec.Command("git", "-C", dir, "rev-parse", "HEAD").Output()
	if err != nil {
		return "", nil, fmt.Errorf("git -C %s rev-parse HEAD: %w", dir, err)
	}
	commit = strings.TrimSpace(string(out))
	out, err = exec.Command("git", "-C", dir, "status", "--porcelain").Output()
	if err != nil {
		return commit, nil, fmt.Errorf("git -C %s status: %w", dir, err)
	}
	for _, l := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		if l == "" {
			continue
		}
		if len(dirty) == 20 {
			dirty = append(dirty, "…")
			break
		}
		dirty = append(dirty, l)
	}
	return commit, dirty, nil
}

func firstLine(out []byte, err error) string {
	for _, l := range strings.Split(string(out), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			return l
		}
	}
	return err.Error()
}

func readTrim(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "unavailable (" + err.Error() + ")"
	}
	return strings.TrimSpace(string(b))
}

func kernel() string {
	var u syscall.Utsname
	if err := syscall.Uname(&u); err != nil {
		return "unknown"
	}
	var b []byte
	for _, c := range u.Release {
		if c == 0 {
			break
		}
		b = append(b, byte(c))
	}
	return string(b)
}

// raiseNoFile raises RLIMIT_NOFILE for the bench and, by inheritance, for
// the servers it starts (10,000 idle connections need ~10,000 fds on each side).
func raiseNoFile() {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return
	}
	want := uint64(65536)
	if l.Max < want {
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: want, Max: want}); err == nil {
			return
		}
		want = l.Max
	}
	_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: want, Max: l.Max})
}

func relativeToBare(runs []*runResult) {
	bare := map[string]float64{}
	for _, r := range runs {
		if r.Method == "bare" && r.Scenario == "load" && r.Error == "" {
			bare[r.Mode] = r.SteadyRPS
		}
	}
	for _, r := range runs {
		if b := bare[r.Mode]; b > 0 && r.Scenario == "load" && r.Error == "" {
			r.RelBare = r.SteadyRPS / b
		}
	}
}
