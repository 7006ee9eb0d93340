//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/changeover-dev/changeover/internal/proc"
	"github.com/changeover-dev/changeover/internal/supervisor"
)

// cmdSwap implements "swap": a one-shot handover without a resident
// supervisor. The pidfile holds the PID alone; the start time, process
// group, generation and health address are in PIDFILE.state, so that a
// process swap did not start (a reused PID, another tool's pidfile) is
// never signalled.
//
// SIGINT and SIGTERM before the pidfile names the new instance kill it
// (with its group) and leave everything as it was: exit 128+signal. After,
// the handover is finished first.
func cmdSwap(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("swap", "--pidfile F [flags] -- COMMAND [ARGS...]", stderr)
	pidfile := fs.String("pidfile", "", "file holding the serving instance (required)")
	logFile := fs.String("log", "", "append the new instance's stdout and stderr here (default: the pidfile with .log for .pid)")
	dir := fs.String("dir", "", "working directory of the new instance")
	envFile := fs.String("env-file", "", "KEY=VALUE file added to the new instance's environment")
	var health, checks listFlag
	fs.Var(&health, "health", "readiness probe, repeatable: http://..., tcp:ADDR or exec:CMD; {health_addr} is the instance's own health address")
	fs.Var(&checks, "check", "command run (sh -c) before starting; non-zero refuses the deploy (repeatable)")
	notify := fs.Bool("notify", true, "wait for READY=1 on the instance's NOTIFY_SOCKET")
	readyTimeout := durationFlag(fs, "ready-timeout", 30*time.Second, "how long the new instance may take to become ready")
	drainTimeout := durationFlag(fs, "drain-timeout", 30*time.Second, "how long the old instance may drain before SIGKILL")
	stopSignal, killMode := stopFlags(fs)
	logFormat := fs.String("log-format", "text", "log format: text or json")
	logLevel := fs.String("log-level", "info", "least level logged: debug, info, warn or error")
	takeover := fs.Bool("takeover", false, "retire the process named by a pidfile that swap cannot verify as one it started (another tool's pidfile)")
	steering := fs.String("steering", supervisor.SteeringSupervisor, "who steers the port at the handover: supervisor (placeholder members of swap's own keep the new instance dark until it is ready, then switch the port to it) or kernel")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *steering != supervisor.SteeringSupervisor && *steering != supervisor.SteeringKernel {
		return usagef(fs, "--steering must be %s or %s: %q", supervisor.SteeringSupervisor, supervisor.SteeringKernel, *steering)
	}
	if *pidfile == "" {
		return usagef(fs, "--pidfile is required")
	}
	argv, err := command(fs)
	if err != nil {
		return err
	}
	log, err := newLogger(*logFormat, *logLevel, stderr)
	if err != nil {
		return usagef(fs, "%v", err)
	}
	level, _ := parseLogLevel(*logLevel) // checked by newLogger
	for _, p := range health {
		if err := validProbe(p); err != nil {
			return usagef(fs, "%v", err)
		}
	}
	if err := proc.CheckOwnNamespace(); err != nil {
		return err
	}
	// A signal cancels the deploy until the pidfile names the new
	// instance; Swap finishes the handover after that. Signals after the
	// first are dropped (the channel is full), never fatal.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, unix.SIGINT, unix.SIGTERM)
	defer signal.Stop(sigs)
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var caught atomic.Int32
	go func() {
		select {
		case sig := <-sigs:
			caught.Store(int32(sig.(unix.Signal)))
			log.Warn("signal received", "signal", sig.String())
			cancel(fmt.Errorf("signal %v", sig))
		case <-sctx.Done():
		}
	}()
	res, err := supervisor.Swap(sctx, supervisor.SwapConfig{
		Pidfile: *pidfile, LogFile: *logFile,
		Launch: supervisor.Launch{
			Command: argv[0], Args: argv[1:], Dir: *dir, EnvFile: *envFile, Checks: checks,
			DrainTimeout: *drainTimeout, StopSignal: *stopSignal, KillMode: *killMode,
		},
		Probes: health, Notify: *notify, ReadyTimeout: *readyTimeout, Log: log, Takeover: *takeover,
		Steering: *steering, LogFormat: *logFormat, LogLevel: level,
	})
	if sig := unix.Signal(caught.Load()); err != nil && sig != 0 && errors.Is(err, supervisor.ErrInterrupted) {
		return &codeError{code: 128 + int(sig), err: err}
	}
	if err != nil {
		return err
	}
	if res.OldPID == 0 {
		fmt.Fprintf(stdout, "generation %d pid %d started (first deploy)\n", res.Generation, res.PID)
	} else if res.OldDraining {
		fmt.Fprintf(stdout, "generation %d pid %d took over from pid %d; pid %d drains until %s (SIGKILL then, by drain keeper pid %d)\n",
			res.Generation, res.PID, res.OldPID, res.OldPID, res.OldDrainDeadline.Format("2006-01-02T15:04:05.000Z07:00"), res.KeeperPID)
	} else {
		fmt.Fprintf(stdout, "generation %d pid %d took over from pid %d\n", res.Generation, res.PID, res.OldPID)
	}
	return nil
}
