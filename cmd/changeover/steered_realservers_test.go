//go:build linux

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/changeover-dev/changeover/internal/control"
	"github.com/changeover-dev/changeover/internal/netnstest"
	"github.com/changeover-dev/changeover/internal/proc"
	"github.com/changeover-dev/changeover/internal/supervisor"
	"github.com/changeover-dev/changeover/reuseport"
)

// nginx, gunicorn and others under `changeover run`, with the supervisor
// owning the reuseport group's steering program through placeholder
// members (issue 13): a new generation joins dark and gets no connection
// before it is ready, the old one gets its stop signal only once the port
// is steered away from it and its accept queues are empty, and a
// generation that never becomes ready costs nothing. The supervisor runs
// as uid 65534 (no privilege), the servers as that uid too.
//
// The control is the same scenario on the kernel path (--steering kernel):
// the new generation takes connections as soon as it listens (who answered
// is read from X-Pid), and the connections queued on the old generation's
// listeners when they close are reset.

// steeredCase is one row of TestRealServersSteered.
type steeredCase struct {
	name    string
	server  realServer
	workers []int // nginx worker_processes per generation, cycled (nil: the default 3)
	reloads int   // default; CHANGEOVER_REALSERVER_RELOADS overrides it
	kernel  bool  // the control: --steering kernel
	extra   bool  // only with CHANGEOVER_REALSERVER_ALL=1 (the before figures of the other servers)
}

// steeredClients is the number of clients of the saturating load, each
// opening a new connection per request with no pause.
const steeredClients = 6

// TestRealServersSteered: every reload of nginx (3 workers; 4 to 2 and 2
// to 4) and gunicorn under a saturating load of new connections loses no
// request, no generation answers before it is ready, and a generation that
// never becomes ready costs nothing; the kernel-path control loses and lets
// new generations answer early.
func TestRealServersSteered(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run the supervisor as uid 65534, a user without privilege")
	}
	for _, tc := range []steeredCase{
		{name: "nginx/3-workers", server: nginxServer, reloads: 4},
		{name: "nginx/4-2-workers", server: nginxServer, workers: []int{4, 2}, reloads: 4},
		{name: "gunicorn", server: gunicornServer, reloads: 2},
		{name: "nginx/4-2-workers/kernel-path-control", server: nginxServer, workers: []int{4, 2}, reloads: 4, kernel: true},
		{name: "nginx/3-workers/kernel-path-control", server: nginxServer, reloads: 4, kernel: true, extra: true},
		{name: "gunicorn/kernel-path-control", server: gunicornServer, reloads: 2, kernel: true, extra: true},
	} {
		if tc.extra && os.Getenv(envRealServerAll) != "1" {
			continue // not a t.Skip: CI fails on a skipped real-server test
		}
		t.Run(tc.name, func(t *testing.T) {
			requireServer(t, tc.server)
			o := runSteered(t, tc)
			t.Logf("REALSERVER-STEERED %s: %d reloads, %d failed of %d requests; %d answers from a generation before it was ready; never-ready generation: %d failed, %d answers from it",
				tc.name, o.reloads, o.failed, o.sent, o.early, o.neverFailed, o.neverAnswers)
			switch {
			case !tc.kernel && (o.failed != 0 || o.early != 0 || o.neverAnswers != 0 || o.neverFailed != 0 || o.notQuiet != 0):
				t.Errorf("steered by the supervisor: %d failed requests (%v), %d answers before ready, %d from the never-ready generation, %d failed around it, %d cutovers never quiet: want 0 each",
					o.failed, o.errs, o.early, o.neverAnswers, o.neverFailed, o.notQuiet)
			case tc.kernel && o.early == 0:
				t.Errorf("kernel path: no answer from a generation before it was ready over %d reloads: the control does not see what it should", o.reloads)
			case tc.kernel && o.failed == 0:
				t.Errorf("kernel path: no failed request over %d reloads: the control does not lose", o.reloads)
			}
		})
	}
}

// steeredOutcome is one run's figures.
type steeredOutcome struct {
	reloads      int
	sent, failed int64
	errs         []string
	early        int // answers from a generation's processes before it was ready
	neverAnswers int // answers from the never-ready generation's processes
	neverFailed  int64
	// notQuiet: cutovers whose old listeners were never seen quiet, so
	// that the stop signal waited for the deadline (a placeholder's plug
	// counted as the old generation's queue did that to every reload).
	notQuiet int
}

// nobodyWorld is a test's files, owned by uid 65534: the env file, the
// control socket, the ready files and the servers' run directory.
type nobodyWorld struct {
	t        *testing.T
	dir      string
	addr     string
	envFile  string
	sock     string
	script   string
	upstream string
	out      fileOut
	// listen is the next generation's listen directive (LISTEN_ADDR,
	// nginx's "listen ... reuseport"); "": addr.
	listen string
}

func newNobodyWorld(t *testing.T, s realServer) *nobodyWorld {
	t.Helper()
	dir, err := os.MkdirTemp("", "changeover-steered")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, nobodyUID, nobodyUID); err != nil {
		t.Fatal(err)
	}
	script, err := filepath.Abs(s.script)
	if err != nil {
		t.Fatal(err)
	}
	return &nobodyWorld{t: t, dir: dir, addr: freeAddr(t), envFile: filepath.Join(dir, "env"),
		sock: filepath.Join(dir, "c.sock"), script: script, upstream: startSleeper(t),
		out: fileOut(filepath.Join(dir, "out"))}
}

// setVersion writes the env file the next generation reads.
func (w *nobodyWorld) setVersion(version string, workers int) {
	listen := w.listen
	if listen == "" {
		listen = w.addr
	}
	lines := []string{
		"LISTEN_ADDR=" + listen, "APP_VERSION=" + version, "UPSTREAM_ADDR=" + w.upstream,
		"NGINX_RUN_DIR=" + filepath.Join(w.dir, "nginx"), "PYTHONDONTWRITEBYTECODE=1",
		"NGINX_WORKERS=" + strconv.Itoa(workers),
	}
	if err := os.WriteFile(w.envFile, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		w.t.Fatal(err)
	}
}

// ready lets generation gen pass its readiness gate.
func (w *nobodyWorld) ready(gen int) {
	if err := os.WriteFile(w.readyFile(gen), nil, 0o644); err != nil {
		w.t.Fatal(err)
	}
}

func (w *nobodyWorld) readyFile(gen int) string {
	return filepath.Join(w.dir, "ready-"+strconv.Itoa(gen))
}

func (w *nobodyWorld) status() (supervisor.Status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := control.Call(ctx, w.sock, control.Request{Op: "status"})
	if err != nil {
		return supervisor.Status{}, err
	}
	var st supervisor.Status
	err = json.Unmarshal(resp.Body, &st)
	return st, err
}

// startSupervisor runs `changeover run` as uid 65534 and returns it; the
// test's cleanup kills the generations it reported and then it.
func (w *nobodyWorld) startSupervisor(flags ...string) (*exec.Cmd, chan struct{}) {
	t := w.t
	args := append([]string{"run", "--control", w.sock, "--env-file", w.envFile}, flags...)
	cmd := asNobody(t, append(append(args, "--"), w.script)...)
	cmd.Env = append(cmd.Env, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	f, err := os.OpenFile(string(w.out), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	var pgids sync.Map
	t.Cleanup(func() {
		// Only the groups that this supervisor, which we started, reports.
		if st, err := w.status(); err == nil {
			for _, g := range st.Generations {
				pgids.Store(g.PGID, true)
			}
		}
		_ = cmd.Process.Kill()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
		}
		pgids.Range(func(k, _ any) bool {
			if g := k.(int); g > 1 {
				_ = syscall.Kill(-g, syscall.SIGKILL)
			}
			return true
		})
	})
	return cmd, done
}

// waitServing waits until generation gen serves (and no reload runs).
func (w *nobodyWorld) waitServing(done chan struct{}, gen int) supervisor.GenStatus {
	w.t.Helper()
	var g supervisor.GenStatus
	waitFor(w.t, 30*time.Second, fmt.Sprintf("generation %d serving", gen), func() bool {
		select {
		case <-done:
			w.t.Fatalf("run exited early:\n%s", w.out.String())
		default:
		}
		st, err := w.status()
		if err != nil || st.Serving != gen || st.Reloading {
			return false
		}
		g, _ = genByNumber(st, gen)
		return true
	})
	return g
}

// from counts the answers given so far by the processes of pids.
func (l *realLoad) from(pids []int) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, p := range pids {
		n += l.byPID[p]
	}
	return n
}

// progress waits until the load has sent n more requests.
func (l *realLoad) progress(t *testing.T, n int64) {
	t.Helper()
	want := l.sent.Load() + n
	waitFor(t, 30*time.Second, "load progress", func() bool { return l.sent.Load() >= want })
}

// runSteered runs one case: generation 1, then reloads under load, each new
// generation held not ready until its dark window has seen 300 requests,
// and once in the middle a generation that never becomes ready.
func runSteered(t *testing.T, tc steeredCase) steeredOutcome {
	w := newNobodyWorld(t, tc.server)
	reloads := reloadCount(t, tc.reloads)
	workers := func(gen int) int {
		if len(tc.workers) == 0 {
			return 3
		}
		return tc.workers[(gen-1)%len(tc.workers)]
	}
	flags := []string{"--notify=false", "--health", "http://{health_addr}/",
		"--health", "exec:test -e " + w.dir + "/ready-$CHANGEOVER_GENERATION",
		"--ready-timeout", "10s", "--drain-timeout", "10s"}
	if tc.server.name == "nginx" {
		flags = append(flags, "--stop-signal", "QUIT")
	}
	if tc.kernel {
		flags = append(flags, "--steering", "kernel")
	}
	gen := 1
	w.setVersion("v1", workers(1))
	w.ready(1)
	cmd, done := w.startSupervisor(flags...)
	g := w.waitServing(done, 1)
	answeredBy(t, w.addr, 10, "v1", g.PGID)

	load := startPIDLoad(t, w.addr, steeredClients, 60*time.Second+time.Duration(reloads)*20*time.Second)
	var o steeredOutcome
	neverAt := 1 + reloads/2 // after this many reloads, one generation never becomes ready
	for r := 1; r <= reloads; r++ {
		if r == neverAt {
			gen++
			before := load.failed.Load()
			answers, code := steeredReload(t, w, load, gen, false)
			if code == 0 {
				t.Fatalf("the reload to never-ready generation %d succeeded", gen)
			}
			o.neverAnswers = answers
			load.progress(t, 300) // the load goes on after its failure
			o.neverFailed = load.failed.Load() - before
		}
		gen++
		version := fmt.Sprintf("v%d", gen)
		w.setVersion(version, workers(gen))
		answers, code := steeredReload(t, w, load, gen, true)
		if code != 0 {
			t.Fatalf("reload to generation %d: exit %d\n%s", gen, code, w.out.String())
		}
		o.early += answers
		o.reloads++
		g := w.waitServing(done, gen)
		answeredBy(t, w.addr, 20, version, g.PGID)
	}
	load.stop()
	o.sent, o.failed, o.errs = load.sent.Load(), load.failed.Load(), load.errs
	pids := make([]string, 0, len(load.byPID))
	for p, n := range load.byPID {
		pids = append(pids, fmt.Sprintf("%d:%d", p, n))
	}
	sort.Strings(pids)
	t.Logf("load: %d sent, %d failed %v; answers per pid %v", o.sent, o.failed, o.errs, pids)

	// Stop: run drains the last generation and exits 0.
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
		if code := cmd.ProcessState.ExitCode(); code != 0 {
			t.Errorf("run exited %d after SIGTERM:\n%s", code, w.out.String())
		}
	case <-time.After(30 * time.Second):
		t.Errorf("run did not exit within 30s of SIGTERM")
	}
	o.notQuiet = strings.Count(w.out.String(), "listeners were not quiet by the deadline")
	if t.Failed() || o.failed > 0 || o.notQuiet > 0 {
		t.Logf("run output:\n%s", w.out.String())
	}
	return o
}

// steeredReload starts a reload to generation gen, waits until gen listens
// on the shared address and the load has sent 300 more requests, counts
// the answers its processes gave meanwhile, then lets it become ready (if
// ready) and returns the reload's exit code.
func steeredReload(t *testing.T, w *nobodyWorld, load *realLoad, gen int, ready bool) (early, code int) {
	t.Helper()
	type result struct {
		code        int
		out, stderr string
	}
	res := make(chan result, 1)
	go func() {
		c, out, stderr := cli("reload", "--control", w.sock)
		res <- result{c, out, stderr}
	}()
	var pgid int
	waitFor(t, 30*time.Second, fmt.Sprintf("generation %d listening on %s", gen, w.addr), func() bool {
		st, err := w.status()
		if err != nil {
			return false
		}
		g, ok := genByNumber(st, gen)
		if !ok || g.PGID == 0 {
			return false
		}
		pgid = g.PGID
		addrs, err := proc.GroupListenAddrs(pgid)
		return err == nil && slices.ContainsFunc(addrs, func(a netip.AddrPort) bool { return a.String() == w.addr })
	})
	load.progress(t, 300)
	early = load.from(proc.GroupMembers(pgid))
	if ready {
		w.ready(gen)
	}
	select {
	case r := <-res:
		if r.code != 0 && ready {
			t.Logf("reload to generation %d: %s %s", gen, r.out, r.stderr)
		}
		return early, r.code
	case <-time.After(40 * time.Second):
		t.Fatalf("reload to generation %d did not return in 40s\n%s", gen, w.out.String())
	}
	return early, -1
}

// TestSteeringFallbackOtherUID: the supervisor runs as root and nginx as
// uid 65534 (setpriv), so the kernel refuses the supervisor's placeholders
// (it groups only sockets of one effective uid). The reload still works,
// through the kernel path; the log says why in one line, and status shows
// the path of the handover.
func TestSteeringFallbackOtherUID(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run the server as another uid than the supervisor")
	}
	requireServer(t, nginxServer)
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skipf("setpriv (util-linux) not installed: %v", err)
	}
	w := newNobodyWorld(t, nginxServer)
	w.sock = filepath.Join(t.TempDir(), "c.sock") // the supervisor is root here
	w.setVersion("v1", 2)
	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr syncBuffer
	errc := make(chan error, 1)
	args := []string{"run", "--control", w.sock, "--env-file", w.envFile, "--notify=false",
		"--health", "http://{health_addr}/", "--stop-signal", "QUIT", "--ready-timeout", "20s", "--drain-timeout", "10s",
		"--", setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", w.script}
	go func() { errc <- run(ctx, args, &stdout, &stderr) }()
	var pgids []int
	t.Cleanup(func() {
		cancel()
		select {
		case <-errc:
		case <-time.After(20 * time.Second):
		}
		for _, g := range pgids {
			_ = syscall.Kill(-g, syscall.SIGKILL)
		}
	})
	serving := func(gen int) supervisor.GenStatus {
		var g supervisor.GenStatus
		waitFor(t, 30*time.Second, fmt.Sprintf("generation %d serving", gen), func() bool {
			st, err := w.status()
			if err != nil || st.Serving != gen || st.Reloading {
				return false
			}
			g, _ = genByNumber(st, gen)
			return true
		})
		pgids = append(pgids, g.PGID)
		return g
	}
	g1 := serving(1)
	answeredBy(t, w.addr, 5, "v1", g1.PGID)
	w.setVersion("v2", 2)
	if code, _, errb := cli("reload", "--control", w.sock); code != 0 {
		t.Fatalf("reload: exit %d: %s\n%s", code, errb, stderr.String())
	}
	g2 := serving(2)
	// The kernel path: the old generation's sockets may linger a moment
	// after its processes let go of them, and reset what reaches them.
	groupGone(t, g1.PGID)
	answeredBy(t, w.addr, 5, "v2", g2.PGID)
	if g2.Handover != supervisor.PathKernel || g1.Handover != "" {
		t.Errorf("handover paths: generation 1 %q, 2 %q; want \"\" and %q", g1.Handover, g2.Handover, supervisor.PathKernel)
	}
	var lines []string
	for _, l := range strings.Split(stderr.String(), "\n") {
		if strings.Contains(l, "handover through the kernel path") {
			lines = append(lines, l)
		}
	}
	want := "belong to uid 65534 and this process runs as uid 0"
	if len(lines) != 1 || !strings.Contains(lines[0], "generation=2") || !strings.Contains(lines[0], want) {
		t.Errorf("log lines about the kernel path: %q; want one for generation 2 saying %q\n%s", lines, want, stderr.String())
	}
	if code, out, _ := cli("status", "--control", w.sock); code != 0 || !regexp.MustCompile(`(?m)^2 +\d+ +serving +\S+ +\S+ +kernel +-$`).MatchString(out) {
		t.Errorf("status: exit %d\n%s\nwant generation 2's handover shown as kernel", code, out)
	}
}

// TestSharedPortProbe: nginx has no health address of its own, so its
// probe is on the shared port (--health http://ADDR/healthz). With the
// supervisor steering, the probe's connections come from the supervisor's
// probe address and the group routes them to the new generation: a reload
// succeeds while the old generation answers /healthz with 503, and fails
// while the new one does, though the old one answers 200. The control,
// --steering kernel, refuses such a probe, as the old one would answer it.
func TestSharedPortProbe(t *testing.T) {
	requireServer(t, nginxServer)
	for _, steering := range []string{"supervisor", "kernel"} {
		t.Run(steering, func(t *testing.T) {
			r := newRealEnv(t, nginxServer)
			// nginx's workers (uid nobody under a root master) stat the
			// marker files: let them through the test's directories.
			if err := os.Mkdir(filepath.Join(r.dir, "nginx"), 0o755); err != nil {
				t.Fatal(err)
			}
			for _, d := range []string{filepath.Dir(r.dir), r.dir} {
				if err := os.Chmod(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			p := r.startCommand(r.script, "--notify=false", "--health", "http://"+r.addr+"/healthz",
				"--stop-signal", "QUIT", "--ready-timeout", "5s", "--drain-timeout", "10s", "--steering", steering)
			t.Cleanup(func() { killGroups(r.env, p) })
			r.waitServing(p, 1)
			unhealthy := func(gen int) {
				t.Helper()
				if err := os.WriteFile(filepath.Join(r.dir, "nginx", fmt.Sprintf("unhealthy-%d", gen)), nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			unhealthy(1)
			if resp, err := httpClient.Get("http://" + r.addr + "/healthz"); err != nil || resp.StatusCode != 503 {
				t.Fatalf("generation 1's /healthz to a client: %v %v, want 503", resp, err)
			} else {
				resp.Body.Close()
			}
			r.setVersion("v2")
			code, _, stderr := cli("reload", "--control", r.sock)
			if steering == "kernel" {
				if code != 1 || !strings.Contains(stderr, "would answer it") {
					t.Errorf("kernel path: reload with a shared-port probe: exit %d, want 1 naming why: %s", code, stderr)
				}
				return
			}
			if code != 0 {
				t.Fatalf("reload with the probe on the shared port while the old generation answers 503: exit %d: %s\n%s", code, stderr, p.stderr.String())
			}
			st := r.waitServing(p, 2)
			g2, _ := genByNumber(st, 2)
			answeredBy(t, r.addr, 10, "v2", g2.PGID)
			if !strings.Contains(p.stderr.String(), "health probes on the shared port are routed to the new generation") {
				t.Errorf("no log line about the routed probes:\n%s", p.stderr.String())
			}
			// Now the new generation is the unhealthy one: the reload fails,
			// although generation 2 answers /healthz with 200.
			unhealthy(3)
			r.setVersion("v3")
			if code, _, stderr := cli("reload", "--control", r.sock); code != 4 {
				t.Errorf("reload to a generation whose /healthz answers 503: exit %d, want 4 (not ready): %s", code, stderr)
			}
			answeredBy(t, r.addr, 10, "v2", g2.PGID)
		})
	}
}

// TestRealServersSteeredKeepAlive measures what keep-alive clients see
// across steered reloads: 4 clients, each with its own keep-alive
// connection, sending POSTs (which no client retries on its own). A server
// that closes an idle keep-alive connection at its graceful stop races
// with a client sending on it, as any HTTP/1.1 close does: nginx does at
// QUIT, and those failures are counted, not asserted. gunicorn's sync
// workers close every connection after its response (no keep-alive), so
// its clients reconnect each time and lose nothing: asserted.
func TestRealServersSteeredKeepAlive(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run the supervisor as uid 65534, a user without privilege")
	}
	for _, tc := range []struct {
		server   realServer
		reloads  int
		lossFree bool
	}{{nginxServer, 4, false}, {gunicornServer, 2, true}} {
		t.Run(tc.server.name, func(t *testing.T) {
			requireServer(t, tc.server)
			w := newNobodyWorld(t, tc.server)
			reloads := reloadCount(t, tc.reloads)
			flags := []string{"--notify=false", "--health", "http://{health_addr}/", "--ready-timeout", "20s", "--drain-timeout", "10s"}
			if tc.server.name == "nginx" {
				flags = append(flags, "--stop-signal", "QUIT")
			}
			w.setVersion("v1", 3)
			_, done := w.startSupervisor(flags...)
			w.waitServing(done, 1)
			var sent, failed, reused atomic.Int64
			var mu sync.Mutex
			var errs []string
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					tr := &http.Transport{MaxIdleConnsPerHost: 1}
					defer tr.CloseIdleConnections()
					c := &http.Client{Transport: tr, Timeout: 2 * time.Second}
					deadline := time.Now().Add(time.Duration(reloads)*20*time.Second + 30*time.Second)
					for i := 0; i < 200000 && time.Now().Before(deadline); i++ {
						select {
						case <-stop:
							return
						default:
						}
						sent.Add(1)
						var got bool
						req, _ := http.NewRequest(http.MethodPost, "http://"+w.addr+"/", strings.NewReader("x"))
						req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
							GotConn: func(i httptrace.GotConnInfo) { got = i.Reused },
						}))
						resp, err := c.Do(req)
						if err == nil {
							_, err = io.Copy(io.Discard, resp.Body)
							resp.Body.Close()
						}
						if got {
							reused.Add(1)
						}
						if err != nil {
							failed.Add(1)
							mu.Lock()
							if len(errs) < 5 {
								errs = append(errs, fmt.Sprintf("%s %v", time.Now().Format("15:04:05.000"), err))
							}
							mu.Unlock()
						}
						time.Sleep(time.Millisecond) // pacing, not a wait for a condition
					}
				}()
			}
			for gen := 2; gen <= reloads+1; gen++ {
				want := sent.Load() + 200
				waitFor(t, 30*time.Second, "load progress", func() bool { return sent.Load() >= want })
				w.setVersion(fmt.Sprintf("v%d", gen), 3)
				if code, _, stderr := cli("reload", "--control", w.sock); code != 0 {
					t.Fatalf("reload to generation %d: exit %d: %s", gen, code, stderr)
				}
				w.waitServing(done, gen)
			}
			want := sent.Load() + 200
			waitFor(t, 30*time.Second, "load progress", func() bool { return sent.Load() >= want })
			close(stop)
			wg.Wait()
			t.Logf("REALSERVER-KEEPALIVE %s: %d reloads, %d failed of %d POSTs (%d on a reused connection) %v",
				tc.server.name, reloads, failed.Load(), sent.Load(), reused.Load(), errs)
			if tc.lossFree && failed.Load() != 0 {
				t.Errorf("%s closes every connection after its response: want 0 failed, got %d %v", tc.server.name, failed.Load(), errs)
			}
		})
	}
}

// TestRealServersSteeredMigrateReq: the steered reloads of nginx (4 to 2
// workers) and gunicorn with net.ipv4.tcp_migrate_req=1, in a network
// namespace of its own. The kernel then migrates a closing listener's
// queue by hash over the remaining members, placeholders included
// (reuseport's TestMigrateReqWithPlaceholders); the supervisor stops an old
// generation only once its queues are empty, so nothing is left to
// migrate: still 0 failed, no early answer. The control, the kernel path
// TestRealServersSteeredOwnNamespace: TestRealServersSteered's nginx case in
// a network namespace of its own, where the port's group is the only
// SO_REUSEPORT group on the host (a single-service host): there the
// supervisor's coverage check takes its fast path, which once counted the
// supervisor's own placeholders as the old generation's listeners, and
// every cutover waited for --drain-timeout (review of issue 13).
func TestRealServersSteeredOwnNamespace(t *testing.T) {
	if !netnstest.Run(t) {
		return
	}
	requireServer(t, nginxServer)
	o := runSteered(t, steeredCase{name: "nginx/2-workers", server: nginxServer, workers: []int{2}, reloads: 2})
	t.Logf("REALSERVER-STEERED-NETNS nginx/2-workers: %d reloads, %d failed of %d requests; %d early; %d cutovers never quiet",
		o.reloads, o.failed, o.sent, o.early, o.notQuiet)
	if o.failed != 0 || o.early != 0 || o.neverAnswers != 0 || o.neverFailed != 0 || o.notQuiet != 0 {
		t.Errorf("steered, own namespace: %d failed (%v), %d early, %d from the never-ready generation, %d failed around it, %d cutovers never quiet: want 0 each",
			o.failed, o.errs, o.early, o.neverAnswers, o.neverFailed, o.notQuiet)
	}
}

// with tcp_migrate_req=1, resets no queue but lets new generations answer
// before they are ready (and the never-ready one answer at all).
func TestRealServersSteeredMigrateReq(t *testing.T) {
	if !netnstest.Run(t) {
		return
	}
	if err := reuseport.EnableMigrateReq(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []steeredCase{
		{name: "nginx/4-2-workers", server: nginxServer, workers: []int{4, 2}, reloads: 4},
		{name: "gunicorn", server: gunicornServer, reloads: 2},
		{name: "nginx/4-2-workers/kernel-path-control", server: nginxServer, workers: []int{4, 2}, reloads: 4, kernel: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			requireServer(t, tc.server)
			o := runSteered(t, tc)
			t.Logf("REALSERVER-STEERED-MIGRATE-REQ %s: %d reloads, %d failed of %d requests; %d answers before ready; never-ready generation: %d failed, %d answers",
				tc.name, o.reloads, o.failed, o.sent, o.early, o.neverFailed, o.neverAnswers)
			if tc.kernel {
				if o.early == 0 || o.neverAnswers == 0 {
					t.Errorf("kernel path: %d early answers, %d from the never-ready generation: the control does not see what it should", o.early, o.neverAnswers)
				}
				return
			}
			if o.failed != 0 || o.early != 0 || o.neverAnswers != 0 || o.neverFailed != 0 {
				t.Errorf("tcp_migrate_req=1, steered: %d failed (%v), %d early, %d from the never-ready generation, %d failed around it: want 0 each",
					o.failed, o.errs, o.early, o.neverAnswers, o.neverFailed)
			}
		})
	}
}

// TestRealServerSwapSteered: nginx (3 workers) deployed 4 times with swap
// under the saturating load, each new generation held not ready until its
// dark window has seen 300 requests, and once a generation that never
// becomes ready. swap steers through placeholders of its own for the time
// of the handover: no failed request, no answer from a generation before
// it is ready or from the never-ready one. The control, --steering kernel,
// lets new generations answer as soon as they listen.
func TestRealServerSwapSteered(t *testing.T) {
	requireServer(t, nginxServer)
	for _, steering := range []string{"supervisor", "kernel"} {
		t.Run(steering, func(t *testing.T) {
			r := newRealEnv(t, nginxServer)
			pidfile := filepath.Join(r.dir, "nginx.pid")
			runDir := filepath.Join(r.dir, "nginx")
			var pgids []int // swap starts each generation in a session of its own
			var pgmu sync.Mutex
			t.Cleanup(func() {
				pgmu.Lock()
				defer pgmu.Unlock()
				for _, g := range pgids {
					_ = syscall.Kill(-g, syscall.SIGKILL)
				}
			})
			ready := func(gen int) {
				if err := os.WriteFile(filepath.Join(r.dir, fmt.Sprintf("ready-%d", gen)), nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			swap := func() chan error {
				errc := make(chan error, 1)
				go func() {
					ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
					defer cancel()
					var out, errb syncBuffer
					err := run(ctx, []string{"swap", "--pidfile", pidfile, "--env-file", r.envFile,
						"--notify=false", "--health", "http://{health_addr}/", "--health", "exec:test -e " + r.dir + "/ready-$CHANGEOVER_GENERATION",
						"--stop-signal", "QUIT", "--ready-timeout", "8s", "--drain-timeout", "10s", "--steering", steering, "--", r.script}, &out, &errb)
					if err != nil {
						err = fmt.Errorf("%w\n%s", err, errb.String())
					}
					errc <- err
				}()
				return errc
			}
			// started waits until generation gen's nginx master listens on
			// the shared address and returns its process group.
			started := func(gen int) int {
				var pgid int
				waitFor(t, 20*time.Second, fmt.Sprintf("generation %d listening", gen), func() bool {
					b, err := os.ReadFile(filepath.Join(runDir, fmt.Sprintf("nginx-%d.pid", gen)))
					if err != nil {
						return false
					}
					pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
					if pgid = pgidOf(pid); pgid == 0 {
						return false
					}
					addrs, err := proc.GroupListenAddrs(pgid)
					return err == nil && slices.ContainsFunc(addrs, func(a netip.AddrPort) bool { return a.String() == r.addr })
				})
				pgmu.Lock()
				pgids = append(pgids, pgid)
				pgmu.Unlock()
				return pgid
			}
			ready(1)
			if err := <-swap(); err != nil {
				t.Fatalf("first swap: %v", err)
			}
			started(1)
			load := startPIDLoad(t, r.addr, steeredClients, 3*time.Minute)
			early, never := 0, 0
			// A failed swap records nothing: the next one takes its number.
			for i, gen := range []int{2, 3, 4, 4, 5} {
				if i == 3 {
					_ = os.Remove(filepath.Join(runDir, "nginx-4.pid"))
				}
				errc := swap()
				pgid := started(gen)
				load.progress(t, 300)
				n := load.from(proc.GroupMembers(pgid))
				if i == 2 { // never ready
					never = n
					if err := <-errc; err == nil {
						t.Fatalf("swap to never-ready generation %d succeeded", gen)
					}
					continue
				}
				early += n
				ready(gen)
				if err := <-errc; err != nil {
					t.Fatalf("swap to generation %d: %v", gen, err)
				}
				answeredBy(t, r.addr, 10, fmt.Sprintf("v%d", 1), pgid) // the env file keeps v1: who answers is checked by group
			}
			load.progress(t, 300)
			load.stop()
			t.Logf("REALSERVER-SWAP-STEERED %s: 4 swaps and a never-ready one, %d failed of %d requests; %d answers before ready; %d from the never-ready generation %v",
				steering, load.failed.Load(), load.sent.Load(), early, never, load.errs)
			if steering == "kernel" {
				if early == 0 {
					t.Errorf("kernel path: no answer before ready: the control does not see what it should")
				}
				return
			}
			if load.failed.Load() != 0 || early != 0 || never != 0 {
				t.Errorf("swap steered: %d failed %v, %d early, %d from the never-ready generation: want 0 each", load.failed.Load(), load.errs, early, never)
			}
		})
	}
}
