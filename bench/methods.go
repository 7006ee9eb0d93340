package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// env is what a method needs to start and restart the server.
type env struct {
	addr       string
	serverBin  string // benchserver
	changeover string // changeover CLI, "" if it does not build
	dir        string // per-run scratch dir
	logf       *os.File
	curPID     int // the instance that answered last (set by the runner of the bench)
}

func (e *env) serverArgs(method string, version int) []string {
	return []string{"-method", method, "-addr", e.addr, "-version", strconv.Itoa(version), "-drain-timeout", "10s"}
}

// startProc starts a command with stdout watched for READY and stderr to the log.
func (e *env) startProc(bin string, args ...string) (*exec.Cmd, *readyWatcher, error) {
	cmd := exec.Command(bin, args...)
	cmd.Stderr = e.logf
	cmd.Dir = e.dir
	// Not StdoutPipe: Wait would close the read end when this process exits,
	// and a child that inherited stdout (tableflip, fdpass) would die of SIGPIPE.
	r, wr, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	cmd.Stdout = wr
	err = tracked.start(cmd)
	wr.Close()
	if err != nil {
		r.Close()
		return nil, nil, err
	}
	w := watchReady(r)
	return cmd, w, nil
}

// supStats is what the supervisor process costs.
type supStats struct {
	Kind     string  `json:"kind"` // "resident" (changeover run) or "per restart" (changeover swap)
	MaxRSSMB float64 `json:"max_rss_mib"`
	CPUSec   float64 `json:"cpu_seconds"`
	Note     string  `json:"note,omitempty"`
}

type method interface {
	// start starts the first instance and returns once it is serving.
	start(e *env) error
	// trigger performs one restart. It returns once the method's own
	// procedure has ended; the bench measures what clients see meanwhile.
	trigger(e *env, n int) error
	// stop stops everything (the bench also kills whatever is left).
	stop(e *env)
	// supervisor reports the supervisor's cost, nil if there is none.
	supervisor() *supStats
}

type methodInfo struct {
	name    string
	title   string
	restart bool // false: the bare server, never restarted
	note    string
	make    func() method
	// needs is non-empty when the method needs something that may be missing.
	needsChangeover bool
}

var methodInfos = []methodInfo{
	{name: "bare", title: "bare server, no restart", make: func() method { return &procMethod{server: "plain"} },
		note: "baseline for the throughput ratio"},
	{name: "run", title: "changeover run (SIGHUP)", restart: true, needsChangeover: true,
		make: func() method { return &runMethod{} }},
	{name: "run-reload", title: "changeover run (changeover reload)", restart: true, needsChangeover: true,
		make: func() method { return &runMethod{viaReload: true} },
		note: "the same supervisor; each restart runs `changeover reload`, which returns once the old instance's listeners are gone: its time is the reload's"},
	{name: "swap", title: "changeover swap", restart: true, needsChangeover: true,
		make: func() method { return &swapMethod{} }},
	{name: "tableflip", title: "cloudflare/tableflip v1.2.3, as documented", restart: true,
		make: func() method { return &signalMethod{server: "tableflip"} },
		note: "drains as tableflip's README and example do: Shutdown as soon as Exit() is closed"},
	{name: "tableflip-careful", title: "cloudflare/tableflip v1.2.3, careful drain", restart: true,
		make: func() method { return &signalMethod{server: "tableflip-careful"} },
		note: "after Exit(): Connection: close on every response, close its listener, wait for its connections (up to the 5 s keep-alive window, and for every accepted one to send its request), then Shutdown"},
	{name: "fdpass", title: "fd passing (grace/endless style)", restart: true,
		make: func() method { return &signalMethod{server: "fdpass"} },
		note: "stands in for facebookgo/grace, fvbock/endless and jpillora/overseer, which the module proxy does not serve"},
	{name: "naive", title: "naive SO_REUSEPORT", restart: true,
		make: func() method { return &procMethod{server: "naive", overlap: true} }},
	{name: "stopstart", title: "stop, then start", restart: true,
		make: func() method { return &procMethod{server: "plain"} }},
}

func lookupMethod(name string) (methodInfo, bool) {
	for _, m := range methodInfos {
		if m.name == name {
			return m, true
		}
	}
	return methodInfo{}, false
}

func reap(cmd *exec.Cmd) chan struct{} {
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	return done
}

// procMethod: the bench starts each instance itself. overlap: start the new
// one (SO_REUSEPORT), wait for READY, then SIGTERM the old one (naive);
// otherwise SIGTERM the old one, wait for it to exit, then start the new one.
type procMethod struct {
	server  string
	overlap bool
	cur     *exec.Cmd
	curDone chan struct{}
}

func (m *procMethod) launch(e *env, version int) error {
	cmd, w, err := e.startProc(e.serverBin, e.serverArgs(m.server, version)...)
	if err != nil {
		return err
	}
	done := reap(cmd)
	if _, err := w.wait(15 * time.Second); err != nil {
		return err
	}
	m.cur, m.curDone = cmd, done
	return nil
}

func (m *procMethod) start(e *env) error { return m.launch(e, 1) }

func (m *procMethod) trigger(e *env, n int) error {
	old, oldDone := m.cur, m.curDone
	if m.overlap {
		if err := m.launch(e, n+2); err != nil {
			return err
		}
		return old.Process.Signal(syscall.SIGTERM)
	}
	if err := old.Process.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case <-oldDone:
	case <-time.After(40 * time.Second):
		return errors.New("old instance did not exit within 40s")
	}
	return m.launch(e, n+2)
}

func (m *procMethod) stop(e *env) {
	if m.cur != nil {
		_ = m.cur.Process.Signal(syscall.SIGTERM)
		select {
		case <-m.curDone:
		case <-time.After(2 * time.Second):
		}
	}
}

func (m *procMethod) supervisor() *supStats { return nil }

// signalMethod: the server upgrades itself on SIGHUP (tableflip, fdpass).
// The bench sends SIGHUP to the PID that currently answers.
type signalMethod struct {
	server string
}

func (m *signalMethod) start(e *env) error {
	cmd, w, err := e.startProc(e.serverBin, e.serverArgs(m.server, 1)...)
	if err != nil {
		return err
	}
	reap(cmd)
	_, err = w.wait(15 * time.Second)
	return err
}

func (m *signalMethod) trigger(e *env, n int) error {
	if e.curPID <= 0 {
		return errors.New("no current PID")
	}
	return syscall.Kill(e.curPID, syscall.SIGHUP)
}

func (m *signalMethod) stop(e *env) {
	if e.curPID > 0 {
		_ = syscall.Kill(e.curPID, syscall.SIGTERM)
	}
}

func (m *signalMethod) supervisor() *supStats { return nil }

// runMethod: `changeover run -- benchserver -method runner`; SIGHUP
// reloads, or `changeover reload` (viaReload), which waits for the outcome.
type runMethod struct {
	viaReload bool
	ctl       string
	cmd       *exec.Cmd
	done      chan struct{}
	mu        sync.Mutex
	maxRSS    int64
	cpu       time.Duration
	quit      chan struct{}
	stopped   bool
}

func (m *runMethod) start(e *env) error {
	if e.changeover == "" {
		return errors.New("changeover CLI not built")
	}
	ctl := filepath.Join(e.dir, "control.sock")
	m.ctl = ctl
	args := append([]string{"run", "--control", ctl, "--name", "bench-" + filepath.Base(e.dir), "--"}, append([]string{e.serverBin}, e.serverArgs("runner", 1)...)...)
	cmd, _, err := e.startProc(e.changeover, args...)
	if err != nil {
		return err
	}
	m.cmd, m.done, m.quit = cmd, reap(cmd), make(chan struct{})
	go m.sample()
	return nil // the bench waits until the port answers
}

func (m *runMethod) sample() {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		rss, cpu, err := procUsage(m.cmd.Process.Pid)
		if err == nil {
			m.mu.Lock()
			if rss > m.maxRSS {
				m.maxRSS = rss
			}
			if cpu > m.cpu {
				m.cpu = cpu
			}
			m.mu.Unlock()
		}
		select {
		case <-t.C:
		case <-m.quit:
			return
		case <-m.done:
			return
		}
	}
}

func (m *runMethod) trigger(e *env, n int) error {
	if !m.viaReload {
		return m.cmd.Process.Signal(syscall.SIGHUP)
	}
	cmd := exec.Command(e.changeover, "reload", "--control", m.ctl)
	cmd.Stdout, cmd.Stderr, cmd.Dir = e.logf, e.logf, e.dir
	if err := tracked.start(cmd); err != nil {
		return err
	}
	done := reap(cmd)
	select {
	case <-done:
	case <-time.After(90 * time.Second):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		return errors.New("changeover reload did not return within 90s")
	}
	if !cmd.ProcessState.Success() {
		return fmt.Errorf("changeover reload: %v (see %s)", cmd.ProcessState, e.logf.Name())
	}
	return nil
}

func (m *runMethod) stop(e *env) {
	if m.cmd == nil || m.stopped {
		return
	}
	m.stopped = true
	if rss, cpu, err := procUsage(m.cmd.Process.Pid); err == nil {
		m.mu.Lock()
		m.maxRSS = max(m.maxRSS, rss)
		m.cpu = max(m.cpu, cpu)
		m.mu.Unlock()
	}
	close(m.quit)
	_ = m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.done:
	case <-time.After(5 * time.Second):
	}
}

func (m *runMethod) supervisor() *supStats {
	m.mu.Lock()
	defer m.mu.Unlock()
	return &supStats{Kind: "resident", MaxRSSMB: float64(m.maxRSS) / (1 << 20), CPUSec: m.cpu.Seconds()}
}

// swapMethod: each restart runs `changeover swap --pidfile F -- benchserver`.
// Its trigger returns when swap exits, which is at the handover (the old
// instance holds no listener any more), as `changeover reload` returns:
// the old instance drains on, watched by swap's drain keeper (a
// `changeover drain-keeper F` process in a session of its own, found and
// killed at the end through its executable path like the instances), and
// "old gone" is measured in /proc as for every method. Its CPU is not in
// swap's rusage: it sleeps, polling the old group every 200 ms.
type swapMethod struct {
	pidfile string
	maxRSS  int64 // bytes
	cpu     time.Duration
	n       int
}

func (m *swapMethod) swap(e *env, version int) error {
	if e.changeover == "" {
		return errors.New("changeover CLI not built")
	}
	args := append([]string{"swap", "--pidfile", m.pidfile, "--"}, append([]string{e.serverBin}, e.serverArgs("runner", version)...)...)
	cmd := exec.Command(e.changeover, args...)
	cmd.Stdout, cmd.Stderr, cmd.Dir = e.logf, e.logf, e.dir
	if err := tracked.start(cmd); err != nil {
		return err
	}
	done := reap(cmd)
	// Peak RSS from /proc (VmHWM), sampled until it exits: wait4's ru_maxrss
	// would include the bench's own RSS, which the kernel carries over the
	// exec of a vforked child.
	var hwm int64
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	timeout := time.After(90 * time.Second)
wait:
	for {
		hwm = max(hwm, procHWM(cmd.Process.Pid))
		select {
		case <-done:
			break wait
		case <-tick.C:
		case <-timeout:
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
			return errors.New("changeover swap did not exit within 90s")
		}
	}
	m.maxRSS = max(m.maxRSS, hwm)
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		m.cpu += time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		m.n++
	}
	if !cmd.ProcessState.Success() {
		return fmt.Errorf("changeover swap: %v (see %s)", cmd.ProcessState, e.logf.Name())
	}
	return nil
}

func (m *swapMethod) start(e *env) error {
	m.pidfile = filepath.Join(e.dir, "swap.pid") // swap logs the instance to swap.log
	return m.swap(e, 1)
}

func (m *swapMethod) trigger(e *env, n int) error { return m.swap(e, n+2) }

func (m *swapMethod) stop(e *env) {
	b, err := os.ReadFile(m.pidfile)
	if err != nil {
		return
	}
	if pid, err := strconv.Atoi(string(trimSpace(b))); err == nil && pid > 0 {
		_ = syscall.Kill(pid, syscall.SIGTERM)
	}
}

func (m *swapMethod) supervisor() *supStats {
	if m.n == 0 {
		return nil
	}
	return &supStats{Kind: "per restart", MaxRSSMB: float64(m.maxRSS) / (1 << 20), CPUSec: m.cpu.Seconds() / float64(m.n),
		Note: fmt.Sprintf("one-shot; max RSS and mean CPU over %d invocations", m.n)}
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == ' ' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}
