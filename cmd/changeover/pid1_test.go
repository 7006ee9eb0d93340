//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// nsProc is a process of a PID namespace as seen from the host.
type nsProc struct {
	host, ns, ppid int // host PID, PID inside the namespace, host PID of the parent
	state          byte
}

func (p nsProc) String() string {
	return fmt.Sprintf("host pid %d (ns pid %d, parent %d, state %c)", p.host, p.ns, p.ppid, p.state)
}

// readNSProc reads /proc/PID/status on the host: state, parent and the
// NSpid line (host PID first, the innermost namespace's PID last).
func readNSProc(pid int) (nsProc, []int, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return nsProc{}, nil, err
	}
	p := nsProc{host: pid}
	var nspid []int
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch k {
		case "State":
			if v != "" {
				p.state = v[0]
			}
		case "PPid":
			p.ppid, _ = strconv.Atoi(v)
		case "NSpid":
			for _, f := range strings.Fields(v) {
				n, _ := strconv.Atoi(f)
				nspid = append(nspid, n)
			}
		}
	}
	if len(nspid) > 0 {
		p.ns = nspid[len(nspid)-1]
	}
	return p, nspid, nil
}

// namespaceProcs lists, from the host's /proc, the processes of the PID
// namespace whose init has host PID init and namespace link nsLink: those
// whose /proc/PID/ns/pid is nsLink, or (when the link cannot be read, e.g.
// a zombie) whose NSpid has more than one field and whose parent is init.
func namespaceProcs(init int, nsLink string) []nsProc {
	ents, _ := os.ReadDir("/proc")
	var out []nsProc
	for _, en := range ents {
		pid, err := strconv.Atoi(en.Name())
		if err != nil {
			continue
		}
		p, nspid, err := readNSProc(pid)
		if err != nil || len(nspid) < 2 {
			continue
		}
		link, lerr := os.Readlink(filepath.Join("/proc", en.Name(), "ns", "pid"))
		if link == nsLink || lerr != nil && (p.ppid == init || pid == init) {
			out = append(out, p)
		}
	}
	return out
}

// TestContainerPID1 runs `changeover run` as PID 1 of a new PID namespace
// and checks what the package doc claims for containers: an orphan an
// instance leaves is re-parented to the supervisor and reaped (no zombie
// remains), reaping does not steal an instance's exit status (a reload from
// the host reports success and the old generation's exit status 0), and
// SIGTERM from the host drains and exits 0 with nothing of the namespace
// left.
//
// "own-proc" is a container as runtimes make one: the namespace has its own
// /proc. "host-proc" is CLONE_NEWPID alone (like `unshare --pid --fork`
// without --mount-proc): /proc is still the host's, so the supervisor's
// /proc scans (zombie children of PID 1, process group members, start
// times) would look at host PIDs rather than its namespace's: it refuses
// to run, exit 1, saying so.
func TestContainerPID1(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skipf("needs root for CLONE_NEWPID and mounting /proc (euid %d)", os.Geteuid())
	}
	for _, bin := range []string{"/bin/sh", "mount", "sleep", "mv"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("needs %s: %v", bin, err)
		}
	}
	t.Run("own-proc", func(t *testing.T) { testContainerPID1(t, true) })
	t.Run("host-proc", func(t *testing.T) { testContainerPID1(t, false) })
}

func testContainerPID1(t *testing.T, ownProc bool) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// Not newEnv: its cleanup SIGKILLs the PIDs helpers write to their pid
	// dir, and inside the namespace those would be namespace PIDs, i.e.
	// unrelated processes on the host. Helpers here get no pid dir.
	e := &env{t: t, dir: dir, addr: freeAddr(t), envFile: filepath.Join(dir, "env"),
		sock: filepath.Join(dir, "c.sock"), exe: exe}
	setVersion := func(v string) {
		lines := []string{envHelper + "=server", envAddr + "=" + e.addr, envVersion + "=" + v}
		if err := os.WriteFile(e.envFile, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	setVersion("1")

	// The instance: a shell that leaves an orphan in its process group (a
	// background sleep whose parent subshell exits at once, so the kernel
	// re-parents it to the namespace's init, the supervisor), writes the
	// orphan's PID to orphan.GENERATION and execs the helper server.
	orphanBase := filepath.Join(dir, "orphan")
	instance := []string{"/bin/sh", "-c",
		`(sleep 2 & echo $! > "$1.$CHANGEOVER_GENERATION.tmp"; mv "$1.$CHANGEOVER_GENERATION.tmp" "$1.$CHANGEOVER_GENERATION") && exec "$0"`,
		exe, orphanBase}

	// PID 1 of the new namespace is a shell that (own-proc) gives the
	// namespace its own /proc, in a private mount namespace, and execs
	// `changeover run`, which thereby is PID 1.
	args := append([]string{"run", "--control", e.sock, "--env-file", e.envFile,
		"--name", "pid1", "--drain-timeout", "10s", "--log-format", "text"}, "--")
	args = append(args, instance...)
	script := `exec "$0" "$@"`
	if ownProc {
		script = `mount --make-rprivate / && mount -t proc proc /proc && ` + script
	}
	cmd := exec.Command("/bin/sh", append([]string{"-c", script, exe}, args...)...)
	cmd.Env = append(os.Environ(), envHelper+"=main")
	outFile, err := os.CreateTemp(dir, "out")
	if err != nil {
		t.Fatal(err)
	}
	defer outFile.Close()
	out := fileOut(outFile.Name())
	cmd.Stdout, cmd.Stderr = outFile, outFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID, Setpgid: true}
	if ownProc {
		cmd.SysProcAttr.Cloneflags |= syscall.CLONE_NEWNS
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sup := cmd.Process.Pid // host PID of the namespace's init
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		// SIGKILL of a namespace's init kills the whole namespace.
		_ = syscall.Kill(-sup, syscall.SIGKILL)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Errorf("supervisor %d not gone 10s after SIGKILL", sup)
		}
	})
	exited := func() bool {
		select {
		case <-done:
			return true
		default:
			return false
		}
	}

	if !ownProc {
		// The host's /proc would make every /proc reader of the
		// supervisor look at the wrong processes: it refuses to run.
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Fatalf("changeover run with the host's /proc did not exit; output:\n%s", out.String())
		}
		if code := cmd.ProcessState.ExitCode(); code != 1 || !strings.Contains(out.String(), "/proc belongs to another PID namespace") {
			t.Fatalf("changeover run with the host's /proc: exit %d, want 1 and an error about /proc; output:\n%s", code, out.String())
		}
		return
	}

	nsLink, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", sup))
	if err != nil {
		t.Fatal(err)
	}
	if self, _ := os.Readlink("/proc/self/ns/pid"); self == nsLink {
		t.Fatalf("supervisor %d is in the test's own PID namespace %s", sup, nsLink)
	}

	// serving waits until generation gen serves, failing if run exits.
	serving := func(gen int) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			if exited() {
				t.Fatalf("changeover run exited early (%v); output:\n%s", cmd.ProcessState, out.String())
			}
			st, err := e.status()
			if err == nil && st.Serving == gen && !st.Reloading {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("generation %d not serving after 20s (status %+v, %v); output:\n%s", gen, st, err, out.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	// seeOrphan waits for generation gen's orphan PID (inside the
	// namespace) and, if the orphan is still there, checks that it was
	// re-parented to the supervisor.
	seeOrphan := func(gen int) int {
		t.Helper()
		file := fmt.Sprintf("%s.%d", orphanBase, gen)
		var orphan int
		waitFor(t, 10*time.Second, fmt.Sprintf("generation %d's orphan PID in %s", gen, file), func() bool {
			b, err := os.ReadFile(file)
			orphan, _ = strconv.Atoi(strings.TrimSpace(string(b)))
			return err == nil && orphan > 0
		})
		// Until the subshell that started it has exited, its parent is
		// that subshell; then it must be the supervisor.
		var seen nsProc
		found := false
		deadline := time.Now().Add(5 * time.Second)
		for {
			found = false
			for _, p := range namespaceProcs(sup, nsLink) {
				if p.ns == orphan {
					seen, found = p, true
				}
			}
			if !found || seen.ppid == sup {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("generation %d's orphan (ns pid %d) is %v after 5s, want parent = supervisor %d", gen, orphan, seen, sup)
				return orphan
			}
			time.Sleep(5 * time.Millisecond)
		}
		if found {
			t.Logf("generation %d's orphan: %v, a child of the supervisor", gen, seen)
		} else {
			t.Logf("generation %d's orphan (ns pid %d) already gone when looked at", gen, orphan)
		}
		return orphan
	}
	// reaped waits until generation gen's orphan is gone and no zombie is
	// left in the namespace.
	reaped := func(gen, orphan int) {
		t.Helper()
		var last []nsProc
		deadline := time.Now().Add(10 * time.Second)
		for {
			last = namespaceProcs(sup, nsLink)
			left := false // the orphan, or any zombie
			for _, p := range last {
				left = left || p.ns == orphan || p.state == 'Z'
			}
			if !left {
				break
			}
			if time.Now().After(deadline) {
				// Not fatal: go on to show that reload and stop still work.
				t.Errorf("generation %d's orphan (ns pid %d) not reaped, or zombies left, 10s after it was started; namespace: %v",
					gen, orphan, last)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Logf("generation %d's orphan reaped; namespace now: %v", gen, last)
	}

	// (1) The supervisor is PID 1 of its namespace.
	orphan1 := seeOrphan(1)
	serving(1)
	p, nspid, err := readNSProc(sup)
	if err != nil {
		t.Fatal(err)
	}
	if len(nspid) != 2 || nspid[0] != sup || nspid[1] != 1 {
		t.Fatalf("supervisor NSpid %v, want [%d 1]", nspid, sup)
	}
	st, err := e.status()
	if err != nil {
		t.Fatal(err)
	}
	if st.PID != 1 {
		t.Errorf("status reports supervisor pid %d, want 1", st.PID)
	}
	t.Logf("supervisor: %v, NSpid %v", p, nspid)
	hostOf := func(nsPID int) nsProc {
		t.Helper()
		for _, p := range namespaceProcs(sup, nsLink) {
			if p.ns == nsPID {
				return p
			}
		}
		t.Fatalf("no process with ns pid %d in the namespace; namespace: %v", nsPID, namespaceProcs(sup, nsLink))
		return nsProc{}
	}
	gen1 := hostOf(st.Generations[len(st.Generations)-1].PID)
	if gen1.ppid != sup {
		t.Errorf("generation 1 %v: parent is not the supervisor %d", gen1, sup)
	}
	if got := get(e.addr); !strings.Contains(got, "version=1") {
		t.Errorf("served %q, want version=1", got)
	}

	// (2) The orphan is reaped.
	reaped(1, orphan1)

	// (3) A reload, asked for from the host, succeeds, and the drained
	// generation's exit status reached the supervisor (not lost to reaping).
	setVersion("2")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rl := exec.CommandContext(ctx, exe, "reload", "--control", e.sock)
	rl.Env = append(os.Environ(), envHelper+"=main")
	var rlOut syncBuffer
	rl.Stdout, rl.Stderr = &rlOut, &rlOut
	if err := rl.Start(); err != nil {
		t.Fatal(err)
	}
	orphan2 := seeOrphan(2) // while the reload runs: the orphan lives 2s
	err = rl.Wait()
	if code := rl.ProcessState.ExitCode(); err != nil || code != 0 {
		t.Fatalf("reload: exit %d (%v), want 0; reload output:\n%s\nsupervisor output:\n%s", code, err, rlOut.String(), out.String())
	}
	serving(2)
	if got := get(e.addr); !strings.Contains(got, "version=2") {
		t.Errorf("after reload served %q, want version=2", got)
	}
	// The reload is done at the handover; generation 1 drains, then exits.
	waitFor(t, 10*time.Second, "generation 1 exited", func() bool {
		st, err = e.status()
		for _, g := range st.Generations {
			if g.Generation == 1 {
				return err == nil && g.State == "exited"
			}
		}
		return false
	})
	var gen2 nsProc
	for _, g := range st.Generations {
		switch g.Generation {
		case 1:
			if g.Exit != "exit status 0" {
				t.Errorf("generation 1 after the reload: state %q exit %q, want exit status 0 (reaped by the supervisor, status kept)", g.State, g.Exit)
			}
		case 2:
			gen2 = hostOf(g.PID)
		}
	}
	if gen2.host == 0 {
		t.Fatalf("no generation 2 in status %+v", st)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", gen1.host)); err == nil {
		t.Errorf("generation 1 %v still in /proc after the reload", gen1)
	}
	reaped(2, orphan2)

	// (4) SIGTERM from the host drains and exits 0; the namespace is gone.
	if err := syscall.Kill(sup, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatalf("supervisor did not exit within 20s of SIGTERM; output:\n%s", out.String())
	}
	logs := out.String()
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("supervisor exit %d (%v), want 0; output:\n%s", code, cmd.ProcessState, logs)
	}
	drained := false
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, "instance exited") && strings.Contains(l, "generation=2 ") &&
			strings.Contains(l, `status="exit status 0"`) && strings.Contains(l, "killed=false") {
			drained = true
		}
	}
	if !drained {
		t.Errorf("no log line saying generation 2 drained with exit status 0; output:\n%s", logs)
	}
	if strings.Contains(logs, "status unknown") {
		t.Errorf("an exit status was lost; output:\n%s", logs)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", gen2.host)); err == nil {
		t.Errorf("generation 2 %v still in /proc after the supervisor exited", gen2)
	}
	if left := namespaceProcs(sup, nsLink); len(left) > 0 {
		t.Errorf("processes of the namespace left after its init exited: %v", left)
	}
	t.Logf("supervisor output:\n%s", logs)
}
