//go:build linux

// Package systemd holds the example units (the .service files beside this
// one); its test runs them, as they are, under a real systemd.
package systemd

// TestUnitsUnderRealSystemd boots systemd (254 from Debian's
// bookworm-backports, else bookworm's 252) as PID 1 of a PID and mount
// namespace of its own (boot_test.go), installs each unit of this directory
// as demo.service with changeover and the demo server laid out as the units
// expect (/usr/local/bin/changeover, /srv/demo/releases/NAME/{demo,env},
// /srv/demo/current, User=demo, port 80), and drives it with systemctl while
// clients outside the root send requests to 127.0.0.1:80.
//
// Root only (it mounts, chroots and makes namespaces); CI runs it as root and
// fails if it skipped. The first run on a machine builds the root with
// debootstrap (minutes); later runs take it from rootCacheDir().

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// demoAddr is where the units' demo serves (-addr :80), as the test's
// clients reach it: loopback, from outside the root.
const demoAddr = "127.0.0.1:80"

// unitCases are the units of this directory and what a failing reload does
// under each.
var unitCases = []struct {
	file       string
	minSystemd int  // the first systemd version with its Type=
	reloadFail bool // a new version that fails makes `systemctl reload` fail
}{
	{"changeover-notify-reload.service", 253, false},
	{"changeover-notify.service", 0, true},
}

func TestUnitsUnderRealSystemd(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: it mounts, chroots and boots systemd in namespaces of its own (CI runs it as root)")
	}
	for _, tool := range []string{"unshare", "nsenter", "chroot", "debootstrap"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (.ci/run installs debootstrap; unshare and nsenter are util-linux): %v", tool, err)
		}
	}
	cache := rootCacheDir()
	if err := os.MkdirAll(cache, 0o755); err != nil {
		t.Fatal(err)
	}
	// One run at a time on a machine: the cache, and port 80.
	lock, err := os.OpenFile(filepath.Join(cache, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
		t.Logf("waiting for another run of this test (lock %s)", lock.Name())
		if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	root := prepareDebianRoot(t, cache)
	t.Logf("root ready in %v: %s, systemd from %s", time.Since(start).Round(time.Second), root.systemdLine, root.source)
	if os.Getenv("CHANGEOVER_SYSTEMD_TEST_PREPARE_ONLY") != "" {
		// .ci/run builds the root this way in the background, while the
		// other tests run: debootstrap mostly waits on the network.
		t.Log("CHANGEOVER_SYSTEMD_TEST_PREPARE_ONLY: the root is ready; not booting it")
		return
	}
	if ln, err := net.Listen("tcp", ":80"); err != nil {
		t.Fatalf("the units serve on port 80, which is taken on this machine: %v", err)
	} else {
		ln.Close()
	}
	changeover, demo := buildBinaries(t)
	sd := bootSystemd(t, root, func(upper string) {
		copyFile(t, changeover, filepath.Join(upper, "usr/local/bin/changeover"))
		copyFile(t, demo, filepath.Join(upper, demoBinary))
	})
	for _, c := range unitCases {
		t.Run(c.file, func(t *testing.T) {
			if sd.version < c.minSystemd {
				t.Skipf("systemd %d has no Type= of this unit (needs %d); only the others run (%s)", sd.version, c.minSystemd, root.source)
			}
			testUnit(t, sd, c.file, c.reloadFail)
		})
	}
}

// demoBinary is the demo server in the root; each release links to it.
const demoBinary = "usr/local/lib/changeover-test/demo"

// buildBinaries builds changeover and the demo, static (CGO_ENABLED=0) so
// that they run in the root whatever its libc.
func buildBinaries(t *testing.T) (changeover, demo string) {
	t.Helper()
	dir := t.TempDir()
	// go test puts its own GOROOT/bin first in PATH, so this is the go
	// command that runs the test (runtime.GOROOT is deprecated).
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go, to build changeover and the demo: %v", err)
	}
	for _, pkg := range []string{"changeover", "demo"} {
		cmd := exec.Command(gobin, "build", "-o", filepath.Join(dir, pkg), "../../cmd/"+pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build cmd/%s: %v\n%s", pkg, err, out)
		}
	}
	return filepath.Join(dir, "changeover"), filepath.Join(dir, "demo")
}

// unitFigures are what one unit's run measured, logged at its end.
type unitFigures struct {
	start, kill, stop time.Duration
	reloads           []time.Duration
	ok, failed        int
	answers           string
}

// testUnit installs file as demo.service and goes through start, three
// reloads under load, a reload to a broken release, a SIGKILL of the
// supervisor, and a stop that drains.
func testUnit(t *testing.T, sd *bootedSystemd, file string, reloadFail bool) {
	unit, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	u := &unitRun{t: t, sd: sd}
	u.lay()
	writeFile(t, sd.root("/"), "etc/systemd/system/demo.service", string(unit), 0o644)
	sd.must("systemctl", "daemon-reload")
	t.Cleanup(func() {
		if t.Failed() {
			journal, _, _ := sd.run("journalctl", "--no-pager", "-o", "short-monotonic", "-u", "demo.service")
			status, _, _ := sd.run("systemctl", "status", "--no-pager", "demo")
			t.Logf("systemctl status demo:\n%s\njournal of demo.service:\n%s", status, journal)
		}
		// Whatever happened, nothing of this unit may serve on for the next.
		sd.run("systemctl", "kill", "--signal=SIGKILL", "demo")
		sd.run("systemctl", "stop", "demo")
		sd.run("systemctl", "reset-failed", "demo")
		os.Remove(sd.root("etc/systemd/system/demo.service"))
		sd.run("systemctl", "daemon-reload")
	})
	if got := sd.show("Type")["Type"]; !strings.HasPrefix(filepath.Base(file), "changeover-"+got+".") {
		t.Fatalf("systemd loaded %s with Type=%s", file, got)
	}
	// The booted systemd's own verdict on the file, with the paths and the
	// user it names in place.
	if out, errOut, code := sd.run("systemd-analyze", "verify", "/etc/systemd/system/demo.service"); code != 0 || strings.TrimSpace(out+errOut) != "" {
		t.Fatalf("systemd-analyze verify: exit %d: %s%s", code, out, errOut)
	}
	var fig unitFigures

	// systemctl start: active only once generation 1 is ready. v1 sleeps a
	// second before it execs the demo, so there is a window where the unit
	// must still be activating and nothing answers.
	fig.start = u.startWatched()
	mainPID := u.mainPID()
	gen, pid := u.serving()
	if gen != 1 {
		t.Fatalf("after start: generation %d serving, want 1", gen)
	}
	u.answeredBy("v1", pid)
	t.Logf("start: %v; MainPID %d is `changeover run`; generation 1 (pid %d) answers", fig.start.Round(time.Millisecond), mainPID, pid)

	load := startLoad(t, 2)
	// Three reloads, each returning only after the handover: when systemctl
	// returns, the new generation serves and the old instance is gone.
	for i, v := range []string{"v2", "v3", "v4"} {
		oldGen, oldPID := gen, pid
		u.flip(v)
		t0 := time.Now()
		if out, errOut, code := sd.run("systemctl", "reload", "demo"); code != 0 {
			t.Fatalf("systemctl reload %d (to %s): exit %d: %s%s", i+1, v, code, out, errOut)
		}
		fig.reloads = append(fig.reloads, time.Since(t0))
		// A reload returns at the handover (the old generation's listeners
		// are gone, the next one serves); the old one drains in the
		// background and leaves soon after.
		gen, pid = u.serving()
		if gen != oldGen+1 || pid == oldPID {
			t.Fatalf("after reload %d: generation %d (pid %d) serving, want generation %d", i+1, gen, pid, oldGen+1)
		}
		u.answeredBy(v, pid)
		waitUntil(t, 10*time.Second, fmt.Sprintf("generation %d (pid %d) to leave after reload %d", oldGen, oldPID, i+1), func() bool { return u.gone(oldPID) })
		if m := u.mainPID(); m != mainPID {
			t.Fatalf("MainPID %d after reload %d, was %d", m, i+1, mainPID)
		}
	}
	t.Logf("3 reloads: %v, each returned after the handover; MainPID %d throughout", roundAll(fig.reloads), mainPID)

	// A release that exits before it is ready.
	u.flip("broken")
	out, errOut, code := sd.run("systemctl", "reload", "demo")
	switch {
	case reloadFail && code == 0:
		t.Fatalf("systemctl reload to a broken release exited 0 (ExecReload must fail it): %s%s", out, errOut)
	case !reloadFail && code != 0:
		t.Fatalf("systemctl reload to a broken release: exit %d (Type=notify-reload reports no failure): %s%s", code, out, errOut)
	}
	if g, p := u.serving(); g != gen || p != pid {
		t.Fatalf("after the broken reload: generation %d (pid %d) serving, want %d (pid %d)", g, p, gen, pid)
	}
	u.answeredBy("v4", pid)
	if st := sd.show("ActiveState", "MainPID"); st["ActiveState"] != "active" || st["MainPID"] != strconv.Itoa(mainPID) {
		t.Fatalf("after the broken reload: %v, want active with MainPID %d", st, mainPID)
	}
	u.journalHas("generation failed; previous keeps serving")
	if reloadFail {
		// systemd's record of ExecReload: `changeover reload` exited 3 (the
		// new version exited before it was ready).
		u.journalHas("Control process exited, code=exited, status=3/")
	}
	firstLine, _, _ := strings.Cut(strings.TrimSpace(errOut), "\n")
	t.Logf("reload to a broken release: systemctl reload exit %d (%q); v4 (pid %d) serves on", code, firstLine, pid)
	u.flip("v4") // as a deploy script does: a crash restart must start what serves

	// kill -9 the supervisor: the instance serves on (KillMode=process),
	// systemd restarts the unit (Restart=on-failure), the new supervisor
	// adopts the instance and retires it.
	hostPID := u.hostPID(mainPID)
	t0 := time.Now()
	if err := syscall.Kill(hostPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	u.answeredBy("v4", pid) // RestartSec=1s: no supervisor now, the instance answers
	var newMain int
	waitUntil(t, 30*time.Second, "systemd to restart the unit and a new generation to serve", func() bool {
		st := sd.show("ActiveState", "MainPID", "StatusText")
		newMain, _ = strconv.Atoi(st["MainPID"])
		g, p, ok := parseStatus(st["StatusText"])
		return st["ActiveState"] == "active" && newMain != 0 && newMain != mainPID && ok && g > gen && p != pid
	})
	fig.kill = time.Since(t0)
	u.mainPID() // checks it is `changeover run`
	oldPID := pid
	gen, pid = u.serving()
	waitUntil(t, 10*time.Second, fmt.Sprintf("the adopted instance (pid %d) to be retired", oldPID), func() bool { return u.gone(oldPID) })
	u.answeredBy("v4", pid)
	if n := sd.show("NRestarts")["NRestarts"]; n != "1" {
		t.Errorf("NRestarts=%s, want 1", n)
	}
	u.journalHas("adopted serving instance of a previous supervisor")
	leftOver := "no"
	if j, _, _ := sd.run("journalctl", "--no-pager", "-u", "demo.service", "--grep", "Found left-over process"); strings.Contains(j, "left-over") {
		leftOver = "yes"
	}
	t.Logf("kill -9 of changeover (MainPID %d): instance %d served on; MainPID %d adopted it and retired it; generation %d (pid %d) serves, %v after the kill; systemd logged \"Found left-over process\": %s",
		mainPID, oldPID, newMain, gen, pid, fig.kill.Round(time.Millisecond), leftOver)
	mainPID = newMain

	fig.ok, fig.failed, fig.answers = load.finish()
	if fig.failed > 0 || fig.ok == 0 {
		t.Errorf("requests under load: %d ok, %d failed: %s", fig.ok, fig.failed, load.errorSample())
	}

	// systemctl stop drains an in-flight request, and nothing is left.
	slow := make(chan slowAnswer, 1)
	go func() {
		v, p, err := get(demoAddr, "/sleep?duration=2s", 10*time.Second)
		slow <- slowAnswer{v, p, err, time.Now()}
	}()
	time.Sleep(300 * time.Millisecond) // the request reaches the instance (loopback, idle server)
	t0 = time.Now()
	if out, errOut, code := sd.run("systemctl", "stop", "demo"); code != 0 {
		t.Fatalf("systemctl stop: exit %d: %s%s", code, out, errOut)
	}
	stopped := time.Now()
	fig.stop = stopped.Sub(t0)
	var a slowAnswer
	select {
	case a = <-slow:
	case <-time.After(15 * time.Second):
		t.Fatal("the in-flight request never ended")
	}
	if a.err != nil || a.version != "v4" || a.pid != pid || a.at.After(stopped) {
		t.Fatalf("in-flight request across systemctl stop: %q pid %d, %v, ended %v after stop returned; want v4 from pid %d before",
			a.version, a.pid, a.err, a.at.Sub(stopped), pid)
	}
	if st := sd.show("ActiveState", "Result", "MainPID"); st["ActiveState"] != "inactive" || st["Result"] != "success" || st["MainPID"] != "0" {
		t.Fatalf("after stop: %v, want inactive, success, no MainPID", st)
	}
	if !u.gone(pid) {
		t.Fatalf("instance %d still runs after stop", pid)
	}
	if procs, err := os.ReadFile(filepath.Join(sd.cgroup, "system.slice/demo.service/cgroup.procs")); err == nil && len(procs) > 0 {
		t.Fatalf("processes left in demo.service's cgroup after stop: %s", procs)
	}
	if ln, err := net.Listen("tcp", ":80"); err != nil {
		t.Fatalf("port 80 still in use after stop: %v", err)
	} else {
		ln.Close()
	}
	for _, f := range []string{"run/changeover/demo.sock", "run/changeover/demo.state"} {
		if exists(sd.root(f)) {
			t.Errorf("/%s left after stop", f)
		}
	}
	t.Logf("stop: %v, the in-flight request (2s) answered by pid %d before it returned; inactive, result success, cgroup empty, port 80 free", fig.stop.Round(time.Millisecond), a.pid)
	t.Logf("figures: systemd %d, %s: start %v; reloads %v; kill -9 to a new generation %v; stop %v; %d requests under load, %d failed; answered by %s",
		sd.version, file, fig.start.Round(time.Millisecond), roundAll(fig.reloads), fig.kill.Round(time.Millisecond), fig.stop.Round(time.Millisecond), fig.ok, fig.failed, fig.answers)
}

type slowAnswer struct {
	version string
	pid     int
	err     error
	at      time.Time
}

// unitRun is one unit's run in the booted system: /srv/demo and the checks.
type unitRun struct {
	t  *testing.T
	sd *bootedSystemd
}

// lay makes /srv/demo as the units expect: releases v1..v4 (the demo with
// DEMO_VERSION=NAME; v1 waits a second before it starts), broken (exits at
// once) and current -> v1.
func (u *unitRun) lay() {
	t, srv := u.t, u.sd.root("srv/demo")
	if err := os.RemoveAll(srv); err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"v1", "v2", "v3", "v4", "broken"} {
		dir := filepath.Join(srv, "releases", v)
		writeFile(t, dir, "env", "DEMO_VERSION="+v+"\n", 0o644)
		bin := filepath.Join(dir, "demo")
		switch v {
		case "v1":
			writeFile(t, dir, "demo", "#!/bin/sh\n# a slow start: systemctl start must wait for generation 1\nsleep 1\nexec /"+demoBinary+" \"$@\"\n", 0o755)
		case "broken":
			writeFile(t, dir, "demo", "#!/bin/sh\necho 'broken release: cannot start' >&2\nexit 1\n", 0o755)
		default:
			if err := os.Link(u.sd.root(demoBinary), bin); err != nil {
				t.Fatal(err)
			}
		}
	}
	u.flip("v1")
}

// flip points /srv/demo/current at a release, atomically.
func (u *unitRun) flip(release string) {
	u.t.Helper()
	srv := u.sd.root("srv/demo")
	tmp := filepath.Join(srv, "current.tmp")
	os.Remove(tmp)
	if err := os.Symlink("releases/"+release, tmp); err != nil {
		u.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(srv, "current")); err != nil {
		u.t.Fatal(err)
	}
}

// startWatched runs systemctl start while watching the unit: whenever
// systemd says active, generation 1 must answer; and it must have said
// activating while nothing answered yet.
func (u *unitRun) startWatched() time.Duration {
	t := u.t
	type result struct {
		out  string
		code int
	}
	done := make(chan result, 1)
	t0 := time.Now()
	go func() {
		out, errOut, code := u.sd.run("systemctl", "start", "demo")
		done <- result{out + errOut, code}
	}()
	activatingUnanswered := 0
	for {
		select {
		case r := <-done:
			d := time.Since(t0)
			if r.code != 0 {
				t.Fatalf("systemctl start: exit %d: %s", r.code, r.out)
			}
			if activatingUnanswered == 0 {
				t.Fatalf("never saw the unit activating while generation 1 was not ready (start took %v)", d)
			}
			return d
		default:
		}
		state := u.sd.show("ActiveState")["ActiveState"]
		_, _, err := get(demoAddr, "/", time.Second)
		switch {
		case state == "active" && err != nil:
			t.Fatalf("unit active while nothing answers: %v", err)
		case state == "activating" && err != nil:
			activatingUnanswered++
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// mainPID returns systemd's MainPID of the unit and checks that it is
// `changeover run` (PIDs of the booted system's namespace).
func (u *unitRun) mainPID() int {
	u.t.Helper()
	pid, _ := strconv.Atoi(u.sd.show("MainPID")["MainPID"])
	b, err := os.ReadFile(u.sd.root(fmt.Sprintf("proc/%d/cmdline", pid)))
	argv := strings.Split(string(b), "\x00")
	if err != nil || len(argv) < 2 || argv[0] != "/usr/local/bin/changeover" || argv[1] != "run" {
		u.t.Fatalf("MainPID %d is %q (%v), not the supervisor", pid, argv, err)
	}
	return pid
}

var statusRE = regexp.MustCompile(`^generation (\d+) serving \(pid (\d+)\)$`)

func parseStatus(s string) (gen, pid int, ok bool) {
	m := statusRE.FindStringSubmatch(s)
	if m == nil {
		return 0, 0, false
	}
	gen, _ = strconv.Atoi(m[1])
	pid, _ = strconv.Atoi(m[2])
	return gen, pid, true
}

// serving returns the generation and instance PID that changeover told
// systemd (STATUS=).
func (u *unitRun) serving() (gen, pid int) {
	u.t.Helper()
	st := u.sd.show("StatusText")["StatusText"]
	gen, pid, ok := parseStatus(st)
	if !ok {
		u.t.Fatalf("StatusText %q", st)
	}
	return gen, pid
}

// answeredBy asserts that fresh connections are answered by version, from
// pid (the demo's answer names both).
func (u *unitRun) answeredBy(version string, pid int) {
	u.t.Helper()
	for range 3 {
		v, p, err := get(demoAddr, "/", 5*time.Second)
		if err != nil || v != version || p != pid {
			u.t.Fatalf("answered %q by pid %d (%v), want %s by pid %d", v, p, err, version, pid)
		}
	}
}

// gone reports whether the process pid of the booted system has exited and
// been reaped or is a zombie.
func (u *unitRun) gone(pid int) bool {
	b, err := os.ReadFile(u.sd.root(fmt.Sprintf("proc/%d/stat", pid)))
	if err != nil {
		return true
	}
	_, after, _ := strings.Cut(string(b), ") ")
	return strings.HasPrefix(after, "Z")
}

// hostPID returns the host's PID of a process of demo.service, found in its
// cgroup by its PID in the booted system (NSpid).
func (u *unitRun) hostPID(nsPID int) int {
	u.t.Helper()
	procs, err := os.ReadFile(filepath.Join(u.sd.cgroup, "system.slice/demo.service/cgroup.procs"))
	if err != nil {
		u.t.Fatal(err)
	}
	for _, f := range strings.Fields(string(procs)) {
		status, err := os.ReadFile("/proc/" + f + "/status")
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(status), "\n") {
			if ids, ok := strings.CutPrefix(l, "NSpid:"); ok {
				fs := strings.Fields(ids)
				if len(fs) > 1 && fs[len(fs)-1] == strconv.Itoa(nsPID) {
					pid, _ := strconv.Atoi(fs[0])
					return pid
				}
			}
		}
	}
	u.t.Fatalf("no process %d in demo.service's cgroup (%q)", nsPID, procs)
	return 0
}

func (u *unitRun) journalHas(text string) {
	u.t.Helper()
	waitUntil(u.t, 5*time.Second, fmt.Sprintf("%q in the journal of demo.service", text), func() bool {
		out, _, _ := u.sd.run("journalctl", "--no-pager", "-u", "demo.service")
		return strings.Contains(out, text)
	})
}

// show returns properties of demo.service.
func (s *bootedSystemd) show(props ...string) map[string]string {
	s.t.Helper()
	args := []string{"systemctl", "show", "demo.service"}
	for _, p := range props {
		args = append(args, "-p", p)
	}
	out := s.must(args...)
	m := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			m[k] = v
		}
	}
	return m
}

var answerRE = regexp.MustCompile(`^version=(\S+) pid=(\d+)\n$`)

var client = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

// get sends one request on a fresh connection and returns who answered.
func get(addr, path string, timeout time.Duration) (version string, pid int, err error) {
	req, err := http.NewRequest("GET", "http://"+addr+path, nil)
	if err != nil {
		return "", 0, err
	}
	c := *client
	c.Timeout = timeout
	resp, err := c.Do(req)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", 0, err
	}
	m := answerRE.FindStringSubmatch(string(b))
	if resp.StatusCode != http.StatusOK || m == nil {
		return "", 0, fmt.Errorf("status %d, answer %q", resp.StatusCode, b)
	}
	pid, _ = strconv.Atoi(m[2])
	return m[1], pid, nil
}

// load is clients sending requests on fresh connections, one at a time
// each, until finish (or three minutes: bounded whatever happens).
type load struct {
	stop    chan struct{}
	wg      sync.WaitGroup
	mu      sync.Mutex
	ok      int
	errs    []string
	answers map[string]int
}

func startLoad(t *testing.T, clients int) *load {
	l := &load{stop: make(chan struct{}), answers: map[string]int{}}
	deadline := time.Now().Add(3 * time.Minute)
	for range clients {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for time.Now().Before(deadline) {
				select {
				case <-l.stop:
					return
				default:
				}
				v, p, err := get(demoAddr, "/", 5*time.Second)
				l.mu.Lock()
				if err != nil {
					l.errs = append(l.errs, err.Error())
				} else {
					l.ok++
					l.answers[fmt.Sprintf("%s pid %d", v, p)]++
				}
				l.mu.Unlock()
			}
		}()
	}
	t.Cleanup(func() {
		select {
		case <-l.stop:
		default:
			close(l.stop)
		}
		l.wg.Wait()
	})
	return l
}

// finish stops the clients and returns the counts, and who answered how
// often ("v1 pid 130: 212, ...").
func (l *load) finish() (ok, failed int, answers string) {
	close(l.stop)
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	var keys []string
	for k := range l.answers {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s: %d", k, l.answers[k]))
	}
	return l.ok, len(l.errs), strings.Join(parts, ", ")
}

func (l *load) errorSample() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.errs) > 5 {
		return strings.Join(l.errs[:5], "; ") + "; ..."
	}
	return strings.Join(l.errs, "; ")
}

func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Dir(to), filepath.Base(to), string(b), 0o755)
}

func roundAll(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(time.Millisecond)
	}
	return out
}
