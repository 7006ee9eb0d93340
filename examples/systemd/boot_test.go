//go:build linux

package systemd

// Booting systemd as PID 1 of a PID and mount namespace of its own, in a
// chroot of the Debian root (systemd-nspawn does not work on this machine).
//
// What was learned on the way (kernel 6.18, a VM whose PID 1 is not systemd,
// cgroups in the hybrid layout: a tmpfs on /sys/fs/cgroup with v1
// controllers, name=systemd, and cgroup2 on /sys/fs/cgroup/unified):
//
//   - `unshare --fork --pid --mount` with proc, an rbind of /sys and /dev and
//     a tmpfs /run, then `chroot ROOT /lib/systemd/systemd --system`, boots:
//     systemd 254 reaches "running" in about a second. But it is not
//     contained: a bind mount shares the file system, and systemd (hybrid
//     mode) remounted the host's /sys/fs/cgroup tmpfs read-only, made
//     directories and symlinks in it for the v1 controllers it mounts, left
//     /dev/log, /dev/initctl, /dev/hugepages and /dev/mqueue in the host's
//     /dev, ran gettys on the host's /dev/tty1..6 and applied its sysctl.d
//     to the host kernel. So the boot below gives it its own of each:
//   - cgroups: a cgroup of its own in the cgroup2 hierarchy (the process is
//     started in it with clone3's CLONE_INTO_CGROUP), a cgroup namespace
//     rooted there (`unshare --cgroup`), and a fresh cgroup2 mount on the
//     root's /sys/fs/cgroup. systemd then runs in the unified mode (it
//     decides on the file system type of /sys/fs/cgroup), creates init.scope
//     and system.slice under that cgroup only, and never touches the v1
//     hierarchies. Writable: it must be, systemd creates a cgroup per unit.
//     The unit's cgroup is visible from the host under that cgroup, which is
//     how the test finds the host PIDs of the unit's processes.
//   - a fresh sysfs mounted read-only (the cgroup2 mount sits on it), /proc
//     with /proc/sys bound read-only (so systemd-sysctl and binfmt skip
//     themselves: ConditionPathIsReadWrite=/proc/sys), a tmpfs /dev with
//     nodes of its own (mknod: null, zero, full, random, urandom, tty, and a
//     /dev/console that is the null device), tmpfs on /run and /tmp, and
//     --uts and --ipc too (a container's systemd still sets the hostname).
//     Not bind mounts of the host's nodes: systemd makes /dev/console
//     root:tty 0620, and with the host's /dev/null bound there that was the
//     host's /dev/null (every non-root open failed with EACCES, changeover's
//     included, until it was chmod'ed back).
//   - container=changeover-test in systemd's environment: it then knows it is
//     in a container (systemd-detect-virt says container-other) and skips
//     what a container must not do. The network namespace is the host's, on
//     purpose: the test's clients reach the demo's port on loopback.
//   - an overlay on the cached root, in the namespace: each boot starts from
//     the clean root and leaves it untouched; the test writes into the booted
//     root through /proc/PID/root (PID: systemd's, in the host's numbering).
//   - masked: gettys (console-getty fails on /dev/null), module loading,
//     remount-fs, the daily timers. The journal is volatile.
//   - killing systemd (SIGKILL from the host to the namespace's PID 1) ends
//     every process in the namespace, instances with KillMode=process
//     included; the mounts go with the namespace, the cgroups are removed.

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// bootScript runs in the new namespaces: $1 lower (the cached root), $2 the
// overlay's upper and work directories' parent, $3 where to mount it.
const bootScript = `set -e
lower=$1 rw=$2 r=$3
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$rw/upper,workdir=$rw/work" "$r"
mount -t proc proc "$r/proc"
mount --bind "$r/proc/sys" "$r/proc/sys"
mount -o remount,bind,ro "$r/proc/sys"
mount -t sysfs -o ro sysfs "$r/sys"
mount -t cgroup2 cgroup2 "$r/sys/fs/cgroup"
mount -t tmpfs -o mode=755 tmpfs "$r/dev"
mknod -m 666 "$r/dev/null" c 1 3
mknod -m 666 "$r/dev/zero" c 1 5
mknod -m 666 "$r/dev/full" c 1 7
mknod -m 666 "$r/dev/random" c 1 8
mknod -m 666 "$r/dev/urandom" c 1 9
mknod -m 666 "$r/dev/tty" c 5 0
mknod -m 600 "$r/dev/console" c 1 3
mkdir "$r/dev/shm" "$r/dev/pts"
mount -t tmpfs -o mode=1777 tmpfs "$r/dev/shm"
ln -s /proc/self/fd "$r/dev/fd"
mount -t tmpfs -o mode=755 tmpfs "$r/run"
mount -t tmpfs -o mode=1777 tmpfs "$r/tmp"
exec env -i container=changeover-test /usr/sbin/chroot "$r" /lib/systemd/systemd --system
`

// maskedUnits would act on the host, or fail in this container.
var maskedUnits = []string{
	"console-getty.service", "getty.target", "systemd-modules-load.service", "systemd-remount-fs.service",
	"apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "e2scrub_all.timer",
	"systemd-tmpfiles-clean.timer",
}

// bootedSystemd is systemd running as PID 1 of its namespaces.
type bootedSystemd struct {
	t       *testing.T
	pid     int    // systemd's PID on the host
	cgroup  string // its cgroup on the host (the root of its cgroup namespace)
	version int
	boot    *exec.Cmd
	out     *bytes.Buffer
}

// root is a host path into the booted root file system.
func (s *bootedSystemd) root(path string) string {
	return filepath.Join("/proc", strconv.Itoa(s.pid), "root", path)
}

// bootSystemd boots the root (read-only lower layer) and waits until systemd
// says the system is running. setup writes files into the overlay's upper
// layer before the boot (paths relative to the root).
func bootSystemd(t *testing.T, r debianRoot, setup func(upper string)) *bootedSystemd {
	t.Helper()
	rw := t.TempDir()
	upper, merged := filepath.Join(rw, "upper"), filepath.Join(rw, "merged")
	for _, d := range []string{upper, filepath.Join(rw, "work"), merged} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, u := range maskedUnits {
		path := filepath.Join(upper, "etc/systemd/system", u)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("/dev/null", path); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, upper, "etc/systemd/journald.conf.d/volatile.conf", "[Journal]\nStorage=volatile\n", 0o644)
	setup(upper)

	cg := newCgroup(t)
	dir, err := os.Open(cg)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	s := &bootedSystemd{t: t, cgroup: cg, out: &bytes.Buffer{}, version: r.systemdVersion}
	// If the test process dies, unshare gets SIGKILL (Pdeathsig) and its
	// child, the namespace's PID 1, gets SIGKILL too (--kill-child): no
	// systemd is left running on the host.
	s.boot = exec.Command("unshare", "--fork", "--kill-child", "--pid", "--mount", "--uts", "--ipc", "--cgroup", "--propagation", "private",
		"/bin/sh", "-c", bootScript, "boot", r.dir, rw, merged)
	s.boot.Stdout, s.boot.Stderr = s.out, s.out
	s.boot.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, UseCgroupFD: true, CgroupFD: int(dir.Fd()), Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	if err := s.boot.Start(); err != nil {
		t.Fatalf("unshare: %v", err)
	}
	exited := make(chan struct{})
	go func() { s.boot.Wait(); close(exited) }()
	t.Cleanup(func() {
		// SIGKILL to the namespace's PID 1 kills all of it; then unshare exits.
		if s.pid > 0 {
			syscall.Kill(s.pid, syscall.SIGKILL)
		}
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			syscall.Kill(-s.boot.Process.Pid, syscall.SIGKILL)
			<-exited
		}
		removeCgroup(t, cg)
	})

	// unshare --fork's child runs the script, which execs systemd.
	deadline := time.Now().Add(30 * time.Second)
	for s.pid == 0 {
		select {
		case <-exited:
			t.Fatalf("the boot ended (%v) before systemd started:\n%s", s.boot.ProcessState, s.out)
		default:
		}
		if kids := children(s.boot.Process.Pid); len(kids) == 1 {
			if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", kids[0])); strings.HasSuffix(exe, "/lib/systemd/systemd") {
				s.pid = kids[0]
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("systemd not started after 30s:\n%s", s.out)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// is-system-running --wait returns once the boot is over: "running", or
	// "degraded" if a unit failed (a failure of the test's set-up).
	var state string
	for {
		out, _, _ := s.run("systemctl", "is-system-running", "--wait")
		state = strings.TrimSpace(out)
		if state == "running" || state == "degraded" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("systemd not up after 30s (%q):\n%s", state, s.out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if state == "degraded" {
		failed, _, _ := s.run("systemctl", "--failed", "--no-legend")
		t.Fatalf("the boot is degraded: a unit failed:\n%s", failed)
	}
	t.Logf("%s booted as PID 1 of its namespaces (host PID %d) in %v", r.systemdLine, s.pid, time.Since(start).Round(time.Millisecond))
	return s
}

// run runs a command in the booted system (its namespaces and root) and
// returns its stdout, stderr and exit code.
func (s *bootedSystemd) run(argv ...string) (string, string, int) {
	args := append([]string{"--target", strconv.Itoa(s.pid), "--mount", "--pid", "--root", "--wd", "--"}, argv...)
	cmd := exec.Command("nsenter", args...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0"}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if err != nil {
		code = -1
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else {
			stderr.WriteString(err.Error())
		}
	}
	return stdout.String(), stderr.String(), code
}

// must runs a command in the booted system and fails the test unless it
// exits 0.
func (s *bootedSystemd) must(argv ...string) string {
	s.t.Helper()
	out, errOut, code := s.run(argv...)
	if code != 0 {
		s.t.Fatalf("%s: exit %d: %s%s", strings.Join(argv, " "), code, out, errOut)
	}
	return out
}

// cgroup2Mount is where the host has cgroup2: /sys/fs/cgroup itself (the
// unified layout) or /sys/fs/cgroup/unified (the hybrid layout, here).
func cgroup2Mount() (string, error) {
	for _, p := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		var st unix.Statfs_t
		if unix.Statfs(p, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
			return p, nil
		}
	}
	return "", fmt.Errorf("no cgroup2 file system on /sys/fs/cgroup or /sys/fs/cgroup/unified")
}

// newCgroup makes the cgroup2 cgroup the booted systemd lives in, beside the
// test's own.
func newCgroup(t *testing.T) string {
	t.Helper()
	mnt, err := cgroup2Mount()
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	parent := "/"
	for _, l := range strings.Split(string(self), "\n") {
		if p, ok := strings.CutPrefix(l, "0::"); ok {
			parent = filepath.Dir(p)
		}
	}
	cg := filepath.Join(mnt, parent, fmt.Sprintf("changeover-systemd-test-%d", os.Getpid()))
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatalf("cgroup for systemd: %v", err)
	}
	return cg
}

// removeCgroup removes a cgroup and those systemd made in it, deepest first,
// once the processes in them are gone.
func removeCgroup(t *testing.T, cg string) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		var dirs []string
		filepath.WalkDir(cg, func(path string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		var last error
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := os.Remove(dirs[i]); err != nil && !os.IsNotExist(err) {
				last = err
			}
		}
		if last == nil || !exists(cg) {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("cgroup %s left behind: %v", cg, last)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// children returns the PIDs of pid's children.
func children(pid int) []int {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	var kids []int
	for _, f := range strings.Fields(string(b)) {
		if k, err := strconv.Atoi(f); err == nil {
			kids = append(kids, k)
		}
	}
	return kids
}

// writeFile writes a file under dir, making its parents.
func writeFile(t *testing.T, dir, rel, content string, mode os.FileMode) {
	t.Helper()
	path := filepath.Join(dir, rel)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}
