//go:build linux

package main

// The examples in examples/ (systemd units, deploy scripts, status output),
// each run for real: the units' command lines under a fake systemd, the
// scripts with bash, against the demo server and this test binary acting as
// the changeover command.

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/changeover-dev/changeover/internal/control"
	"github.com/changeover-dev/changeover/internal/proc"
	"github.com/changeover-dev/changeover/internal/supervisor"
)

var updateExamples = flag.Bool("update-examples", false, "rewrite examples/status.txt and examples/status.json from a live supervisor")

// examplesDir is examples/ at the root of the module.
const examplesDir = "../../examples"

// TestExamples runs every example of examples/ for real. The demo server is
// built once for all of them.
func TestExamples(t *testing.T) {
	k := newExampleKit(t)
	for _, c := range []struct {
		name string
		test func(*testing.T)
	}{
		{"SystemdNotifyReload", func(t *testing.T) { k.testUnit(t, "changeover-notify-reload.service") }},
		{"SystemdNotify", func(t *testing.T) { k.testUnit(t, "changeover-notify.service") }},
		{"DeploySwap", k.testDeploySwap},
		{"BlueGreen", k.testBlueGreen},
		{"Status", k.testStatus},
	} {
		// Each has its own port, directories and supervisor name.
		t.Run(c.name, func(t *testing.T) { t.Parallel(); c.test(t) })
	}
}

// exampleKit holds the binaries the examples run: the demo server and
// "changeover", a wrapper script that runs this test binary as the command.
type exampleKit struct {
	demo, changeover string
}

func newExampleKit(t *testing.T) *exampleKit {
	t.Helper()
	k := &exampleKit{demo: buildDemo(t)}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	k.changeover = filepath.Join(t.TempDir(), "changeover")
	// Under -race a process sleeps a second at exit (GORACE atexit_sleep_ms),
	// for every `changeover reload` and `status`: not here.
	script := fmt.Sprintf("#!/bin/sh\nGORACE=\"atexit_sleep_ms=0 ${GORACE:-}\" %s=main exec %s \"$@\"\n",
		envHelper, exShellQuote(exe))
	if err := os.WriteFile(k.changeover, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return k
}

func exShellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// exApp is an application directory laid out as the examples expect:
// releases/NAME/{BIN,env} and a current symlink (BIN: "demo" in the units,
// "server" in the scripts).
type exApp struct {
	t    *testing.T
	root string
}

// newApp makes releases named after versions (env: DEMO_VERSION=name), a
// release "broken" whose server exits at once, and current -> first.
func (k *exampleKit) newApp(t *testing.T, bin string, versions ...string) *exApp {
	t.Helper()
	a := &exApp{t: t, root: filepath.Join(t.TempDir(), "app")}
	for _, v := range versions {
		dir := filepath.Join(a.root, "releases", v)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Link(k.demo, filepath.Join(dir, bin)); err != nil {
			exCopy(t, k.demo, filepath.Join(dir, bin))
		}
		if err := os.WriteFile(filepath.Join(dir, "env"), []byte("DEMO_VERSION="+v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	broken := filepath.Join(a.root, "releases", "broken")
	if err := os.MkdirAll(broken, 0o755); err != nil {
		t.Fatal(err)
	}
	script := "#!/bin/sh\necho 'broken release: cannot start' >&2\nexit 1\n"
	if err := os.WriteFile(filepath.Join(broken, bin), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(broken, "env"), []byte("DEMO_VERSION=broken\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	a.flip(versions[0])
	return a
}

func exCopy(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

// flip points current at releases/name atomically.
func (a *exApp) flip(name string) {
	a.t.Helper()
	tmp := filepath.Join(a.root, "current.tmp")
	_ = os.Remove(tmp)
	if err := os.Symlink(filepath.Join("releases", name), tmp); err != nil {
		a.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(a.root, "current")); err != nil {
		a.t.Fatal(err)
	}
}

// exBaseEnv is a minimal environment, as systemd gives its services.
func exBaseEnv(kv ...string) []string {
	env := []string{"PATH=" + os.Getenv("PATH"), "LANG=C.UTF-8"}
	if d := os.Getenv("GOCOVERDIR"); d != "" {
		env = append(env, "GOCOVERDIR="+d)
	}
	return append(env, kv...)
}

// exProc is a process started by a test, in its own process group, with its
// output (inherited by the instances it starts) in a file.
type exProc struct {
	cmd  *exec.Cmd
	out  string
	done chan struct{}
}

func exStart(t *testing.T, env []string, argv ...string) *exProc {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "out")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env, cmd.Stdout, cmd.Stderr = env, f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &exProc{cmd: cmd, out: f.Name(), done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		// Once the leader is reaped its PID may be reused: signal the group
		// only while the leader runs or members are left in it.
		if !p.exited() || len(proc.GroupMembers(cmd.Process.Pid)) > 0 {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		}
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
		}
	})
	return p
}

func (p *exProc) output() string {
	b, _ := os.ReadFile(p.out)
	return string(b)
}

func (p *exProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// exitCode waits for the process to exit and returns its exit code.
func (p *exProc) exitCode(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		t.Fatalf("%s did not exit within %v; output:\n%s", p.cmd.Args[0], timeout, p.output())
	}
	return p.cmd.ProcessState.ExitCode()
}

// exRun runs a command to completion (at most a minute) and returns its exit
// code and output.
func exRun(t *testing.T, env []string, argv ...string) (int, string) {
	t.Helper()
	p := exStart(t, env, argv...)
	code := p.exitCode(t, time.Minute)
	return code, p.output()
}

// exNotify is a fake systemd: the NOTIFY_SOCKET the supervisor gets, which
// records every message with the sender's PID (SCM_CREDENTIALS), as systemd
// does for NotifyAccess=main.
type exNotify struct {
	path string
	mu   sync.Mutex
	msgs []exNotifyMsg
}

type exNotifyMsg struct {
	text string
	pid  int
}

func newExNotify(t *testing.T) *exNotify {
	t.Helper()
	n := &exNotify{path: filepath.Join(t.TempDir(), "notify.sock")}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: n.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	rc, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
	}); err != nil || serr != nil {
		t.Fatal(err, serr)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf, oob := make([]byte, 4096), make([]byte, 1024)
		for {
			nb, noob, _, _, err := conn.ReadMsgUnix(buf, oob)
			if err != nil {
				return
			}
			m := exNotifyMsg{text: string(buf[:nb])}
			if cms, err := unix.ParseSocketControlMessage(oob[:noob]); err == nil {
				for _, cm := range cms {
					if cred, err := unix.ParseUnixCredentials(&cm); err == nil {
						m.pid = int(cred.Pid)
					}
				}
			}
			n.mu.Lock()
			n.msgs = append(n.msgs, m)
			n.mu.Unlock()
		}
	}()
	t.Cleanup(func() { conn.Close(); <-done })
	return n
}

func (n *exNotify) all() []exNotifyMsg {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.msgs)
}

// field returns the value of KEY= in a message, and whether it is there.
func (m exNotifyMsg) field(key string) (string, bool) {
	for _, l := range strings.Split(m.text, "\n") {
		if v, ok := strings.CutPrefix(l, key+"="); ok {
			return v, true
		}
	}
	return "", false
}

// wait returns the index of the first message at or after from that has
// every KEY=VALUE field, polling until timeout; it fails the test if p exits
// meanwhile.
func (n *exNotify) wait(t *testing.T, p *exProc, from int, timeout time.Duration, fields ...string) int {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var exitedAt time.Time // a datagram sent just before exiting may not be read yet
	for {
		msgs := n.all()
		for i := from; i < len(msgs); i++ {
			ok := true
			for _, f := range fields {
				k, v, _ := strings.Cut(f, "=")
				got, has := msgs[i].field(k)
				ok = ok && has && got == v
			}
			if ok {
				return i
			}
		}
		if exitedAt.IsZero() && p.exited() {
			exitedAt = time.Now()
		}
		if !exitedAt.IsZero() && time.Since(exitedAt) > time.Second {
			t.Fatalf("supervisor exited (%v) before sending %q; messages %+v; output:\n%s", p.cmd.ProcessState, fields, msgs, p.output())
		}
		if time.Now().After(deadline) {
			t.Fatalf("no notification %q after %v; messages %+v; output:\n%s", fields, timeout, msgs, p.output())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// exStatus asks the supervisor behind sock for its status.
func exStatus(sock string) (supervisor.Status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := control.Call(ctx, sock, control.Request{Op: "status"})
	if err != nil {
		return supervisor.Status{}, err
	}
	var st supervisor.Status
	err = json.Unmarshal(resp.Body, &st)
	return st, err
}

// exWorld tracks what a test must leave behind clean: the instances it has
// seen (killed by process group in cleanup, and checked gone), the address.
type exWorld struct {
	t    *testing.T
	addr string
	mu   sync.Mutex
	pids map[int]uint64 // PID (and process group) to its start time
}

func newExWorld(t *testing.T) *exWorld {
	w := &exWorld{t: t, addr: freeAddr(t), pids: map[int]uint64{}}
	t.Cleanup(func() {
		for pid, start := range w.seen() {
			if proc.Alive(pid, start) { // not a reused PID
				_ = syscall.Kill(-pid, syscall.SIGKILL)
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	return w
}

func (w *exWorld) see(pids ...int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, p := range pids {
		if _, ok := w.pids[p]; !ok && p > 1 {
			if start, err := proc.StartTime(p); err == nil {
				w.pids[p] = start
			}
		}
	}
}

func (w *exWorld) seen() map[int]uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return maps.Clone(w.pids)
}

// waitServing waits until the supervisor behind sock serves generation gen
// with no reload running, and records its instances.
func (w *exWorld) waitServing(sock string, p *exProc, gen int) supervisor.Status {
	w.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := exStatus(sock)
		if err == nil {
			for _, g := range st.Generations {
				w.see(g.PGID)
			}
			if st.Serving == gen && !st.Reloading {
				return st
			}
		}
		if p != nil && p.exited() {
			w.t.Fatalf("supervisor exited early (%v); output:\n%s", p.cmd.ProcessState, p.output())
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("generation %d not serving after 20s (status %+v, %v)", gen, st, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var exAnswerRE = regexp.MustCompile(`^version=(\S+) pid=(\d+)\n$`)

// answer returns the version and PID serving a fresh connection to the
// address, or fails the test.
func (w *exWorld) answer() (string, int) {
	w.t.Helper()
	v, pid, err := exGet(w.addr)
	if err != nil {
		w.t.Fatalf("GET http://%s/: %v", w.addr, err)
	}
	return v, pid
}

// expect asserts that the address answers version (several fresh
// connections in a row, all answered by one PID).
func (w *exWorld) expect(version string) int {
	w.t.Helper()
	var first int
	for i := range 5 {
		v, pid := w.answer()
		if v != version {
			w.t.Fatalf("served version %q (pid %d), want %q", v, pid, version)
		}
		if i == 0 {
			first = pid
		} else if pid != first {
			w.t.Fatalf("answered by pids %d and %d: two instances serve", first, pid)
		}
	}
	return first
}

var exClient = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

func exGet(addr string) (version string, pid int, err error) {
	resp, err := exClient.Get("http://" + addr + "/")
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", 0, err
	}
	m := exAnswerRE.FindStringSubmatch(string(b))
	if resp.StatusCode != http.StatusOK || m == nil {
		return "", 0, fmt.Errorf("status %d, answer %q", resp.StatusCode, b)
	}
	pid, _ = strconv.Atoi(m[2])
	return m[1], pid, nil
}

// gone asserts that nothing is left: no instance seen alive, the address
// free, and none of the files given.
func (w *exWorld) gone(files ...string) {
	w.t.Helper()
	waitFor(w.t, 10*time.Second, "every instance gone", func() bool {
		for pid, start := range w.seen() {
			if proc.Alive(pid, start) {
				return false
			}
		}
		return true
	})
	ln, err := net.Listen("tcp", w.addr)
	if err != nil {
		w.t.Errorf("address %s still in use: %v", w.addr, err)
	} else {
		ln.Close()
	}
	for _, f := range files {
		if _, err := os.Stat(f); err == nil {
			w.t.Errorf("%s left behind", f)
		}
	}
}

// exLoad is a request loop: clients opening a connection per request.
type exLoad struct {
	stopc    chan struct{}
	wg       sync.WaitGroup
	mu       sync.Mutex
	ok       int
	failed   int
	errs     []string
	versions map[string]int
	pids     map[string]map[int]bool
}

// startExLoad starts clients; each stops after 20000 requests or 60 s.
func startExLoad(t *testing.T, addr string, clients int) *exLoad {
	l := &exLoad{stopc: make(chan struct{}), versions: map[string]int{}, pids: map[string]map[int]bool{}}
	for range clients {
		l.wg.Go(func() {
			deadline := time.Now().Add(60 * time.Second)
			for i := 0; i < 20000 && time.Now().Before(deadline); i++ {
				select {
				case <-l.stopc:
					return
				default:
				}
				v, pid, err := exGet(addr)
				l.mu.Lock()
				if err != nil {
					l.failed++
					if len(l.errs) < 5 {
						l.errs = append(l.errs, err.Error())
					}
				} else {
					l.ok++
					l.versions[v]++
					if l.pids[v] == nil {
						l.pids[v] = map[int]bool{}
					}
					l.pids[v][pid] = true
				}
				l.mu.Unlock()
			}
		})
	}
	t.Cleanup(l.stop)
	return l
}

func (l *exLoad) stop() {
	select {
	case <-l.stopc:
	default:
		close(l.stopc)
	}
	l.wg.Wait()
}

func (l *exLoad) count(version string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.versions[version]
}

// finish stops the loop and asserts that no request failed and that each
// version was answered.
func (l *exLoad) finish(t *testing.T, versions ...string) {
	t.Helper()
	l.stop()
	t.Logf("requests: %d ok, %d failed; versions %v", l.ok, l.failed, l.versions)
	if l.failed != 0 || l.ok == 0 {
		t.Errorf("%d requests failed (%d ok): %q", l.failed, l.ok, l.errs)
	}
	for _, v := range versions {
		if l.versions[v] == 0 {
			t.Errorf("no request answered by version %s: %v", v, l.versions)
		}
	}
}

// waitCount waits until the loop has had n answers from version.
func (l *exLoad) waitCount(t *testing.T, version string, n int) {
	t.Helper()
	waitFor(t, 10*time.Second, fmt.Sprintf("%d answers from %s", n, version), func() bool { return l.count(version) >= n })
}

// --- systemd units ---

// exUnit is a parsed unit file: "Section.Key" to its values, in order.
type exUnit map[string][]string

func parseExUnit(t *testing.T, path string) exUnit {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := exUnit{}
	section, cont := "", ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if cont == "" && (line == "" || line[0] == '#' || line[0] == ';') {
			continue
		}
		if strings.HasSuffix(line, `\`) {
			cont += strings.TrimSuffix(line, `\`) + " "
			continue
		}
		line, cont = cont+line, ""
		if strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]") {
			section = line[1 : len(line)-1]
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: not KEY=VALUE: %q", path, line)
		}
		u[section+"."+strings.TrimSpace(k)] = append(u[section+"."+strings.TrimSpace(k)], strings.TrimSpace(v))
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return u
}

// one returns the single value of a key, failing if it has none or several.
func (u exUnit) one(t *testing.T, key string) string {
	t.Helper()
	if len(u[key]) != 1 {
		t.Fatalf("unit: %s has %d values %q, want one", key, len(u[key]), u[key])
	}
	return u[key][0]
}

// argv splits a command line of the unit. The examples use no quoting,
// specifiers or variables: the test refuses them rather than misread them.
func (u exUnit) argv(t *testing.T, key string) []string {
	t.Helper()
	line := u.one(t, key)
	if strings.ContainsAny(line, `"'$%`) {
		t.Fatalf("unit: %s uses quoting, $VARIABLES or %%specifiers, which this test does not expand: %q", key, line)
	}
	return strings.Fields(line)
}

// flagValue returns the value of --name VALUE in argv (before "--").
func exFlagValue(argv []string, name string) string {
	for i, a := range argv {
		if a == "--" {
			break
		}
		if a == name && i+1 < len(argv) {
			return argv[i+1]
		}
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v
		}
	}
	return ""
}

// substitute replaces the unit's install paths and port with the test's.
func (k *exampleKit) substitute(t *testing.T, argv []string, app *exApp, addr string, needPort bool) []string {
	t.Helper()
	out := make([]string, len(argv))
	var sawBin, sawApp, sawPort bool
	for i, a := range argv {
		switch {
		case a == "/usr/local/bin/changeover":
			out[i], sawBin = k.changeover, true
		case strings.HasPrefix(a, "/srv/demo/"):
			out[i], sawApp = app.root+strings.TrimPrefix(a, "/srv/demo"), true
		case a == ":80":
			out[i], sawPort = addr, true
		default:
			out[i] = a
		}
	}
	if !sawBin || needPort && (!sawApp || !sawPort) {
		t.Fatalf("unit command %q: expected /usr/local/bin/changeover, /srv/demo/... and :80 to substitute", argv)
	}
	return out
}

// testUnit runs a unit of examples/systemd the way systemd would: ExecStart
// with NOTIFY_SOCKET, the reload the unit describes, then SIGTERM.
func (k *exampleKit) testUnit(t *testing.T, file string) {
	path := filepath.Join(examplesDir, "systemd", file)
	u := parseExUnit(t, path)
	typ := u.one(t, "Service.Type")
	for key, want := range map[string]string{
		"Service.NotifyAccess": "main", "Service.KillMode": "process", "Service.Restart": "on-failure",
		"Service.RuntimeDirectory": "changeover", "Service.RuntimeDirectoryPreserve": "yes",
	} {
		if got := u.one(t, key); got != want {
			t.Errorf("%s=%s, want %s", key, got, want)
		}
	}
	if caps := u.one(t, "Service.AmbientCapabilities"); !strings.Contains(caps, "CAP_NET_BIND_SERVICE") {
		t.Errorf("AmbientCapabilities=%s lacks CAP_NET_BIND_SERVICE", caps)
	}
	start := u.argv(t, "Service.ExecStart")
	if len(start) < 2 || start[1] != "run" {
		t.Fatalf("ExecStart is not changeover run: %q", start)
	}
	name := exFlagValue(start, "--name")
	if name == "" {
		t.Fatalf("ExecStart has no --name: %q", start)
	}
	// Timeouts: systemd must outwait a drain on stop and a ready+drain on
	// reload (systemd times reloads with TimeoutStartSec).
	ready, drain := exDuration(t, exFlagValue(start, "--ready-timeout"), "30s"), exDuration(t, exFlagValue(start, "--drain-timeout"), "30s")
	if stop := exDuration(t, u.one(t, "Service.TimeoutStopSec"), ""); stop <= drain {
		t.Errorf("TimeoutStopSec %v is not more than --drain-timeout %v", stop, drain)
	}
	if st := exDuration(t, u.one(t, "Service.TimeoutStartSec"), ""); st <= ready+drain {
		t.Errorf("TimeoutStartSec %v is not more than --ready-timeout + --drain-timeout %v", st, ready+drain)
	}
	var reload []string
	switch typ {
	case "notify-reload":
		if len(u["Service.ExecReload"]) != 0 {
			t.Errorf("Type=notify-reload with ExecReload: systemd would run it instead of sending SIGHUP")
		}
		if sig := u["Service.ReloadSignal"]; len(sig) > 0 && sig[0] != "SIGHUP" {
			t.Errorf("ReloadSignal=%s, changeover reloads on SIGHUP", sig[0])
		}
	case "notify":
		reload = u.argv(t, "Service.ExecReload")
		if len(reload) < 2 || reload[1] != "reload" || exFlagValue(reload, "--name") != name {
			t.Fatalf("ExecReload is not changeover reload --name %s: %q", name, reload)
		}
	default:
		t.Fatalf("Type=%s, want notify or notify-reload", typ)
	}

	w := newExWorld(t)
	app := k.newApp(t, "demo", "v1", "v2")
	start = k.substitute(t, start, app, w.addr, true)
	if reload != nil {
		reload = k.substitute(t, reload, app, w.addr, false)
	}
	t.Run("verify", func(t *testing.T) { exVerifyUnit(t, path, typ, k, app) })

	// systemd's RuntimeDirectory=changeover; XDG_RUNTIME_DIR stands in for
	// /run so that changeover's default directory is $XDG_RUNTIME_DIR/changeover.
	run := filepath.Join(t.TempDir(), "run")
	if err := os.MkdirAll(filepath.Join(run, "changeover"), 0o700); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(run, "changeover", name+".sock")
	stateFile := filepath.Join(run, "changeover", name+".state")
	sd := newExNotify(t)
	env := exBaseEnv("NOTIFY_SOCKET="+sd.path, "XDG_RUNTIME_DIR="+run)

	p := exStart(t, env, start...)
	pid := p.cmd.Process.Pid
	p0 := pid
	ready1 := sd.wait(t, p, 0, 20*time.Second, "READY=1", "MAINPID="+strconv.Itoa(pid))
	st := w.waitServing(sock, p, 1)
	if st.PID != pid {
		t.Errorf("status pid %d, want the main process %d", st.PID, pid)
	}
	old := w.expect("v1")

	app.flip("v2")
	last := ready1
	switch typ {
	case "notify-reload":
		last = exSIGHUPReload(t, p, sd, last)
	case "notify":
		code, out := exRun(t, env, reload...)
		if code != 0 || !strings.Contains(out, "generation 2 took over") {
			t.Fatalf("ExecReload %q: exit %d, output %q; supervisor:\n%s", reload, code, out, p.output())
		}
		// systemd 252 ignores these while ExecReload runs, newer ones too.
		r := sd.wait(t, p, last+1, 5*time.Second, "RELOADING=1")
		last = sd.wait(t, p, r+1, 5*time.Second, "READY=1")
	}
	st = w.waitServing(sock, p, 2)
	cur := w.expect("v2")
	if cur == old {
		t.Errorf("after the reload: v2 pid %d, the old one's", cur)
	}
	// The reload is done at the handover; the old one drains, then leaves.
	waitFor(t, 10*time.Second, "the old instance gone", func() bool { return !proc.Alive(old, 0) })

	// A release that fails: the old generation keeps serving. With
	// notify-reload systemd still sees RELOADING=1 then READY=1 (a reload
	// that "succeeded"); with ExecReload the reload fails with exit 3.
	app.flip("broken")
	switch typ {
	case "notify-reload":
		// The supervisor's restart below waits from the end of the list.
		exSIGHUPReload(t, p, sd, last)
	case "notify":
		code, out := exRun(t, env, reload...)
		if code != exitExited || !strings.Contains(out, "broken release: cannot start") {
			t.Errorf("ExecReload of a broken release: exit %d (want %d), output %q", code, exitExited, out)
		}
	}
	st = w.waitServing(sock, p, 2)
	if st.LastReload == nil || st.LastReload.OK || st.LastReload.Generation != 3 {
		t.Errorf("last reload %+v, want generation 3 failed", st.LastReload)
	}
	if got := w.expect("v2"); got != cur {
		t.Errorf("after a failed reload served by pid %d, want %d", got, cur)
	}
	app.flip("v2")
	for _, m := range sd.all() {
		if m.pid != pid {
			t.Errorf("notification %q from pid %d, not the main process %d: NotifyAccess=main would drop it", m.text, m.pid, pid)
		}
	}

	// The supervisor crashes (SIGKILL): with KillMode=process systemd leaves
	// the instance alone, it serves on; Restart=on-failure runs ExecStart
	// again, which adopts it and hands over to a new generation. Clients
	// see nothing of it.
	load := startExLoad(t, w.addr, 2)
	load.waitCount(t, "v2", 20)
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	p.exitCode(t, 10*time.Second)
	if got := w.expect("v2"); got != cur {
		t.Fatalf("after the supervisor's SIGKILL served by pid %d, want the instance %d", got, cur)
	}
	if _, err := os.Stat(stateFile); err != nil {
		t.Fatalf("state file after the supervisor's SIGKILL: %v", err)
	}
	p = exStart(t, env, start...)
	pid = p.cmd.Process.Pid
	last = sd.wait(t, p, len(sd.all()), 20*time.Second, "READY=1", "MAINPID="+strconv.Itoa(pid))
	var adopted bool
	waitFor(t, 20*time.Second, "a new generation serving, the adopted instance gone", func() bool {
		st, err := exStatus(sock)
		if err != nil {
			return false
		}
		for _, g := range st.Generations {
			w.see(g.PGID)
			adopted = adopted || g.Adopted && g.PID == cur
		}
		return st.PID == pid && st.Serving > 0 && !st.Reloading && !proc.Alive(cur, 0)
	})
	if !adopted {
		t.Errorf("the restarted supervisor did not report pid %d as adopted", cur)
	}
	if got := w.expect("v2"); got == cur {
		t.Errorf("still served by the adopted instance %d", cur)
	}
	load.finish(t, "v2")

	// systemctl stop: SIGTERM to the main process only (KillMode=process).
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.exitCode(t, 20*time.Second); code != 0 {
		t.Errorf("exit %d after SIGTERM, want 0; output:\n%s", code, p.output())
	}
	sd.wait(t, p, last+1, time.Second, "STOPPING=1")
	for _, m := range sd.all() {
		if m.pid != pid && m.pid != p0 {
			t.Errorf("notification %q from pid %d, not the main process %d: NotifyAccess=main would drop it", m.text, m.pid, pid)
		}
	}
	w.gone(sock, stateFile)
}

// exSIGHUPReload does what systemd does for Type=notify-reload: SIGHUP to
// the main process, then wait for RELOADING=1 with a MONOTONIC_USEC not
// older than the signal, then READY=1. It returns READY=1's index.
func exSIGHUPReload(t *testing.T, p *exProc, sd *exNotify, from int) int {
	t.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	sent := ts.Nano() / 1000
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	r := sd.wait(t, p, from+1, 10*time.Second, "RELOADING=1")
	mono, _ := sd.all()[r].field("MONOTONIC_USEC")
	if usec, err := strconv.ParseInt(mono, 10, 64); err != nil || usec < sent {
		t.Errorf("RELOADING=1 with MONOTONIC_USEC=%q, want >= %d (when SIGHUP was sent): systemd would ignore it", mono, sent)
	}
	return sd.wait(t, p, r+1, 20*time.Second, "READY=1")
}

// exDuration parses a duration as systemd and changeover write it here
// ("30s", "1min" is not used); empty means def.
func exDuration(t *testing.T, s, def string) time.Duration {
	t.Helper()
	if s == "" {
		s = def
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		t.Fatalf("duration %q: %v", s, err)
	}
	return d
}

// exVerifyUnit runs systemd-analyze verify on the unit with the test's
// paths, where systemd-analyze exists and knows the unit's Type.
func exVerifyUnit(t *testing.T, path, typ string, k *exampleKit, app *exApp) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed: unit not verified")
	}
	out, err := exec.Command(sa, "--version").Output()
	var version int
	if f := strings.Fields(string(out)); err == nil && len(f) >= 2 {
		version, _ = strconv.Atoi(f[1])
	}
	if typ == "notify-reload" && version < 253 {
		t.Skipf("systemd-analyze is systemd %d: Type=notify-reload needs 253", version)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text := strings.ReplaceAll(string(b), "/usr/local/bin/changeover", k.changeover)
	text = strings.ReplaceAll(text, "/srv/demo/", app.root+"/")
	unit := filepath.Join(t.TempDir(), filepath.Base(path))
	if err := os.WriteFile(unit, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	got, err := exec.CommandContext(ctx, sa, "verify", unit).CombinedOutput()
	if err != nil || strings.TrimSpace(string(got)) != "" {
		t.Errorf("systemd-analyze verify %s: %v\n%s", filepath.Base(path), err, got)
	}
}

// --- deploy scripts ---

// testDeploySwap runs examples/deploy-swap.sh: a first deploy, a second one
// under load, then two that fail (exit 3 and 5) while the second keeps
// serving.
func (k *exampleKit) testDeploySwap(t *testing.T) {
	w := newExWorld(t)
	app := k.newApp(t, "server", "v1", "v2")
	pidfile := filepath.Join(t.TempDir(), "run", "demo.pid")
	env := exBaseEnv("CHANGEOVER="+k.changeover, "APP_DIR="+app.root, "PIDFILE="+pidfile,
		"SERVER_ARGS=-addr "+w.addr, "READY_TIMEOUT=10s", "DRAIN_TIMEOUT=5s")
	script := filepath.Join(examplesDir, "deploy-swap.sh")
	pidOf := func() (int, string) {
		b, err := os.ReadFile(pidfile)
		if err != nil {
			t.Fatal(err)
		}
		pid, err := strconv.Atoi(strings.TrimSuffix(string(b), "\n"))
		if err != nil {
			t.Fatalf("pidfile %q: want the PID alone on one line", b)
		}
		w.see(pid)
		return pid, string(b)
	}

	code, out := exRun(t, env, "bash", script, "v1")
	if _, err := os.Stat(pidfile); err == nil {
		pidOf()
	}
	if code != 0 || !strings.Contains(out, "deployed v1") {
		t.Fatalf("first deploy: exit %d:\n%s", code, out)
	}
	pid1, _ := pidOf()
	if got := w.expect("v1"); got != pid1 {
		t.Errorf("v1 served by pid %d, pidfile says %d", got, pid1)
	}

	load := startExLoad(t, w.addr, 2)
	load.waitCount(t, "v1", 20)
	code, out = exRun(t, env, "bash", script, "v2")
	if _, err := os.Stat(pidfile); err == nil {
		pidOf()
	}
	if code != 0 || !strings.Contains(out, "deployed v2") {
		t.Fatalf("second deploy: exit %d:\n%s", code, out)
	}
	load.waitCount(t, "v2", 20)
	load.finish(t, "v1", "v2")
	pid2, content := pidOf()
	if pid2 == pid1 {
		t.Errorf("after the second deploy: the pidfile names the old pid %d", pid1)
	}
	// swap returned at the handover: the old instance ends its drain in
	// the background, watched by swap's drain keeper.
	t.Cleanup(func() { killKeepers(filepath.Dir(pidfile)) })
	waitFor(t, 15*time.Second, "the old instance gone", func() bool { return !proc.Alive(pid1, 0) })
	if got := w.expect("v2"); got != pid2 {
		t.Errorf("v2 served by pid %d, pidfile says %d", got, pid2)
	}
	if target, _ := os.Readlink(filepath.Join(app.root, "current")); target != "releases/v2" {
		t.Errorf("current -> %q, want releases/v2", target)
	}

	for _, c := range []struct {
		release, check string
		code           int
		says           string
	}{
		{"broken", "", exitExited, "exited before it was ready"},
		{"v1", "false", exitCheck, "refused by CHECK"},
	} {
		env := append(slices.Clone(env), "CHECK="+c.check)
		code, out := exRun(t, env, "bash", script, c.release)
		if code != c.code || !strings.Contains(out, c.says) || !strings.Contains(out, "old version keeps serving") {
			t.Errorf("deploy %s (CHECK=%q): exit %d, want %d, saying %q:\n%s", c.release, c.check, code, c.code, c.says, out)
		}
		if _, now := pidOf(); now != content {
			t.Errorf("failed deploy %s changed the pidfile: %q, was %q", c.release, now, content)
		}
		if got := w.expect("v2"); got != pid2 {
			t.Errorf("after failed deploy %s served by pid %d, want %d", c.release, got, pid2)
		}
	}
	if log, _ := os.ReadFile(strings.TrimSuffix(pidfile, ".pid") + ".log"); !strings.Contains(string(log), "version=v2") {
		t.Errorf("demo.log beside the pidfile lacks the instances' output:\n%s", log)
	}

	// No supervisor: the pidfile is read the usual ways, and stopping is
	// a SIGTERM to the PID in it.
	for _, sh := range []string{`kill -0 "$(cat "$0")"`, `pgrep -F "$0" >/dev/null`, `kill "$(cat "$0")"`} {
		if out, err := exec.Command("/bin/sh", "-c", sh, pidfile).CombinedOutput(); err != nil {
			t.Errorf("%s: %v %s", sh, err, out)
		}
	}
	w.gone()
}

// testBlueGreen runs examples/blue-green.sh: the supervisor started by the
// script, green deployed and blue rolled back under load, a broken release
// refused, one supervisor PID throughout.
func (k *exampleKit) testBlueGreen(t *testing.T) {
	w := newExWorld(t)
	app := k.newApp(t, "server", "blue", "green")
	run := filepath.Join(t.TempDir(), "run")
	sock := filepath.Join(run, "changeover", "demo.sock")
	env := exBaseEnv("CHANGEOVER="+k.changeover, "APP_DIR="+app.root, "NAME=demo",
		"SERVER_ARGS=-addr "+w.addr, "DRAIN_TIMEOUT=5s", "XDG_RUNTIME_DIR="+run)
	script := filepath.Join(examplesDir, "blue-green.sh")

	sup := exStart(t, env, "bash", script, "run")
	pid := sup.cmd.Process.Pid
	st := w.waitServing(sock, sup, 1)
	if st.PID != pid {
		t.Fatalf("supervisor pid %d, want the script's own %d (exec)", st.PID, pid)
	}
	w.expect("blue")
	active := func() string {
		code, out := exRun(t, env, "bash", script, "active")
		if code != 0 {
			t.Fatalf("active: exit %d: %s", code, out)
		}
		return strings.TrimSpace(out)
	}

	load := startExLoad(t, w.addr, 2)
	load.waitCount(t, "blue", 20)
	steps := []struct {
		args    []string
		version string
		gen     int
	}{
		{[]string{"deploy", "green"}, "green", 2},
		{[]string{"rollback"}, "blue", 3},
	}
	for _, s := range steps {
		code, out := exRun(t, env, append([]string{"bash", script}, s.args...)...)
		if code != 0 || !strings.Contains(out, "deployed "+s.version) {
			t.Fatalf("%v: exit %d:\n%s\nsupervisor:\n%s", s.args, code, out, sup.output())
		}
		// reload returns once the old generation has gone: only the new
		// version answers now.
		if got := w.expect(s.version); got == 0 {
			t.Fatal("no answer")
		}
		if st := w.waitServing(sock, sup, s.gen); st.PID != pid {
			t.Errorf("after %v the supervisor pid is %d, want %d", s.args, st.PID, pid)
		}
		if a := active(); a != s.version {
			t.Errorf("after %v active is %q, want %s", s.args, a, s.version)
		}
		load.waitCount(t, s.version, load.count(s.version)+20)
	}
	load.finish(t, "blue", "green")

	// A release that fails: the script points current back and blue serves on.
	code, out := exRun(t, env, "bash", script, "deploy", "broken")
	if code != exitExited || !strings.Contains(out, "blue keeps serving") {
		t.Errorf("deploy broken: exit %d, want %d, saying blue keeps serving:\n%s", code, exitExited, out)
	}
	if a := active(); a != "blue" {
		t.Errorf("after a failed deploy active is %q, want blue", a)
	}
	w.expect("blue")
	if st := w.waitServing(sock, sup, 3); st.PID != pid {
		t.Errorf("supervisor pid %d, want %d", st.PID, pid)
	}

	if err := sup.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := sup.exitCode(t, 20*time.Second); code != 0 {
		t.Errorf("supervisor exit %d after SIGTERM, want 0; output:\n%s", code, sup.output())
	}
	w.gone(sock)
}

// --- status ---

// testStatus captures `changeover status` and `status --json` from a live
// supervisor after one reload, checks their structure, and compares it with
// examples/status.txt and status.json (rewritten with -update-examples).
func (k *exampleKit) testStatus(t *testing.T) {
	w := newExWorld(t)
	app := k.newApp(t, "demo", "v1", "v2")
	run := filepath.Join(t.TempDir(), "run")
	sock := filepath.Join(run, "changeover", "demo.sock")
	env := exBaseEnv("XDG_RUNTIME_DIR=" + run)
	cur := filepath.Join(app.root, "current")
	sup := exStart(t, env, k.changeover, "run", "--name", "demo", "--env-file", cur+"/env", "--dir", cur,
		"--drain-timeout", "5s", "--", cur+"/demo", "-addr", w.addr)
	w.waitServing(sock, sup, 1)
	app.flip("v2")
	if code, out := exRun(t, env, k.changeover, "reload", "--name", "demo"); code != 0 {
		t.Fatalf("reload: exit %d: %s", code, out)
	}
	w.waitServing(sock, sup, 2)
	// The reload is done at the handover; the example shows generation 1
	// once it has left.
	waitFor(t, 20*time.Second, "generation 1 exited", func() bool {
		st, err := exStatus(sock)
		if err != nil {
			return false
		}
		g, ok := genByNumber(st, 1)
		return ok && g.State == supervisor.StateExited
	})
	code, text := exRun(t, env, k.changeover, "status", "--name", "demo")
	if code != 0 {
		t.Fatalf("status: exit %d: %s", code, text)
	}
	code, js := exRun(t, env, k.changeover, "status", "--json", "--name", "demo")
	if code != 0 {
		t.Fatalf("status --json: exit %d: %s", code, js)
	}
	if code, out := exRun(t, env, k.changeover, "stop", "--name", "demo"); code != 0 || strings.TrimSpace(out) != "stopping" {
		t.Errorf("stop: exit %d: %q", code, out)
	}
	if code := sup.exitCode(t, 20*time.Second); code != 0 {
		t.Errorf("supervisor exit %d after stop, want 0; output:\n%s", code, sup.output())
	}
	w.gone(sock)

	// Shown as if installed in /srv/demo.
	text = strings.ReplaceAll(text, app.root, "/srv/demo")
	js = strings.ReplaceAll(js, app.root, "/srv/demo")
	pid := sup.cmd.Process.Pid
	exCheckStatusText(t, text, pid)
	exCheckStatusJSON(t, js, pid)

	for _, g := range []struct {
		file, live string
		shape      func(string) string
	}{
		{"status.txt", text, exTextShape},
		{"status.json", js, exJSONShape},
	} {
		path := filepath.Join(examplesDir, g.file)
		if *updateExamples {
			if err := os.WriteFile(path, []byte(g.live), 0o644); err != nil {
				t.Fatal(err)
			}
			t.Logf("wrote %s:\n%s", path, g.live)
			continue
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Errorf("%v (go test -run TestExamples/Status -update-examples ./cmd/changeover writes it)", err)
			continue
		}
		if want, got := g.shape(string(b)), g.shape(g.live); want != got {
			t.Errorf("examples/%s no longer has the shape of the real output (rewrite it with -update-examples):\n--- examples/%s\n%s\n--- live\n%s\n--- shapes\n%s\n%s",
				g.file, g.file, b, g.live, want, got)
		}
	}
}

var (
	exTimeRE = regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)`)
	exDurRE  = regexp.MustCompile(`\b\d+(\.\d+)?(ns|µs|us|ms|s|m|h)\b`)
	exNumRE  = regexp.MustCompile(`\d+`)
	exWSRE   = regexp.MustCompile(`[ \t]+`)
)

// exTextShape is the text status without its times, durations, numbers and
// column widths.
func exTextShape(s string) string {
	s = exTimeRE.ReplaceAllString(s, "TIME")
	s = exDurRE.ReplaceAllString(s, "DUR")
	s = exNumRE.ReplaceAllString(s, "N")
	return exWSRE.ReplaceAllString(strings.TrimSpace(s), " ")
}

// exJSONShape is the JSON status as its keys and the types of its values
// (strings that are times or addresses as such), one per line.
func exJSONShape(s string) string {
	var v any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		return "invalid JSON: " + err.Error()
	}
	var lines []string
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		switch x := v.(type) {
		case map[string]any:
			for k, e := range x {
				walk(prefix+"."+k, e)
			}
		case []any:
			for i, e := range x {
				walk(fmt.Sprintf("%s[%d]", prefix, i), e)
			}
		case string:
			lines = append(lines, prefix+" "+exTextShape(x))
		case float64:
			lines = append(lines, prefix+" number")
		default:
			lines = append(lines, fmt.Sprintf("%s %v", prefix, x))
		}
	}
	walk("", v)
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func exCheckStatusText(t *testing.T, text string, pid int) {
	t.Helper()
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	want := []*regexp.Regexp{
		regexp.MustCompile(fmt.Sprintf(`^supervisor demo pid %d: generation 2 serving$`, pid)),
		regexp.MustCompile(`^GENERATION +PID +STATE +STARTED +HEALTH +HANDOVER +EXIT$`),
		regexp.MustCompile(`^1 +\d+ +exited +` + exTimeRE.String() + ` +127\.\d+\.\d+\.\d+:\d+ +- +\S.*$`),
		regexp.MustCompile(`^2 +\d+ +serving +` + exTimeRE.String() + ` +127\.\d+\.\d+\.\d+:\d+ +supervisor +-$`),
		regexp.MustCompile(`^last reload: generation 2 at ` + exTimeRE.String() + `, \S+: ok$`),
	}
	if len(lines) != len(want) {
		t.Fatalf("status has %d lines, want %d:\n%s", len(lines), len(want), text)
	}
	for i, re := range want {
		if !re.MatchString(lines[i]) {
			t.Errorf("status line %d %q does not match %s", i+1, lines[i], re)
		}
	}
}

func exCheckStatusJSON(t *testing.T, js string, pid int) {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(js))
	dec.DisallowUnknownFields()
	var st supervisor.Status
	if err := dec.Decode(&st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, js)
	}
	if st.Name != "demo" || st.PID != pid || st.Serving != 2 || st.Reloading || len(st.Generations) != 2 {
		t.Fatalf("status --json: %+v", st)
	}
	for i, g := range st.Generations {
		want := []string{"exited", "serving"}[i]
		if g.Generation != i+1 || g.State != want || g.PID <= 0 || g.PGID != g.PID || g.Started.IsZero() ||
			!strings.HasPrefix(g.HealthAddr, "127.") {
			t.Errorf("generation %d: %+v, want %s", i+1, g, want)
		}
		if want := []string{"", supervisor.PathSupervisor}[i]; g.Handover != want {
			t.Errorf("generation %d handover %q, want %q", i+1, g.Handover, want)
		}
		if wantPath := fmt.Sprintf("/srv/demo/releases/v%d/demo", i+1); g.Path != wantPath {
			t.Errorf("generation %d path %q, want %q", i+1, g.Path, wantPath)
		}
	}
	if r := st.LastReload; r == nil || !r.OK || r.Generation != 2 || r.Duration <= 0 {
		t.Errorf("last_reload %+v", st.LastReload)
	}
}
