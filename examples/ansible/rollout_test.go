//go:build linux

// Package ansible_test runs examples/ansible/rollout.yml for real: the real
// ansible-playbook, over SSH, against three hosts under load behind HAProxy.
package ansible_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
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
)

const (
	// envRig set to "required" (CI does) turns every reason to skip the
	// rig (not root, a tool missing, -short) into a failure.
	envRig = "CHANGEOVER_ANSIBLE_RIG"
	// envChild holds the parent's work directory in the child test binary,
	// which runs the rig inside a network namespace of its own.
	envChild = "CHANGEOVER_ANSIBLE_CHILD"

	// The rig's addresses: a private range that exists only inside the
	// child's network namespace (the bridge, the controller and HAProxy)
	// and the hosts' namespaces. The machine's own namespace never sees it.
	rigNet        = "10.217.17"
	controllerIP  = rigNet + ".1"
	appPort       = "8080"
	hostCount     = 3
	readyTimeout  = "5s" // how long a release that never becomes ready holds a reload
	drainTimeout  = "10s"
	neverReady    = "v3-never-ready"
	childDeadline = 5 * time.Minute
	// playbookTimeout cuts a rollout that hangs. Each Ansible task is a
	// Python process on the host: a rollout of three hosts takes seconds on
	// an idle machine, and over a minute when other tests share its cores.
	playbookTimeout = 150 * time.Second
)

// The tools the rig needs, all from Debian packages: ansible-core,
// openssh-server (and openssh-client), haproxy, iproute2.
var tools = []string{"ansible-playbook", "ansible-inventory", "/usr/sbin/sshd", "ssh", "ssh-keygen", "haproxy", "ip"}

// TestAnsibleRollout is the rig of examples/ansible: three hosts, each a
// network namespace running sshd and `changeover run` with the demo server,
// HAProxy in front of them with health checks, and a load generator through
// HAProxy (new connections and keep-alive POSTs) for the whole of two
// rollouts by the real ansible-playbook: v2, which must reach every host with
// no failed request, then a release that never becomes ready, which must stop
// at the first host (which keeps serving v2) and leave the others untouched,
// again with no failed request.
//
// The test re-runs itself in a network namespace of its own (so the bridge
// and its addresses exist nowhere else), then checks from outside that no
// process is left in any namespace it made.
func TestAnsibleRollout(t *testing.T) {
	if dir := os.Getenv(envChild); dir != "" {
		runRig(t, dir)
		return
	}
	skip := func(format string, args ...any) {
		t.Helper()
		if os.Getenv(envRig) == "required" {
			t.Fatalf("%s=required, but: "+format, append([]any{envRig}, args...)...)
		}
		t.Skipf(format, args...)
	}
	if testing.Short() {
		skip("-short: the Ansible rig takes about a minute")
	}
	if os.Geteuid() != 0 {
		skip("not root: the rig makes network namespaces and runs sshd")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			skip("%s not installed (Debian: apt-get install ansible-core openssh-server haproxy): %v", tool, err)
		}
	}

	dir := t.TempDir()
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go, to build the demo and changeover: %v", err)
	}
	for _, pkg := range []string{"changeover", "demo"} {
		// Stripped: every host receives the demo once per release.
		out, err := exec.Command(gobin, "build", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(dir, pkg), "../../cmd/"+pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("build cmd/%s: %v\n%s", pkg, err, out)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), childDeadline)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), envChild+"="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	// The child's output goes to a file, so that it is there even when the
	// child had to be killed.
	logPath := filepath.Join(dir, "child.log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Hold the child's network namespace open until the check for
	// leftovers: while a file refers to it, it exists, so its inode cannot
	// be given to another test's namespace meanwhile.
	childNS, nsErr := os.Open(fmt.Sprintf("/proc/%d/ns/net", cmd.Process.Pid))
	err = cmd.Wait()
	f.Close()
	out, _ := os.ReadFile(logPath)
	passed := err == nil && strings.Contains(string(out), "--- PASS: "+t.Name())
	if !passed {
		t.Errorf("the rig, in a network namespace of its own: %v\n%s", err, out)
	} else {
		for line := range strings.SplitSeq(string(out), "\n") {
			// The child's t.Log lines, without their file:line.
			if _, msg, ok := strings.Cut(line, "rollout_test.go:"); ok {
				_, msg, _ = strings.Cut(msg, ": ")
				t.Log(msg)
			}
		}
	}
	if nsErr != nil {
		t.Errorf("the child's network namespace: %v", nsErr)
		return
	}
	defer childNS.Close()
	checkNothingLeft(t, dir, childNS)
}

// checkNothingLeft runs after the child has exited: no process may be left
// in the child's network namespace (held open by childNS) or in a host's
// still mounted under /run/netns, and no host namespace may be left mounted.
// Leftovers are killed by PID (they live in namespaces only this test made)
// and fail the test. A host namespace the child deleted is not looked at:
// the child checked it was empty before, and once gone its inode number may
// be another test's namespace.
func checkNothingLeft(t *testing.T, dir string, childNS *os.File) {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(childNS.Fd()), &st); err != nil {
		t.Errorf("the child's network namespace: %v", err)
		return
	}
	inodes := map[string]string{fmt.Sprintf("net:[%d]", st.Ino): "the rig's own network namespace"}
	b, err := os.ReadFile(filepath.Join(dir, "namespaces"))
	if err != nil {
		t.Errorf("the child recorded no namespaces: %v", err)
	}
	var left []string
	for line := range strings.SplitSeq(strings.TrimSpace(string(b)), "\n") {
		name, ok := strings.CutPrefix(line, "netns:")
		if !ok {
			continue
		}
		name, _, _ = strings.Cut(name, " ")
		if err := syscall.Stat(filepath.Join("/run/netns", name), &st); err == nil {
			inodes[fmt.Sprintf("net:[%d]", st.Ino)] = "netns " + name
			left = append(left, name)
		}
	}
	for _, p := range processesIn(inodes) {
		t.Errorf("process %d (%s) left in %s: killing it", p.pid, p.comm, inodes[p.ns])
		_ = syscall.Kill(p.pid, syscall.SIGKILL)
	}
	for _, name := range left {
		t.Errorf("network namespace %s left behind: deleting it", name)
		_ = exec.Command("ip", "netns", "del", name).Run()
	}
}

type nsProcess struct {
	pid      int
	comm, ns string
}

// processesIn lists the processes whose network namespace is one of inodes
// (keys as /proc/PID/ns/net reads: "net:[N]").
func processesIn(inodes map[string]string) []nsProcess {
	entries, _ := os.ReadDir("/proc")
	var found []nsProcess
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
		if err != nil {
			continue
		}
		if _, ok := inodes[ns]; ok {
			comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
			found = append(found, nsProcess{pid, strings.TrimSpace(string(comm)), ns})
		}
	}
	return found
}

// rig is the child's world: binaries and work directory from the parent,
// hosts, HAProxy and the load.
type rig struct {
	t          *testing.T
	dir        string // the parent's: binaries, the namespaces record
	work       string // the child's temp dir
	changeover string
	demo       string
	hosts      []*host
	knownHosts string
	rootHome   string // root's home directory on this machine
	clientKey  string
	haproxy    *proc
	statsSock  string
	lbAddr     string
}

type host struct {
	name    string // inventory name: web1, ...
	netns   string // network namespace name (under /run/netns)
	ip      string
	appDir  string // its /srv/demo
	control string // its supervisor's control socket
	sshd    *proc
	super   *proc
}

func runRig(t *testing.T, dir string) {
	// The work directory is the parent's, so that it goes even if this
	// child has to be killed.
	work := filepath.Join(dir, "rig")
	if err := os.Mkdir(work, 0o755); err != nil {
		t.Fatal(err)
	}
	r := &rig{t: t, dir: dir, work: work,
		changeover: filepath.Join(dir, "changeover"), demo: filepath.Join(dir, "demo")}
	r.sh("ip", "link", "set", "lo", "up")
	r.sh("ip", "link", "add", "br0", "type", "bridge")
	r.sh("ip", "addr", "add", controllerIP+"/24", "dev", "br0")
	r.sh("ip", "link", "set", "br0", "up")
	r.makeKeys()
	for i := 1; i <= hostCount; i++ {
		r.hosts = append(r.hosts, r.addHost(i))
	}
	r.releases()
	for _, h := range r.hosts {
		r.startSupervisor(h)
	}
	r.startHAProxy()

	load := startLoad(t, r.lbAddr)
	stopLoad := sync.OnceFunc(load.stop)
	t.Cleanup(stopLoad)
	stopStats := r.watchHAProxy()
	t.Cleanup(func() { stopStats() })
	load.waitAnswers(t, 200)

	// The rollout of v2: every host, in order, under load.
	gen1 := map[string]int{}
	for _, h := range r.hosts {
		st := r.status(h)
		gen1[h.name] = st.servingPID()
	}
	code, out, took := r.playbook("v2")
	if code != 0 {
		t.Fatalf("rollout of v2: ansible-playbook exit %d\n%s", code, out)
	}
	t.Logf("rollout of v2 to %d hosts: ansible-playbook took %v", hostCount, took.Round(10*time.Millisecond))
	for _, line := range reportLines(out) {
		t.Logf("  %s", line)
	}
	pidsV2 := map[string]int{}
	for _, h := range r.hosts {
		st := r.status(h)
		if st.ServingGeneration != 2 || st.LastReload == nil || !st.LastReload.OK {
			t.Fatalf("%s after the rollout of v2: serving generation %d, last reload %+v", h.name, st.ServingGeneration, st.LastReload)
		}
		pidsV2[h.name] = st.servingPID()
		if got := r.get(h); !strings.HasPrefix(got, "version=v2 ") {
			t.Fatalf("%s answers %q after the rollout of v2", h.name, got)
		}
		if got := r.currentTarget(h); got != "releases/v2" {
			t.Fatalf("%s: current -> %s after the rollout of v2", h.name, got)
		}
		t.Logf("  %s: reload took %v (supervisor's count, trigger to old instance gone)", h.name,
			time.Duration(st.LastReload.DurationNS).Round(time.Millisecond))
	}
	afterV2 := load.snapshot()

	// A release that never becomes ready: the first host refuses it after
	// readyTimeout and keeps serving v2; the rollout stops there.
	code, out, took = r.playbook(neverReady)
	if code == 0 {
		t.Fatalf("rollout of %s succeeded; want it to fail at %s\n%s", neverReady, r.hosts[0].name, out)
	}
	t.Logf("rollout of %s: ansible-playbook exit %d after %v", neverReady, code, took.Round(10*time.Millisecond))
	if !regexp.MustCompile(`(?m)^` + stamp + r.hosts[0].name + `\s*: ok=\d+\s+changed=\d+\s+unreachable=0\s+failed=1 `).MatchString(out) {
		t.Errorf("the recap does not show %s failed once:\n%s", r.hosts[0].name, out)
	}
	for _, h := range r.hosts[1:] {
		if strings.Contains(out, "["+h.name+"]") || regexp.MustCompile(`(?m)^`+stamp+h.name+`\s*:`).MatchString(out) {
			t.Errorf("the rollout of %s touched %s after %s failed:\n%s", neverReady, h.name, r.hosts[0].name, out)
		}
	}
	first := r.hosts[0]
	if m := regexp.MustCompile(`"msg": ("` + neverReady + ` failed on (?:[^"\\]|\\.)*")`).FindStringSubmatch(out); m != nil {
		msg, err := strconv.Unquote(m[1])
		if err != nil {
			msg = m[1]
		}
		t.Logf("  %s", msg)
	} else {
		t.Errorf("no failure message from the rescue of %s:\n%s", first.name, out)
	}
	for i, h := range r.hosts {
		st := r.status(h)
		if st.ServingGeneration != 2 || st.servingPID() != pidsV2[h.name] {
			t.Errorf("%s after the failed rollout: serving generation %d pid %d; want generation 2 pid %d", h.name, st.ServingGeneration, st.servingPID(), pidsV2[h.name])
		}
		if got := r.currentTarget(h); got != "releases/v2" {
			t.Errorf("%s: current -> %s after the failed rollout; want releases/v2", h.name, got)
		}
		if got := r.get(h); !strings.HasPrefix(got, "version=v2 ") {
			t.Errorf("%s answers %q after the failed rollout", h.name, got)
		}
		_, shipped := os.Stat(filepath.Join(h.appDir, "releases", neverReady))
		if i == 0 {
			if st.LastReload == nil || st.LastReload.OK || st.LastReload.Generation != 3 {
				t.Errorf("%s: last reload %+v; want generation 3 failed", h.name, st.LastReload)
			} else {
				t.Logf("  %s: generation 3 failed after %v: %s", h.name, time.Duration(st.LastReload.DurationNS).Round(time.Millisecond), st.LastReload.Error)
			}
		} else {
			if len(st.Generations) != 2 || st.LastReload == nil || st.LastReload.Generation != 2 {
				t.Errorf("%s was reloaded by the failed rollout: %+v", h.name, st)
			}
			if shipped == nil {
				t.Errorf("%s received %s", h.name, neverReady)
			}
		}
	}

	time.Sleep(500 * time.Millisecond) // some load after the failed rollout
	stopLoad()
	down := stopStats()
	res := load.snapshot()

	// Who answered: every host with v1 then v2, nobody with the release that
	// never became ready.
	hostOf := map[int]string{}
	for _, h := range r.hosts {
		for _, g := range r.status(h).Generations {
			hostOf[g.PID] = h.name
		}
	}
	t.Logf("load through HAProxy: %d requests (%d new connection GETs, %d keep-alive POSTs), %d failed",
		res.total(), res.ok[modeNewConn]+res.failed[modeNewConn], res.ok[modeKeepAlive]+res.failed[modeKeepAlive], res.failures())
	t.Logf("  during the rollout of v2: %d requests, %d failed; during the failed rollout: %d requests, %d failed",
		afterV2.total(), afterV2.failures(), res.total()-afterV2.total(), res.failures()-afterV2.failures())
	for _, h := range r.hosts {
		var parts []string
		for _, v := range []string{"v1", "v2", neverReady} {
			n := 0
			for a, c := range res.answers {
				if a.version == v && hostOf[a.pid] == h.name {
					n += c
				}
			}
			parts = append(parts, fmt.Sprintf("%s %d", v, n))
			if v != neverReady && n == 0 {
				t.Errorf("%s never answered with %s through HAProxy", h.name, v)
			}
			if v == neverReady && n > 0 {
				t.Errorf("%s answered %d requests with %s, a release that never became ready", h.name, n, v)
			}
		}
		t.Logf("  %s answered: %s (v1 pid %d, v2 pid %d)", h.name, strings.Join(parts, ", "), gen1[h.name], pidsV2[h.name])
	}
	for a, c := range res.answers {
		if hostOf[a.pid] == "" {
			t.Errorf("%d answers from pid %d (%s), no generation of any host", c, a.pid, a.version)
		}
	}
	if res.failures() > 0 {
		t.Errorf("%d requests failed through HAProxy; first errors:\n%s", res.failures(), strings.Join(res.errors, "\n"))
	}
	if len(down) > 0 {
		var checks []string
		for line := range strings.SplitSeq(r.haproxy.output(), "\n") {
			if strings.Contains(line, "check") || strings.Contains(line, "DOWN") {
				checks = append(checks, line)
			}
		}
		t.Errorf("HAProxy saw hosts other than UP: %s\nits log:\n%s", strings.Join(down, "; "), strings.Join(checks, "\n"))
	} else {
		t.Logf("  HAProxy kept all %d hosts UP throughout (stats polled every 100ms)", hostCount)
	}
}

// record notes a namespace for the parent's final check, as
// /proc/PID/ns/net names it: "net:[INODE]" (a file of /run/netns is a bind
// mount of that nsfs inode).
func (r *rig) record(what, nsPath string) {
	r.t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(nsPath, &st); err != nil {
		r.t.Fatal(err)
	}
	ns := fmt.Sprintf("net:[%d]", st.Ino)
	f, err := os.OpenFile(filepath.Join(r.dir, "namespaces"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		r.t.Fatal(err)
	}
	defer f.Close()
	fmt.Fprintf(f, "%s %s\n", what, ns)
}

// sh runs a command that must succeed.
func (r *rig) sh(argv ...string) string {
	r.t.Helper()
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		r.t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
	}
	return string(out)
}

func (r *rig) makeKeys() {
	r.clientKey = filepath.Join(r.work, "client_key")
	r.sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "rig-client", "-f", r.clientKey)
	r.knownHosts = filepath.Join(r.work, "known_hosts")
	u, err := user.LookupId("0")
	if err != nil {
		r.t.Fatalf("root's home: %v", err)
	}
	r.rootHome = u.HomeDir
	// sshd's privilege separation directory (Debian's unit makes it).
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		r.t.Fatal(err)
	}
}

// addHost makes host i: a network namespace with a veth into br0, sshd on its
// address with a host key of its own, and an application directory with v1.
func (r *rig) addHost(i int) *host {
	t := r.t
	h := &host{
		name:  fmt.Sprintf("web%d", i),
		netns: fmt.Sprintf("changeover-rig-%d-web%d", os.Getpid(), i),
		ip:    fmt.Sprintf("%s.%d", rigNet, 10+i),
	}
	root := filepath.Join(r.work, h.name)
	h.appDir = filepath.Join(root, "srv", "demo")
	h.control = filepath.Join(root, "run", "demo.sock")
	for _, d := range []string{h.appDir, filepath.Dir(h.control)} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}

	r.sh("ip", "netns", "add", h.netns)
	t.Cleanup(func() {
		// Last: after everything in it has gone (cleanups run in reverse).
		r.checkEmpty(h)
		if out, err := exec.Command("ip", "netns", "del", h.netns).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v\n%s", h.netns, err, out)
		}
	})
	r.record("netns:"+h.netns, "/run/netns/"+h.netns)
	veth := "v" + h.name
	r.sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", h.netns)
	r.sh("ip", "link", "set", veth, "master", "br0", "up")
	r.sh("ip", "-n", h.netns, "addr", "add", h.ip+"/24", "dev", "eth0")
	r.sh("ip", "-n", h.netns, "link", "set", "eth0", "up")
	r.sh("ip", "-n", h.netns, "link", "set", "lo", "up")

	hostKey := filepath.Join(root, "ssh_host_ed25519_key")
	r.sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", h.name, "-f", hostKey)
	pub, err := os.ReadFile(hostKey + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	appendFile(t, r.knownHosts, h.ip+" "+string(pub))
	clientPub, err := os.ReadFile(r.clientKey + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	authorized := filepath.Join(root, "authorized_keys")
	writeFile(t, authorized, string(clientPub), 0o600)
	config := filepath.Join(root, "sshd_config")
	writeFile(t, config, fmt.Sprintf(`# sshd of rig host %s: its own address, keys and files, nothing of the system's.
ListenAddress %s:22
HostKey %s
AuthorizedKeysFile %s
PidFile none
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
`, h.name, h.ip, hostKey, authorized), 0o600)
	// The host's own home for root, mounted over the machine's in sshd's
	// mount namespace (ip netns exec gives each command one, with
	// propagation to the machine's cut): sessions read no .bashrc or
	// .profile of the machine's root (a slow one would be paid at every
	// task), and Ansible's ~/.ansible/tmp is the host's.
	home := filepath.Join(root, "home")
	if err := os.MkdirAll(home, 0o700); err != nil {
		t.Fatal(err)
	}
	h.sshd = r.start(filepath.Join(root, "sshd.log"), "ip", "netns", "exec", h.netns,
		"/bin/sh", "-c", `mount --bind "$0" "$1" && exec /usr/sbin/sshd -D -e -f "$2"`, home, r.rootHome, config)
	waitDial(t, h.ip+":22", h.sshd)

	// v1, installed by hand: the state the rollout starts from.
	v1 := filepath.Join(h.appDir, "releases", "v1")
	if err := os.MkdirAll(v1, 0o755); err != nil {
		t.Fatal(err)
	}
	copyFile(t, r.demo, filepath.Join(v1, "demo"), 0o755)
	writeFile(t, filepath.Join(v1, "env"), "DEMO_VERSION=v1\n", 0o644)
	if err := os.Symlink("releases/v1", filepath.Join(h.appDir, "current")); err != nil {
		t.Fatal(err)
	}
	return h
}

// releases lays out the controller's releases: v2, and a release that binds
// the port (dark) but never becomes ready: the real demo with NOTIFY_SOCKET
// taken away, so it never sends READY=1.
func (r *rig) releases() {
	t := r.t
	v2 := filepath.Join(r.work, "releases", "v2")
	bad := filepath.Join(r.work, "releases", neverReady)
	for _, d := range []string{v2, bad} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	copyFile(t, r.demo, filepath.Join(v2, "demo"), 0o755)
	writeFile(t, filepath.Join(v2, "env"), "DEMO_VERSION=v2\n", 0o644)
	// A script, not a binary, so that the failed rollout ships little: it
	// runs v2's demo, which the host has by then.
	writeFile(t, filepath.Join(bad, "demo"), "#!/bin/sh\n# v2's demo that never tells the supervisor it is ready.\nunset NOTIFY_SOCKET\nexec \"$(dirname \"$0\")/../v2/demo\" \"$@\"\n", 0o755)
	writeFile(t, filepath.Join(bad, "env"), "DEMO_VERSION="+neverReady+"\n", 0o644)
}

// startSupervisor runs `changeover run` with the demo in the host's namespace,
// as examples/systemd's units do, and waits until v1 answers.
func (r *rig) startSupervisor(h *host) {
	cur := filepath.Join(h.appDir, "current")
	h.super = r.start(filepath.Join(h.appDir, "..", "..", "changeover.log"),
		"ip", "netns", "exec", h.netns, r.changeover, "run", "--name", "demo", "--control", h.control,
		"--env-file", cur+"/env", "--dir", cur, "--ready-timeout", readyTimeout, "--drain-timeout", drainTimeout,
		"--", cur+"/demo", "-addr", ":"+appPort)
	// First: stop the supervisor (it drains and exits 0), before sshd and the
	// namespace go.
	r.t.Cleanup(func() {
		_ = syscall.Kill(h.super.pid(), syscall.SIGTERM)
		if code := h.super.wait(r.t, 30*time.Second); code != 0 {
			r.t.Errorf("%s: changeover run exit %d after SIGTERM; want 0\n%s", h.name, code, h.super.output())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		if got := r.get(h); strings.HasPrefix(got, "version=v1 ") {
			return
		}
		if time.Now().After(deadline) || h.super.exited() {
			r.t.Fatalf("%s: v1 not serving under changeover run\n%s", h.name, h.super.output())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// get asks a host directly (from the controller's namespace, not through
// HAProxy) on a new connection.
func (r *rig) get(h *host) string {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + h.ip + ":" + appPort + "/")
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func (r *rig) currentTarget(h *host) string {
	target, err := os.Readlink(filepath.Join(h.appDir, "current"))
	if err != nil {
		return err.Error()
	}
	return target
}

// status is the part of `changeover status --json` the test reads.
type status struct {
	ServingGeneration int `json:"serving_generation"`
	Generations       []struct {
		Generation int    `json:"generation"`
		PID        int    `json:"pid"`
		State      string `json:"state"`
	} `json:"generations"`
	LastReload *struct {
		Generation int    `json:"generation"`
		OK         bool   `json:"ok"`
		DurationNS int64  `json:"duration_ns"`
		Error      string `json:"error"`
	} `json:"last_reload"`
}

func (s status) servingPID() int {
	for _, g := range s.Generations {
		if g.Generation == s.ServingGeneration {
			return g.PID
		}
	}
	return 0
}

func (r *rig) status(h *host) status {
	r.t.Helper()
	out, err := exec.Command(r.changeover, "status", "--json", "--control", h.control).Output()
	if err != nil {
		r.t.Fatalf("%s: changeover status: %v", h.name, err)
	}
	var st status
	if err := json.Unmarshal(out, &st); err != nil {
		r.t.Fatalf("%s: changeover status --json: %v\n%s", h.name, err, out)
	}
	return st
}

// startHAProxy puts HAProxy in front of the hosts: round robin over all
// three, an HTTP health check of each every 200ms, on 127.0.0.1.
func (r *rig) startHAProxy() {
	t := r.t
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.lbAddr = ln.Addr().String()
	ln.Close()
	r.statsSock = filepath.Join(r.work, "haproxy.sock")
	var servers strings.Builder
	for _, h := range r.hosts {
		fmt.Fprintf(&servers, "    server %s %s:%s check\n", h.name, h.ip, appPort)
	}
	config := filepath.Join(r.work, "haproxy.cfg")
	writeFile(t, config, fmt.Sprintf(`global
    stats socket %s mode 600 level admin
    log stderr format raw local0 notice

defaults
    mode http
    log global
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s
    # No retries: a connection refused or reset by a host during its
    # handover must reach the client and be counted, not be hidden by
    # HAProxy trying again.
    retries 0

frontend web
    bind %s
    default_backend web

backend web
    balance roundrobin
    option httpchk GET /
    option log-health-checks
    http-check expect status 200
    # A check every 200ms, each allowed 1s to answer (without "timeout
    # check" a check must complete within inter, which a busy machine of 2
    # cores does not always do: the host would look sick when it is slow).
    timeout check 1s
    default-server inter 200ms fall 2 rise 2
%s`, r.statsSock, r.lbAddr, servers.String()), 0o644)
	r.haproxy = r.start(filepath.Join(r.work, "haproxy.log"), "haproxy", "-db", "-f", config)
	r.t.Cleanup(func() {
		_ = syscall.Kill(r.haproxy.pid(), syscall.SIGTERM)
		r.haproxy.wait(r.t, 10*time.Second)
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		st, err := r.haproxyStates()
		up := 0
		for _, s := range st {
			if s == "UP" {
				up++
			}
		}
		if err == nil && up == hostCount {
			return
		}
		if time.Now().After(deadline) || r.haproxy.exited() {
			t.Fatalf("HAProxy: servers %v (%v), not all UP\n%s", st, err, r.haproxy.output())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// haproxyStates reads each server's status ("UP", "DOWN", "UP 1/2", ...)
// from HAProxy's stats socket.
func (r *rig) haproxyStates() (map[string]string, error) {
	c, err := net.DialTimeout("unix", r.statsSock, time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.WriteString(c, "show stat\n"); err != nil {
		return nil, err
	}
	b, err := io.ReadAll(c)
	if err != nil {
		return nil, err
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) == 0 || !strings.HasPrefix(lines[0], "# ") {
		return nil, fmt.Errorf("show stat: %q", b)
	}
	header := strings.Split(strings.TrimPrefix(lines[0], "# "), ",")
	col := slices.Index(header, "status")
	if col < 0 {
		return nil, fmt.Errorf("show stat: no status column in %q", lines[0])
	}
	states := map[string]string{}
	for _, line := range lines[1:] {
		f := strings.Split(line, ",")
		if len(f) > col && f[0] == "web" && f[1] != "BACKEND" && f[1] != "FRONTEND" {
			states[f[1]] = f[col]
		}
	}
	return states, nil
}

// watchHAProxy polls the servers' states until the returned function is
// called, which returns every state other than UP seen in between.
func (r *rig) watchHAProxy() func() []string {
	done := make(chan struct{})
	var seen []string
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			st, err := r.haproxyStates()
			if err != nil {
				seen = append(seen, "stats: "+err.Error())
			}
			for name, s := range st {
				if s != "UP" {
					seen = append(seen, fmt.Sprintf("%s %s at %s", name, s, time.Now().Format("15:04:05.000")))
				}
			}
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	return sync.OnceValue(func() []string {
		close(done)
		wg.Wait()
		return seen
	})
}

// playbook runs examples/ansible/rollout.yml for release against the example
// inventory with the rig's inventory over it (addresses, keys, directories),
// and returns its exit code, output and duration.
func (r *rig) playbook(release string) (int, string, time.Duration) {
	t := r.t
	t.Helper()
	example, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	inventory := filepath.Join(r.work, "rig-inventory.ini")
	if _, err := os.Stat(inventory); err != nil {
		var b strings.Builder
		b.WriteString("# The rig's hosts over examples/ansible/inventory.ini: same names, their namespaces' addresses.\n[web]\n")
		for _, h := range r.hosts {
			fmt.Fprintf(&b, "%s ansible_host=%s app_dir=%s changeover_control=%s\n", h.name, h.ip, h.appDir, h.control)
		}
		fmt.Fprintf(&b, "\n[web:vars]\nansible_user=root\nansible_ssh_private_key_file=%s\n", r.clientKey)
		fmt.Fprintf(&b, "ansible_ssh_common_args='-o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes'\n", r.knownHosts)
		fmt.Fprintf(&b, "changeover_bin=%s\n", r.changeover)
		writeFile(t, inventory, b.String(), 0o644)
		r.checkInventory(example, inventory)
	}
	cmd := exec.Command("ansible-playbook",
		"-i", filepath.Join(example, "inventory.ini"), "-i", inventory,
		filepath.Join(example, "rollout.yml"),
		"-e", "release="+release, "-e", "releases_src="+filepath.Join(r.work, "releases"))
	cmd.Env = r.ansibleEnv(example)
	buf := &stampedWriter{start: time.Now()}
	cmd.Stdout, cmd.Stderr = buf, buf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("ansible-playbook: %v", err)
	}
	// A rollout of three hosts takes seconds; one that hangs is cut here, so
	// that the test says where.
	timer := time.AfterFunc(playbookTimeout, func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	err = cmd.Wait()
	timer.Stop()
	out := buf.String()
	took := time.Since(start)
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0, string(out), took
	case errors.As(err, &exit):
		return exit.ExitCode(), string(out), took
	default:
		t.Fatalf("ansible-playbook: %v\n%s", err, out)
		return 0, "", 0
	}
}

// ansibleEnv is Ansible's environment: the example's ansible.cfg, and every
// file it writes (temp files, SSH control sockets) in the rig's directory.
func (r *rig) ansibleEnv(example string) []string {
	home := filepath.Join(r.work, "ansible-home")
	cp := filepath.Join(r.work, "cp")
	if _, err := os.Stat(cp); err != nil {
		if err := os.MkdirAll(cp, 0o700); err != nil {
			r.t.Fatal(err)
		}
		// Ansible's SSH connections persist (ControlPersist): end them
		// before sshd goes, so that no session is left in a host.
		r.t.Cleanup(func() { r.closeSSHMasters(cp) })
	}
	return append(os.Environ(),
		"ANSIBLE_CONFIG="+filepath.Join(example, "ansible.cfg"),
		"ANSIBLE_HOME="+home,
		"ANSIBLE_LOCAL_TEMP="+filepath.Join(home, "tmp"),
		"ANSIBLE_SSH_CONTROL_PATH_DIR="+cp,
		"ANSIBLE_NOCOLOR=1",
		"ANSIBLE_RETRY_FILES_ENABLED=0",
	)
}

// checkInventory checks that the example inventory and the rig's over it
// name the same hosts in group web.
func (r *rig) checkInventory(example, rigInventory string) {
	t := r.t
	t.Helper()
	hostsIn := func(args ...string) []string {
		cmd := exec.Command("ansible-inventory", append(args, "--list")...)
		cmd.Env = append(r.ansibleEnv(example), "ANSIBLE_VERBOSITY=0") // JSON alone
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("ansible-inventory %v: %v", args, err)
		}
		var inv struct {
			Web struct {
				Hosts []string `json:"hosts"`
			} `json:"web"`
		}
		if err := json.Unmarshal(out, &inv); err != nil {
			t.Fatalf("ansible-inventory %v: %v\n%s", args, err, out)
		}
		sort.Strings(inv.Web.Hosts)
		return inv.Web.Hosts
	}
	ex := hostsIn("-i", filepath.Join(example, "inventory.ini"))
	both := hostsIn("-i", filepath.Join(example, "inventory.ini"), "-i", rigInventory)
	if !slices.Equal(ex, both) || len(ex) != hostCount {
		t.Fatalf("group web: the example inventory has %v, with the rig's over it %v", ex, both)
	}
}

func (r *rig) closeSSHMasters(cp string) {
	entries, _ := os.ReadDir(cp)
	for _, e := range entries {
		sock := filepath.Join(cp, e.Name())
		if out, err := exec.Command("ssh", "-o", "ControlPath="+sock, "-O", "exit", "rig").CombinedOutput(); err != nil {
			r.t.Logf("ssh -O exit %s: %v %s", sock, err, out)
		}
	}
}

// checkEmpty waits until no process is left in h's namespace; whatever is
// still there after 10 s is killed by PID and fails the test.
func (r *rig) checkEmpty(h *host) {
	hostNS := map[string]string{}
	if b, err := os.ReadFile(filepath.Join(r.dir, "namespaces")); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if what, inode, ok := strings.Cut(line, " "); ok && what == "netns:"+h.netns {
				hostNS[inode] = what
			}
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		left := processesIn(hostNS)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			for _, p := range left {
				r.t.Errorf("%s: process %d (%s) still in its namespace: killing it", h.name, p.pid, p.comm)
				_ = syscall.Kill(p.pid, syscall.SIGKILL)
			}
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stamp matches the prefix of stampedWriter.
const stamp = `\+ *\d+\.\ds `

// stampedWriter prefixes every line written to it with the time since start
// ("+12.3s "), so that a playbook's output shows how long each task took.
type stampedWriter struct {
	mu      sync.Mutex
	start   time.Time
	b       strings.Builder
	midLine bool
}

func (w *stampedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, line := range bytes.SplitAfter(p, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		if !w.midLine {
			fmt.Fprintf(&w.b, "+%5.1fs ", time.Since(w.start).Seconds())
		}
		w.b.Write(line)
		w.midLine = line[len(line)-1] != '\n'
	}
	return len(p), nil
}

func (w *stampedWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// reportLines are the messages of the playbook's Report task.
func reportLines(out string) []string {
	var lines []string
	re := regexp.MustCompile(`^` + stamp + `ok: \[(\S+)\] => \{$`)
	sc := bufio.NewScanner(strings.NewReader(out))
	host := ""
	for sc.Scan() {
		line := sc.Text()
		if m := re.FindStringSubmatch(line); m != nil {
			host = m[1]
			continue
		}
		_, line, _ = strings.Cut(line, "s ") // the stamp
		if msg, ok := strings.CutPrefix(strings.TrimSpace(line), `"msg": "`); ok && host != "" {
			lines = append(lines, host+": "+strings.TrimSuffix(msg, `"`))
			host = ""
		}
	}
	return lines
}

// proc is a process the rig started, in a process group of its own, with its
// output in a file.
type proc struct {
	cmd  *exec.Cmd
	out  string
	done chan struct{}
}

func (r *rig) start(logPath string, argv ...string) *proc {
	t := r.t
	t.Helper()
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, out: logPath, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		// The group, if anything is left in it (the graceful stops ran
		// before this): signal it only while its leader is not yet reaped or
		// members remain, so a reused PID is never signalled.
		if !p.exited() || groupAlive(cmd.Process.Pid) {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		}
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			t.Errorf("%s (pid %d) not gone 10s after SIGKILL", argv[0], cmd.Process.Pid)
		}
	})
	return p
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proc) output() string {
	b, _ := os.ReadFile(p.out)
	return string(b)
}

// wait returns the exit code, or -1 if it has not exited in time.
func (p *proc) wait(t *testing.T, timeout time.Duration) int {
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(timeout):
		t.Errorf("%s (pid %d) did not exit within %v", p.cmd.Args[0], p.pid(), timeout)
		return -1
	}
}

// groupAlive says whether process group pgid has a member (kill -0 of the
// group).
func groupAlive(pgid int) bool {
	return syscall.Kill(-pgid, 0) == nil
}

func waitDial(t *testing.T, addr string, p *proc) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) || p.exited() {
			t.Fatalf("%s not listening: %v\n%s", addr, err, p.output())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func writeFile(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}

func appendFile(t *testing.T, path, content string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := io.WriteString(f, content); err != nil {
		t.Fatal(err)
	}
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, to, string(b), mode)
}

// The load: clients through HAProxy until stopped, two opening a connection
// per GET, two sending 512-byte POSTs on a keep-alive connection, each
// paced at one request per 20 ms so that Ansible keeps its share of the CPUs.
const (
	modeNewConn   = "new connection GET"
	modeKeepAlive = "keep-alive POST"
)

type answer struct {
	version string
	pid     int
}

type loadResult struct {
	ok, failed map[string]int
	answers    map[answer]int
	errors     []string // the first few
}

func (l loadResult) total() int { return sumValues(l.ok) + sumValues(l.failed) }

func (l loadResult) failures() int { return sumValues(l.failed) }

func sumValues(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

type load struct {
	mu   sync.Mutex
	res  loadResult
	done chan struct{}
	wg   sync.WaitGroup
	n    atomic.Int64
}

var answerRE = regexp.MustCompile(`^version=(\S+) pid=(\d+)\n$`)

func startLoad(t *testing.T, addr string) *load {
	l := &load{done: make(chan struct{}), res: loadResult{ok: map[string]int{}, failed: map[string]int{}, answers: map[answer]int{}}}
	url := "http://" + addr + "/"
	body := bytes.Repeat([]byte("x"), 512)
	for i := range 4 {
		mode := modeNewConn
		tr := &http.Transport{DisableKeepAlives: true}
		if i%2 == 1 {
			mode = modeKeepAlive
			tr = &http.Transport{MaxIdleConnsPerHost: 1}
		}
		client := &http.Client{Timeout: 10 * time.Second, Transport: tr}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			defer tr.CloseIdleConnections()
			for {
				select {
				case <-l.done:
					return
				case <-time.After(20 * time.Millisecond):
				}
				var resp *http.Response
				var err error
				if mode == modeKeepAlive {
					resp, err = client.Post(url, "application/octet-stream", bytes.NewReader(body))
				} else {
					resp, err = client.Get(url)
				}
				var got []byte
				if err == nil {
					got, err = io.ReadAll(resp.Body)
					resp.Body.Close()
					if err == nil && resp.StatusCode != http.StatusOK {
						err = fmt.Errorf("status %s: %q", resp.Status, got)
					}
				}
				var m []string
				if err == nil {
					if m = answerRE.FindStringSubmatch(string(got)); m == nil {
						err = fmt.Errorf("answer %q", got)
					}
				}
				l.record(mode, m, err)
			}
		}()
	}
	return l
}

func (l *load) record(mode string, m []string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.n.Add(1)
	if err != nil {
		l.res.failed[mode]++
		if len(l.res.errors) < 10 {
			l.res.errors = append(l.res.errors, fmt.Sprintf("%s %s: %v", time.Now().Format("15:04:05.000"), mode, err))
		}
		return
	}
	l.res.ok[mode]++
	pid, _ := strconv.Atoi(m[2])
	l.res.answers[answer{m[1], pid}]++
}

func (l *load) waitAnswers(t *testing.T, n int64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for l.n.Load() < n {
		if time.Now().After(deadline) {
			t.Fatalf("load: %d requests in 20s", l.n.Load())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (l *load) stop() {
	close(l.done)
	l.wg.Wait()
}

// snapshot copies the counts so far.
func (l *load) snapshot() loadResult {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := loadResult{ok: map[string]int{}, failed: map[string]int{}, answers: map[answer]int{}, errors: slices.Clone(l.res.errors)}
	for k, v := range l.res.ok {
		c.ok[k] = v
	}
	for k, v := range l.res.failed {
		c.failed[k] = v
	}
	for k, v := range l.res.answers {
		c.answers[k] = v
	}
	return c
}
