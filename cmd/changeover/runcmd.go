//go:build linux

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	rungroup "github.com/oklog/run"
	"golang.org/x/sys/unix"

	"github.com/changeover-dev/changeover/healthcheck"
	"github.com/changeover-dev/changeover/internal/control"
	"github.com/changeover-dev/changeover/internal/proc"
	"github.com/changeover-dev/changeover/internal/reaper"
	"github.com/changeover-dev/changeover/internal/supervisor"
	"github.com/changeover-dev/changeover/reuseport"
)

// reapOrphans makes run a child subreaper that reaps re-parented orphans.
// In-process tests turn it off so that the test binary keeps its own
// children's statuses.
var reapOrphans = true

// runOptions are the flags of "run".
type runOptions struct {
	name, control, dir, envFile, pidfile, logFormat, logLevel string
	steering                                                  string
	health, checks                                            listFlag
	notify, watch, migrateReq                                 bool
	readyTimeout, drainTimeout, watchDebounce                 *time.Duration
	backoffMin, backoffMax, crashWindow                       *time.Duration
	crashLimit, maxDraining                                   int
}

func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("run", "[flags] -- COMMAND [ARGS...]", stderr)
	var o runOptions
	fs.StringVar(&o.name, "name", "", "supervisor name for the control socket and state file (default: base name of COMMAND)")
	fs.StringVar(&o.control, "control", "", "control socket path (default $XDG_RUNTIME_DIR/changeover/NAME.sock, else /run/changeover/NAME.sock)")
	fs.StringVar(&o.dir, "dir", "", "working directory of instances, resolved again at each reload")
	fs.StringVar(&o.envFile, "env-file", "", "KEY=VALUE file added to instances' environment, read again at each reload")
	fs.Var(&o.health, "health", "readiness probe, repeatable: http://..., tcp:ADDR or exec:CMD; {health_addr} is the instance's own health address")
	fs.BoolVar(&o.notify, "notify", true, "wait for READY=1 on the instance's NOTIFY_SOCKET")
	fs.Var(&o.checks, "check", "command run (sh -c) before each new generation starts; non-zero refuses it (repeatable)")
	fs.BoolVar(&o.watch, "watch", false, "reload when COMMAND's file (or the symlink to it) changes")
	o.watchDebounce = durationFlag(fs, "watch-debounce", time.Second, "with --watch, how long the file must stay unchanged before reloading")
	o.readyTimeout = durationFlag(fs, "ready-timeout", 30*time.Second, "how long a new generation may take to become ready")
	o.drainTimeout = durationFlag(fs, "drain-timeout", 30*time.Second, "how long an old generation may drain before SIGKILL (handed to it as CHANGEOVER_DRAIN_TIMEOUT)")
	fs.IntVar(&o.maxDraining, "max-draining", supervisor.DefaultMaxDraining, "how many old generations may drain at once; a reload beyond waits for one (up to --ready-timeout)")
	o.backoffMin = durationFlag(fs, "restart-backoff", time.Second, "delay before restarting after the second crash in --crash-window (the first restarts at once), doubled per crash")
	o.backoffMax = durationFlag(fs, "restart-backoff-max", 30*time.Second, "longest delay before a restart")
	fs.IntVar(&o.crashLimit, "crash-limit", 5, "exit (code 6) after more than this many crashes within --crash-window")
	o.crashWindow = durationFlag(fs, "crash-window", time.Minute, "window for --crash-limit")
	fs.StringVar(&o.pidfile, "pidfile", "", "write the supervisor's PID to this file")
	fs.StringVar(&o.logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&o.logLevel, "log-level", "info", "least level logged: debug (also each steering step), info, warn or error")
	stopSignal, killMode := stopFlags(fs)
	fs.StringVar(&o.steering, "steering", supervisor.SteeringSupervisor, "who steers the port at a handover: supervisor (placeholder members of its own keep a new generation dark until it is ready, then switch the port to it) or kernel (runner instances steer themselves; other servers take connections as soon as they listen)")
	fs.BoolVar(&o.migrateReq, "tcp-migrate-req", false, "set net.ipv4.tcp_migrate_req=1 in this network namespace before starting (needs root; the handover does not need it)")
	if err := parse(fs, args); err != nil {
		return err
	}
	argv, err := command(fs)
	if err != nil {
		return err
	}
	log, err := newLogger(o.logFormat, o.logLevel, stderr)
	if err != nil {
		return usagef(fs, "%v", err)
	}
	if o.crashLimit < 0 {
		return usagef(fs, "--crash-limit must not be negative: %d", o.crashLimit)
	}
	if o.steering != supervisor.SteeringSupervisor && o.steering != supervisor.SteeringKernel {
		return usagef(fs, "--steering must be %s or %s: %q", supervisor.SteeringSupervisor, supervisor.SteeringKernel, o.steering)
	}
	if o.maxDraining < 1 {
		return usagef(fs, "--max-draining must be at least 1: %d", o.maxDraining)
	}
	for _, p := range o.health {
		if err := validProbe(p); err != nil {
			return usagef(fs, "%v", err)
		}
	}
	if err := proc.CheckOwnNamespace(); err != nil {
		return err
	}
	if o.migrateReq {
		// Opt-in: a second line of defence for servers not built on runner.
		if err := reuseport.EnableMigrateReq(); err != nil {
			return fmt.Errorf("--tcp-migrate-req: %w", err)
		}
		log.Info("net.ipv4.tcp_migrate_req=1 set for this network namespace")
	}
	name := o.name
	if name == "" {
		name = filepath.Base(argv[0])
	}
	sockPath := o.control
	if sockPath == "" {
		sockPath = control.DefaultPath(name)
	}
	srv, err := control.Listen(sockPath)
	if err != nil {
		return fmt.Errorf("supervisor %q: %w", name, err)
	}
	defer srv.Close()
	runtimeDir := filepath.Dir(sockPath)
	supervisor.RemoveStaleNotifySockets(runtimeDir)

	if o.pidfile != "" {
		if err := os.WriteFile(o.pidfile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
			return fmt.Errorf("write pidfile %s: %w", o.pidfile, err)
		}
		defer os.Remove(o.pidfile)
	}
	orphans := reapOrphans
	if orphans && os.Getpid() != 1 {
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			log.Warn("cannot become child subreaper", "error", err)
			orphans = false
		}
	}
	rp := reaper.New(log, orphans)
	defer rp.Close()

	// The stderr relay is this very binary (even if replaced on disk since).
	relay := []string{"/proc/self/exe"}
	sup := supervisor.New(supervisor.Config{
		Name: name,
		Launch: supervisor.Launch{
			Command: argv[0], Args: argv[1:], Dir: o.dir, EnvFile: o.envFile, Checks: o.checks,
			DrainTimeout: *o.drainTimeout, StopSignal: *stopSignal, KillMode: *killMode, RuntimeDir: runtimeDir,
			Stdout: fileOr(stdout, os.Stdout), Stderr: fileOr(stderr, os.Stderr), Relay: relay,
		},
		Probes: o.health, Notify: o.notify, ReadyTimeout: *o.readyTimeout,
		StateFile: supervisor.StatePath(sockPath),
		Log:       log, Reaper: rp,
		BackoffMin: *o.backoffMin, BackoffMax: *o.backoffMax,
		CrashLimit: o.crashLimit, CrashWindow: *o.crashWindow, MaxDraining: o.maxDraining,
		SDNotify: sdNotifier(log), Steering: o.steering,
	})

	var g rungroup.Group
	{ // the supervisor itself
		sctx, cancel := context.WithCancel(context.Background())
		g.Add(func() error { return sup.Run(sctx) }, func(error) { sup.Stop(); cancel() })
	}
	{ // control socket
		g.Add(func() error {
			return srv.Serve(context.Background(), controlHandler(sup))
		}, func(error) { srv.Close() })
	}
	{ // signals and ctx
		sigs := make(chan os.Signal, 4)
		signal.Notify(sigs, unix.SIGTERM, unix.SIGINT, unix.SIGHUP)
		// A write to a closed pipe on fd 1 or 2 kills a Go program with
		// SIGPIPE unless SIGPIPE is notified; `run ... | tee` must outlive
		// tee. Notified, not ignored: an ignored signal stays ignored in
		// the instances we exec, a handled one is reset to the default.
		pipes := make(chan os.Signal, 1)
		signal.Notify(pipes, unix.SIGPIPE)
		defer signal.Stop(pipes)
		quit := make(chan struct{})
		g.Add(func() error {
			defer signal.Stop(sigs)
			stops := 0
			done := ctx.Done()
			for {
				select {
				case <-quit:
					return nil
				case <-done:
					done = nil
					stops++
					sup.Stop()
				case sig := <-sigs:
					if sig == unix.SIGHUP {
						log.Info("reload requested", "signal", sig.String())
						sup.RequestReload()
						continue
					}
					stops++
					if stops == 1 {
						log.Info("stopping", "signal", sig.String())
						sup.Stop()
					} else {
						log.Warn("hurrying stop: SIGKILL", "signal", sig.String())
						sup.Hurry()
					}
				}
			}
		}, func(error) { close(quit) })
	}
	if o.watch {
		wctx, cancel := context.WithCancel(context.Background())
		g.Add(func() error {
			watchCommand(wctx, argv[0], o.dir, *o.watchDebounce, log, sup.RequestReload)
			<-wctx.Done()
			return nil
		}, func(error) { cancel() })
	}
	log.Info("supervisor started", "name", name, "pid", os.Getpid(), "control", sockPath)
	err = g.Run()
	return err
}

// validProbe checks a --health spec as far as it can be checked before an
// instance exists.
func validProbe(spec string) error {
	if _, err := healthcheck.Parse(spec, "127.0.0.1:1"); err != nil {
		return fmt.Errorf("--health %q: %w (want http://..., https://..., tcp:ADDR or exec:CMD)", spec, err)
	}
	return nil
}

// fileOr returns w if it is an *os.File, else def (instances need a file
// descriptor to inherit; in-process tests pass buffers).
func fileOr(w io.Writer, def *os.File) *os.File {
	if f, ok := w.(*os.File); ok {
		return f
	}
	return def
}

// sdNotifier returns the systemd notifier, or nil when not under systemd.
// The supervisor's own NOTIFY_SOCKET is never passed to instances.
func sdNotifier(log interface {
	Debug(string, ...any)
}) func(string) {
	if os.Getenv("NOTIFY_SOCKET") == "" {
		return nil
	}
	return func(state string) {
		if _, err := daemon.SdNotify(false, state); err != nil {
			log.Debug("sd_notify failed", "error", err)
		}
	}
}

func controlHandler(sup *supervisor.Supervisor) control.Handler {
	return func(ctx context.Context, peer control.Peer, req control.Request) control.Response {
		switch req.Op {
		case "status":
			b, _ := json.Marshal(sup.Status())
			return control.Response{Body: b}
		case "stop":
			sup.Stop()
			return control.Response{}
		case "reload":
			r := sup.Reload(ctx)
			b, _ := json.Marshal(r)
			if r.OK {
				return control.Response{Body: b}
			}
			return control.Response{Code: exitCode(r.Err), Error: r.Error, Body: b}
		}
		return control.Response{Code: exitUsage, Error: fmt.Sprintf("unknown operation %q", req.Op)}
	}
}
