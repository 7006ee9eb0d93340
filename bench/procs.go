package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/changeover-dev/changeover/reuseport"
)

// procs remembers every process the bench started so that all of them are
// killed on exit, including on panic and ctrl-c. Servers that re-exec
// themselves (tableflip, fdpass) or are started detached (changeover swap's
// instances and its drain keepers) are found through their executable path,
// which lives in the bench's own temporary directory, and killed by PID.
type procs struct {
	mu    sync.Mutex
	pgids map[int]bool
	dir   string // executables under dir belong to this bench run
}

var tracked = &procs{pgids: map[int]bool{}}

// start starts cmd in its own process group, remembered for cleanup.
func (p *procs) start(cmd *exec.Cmd) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := cmd.Start(); err != nil {
		return err
	}
	p.pgids[cmd.Process.Pid] = true
	return nil
}

// ours lists the live processes whose executable is under the bench's temp dir.
func (p *procs) ours() []int {
	if p.dir == "" {
		return nil
	}
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		if err != nil {
			continue
		}
		if strings.HasPrefix(exe, p.dir+string(os.PathSeparator)) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// killAll SIGKILLs every process group the bench started and every process
// running one of its executables.
func (p *procs) killAll() {
	p.mu.Lock()
	pgids := make([]int, 0, len(p.pgids))
	for g := range p.pgids {
		pgids = append(pgids, g)
	}
	p.mu.Unlock()
	for i := 0; i < 3; i++ {
		for _, g := range pgids {
			_ = syscall.Kill(-g, syscall.SIGKILL)
		}
		pids := p.ours()
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		if len(pids) == 0 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// gone reports whether pid has exited (no /proc entry, or a zombie).
func gone(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return true
	}
	st := b[i+2]
	return st == 'Z' || st == 'X'
}

// procState describes pid for an error message: its state and wait channel.
func procState(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return "no /proc entry"
	}
	i := bytes.LastIndexByte(b, ')')
	st := "?"
	if i >= 0 && i+2 < len(b) {
		st = string(b[i+2])
	}
	w, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/wchan")
	return fmt.Sprintf("state %s, wchan %s", st, w)
}

// procHWM reads the peak RSS (VmHWM, bytes) of pid.
func procHWM(pid int) int64 {
	s, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(s), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			kb, _ := strconv.ParseInt(strings.Fields(line)[1], 10, 64)
			return kb * 1024
		}
	}
	return 0
}

// procUsage reads peak RSS (VmHWM, bytes) and CPU time (user+system) of pid from /proc.
func procUsage(pid int) (rss int64, cpu time.Duration, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, errors.New("bad stat")
	}
	f := strings.Fields(string(b[i+2:]))
	// fields after ')': state(0) ... utime(11) stime(12) ... rss(21) pages
	if len(f) < 22 {
		return 0, 0, errors.New("short stat")
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	stt, _ := strconv.ParseInt(f[12], 10, 64)
	const clkTck = 100 // USER_HZ on Linux
	cpu = time.Duration(ut+stt) * time.Second / clkTck
	s, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err == nil {
		for _, line := range strings.Split(string(s), "\n") {
			if strings.HasPrefix(line, "VmHWM:") {
				kb, _ := strconv.ParseInt(strings.Fields(line)[1], 10, 64)
				rss = kb * 1024
			}
		}
	}
	return rss, cpu, nil
}

// readyWatcher scans a child's stdout for "READY pid=N" lines and keeps
// draining it so that writers never block.
type readyWatcher struct {
	c chan int
}

func watchReady(r io.Reader) *readyWatcher {
	w := &readyWatcher{c: make(chan int, 16)}
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			var pid int
			if _, err := fmt.Sscanf(sc.Text(), "READY pid=%d", &pid); err == nil {
				select {
				case w.c <- pid:
				default:
				}
			}
		}
		_, _ = io.Copy(io.Discard, r)
	}()
	return w
}

func (w *readyWatcher) wait(d time.Duration) (int, error) {
	select {
	case pid := <-w.c:
		return pid, nil
	case <-time.After(d):
		return 0, fmt.Errorf("no READY within %v", d)
	}
}

// serverPIDs tells whether a PID is one of the bench's server instances: a
// process running the benchserver executable this bench run built (its
// /proc/PID/exe). It is read the first time a PID answers, while the
// process serves, and remembered: an instance that exits later stays one.
type serverPIDs struct {
	exe  string
	mu   sync.Mutex
	seen map[int32]bool
}

func newServerPIDs(exe string) *serverPIDs { return &serverPIDs{exe: exe, seen: map[int32]bool{}} }

func (s *serverPIDs) is(pid int32) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ok, known := s.seen[pid]; known {
		return ok
	}
	exe, err := os.Readlink(filepath.Join("/proc", strconv.Itoa(int(pid)), "exe"))
	ok := err == nil && exe == s.exe
	s.seen[pid] = ok
	return ok
}

// listeningFDs returns the descriptors of pid that are listening sockets
// on addr, with the socket each names ("socket:[INODE]").
func listeningFDs(pid int, addr string) map[string]string {
	socks, err := reuseport.ListeningSockets()
	if err != nil {
		return nil
	}
	want := map[string]bool{}
	for _, s := range socks {
		if s.Addr.String() == addr {
			want[fmt.Sprintf("socket:[%d]", s.Inode)] = true
		}
	}
	dir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	ents, _ := os.ReadDir(dir)
	out := map[string]string{}
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && want[l] {
			out[e.Name()] = l
		}
	}
	return out
}

// holdsAny reports whether pid still has one of the descriptors fds (as
// listeningFDs returned them) open on the same socket.
func holdsAny(pid int, fds map[string]string) bool {
	dir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	for fd, sock := range fds {
		if l, err := os.Readlink(filepath.Join(dir, fd)); err == nil && l == sock {
			return true
		}
	}
	return false
}
