//go:build linux

package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/changeover-dev/changeover/internal/proc"
)

// Servers not built on runner, run for real from examples/: nginx (master
// and 3 workers, listen ... reuseport) and gunicorn (--reuse-port, 3 sync
// workers). What changeover can promise for them, and the tests assert:
// every reload succeeds; a request in flight at a reload finishes on the
// old generation when the stop signal is the server's graceful one (and is
// cut with nginx's TERM, its fast shutdown); after each reload every new
// connection is answered by the new generation (its version, from a worker
// of its process group); nothing is left running. What they cannot promise
// yet: the kernel resets the connections still queued on a listener that
// closes (tcp_migrate_req=0), so a few requests fail at reloads. Those are
// counted and reported (REALSERVER lines), not asserted; issue 13 removes
// them.

// envRealServerReloads overrides the number of reloads per server (the
// figures in docs/real-servers.md come from 20).
const envRealServerReloads = "CHANGEOVER_REALSERVER_RELOADS"

// envRealServerAll, set to 1, adds TestRealServers' cases that CI leaves
// out to keep its runtime (they run as subtests, not skipped ones).
const envRealServerAll = "CHANGEOVER_REALSERVER_ALL"

// realServer is how a test runs one server.
type realServer struct {
	name   string
	binary string // must be on PATH
	script string // examples/..., the COMMAND
	slow   string // path of a request that takes the seconds its duration parameter says
}

var (
	nginxServer    = realServer{"nginx", "nginx", "../../examples/nginx/run-nginx.sh", "/app/slow?duration=2"}
	gunicornServer = realServer{"gunicorn", "gunicorn", "../../examples/gunicorn/run-gunicorn.sh", "/slow?duration=2"}
)

// slowFor is how long the in-flight request takes (nginx: its upstream
// sleeps that long; gunicorn: the view does), as the paths above say.
const slowFor = 2 * time.Second

// cutFor is how long it takes where the stop signal is the server's fast
// shutdown and the request must be cut: longer than any reload's
// readiness on a loaded machine, so that it cannot end on its own first.
const cutFor = 20 * time.Second

// slowPath is s's in-flight request, lasting d.
func (s realServer) slowPath(d time.Duration) string {
	return strings.Replace(s.slow, "duration=2", fmt.Sprintf("duration=%d", int(d.Seconds())), 1)
}

// requireServer finds the server's binary. Missing, the test fails in CI
// (.ci/run installs it) and skips elsewhere, saying how to install it.
func requireServer(t *testing.T, s realServer) string {
	t.Helper()
	path, err := exec.LookPath(s.binary)
	if err == nil {
		return path
	}
	msg := fmt.Sprintf("%s not installed (%v): apt-get install nginx-light gunicorn, as .ci/run does", s.binary, err)
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// reloadCount is the number of reloads per server: def, or the variable.
func reloadCount(t *testing.T, def int) int {
	if v := os.Getenv(envRealServerReloads); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("%s=%q: want a positive number", envRealServerReloads, v)
		}
		return n
	}
	return def
}

// realEnv is one real-server test's world.
type realEnv struct {
	*env
	upstream string // the slow application behind nginx
	script   string
}

func newRealEnv(t *testing.T, s realServer) *realEnv {
	t.Helper()
	requireServer(t, s)
	e := newEnv(t)
	script, err := filepath.Abs(s.script)
	if err != nil {
		t.Fatal(err)
	}
	r := &realEnv{env: e, upstream: startSleeper(t), script: script}
	r.setVersion("v1")
	return r
}

// setVersion rewrites the env file the next generation reads.
func (r *realEnv) setVersion(v string) {
	lines := []string{
		"LISTEN_ADDR=" + r.addr, "APP_VERSION=" + v, "UPSTREAM_ADDR=" + r.upstream,
		"NGINX_RUN_DIR=" + filepath.Join(r.dir, "nginx"), "PYTHONDONTWRITEBYTECODE=1",
	}
	if err := os.WriteFile(r.envFile, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		r.t.Fatal(err)
	}
}

// startSleeper serves the application behind nginx on loopback: every
// request sleeps its duration parameter (seconds; slowFor without one),
// then answers "slept".
func startSleeper(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d := slowFor
		if s, err := strconv.Atoi(r.URL.Query().Get("duration")); err == nil {
			d = time.Duration(s) * time.Second
		}
		select {
		case <-time.After(d):
		case <-r.Context().Done():
			return
		}
		fmt.Fprintln(w, "slept")
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

// answer is who answered a request: the version and the PID.
type answer struct {
	version string
	pid     int
}

// ask sends GET path on a new connection and returns who answered, from
// the X-Version and X-Pid headers of a 200 response.
func ask(addr, path string) (answer, error) { return askWith(httpClient, addr, path) }

// askWith is ask through client.
func askWith(client *http.Client, addr, path string) (answer, error) {
	resp, err := client.Get("http://" + addr + path)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return answer{}, fmt.Errorf("body: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return answer{}, fmt.Errorf("status %s", resp.Status)
	}
	pid, _ := strconv.Atoi(resp.Header.Get("X-Pid"))
	a := answer{resp.Header.Get("X-Version"), pid}
	if a.version == "" || a.pid == 0 {
		return a, fmt.Errorf("no X-Version or X-Pid: %v", resp.Header)
	}
	return a, nil
}

// realLoad is a bounded load of clients opening a new connection per
// request, counting the answers per version and per PID, and the failures.
type realLoad struct {
	sent, failed atomic.Int64
	// delayed counts the requests answered after more than delayedAfter
	// (a SYN dropped and retransmitted), with a patient client only.
	delayed   atomic.Int64
	mu        sync.Mutex
	byVersion map[string]int
	byPID     map[int]int
	errs      []string
	stopc     chan struct{}
	wg        sync.WaitGroup
}

// startRealLoad runs clients until stop, for at most 50,000 requests each
// and at most limit, a millisecond apart.
func startRealLoad(t *testing.T, addr string, clients int, limit time.Duration) *realLoad {
	return runRealLoad(t, addr, clients, limit, 50000, time.Millisecond, httpClient)
}

// startPIDLoad is a saturating realLoad: no pause between requests, at
// most 200,000 each.
func startPIDLoad(t *testing.T, addr string, clients int, limit time.Duration) *realLoad {
	return runRealLoad(t, addr, clients, limit, 200000, 0, httpClient)
}

// patientTimeout is how long a patient client waits for an answer: past
// the second retransmission of a dropped SYN (1 s, then 2 s more: the
// kernel's initial RTO, doubled), where httpClient's 2 s end at the first.
// delayedAfter: an answer later than this came after a retransmitted SYN.
const (
	patientTimeout = 10 * time.Second
	delayedAfter   = 900 * time.Millisecond
)

// startPatientPIDLoad is startPIDLoad with clients that wait patientTimeout
// for each answer, counting those answered after delayedAfter as delayed
// rather than failed.
func startPatientPIDLoad(t *testing.T, addr string, clients int, limit time.Duration) *realLoad {
	patient := &http.Client{Timeout: patientTimeout, Transport: &http.Transport{DisableKeepAlives: true}}
	return runRealLoad(t, addr, clients, limit, 200000, 0, patient)
}

func runRealLoad(t *testing.T, addr string, clients int, limit time.Duration, perClient int, pace time.Duration, client *http.Client) *realLoad {
	l := &realLoad{byVersion: map[string]int{}, byPID: map[int]int{}, stopc: make(chan struct{})}
	for range clients {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			deadline := time.Now().Add(limit)
			for i := 0; i < perClient && time.Now().Before(deadline); i++ {
				select {
				case <-l.stopc:
					return
				default:
				}
				l.sent.Add(1)
				began := time.Now()
				a, err := askWith(client, addr, "/")
				if err == nil && time.Since(began) > delayedAfter {
					l.delayed.Add(1)
				}
				l.mu.Lock()
				if err != nil {
					l.failed.Add(1)
					if len(l.errs) < 5 {
						l.errs = append(l.errs, fmt.Sprintf("%s %v", time.Now().Format("15:04:05.000"), err))
					}
				} else {
					l.byVersion[a.version]++
					l.byPID[a.pid]++
				}
				l.mu.Unlock()
				if pace > 0 {
					time.Sleep(pace) // pacing, not a wait for a condition
				}
			}
		}()
	}
	t.Cleanup(l.stop)
	return l
}

func (l *realLoad) stop() {
	select {
	case <-l.stopc:
	default:
		close(l.stopc)
	}
	l.wg.Wait()
}

// inFlight is a request sent before a reload, on a connection the old
// generation has accepted.
type inFlight struct {
	done chan struct{}
	resp answer
	body string
	err  error
}

// startInFlight connects, sends GET path and waits until the connection has
// left the accept queue (a worker of the serving generation accepted it).
func startInFlight(t *testing.T, addr, path string) *inFlight {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	f := &inFlight{done: make(chan struct{})}
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", path); err != nil {
		t.Fatal(err)
	}
	accepted(t, addr)
	go func() {
		defer close(f.done)
		_ = c.SetDeadline(time.Now().Add(slowFor + 20*time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			f.err = err
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		f.body = strings.TrimSpace(string(b))
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("status %s", resp.Status)
		}
		f.err = err
		f.resp.version = resp.Header.Get("X-Version")
		f.resp.pid, _ = strconv.Atoi(resp.Header.Get("X-Pid"))
	}()
	return f
}

// pgidOf returns the process group of pid (0 if gone).
func pgidOf(pid int) int {
	st, err := proc.ReadStat(pid)
	if err != nil {
		return 0
	}
	return st.PGID
}

// answeredBy checks that n new connections are all answered by version,
// from processes of process group pgid.
func answeredBy(t *testing.T, addr string, n int, version string, pgid int) {
	t.Helper()
	pids := map[int]bool{}
	for i := range n {
		a, err := ask(addr, "/")
		if err == nil && a.version == version && pgidOf(a.pid) == pgid {
			pids[a.pid] = true
			continue
		}
		t.Errorf("request %d after the reload: %+v, %v; want version %s from process group %d", i, a, err, version, pgid)
		return
	}
}

// realOutcome is one run's figures.
type realOutcome struct {
	reloads        int
	sent, failed   int64
	inFlightResult string
}

// TestRealServers runs nginx and gunicorn from examples/ under changeover
// run with reloads under load (4 clients, a new connection per request),
// each with its own stop signal, and nginx also with --kill-mode main. The
// negative controls use each server's fast shutdown, under which the
// request in flight is cut (asserted): nginx with TERM, gunicorn with QUIT.
// gunicorn with TERM and --kill-mode main runs only with
// CHANGEOVER_REALSERVER_ALL=1.
func TestRealServers(t *testing.T) {
	for _, tc := range []struct {
		name         string
		server       realServer
		stopSignal   string
		killMode     string
		reloads      int
		slowSurvives bool // the in-flight request finishes on the old generation
		extra        bool // only with envRealServerAll=1
	}{
		{"nginx/QUIT", nginxServer, "QUIT", "group", 6, true, false},
		{"nginx/QUIT/kill-mode-main", nginxServer, "QUIT", "main", 3, true, false},
		{"nginx/TERM", nginxServer, "TERM", "group", 3, false, false},
		{"gunicorn/TERM", gunicornServer, "TERM", "group", 3, true, false},
		{"gunicorn/QUIT", gunicornServer, "QUIT", "group", 1, false, false},
		{"gunicorn/TERM/kill-mode-main", gunicornServer, "TERM", "main", 2, true, true},
	} {
		if tc.extra && os.Getenv(envRealServerAll) != "1" {
			continue // not a t.Skip: CI fails on a skipped real-server test
		}
		t.Run(tc.name, func(t *testing.T) {
			r := newRealEnv(t, tc.server)
			reloads := reloadCount(t, tc.reloads)
			start := time.Now()
			o := runRealServer(t, r, tc.server, reloads, tc.slowSurvives,
				"--stop-signal", tc.stopSignal, "--kill-mode", tc.killMode)
			t.Logf("REALSERVER %s --stop-signal %s --kill-mode %s: %d reloads, %d failed of %d requests; in-flight request: %s (%v)",
				tc.server.name, tc.stopSignal, tc.killMode, o.reloads, o.failed, o.sent, o.inFlightResult, time.Since(start).Round(100*time.Millisecond))
		})
	}
}

// runRealServer supervises the server, reloads it under load, and checks
// what can be promised (see the top of this file).
func runRealServer(t *testing.T, r *realEnv, s realServer, reloads int, slowSurvives bool, flags ...string) realOutcome {
	t.Helper()
	flags = append([]string{"--notify=false", "--health", "http://{health_addr}/",
		"--ready-timeout", "20s", "--drain-timeout", "10s"}, flags...)
	p := r.startCommand(r.script, flags...)
	st := r.waitServing(p, 1)
	var pgids []int
	t.Cleanup(func() {
		for _, g := range pgids {
			_ = syscall.Kill(-g, syscall.SIGKILL)
		}
	})
	g1, _ := genByNumber(st, 1)
	pgids = append(pgids, g1.PGID)
	answeredBy(t, r.addr, 10, "v1", g1.PGID)

	// A gunicorn reload takes about 8 s here (its master waits for its sync
	// workers); the load lasts for all of them, and no longer.
	load := startRealLoad(t, r.addr, 4, 30*time.Second+time.Duration(reloads)*15*time.Second)
	var o realOutcome
	// The generation that gets the slow request: one that is reloaded
	// (1..reloads), also when reloads is 1.
	inFlightAt := 1 + reloads/2
	var slow *inFlight
	for gen := 2; gen <= reloads+1; gen++ {
		want := load.sent.Load() + 100
		waitFor(t, 20*time.Second, "load progress", func() bool { return load.sent.Load() >= want })
		if gen-1 == inFlightAt {
			d := slowFor
			if !slowSurvives {
				d = cutFor
			}
			slow = startInFlight(t, r.addr, s.slowPath(d))
		}
		version := fmt.Sprintf("v%d", gen)
		r.setVersion(version)
		if code, _, stderr := cli("reload", "--control", r.sock); code != 0 {
			t.Fatalf("reload to generation %d: exit %d: %s\nrun stderr:\n%s", gen, code, stderr, p.stderr.String())
		}
		o.reloads++
		st := r.waitServing(p, gen)
		g, _ := genByNumber(st, gen)
		pgids = append(pgids, g.PGID)
		prev, _ := genByNumber(st, gen-1)
		groupGone(t, prev.PGID)
		answeredBy(t, r.addr, 20, version, g.PGID)
	}
	load.stop()
	o.sent, o.failed = load.sent.Load(), load.failed.Load()
	versions := make([]string, 0, len(load.byVersion))
	for v := range load.byVersion {
		versions = append(versions, fmt.Sprintf("%s:%d", v, load.byVersion[v]))
	}
	sort.Strings(versions)
	t.Logf("load: %d sent, %d failed (counted, not asserted: issue 13) %v; answers per version %v",
		o.sent, o.failed, load.errs, versions)
	if o.sent == 0 || len(load.byVersion) < 2 {
		t.Errorf("the load saw %d versions over %d requests", len(load.byVersion), o.sent)
	}

	if slow == nil {
		t.Errorf("no in-flight request was sent (generation %d of %d reloads): nothing asserted about it", inFlightAt, reloads)
	} else {
		select {
		case <-slow.done:
		case <-time.After(cutFor + 20*time.Second):
			t.Fatal("the in-flight request never ended")
		}
		wantVersion := fmt.Sprintf("v%d", inFlightAt)
		o.inFlightResult = fmt.Sprintf("%+v %q %v", slow.resp, slow.body, slow.err)
		switch {
		case slowSurvives && (slow.err != nil || slow.resp.version != wantVersion):
			t.Errorf("in-flight request across the reload of %s: %s; want a 200 from %s", wantVersion, o.inFlightResult, wantVersion)
		case !slowSurvives && slow.err == nil:
			t.Errorf("in-flight request finished (%s), but this stop signal is the server's fast shutdown: it should be cut", o.inFlightResult)
		}
		if slow.err == nil {
			o.inFlightResult = "finished on " + slow.resp.version
		} else {
			o.inFlightResult = "cut: " + slow.err.Error()
		}
	}

	// Stop: run drains the last generation and exits 0; nothing is left.
	p.cancel()
	if err := p.wait(t, 20*time.Second); err != nil {
		t.Errorf("run after stop: %v", err)
	}
	for _, g := range pgids {
		if m := proc.GroupMembers(g); len(m) > 0 {
			t.Errorf("process group %d still has %v after run returned", g, m)
		}
	}
	return o
}

// TestRealServerSwap: nginx deployed twice with swap --stop-signal QUIT
// under load: the second swap succeeds, a request in flight finishes on the
// first version, every new connection goes to the second, and the first
// generation's processes are gone.
func TestRealServerSwap(t *testing.T) {
	r := newRealEnv(t, nginxServer)
	pidfile := filepath.Join(r.dir, "nginx.pid")
	var pids []int
	t.Cleanup(func() {
		for _, pid := range pids {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
		}
	})
	swap := func(version string) {
		t.Helper()
		r.setVersion(version)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var out, errb syncBuffer
		err := run(ctx, []string{"swap", "--pidfile", pidfile, "--env-file", r.envFile,
			"--notify=false", "--health", "http://{health_addr}/", "--stop-signal", "QUIT",
			"--ready-timeout", "20s", "--drain-timeout", "10s", "--", r.script}, &out, &errb)
		if f := readPidfile(t, pidfile); len(f) > 0 {
			pid, _ := strconv.Atoi(f[0])
			pids = append(pids, pid)
		}
		if err != nil {
			t.Fatalf("swap %s: %v\n%s", version, err, errb.String())
		}
		t.Logf("swap %s: %s", version, strings.TrimSpace(out.String()))
	}
	swap("v1")
	answeredBy(t, r.addr, 10, "v1", pids[0])
	load := startRealLoad(t, r.addr, 4, time.Minute)
	waitFor(t, 20*time.Second, "load progress", func() bool { return load.sent.Load() >= 100 })
	slow := startInFlight(t, r.addr, nginxServer.slow)
	swap("v2")
	answeredBy(t, r.addr, 20, "v2", pids[1])
	load.stop()
	<-slow.done
	if slow.err != nil || slow.resp.version != "v1" {
		t.Errorf("in-flight request across the swap: %+v %q %v; want a 200 from v1", slow.resp, slow.body, slow.err)
	}
	// The first nginx was a child of the first swap, which returned: in this
	// test process nobody reaps its master, so look for live members only.
	waitFor(t, 5*time.Second, "no live process in v1's group", func() bool {
		return len(proc.GroupMembers(pids[0])) == 0
	})
	t.Logf("REALSERVER nginx swap --stop-signal QUIT: %d failed of %d requests; in-flight request finished on %s",
		load.failed.Load(), load.sent.Load(), slow.resp.version)
}
