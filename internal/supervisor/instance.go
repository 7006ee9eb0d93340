//go:build linux

package supervisor

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/changeover-dev/changeover/healthcheck"
	"github.com/changeover-dev/changeover/internal/proc"
	"github.com/changeover-dev/changeover/internal/reaper"
)

// Instance states.
const (
	StateStarting = "starting"
	StateServing  = "serving"
	StateDraining = "draining"
	StateFailed   = "failed"
	StateExited   = "exited"
	// StateRefused is, in the state file, a generation refused for a
	// shadowing address (shadow.go) while its address is held: a
	// supervisor that adopts it kills it, the hold having died with the
	// previous one.
	StateRefused = "refused"
)

// Instance is one generation of the command.
type Instance struct {
	Gen        int
	PID        int
	PGID       int
	StartTicks uint64
	Started    time.Time
	Path       string // resolved executable
	Dir        string // resolved working directory
	HealthAddr string
	Adopted    bool     // started by an earlier supervisor; not our child
	probeEnv   []string // environment for exec probes and checks

	target *proc.Target // every signal to it or its group goes through target (see kill)
	notify *healthcheck.NotifySocket
	tail   *Tail
	done   chan struct{} // closed when the leader exited
	pgSet  chan struct{} // closed once PGID is known

	mu            sync.Mutex
	state         string
	exit          string
	drainDeadline time.Time
	// listening: the inodes of the listening sockets its group held, and
	// its members, when the coverage check of the generation replacing it
	// read them, and when; its stop uses them rather than reading /proc
	// again (see listenersAtStop and signalStop).
	listening        map[uint64]bool
	listeningShared  map[uint64]bool // those on an address shared with SO_REUSEPORT
	listeningMembers []int
	listeningAt      time.Time
	// stopShared: listeningShared when its stop signal went, if the
	// snapshot was fresh then (nil otherwise); see listenersGone.
	stopShared map[uint64]bool
}

// listeningFresh is how old a snapshot of an instance's group (listening
// sockets, members) its stop may use instead of reading it again.
const listeningFresh = time.Second

// noteListening records what its group holds now: the inodes of its
// listening sockets (shared: those on an address shared with
// SO_REUSEPORT), and its members.
func (in *Instance) noteListening(inodes, shared map[uint64]bool, members []int, at time.Time) {
	in.mu.Lock()
	in.listening, in.listeningShared, in.listeningMembers, in.listeningAt = inodes, shared, members, at
	in.mu.Unlock()
}

// sharedAtStop returns the inodes of the listening sockets on shared
// addresses that its group held when its stop signal went, if a fresh
// snapshot said so (nil: unknown).
func (in *Instance) sharedAtStop() map[uint64]bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.stopShared
}

// noteSharedAtStop gives its stop's watch the listeners to look for
// (steering's read of them) where listenersAtStop had no fresh snapshot.
func (in *Instance) noteSharedAtStop(inodes map[uint64]bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.stopShared == nil && len(inodes) > 0 {
		in.stopShared = inodes
	}
}

// snapshot returns the fresh snapshot of its group, if there is one.
func (in *Instance) snapshot(now time.Time) (inodes map[uint64]bool, members []int, ok bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.listening == nil || now.Sub(in.listeningAt) >= listeningFresh {
		return nil, nil, false
	}
	return in.listening, in.listeningMembers, true
}

// listenersAtStop returns the inodes of the listening sockets of in's
// group as its stop signal goes: the snapshot the coverage check of its
// replacement took a moment ago if it is fresh (a scan of /proc less
// between "ready" and the stop signal, where the cutover waits), else
// read now.
func (in *Instance) listenersAtStop(now time.Time) map[uint64]bool {
	if inodes, _, ok := in.snapshot(now); ok {
		in.mu.Lock()
		in.stopShared = in.listeningShared
		in.mu.Unlock()
		return inodes
	}
	sockets, _ := proc.GroupListenInodes(in.PGID)
	return sockets
}

// signalStop is kill(sig, group) for the stop signal: to the group, with
// a fresh snapshot of its members, the signal goes at once (one kill(2),
// if the leader is still the recorded process) and the snapshot names
// who it reached (see proc.Target.SignalListed).
func (in *Instance) signalStop(sig unix.Signal, group bool) []int {
	if !group || in.target == nil || in.PGID <= 1 || in.PGID != in.PID {
		return in.kill(sig, group)
	}
	_, members, ok := in.snapshot(time.Now())
	if !ok {
		return in.kill(sig, group)
	}
	return in.target.SignalListed(sig, members)
}

// DrainDeadline is when a draining instance gets SIGKILL (zero before its
// drain).
func (in *Instance) DrainDeadline() time.Time {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.drainDeadline
}

func (in *Instance) setDrainDeadline(t time.Time) {
	in.mu.Lock()
	in.drainDeadline = t
	in.mu.Unlock()
}

// Done is closed when the instance's main process has exited.
func (in *Instance) Done() <-chan struct{} { return in.done }

func (in *Instance) setState(s string) {
	in.mu.Lock()
	in.state = s
	in.mu.Unlock()
}

// State returns the current state.
func (in *Instance) State() string {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.state
}

// ExitStatus describes how it ended ("" while running).
func (in *Instance) ExitStatus() string {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.exit
}

// StderrTail returns the last lines the instance wrote to stderr.
func (in *Instance) StderrTail() string { return in.tail.Lines(10) }

// Launch says how to start instances.
type Launch struct {
	Command      string
	Args         []string
	Dir          string // --dir, resolved again at each start
	EnvFile      string // --env-file, read again at each start
	Checks       []string
	DrainTimeout time.Duration
	RuntimeDir   string   // where per-instance notify sockets go
	Stdout       *os.File // inherited by instances
	Stderr       *os.File
	Relay        []string    // argv of the stderr relay; nil = inherit stderr directly
	Setsid       bool        // start instances in their own session (swap)
	StopSignal   unix.Signal // asks an instance to drain; 0: SIGTERM
	KillMode     KillMode    // who gets StopSignal; "": KillGroup
}

// Resolve returns the executable that would start now and the working
// directory, both with symlinks resolved.
func (l *Launch) Resolve() (path, dir string, err error) {
	if l.Dir != "" {
		if dir, err = filepath.EvalSymlinks(l.Dir); err != nil {
			return "", "", fmt.Errorf("%w: working directory %s: %w", ErrStart, l.Dir, err)
		}
	}
	cmd := l.Command
	switch {
	case strings.Contains(cmd, "/"):
		if !filepath.IsAbs(cmd) && dir != "" {
			cmd = filepath.Join(dir, cmd)
		}
		if cmd, err = filepath.Abs(cmd); err != nil {
			return "", "", fmt.Errorf("%w %s: %w", ErrStart, l.Command, err)
		}
		fi, err := os.Stat(cmd)
		if err != nil {
			return "", "", fmt.Errorf("%w %s: %w", ErrStart, cmd, err)
		}
		if fi.IsDir() || fi.Mode()&0o111 == 0 {
			return "", "", fmt.Errorf("%w %s: not an executable file", ErrStart, cmd)
		}
	default:
		if cmd, err = exec.LookPath(cmd); err != nil {
			return "", "", fmt.Errorf("%w %s: %w", ErrStart, l.Command, err)
		}
	}
	real, err := filepath.EvalSymlinks(cmd)
	if err != nil {
		return "", "", fmt.Errorf("%w %s: %w", ErrStart, cmd, err)
	}
	return real, dir, nil
}

// ReadEnvFile parses KEY=VALUE lines; blank lines, # comments and a leading
// "export " are allowed, values may be quoted.
func ReadEnvFile(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read env file %s: %w", path, err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		line = strings.TrimPrefix(line, "export ")
		k, v, ok := strings.Cut(line, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" || strings.ContainsAny(k, " \t") {
			return nil, fmt.Errorf("env file %s line %d: want KEY=VALUE, got %q", path, n, line)
		}
		v = strings.TrimSpace(v)
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			v = v[1 : len(v)-1]
		}
		out = append(out, k+"="+v)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read env file %s: %w", path, err)
	}
	return out, nil
}

// baseEnv is our environment without the variables we set per instance
// (in particular our own NOTIFY_SOCKET from systemd), plus the env file.
func (l *Launch) baseEnv() ([]string, error) {
	drop := map[string]bool{
		healthcheck.EnvNotifySocket: true, healthcheck.EnvHealthAddr: true,
		healthcheck.EnvDrainTimeout: true, healthcheck.EnvGeneration: true,
		EnvRelay: true, EnvKeeper: true, "LISTEN_FDS": true, "LISTEN_PID": true, "LISTEN_FDNAMES": true,
		"WATCHDOG_USEC": true, "WATCHDOG_PID": true,
	}
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if !drop[k] {
			env = append(env, kv)
		}
	}
	if l.EnvFile != "" {
		extra, err := ReadEnvFile(l.EnvFile)
		if err != nil {
			return nil, err
		}
		env = append(env, extra...)
	}
	return env, nil
}

// RunChecks runs each --check command through /bin/sh -c in the directory
// and environment the next generation would get.
func (l *Launch) RunChecks(ctx context.Context, r *reaper.Reaper, dir string, env []string) error {
	for _, c := range l.Checks {
		if err := runCheck(ctx, r, c, dir, env, l.Stderr); err != nil {
			return err
		}
	}
	return nil
}

func runCheck(ctx context.Context, r *reaper.Reaper, check, dir string, env []string, stderr *os.File) error {
	pr, pw, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("check %q: %w", check, err)
	}
	cmd := exec.Command("/bin/sh", "-c", check)
	cmd.Dir, cmd.Env = dir, env
	cmd.Stdout, cmd.Stderr = pw, pw
	cmd.SysProcAttr = &unix.SysProcAttr{Setpgid: true}
	child, err := r.Start(cmd)
	pw.Close()
	if err != nil {
		pr.Close()
		return fmt.Errorf("%w: check %q: %w", ErrCheckFailed, check, err)
	}
	// Not reaped yet, so the PID is still its own; the group is signalled
	// through target, which refuses it once the number is reused.
	ticks, _ := proc.StartTime(child.PID)
	target := proc.NewTarget(child.PID, ticks)
	tail := newTail(4096)
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		w := []interface{ Write([]byte) (int, error) }{tail}
		if stderr != nil {
			w = append(w, stderr)
		}
		buf := make([]byte, 8192)
		for {
			n, err := pr.Read(buf)
			for _, x := range w {
				_, _ = x.Write(buf[:n])
			}
			if err != nil {
				pr.Close()
				return
			}
		}
	}()
	select {
	case <-child.Done():
	case <-ctx.Done():
		target.Signal(unix.SIGKILL, true)
		<-child.Done()
	}
	target.Close()
	target.Signal(unix.SIGKILL, true) // leftovers holding the pipe
	select {
	case <-copied:
	case <-time.After(2 * time.Second):
	}
	if ex := child.Exit(); !ex.Success() || ctx.Err() != nil {
		msg := ex.String()
		if ctx.Err() != nil {
			msg = "timed out"
		}
		return fmt.Errorf("%w: %q %s: %s", ErrCheckFailed, check, msg, strings.TrimSpace(tail.Lines(5)))
	}
	return nil
}

// startInstance starts generation gen. It does not wait for readiness.
// Its stderr relay (l.Relay) is taken from relays, started ahead of time
// (nil: started now).
func startInstance(r *reaper.Reaper, l *Launch, relays *relayPool, gen int, path, dir string, env []string) (*Instance, error) {
	haddr, err := healthcheck.FreeLoopbackAddr()
	if err != nil {
		return nil, fmt.Errorf("generation %d: pick health address: %w", gen, err)
	}
	in := &Instance{
		Gen: gen, Path: path, Dir: dir, HealthAddr: haddr, state: StateStarting,
		done: make(chan struct{}), pgSet: make(chan struct{}),
	}
	sock := filepath.Join(l.RuntimeDir, fmt.Sprintf("notify-%d-%d.sock", os.Getpid(), gen))
	_ = os.Remove(sock)
	in.notify, err = healthcheck.ListenNotify(sock, healthcheck.NotifyOptions{Allow: in.allow})
	if err != nil {
		return nil, fmt.Errorf("generation %d: notify socket %s: %w", gen, sock, err)
	}
	in.probeEnv = append(env[:len(env):len(env)],
		healthcheck.EnvHealthAddr+"="+haddr, healthcheck.EnvGeneration+"="+strconv.Itoa(gen))
	env = append(env[:len(env):len(env)],
		healthcheck.EnvNotifySocket+"="+in.notify.Path(),
		healthcheck.EnvHealthAddr+"="+haddr,
		healthcheck.EnvDrainTimeout+"="+l.DrainTimeout.String(),
		healthcheck.EnvGeneration+"="+strconv.Itoa(gen),
	)
	cmd := &exec.Cmd{
		Path: path, Args: append([]string{l.Command}, l.Args...), Env: env, Dir: dir,
		Stdout:      l.Stdout,
		Stderr:      l.Stderr,
		SysProcAttr: &unix.SysProcAttr{Setpgid: !l.Setsid, Setsid: l.Setsid},
	}
	var relayIn *os.File
	if l.Relay != nil {
		if rl := relays.take(r, l); rl != nil {
			relayIn = rl.stderr
			cmd.Stderr = relayIn
			in.tail = newTail(8192)
			go in.tail.drain(rl.tail)
		}
	}
	child, err := r.Start(cmd)
	if relayIn != nil {
		relayIn.Close()
	}
	if err != nil {
		in.notify.Close()
		return nil, fmt.Errorf("%w %s: %w", ErrStart, path, err)
	}
	in.PID, in.PGID, in.Started = child.PID, child.PID, time.Now()
	in.StartTicks, _ = proc.StartTime(child.PID)
	// Our child, not reaped yet: its PID is still its own.
	in.target = proc.NewTarget(child.PID, in.StartTicks)
	close(in.pgSet)
	go func() {
		ex := child.Exit()
		in.target.Close()
		in.mu.Lock()
		in.exit = ex.String()
		in.mu.Unlock()
		close(in.done)
	}()
	return in, nil
}

// allow accepts notify messages from the instance's process group only.
func (in *Instance) allow(pid int) bool {
	select {
	case <-in.pgSet:
	case <-time.After(2 * time.Second):
		return false
	}
	return healthcheck.InProcessGroup(in.PGID)(pid)
}

// hintNoNotify says what to do about a server that never sends READY=1.
const hintNoNotify = "a server that does not speak sd_notify never sends it: " +
	"run with --notify=false and a --health probe, such as --health http://{health_addr}/ " +
	"with the server answering its health check on $CHANGEOVER_HEALTH_ADDR"

// probeSuccesses is how many passes in a row each probe needs: a probe
// that flaps (passes, fails, passes) never makes an instance ready.
const probeSuccesses = 3

// waitReady waits for READY=1 (if notify) and every probe, up to timeout.
func waitReady(ctx context.Context, in *Instance, notify bool, probes []healthcheck.Probe, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	results := make(chan error, 2)
	n := 0
	if notify {
		n++
		go func() {
			select {
			case <-in.notify.Ready():
				results <- nil
			case <-ctx.Done():
				results <- fmt.Errorf("no READY=1 on its notify socket within %v (%s)", timeout, hintNoNotify)
			}
		}()
	}
	if len(probes) > 0 {
		n++
		go func() {
			err := healthcheck.Wait(ctx, healthcheck.Policy{Deadline: timeout, Successes: probeSuccesses}, probes...)
			if err != nil {
				err = fmt.Errorf("probes: %w", err)
			}
			results <- err
		}()
	}
	exited := func() error {
		in.tail.settle(time.Second)
		tail := in.StderrTail()
		if tail != "" {
			tail = "; last stderr: " + tail
		}
		return fmt.Errorf("%w: generation %d (pid %d) %s%s", ErrExited, in.Gen, in.PID, in.ExitStatus(), tail)
	}
	for i := 0; i < n; i++ {
		select {
		case err := <-results:
			if err != nil {
				select {
				case <-in.done:
					return exited()
				default:
				}
				if pctx := context.Cause(ctx); errors.Is(pctx, context.Canceled) {
					return fmt.Errorf("generation %d: %w", in.Gen, ErrStopping)
				}
				if tail := in.StderrTail(); tail != "" {
					err = fmt.Errorf("%w; last stderr: %s", err, tail)
				}
				return fmt.Errorf("%w: generation %d (pid %d): %w", ErrNotReady, in.Gen, in.PID, err)
			}
		case <-in.done:
			return exited()
		}
	}
	select {
	case <-in.done:
		return exited()
	default:
	}
	return nil
}

// stopOutcome is how an instance's stop went.
type stopOutcome struct {
	// Killed: a process of the group was still there at the deadline (or
	// at a hurry) and got SIGKILL.
	Killed bool
	// Untracked lists processes outside the group that hold a listening
	// socket the group held when the stop began: started by the instance,
	// they left its process group (setsid, a daemonizing server) and are
	// neither drained nor killed.
	Untracked []int
}

// groupPollInterval is how often stopInstance looks for the members left
// in a group once its leader has exited.
const groupPollInterval = 20 * time.Millisecond

// stopInstance sends l's stop signal to the instance (its group, or its
// main process, as l's kill mode says) and waits until the group is empty, up to drain (or until hurry is closed); then it
// SIGKILLs what is left of the group and waits until the group is empty
// (bounded).
//
// Empty means the leader has exited and no other member is left: the
// leader is often a wrapper that does not exec the server (sh run.sh, npm
// start), which exits at the first SIGTERM while the server drains in the
// same group. Waiting for the leader alone would cut that drain.
//
// A process that left the group (setsid) is not waited for nor killed; if
// it holds one of the group's listening sockets, it is listed in Untracked.
// An instance whose PGID is 0 (a process taken over from another tool that
// does not lead a group of its own) is signalled by PID alone.
func stopInstance(in *Instance, l *Launch, drain time.Duration, hurry <-chan struct{}, log *slog.Logger) stopOutcome {
	var sockets map[uint64]bool
	if in.PGID > 0 {
		sockets = in.listenersAtStop(time.Now())
	}
	sendStop(in, l, log)
	t := time.NewTimer(drain)
	defer t.Stop()
	var out stopOutcome
	var tick <-chan time.Time
	done := in.done
wait:
	for {
		select {
		case <-done:
			// The leader has exited: from now on, poll the group.
			done = nil
			tk := time.NewTicker(groupPollInterval)
			defer tk.Stop()
			tick = tk.C
		case <-tick:
		case <-t.C:
			break wait
		case <-hurry:
			break wait
		}
		if done == nil && in.groupEmpty() {
			break wait
		}
	}
	select {
	case <-in.done:
		out.Killed = !in.groupEmpty()
	default:
		out.Killed = true
	}
	if out.Killed {
		if in.PGID > 0 {
			killGroupAndWait(in)
		} else {
			in.signal(unix.SIGKILL)
			select {
			case <-in.done:
			case <-time.After(5 * time.Second):
			}
		}
	}
	out.Untracked = proc.SocketHolders(sockets, in.StartTicks)
	return out
}

// kill sends sig to the instance's process group (group true, and it
// leads one: PGID is its PID), else to its main process alone, and returns
// the PIDs it went to. Every stop and kill of run and swap comes here, so
// who may get a signal is decided in one place, at the moment of the
// signal: see proc.Target.Signal (a reused PID or group gets nothing).
func (in *Instance) kill(sig unix.Signal, group bool) []int {
	if in.target == nil {
		return nil
	}
	return in.target.Signal(sig, group && in.PGID > 1 && in.PGID == in.PID)
}

// signal sends sig to the instance's process group, or to its PID alone if
// it has no group of its own (PGID 0).
func (in *Instance) signal(sig unix.Signal) { in.kill(sig, true) }

// groupEmpty reports whether the instance's process group has no live
// member left that is ours (for PGID 0: whether the process has exited).
func (in *Instance) groupEmpty() bool {
	if in.PGID > 0 && in.target != nil {
		return len(in.target.Members()) == 0
	}
	return !proc.Alive(in.PID, in.StartTicks)
}

// killGroupAndWait SIGKILLs the instance's group and waits (bounded) until
// the leader was reaped and no member is left.
func killGroupAndWait(in *Instance) {
	in.kill(unix.SIGKILL, true)
	select {
	case <-in.done:
	case <-time.After(5 * time.Second):
	}
	for i := 0; i < 200 && !in.groupEmpty(); i++ {
		in.kill(unix.SIGKILL, true)
		time.Sleep(10 * time.Millisecond)
	}
}

// adopt builds an Instance for a process started by an earlier supervisor;
// its exit is detected by polling /proc.
func adopt(gen, pid, pgid int, ticks, seen uint64, haddr string) *Instance {
	in := &Instance{
		Gen: gen, PID: pid, PGID: pgid, StartTicks: ticks, HealthAddr: haddr, Adopted: true,
		Started: proc.StartWallTime(ticks), state: StateServing,
		done: make(chan struct{}), pgSet: make(chan struct{}),
	}
	close(in.pgSet)
	// Called where the process was just verified; the pidfd is opened now
	// and names it from here on, however long a new instance takes.
	in.target = proc.NewTarget(pid, ticks)
	in.target.NoteSeen(seen)
	go func() {
		for proc.Alive(pid, ticks) {
			time.Sleep(50 * time.Millisecond)
		}
		in.target.Close()
		in.mu.Lock()
		in.exit = "exited (adopted, status unknown)"
		in.mu.Unlock()
		close(in.done)
	}()
	return in
}

// leaderSeen is when its leader was last verified alive (0: unknown), for
// the state file.
func (in *Instance) leaderSeen() uint64 {
	if in.target == nil {
		return 0
	}
	return in.target.Seen()
}

// closeNotify removes the instance's notify socket.
func (in *Instance) closeNotify() {
	if in.notify != nil {
		_ = in.notify.Close()
	}
}

// ProbeTarget returns the TCP address a probe spec connects to, if it can
// be known without the health address ({health_addr} specs return false).
func ProbeTarget(spec string) (netip.AddrPort, bool) {
	if strings.Contains(spec, "{health_addr}") {
		return netip.AddrPort{}, false
	}
	var hostport string
	switch {
	case strings.HasPrefix(spec, "tcp:"):
		hostport = strings.TrimPrefix(spec, "tcp:")
	case strings.HasPrefix(spec, "http://"), strings.HasPrefix(spec, "https://"):
		u, err := url.Parse(spec)
		if err != nil {
			return netip.AddrPort{}, false
		}
		hostport = u.Host
		if u.Port() == "" {
			if u.Scheme == "https" {
				hostport = net.JoinHostPort(u.Hostname(), "443")
			} else {
				hostport = net.JoinHostPort(u.Hostname(), "80")
			}
		}
	default:
		return netip.AddrPort{}, false
	}
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return netip.AddrPort{}, false
	}
	if host == "localhost" || host == "" {
		host = "127.0.0.1"
	}
	ap, err := netip.ParseAddrPort(net.JoinHostPort(host, port))
	return ap, err == nil
}
