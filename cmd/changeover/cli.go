//go:build linux

package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/changeover-dev/changeover/internal/supervisor"
)

const usageText = `usage:
  changeover run [flags] -- COMMAND [ARGS...]    supervise COMMAND, reload with zero downtime
  changeover reload [--name NAME | --control PATH]   reload and wait for the outcome
  changeover status [--json] [--name NAME | --control PATH]
  changeover stop [--name NAME | --control PATH]
  changeover swap --pidfile F [flags] -- COMMAND [ARGS...]   one-shot handover without a supervisor

Run "changeover COMMAND -h" for the flags of a command.
Exit codes: 0 ok, 1 error, 2 usage, 3 new instance exited before ready,
4 not ready in time, 5 --check refused, 6 crash loop (run).
`

// run is the whole program; args exclude the program name.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, "changeover: no command given\n"+usageText)
		return &usageError{"no command given"}
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stderr, usageText)
		return flag.ErrHelp
	case "run":
		return cmdRun(ctx, args[1:], stdout, stderr)
	case "reload", "status", "stop":
		return cmdClient(ctx, args[0], args[1:], stdout, stderr)
	case "swap":
		return cmdSwap(ctx, args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "changeover: unknown command %q\n%s", args[0], usageText)
	return &usageError{fmt.Sprintf("unknown command %q", args[0])}
}

// newFlagSet returns a flag set that reports to stderr.
func newFlagSet(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: changeover %s %s\n\nflags:\n", name, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parse parses args; errors become usageError (the flag package has
// printed the bad value and the usage), -h becomes flag.ErrHelp.
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return err
		}
		return &usageError{err.Error()}
	}
	return nil
}

// usagef prints a usage error and the usage.
func usagef(fs *flag.FlagSet, format string, a ...any) error {
	msg := fmt.Sprintf(format, a...)
	fmt.Fprintf(fs.Output(), "changeover %s: %s\n", fs.Name(), msg)
	fs.Usage()
	return &usageError{msg}
}

// command returns the COMMAND [ARGS...] after "--" (or after the flags).
func command(fs *flag.FlagSet) ([]string, error) {
	rest := fs.Args()
	if len(rest) > 0 && rest[0] == "--" {
		rest = rest[1:]
	}
	if len(rest) == 0 {
		return nil, usagef(fs, "nothing after --: a COMMAND to run is required")
	}
	return rest, nil
}

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ", ") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// durationFlag is a positive duration.
func durationFlag(fs *flag.FlagSet, name string, def time.Duration, help string) *time.Duration {
	d := new(time.Duration)
	*d = def
	fs.Func(name, fmt.Sprintf("%s (default %v)", help, def), func(s string) error {
		v, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("not a duration like 30s or 1m: %q", s)
		}
		if v <= 0 {
			return fmt.Errorf("must be positive: %q", s)
		}
		*d = v
		return nil
	})
	return d
}

// parseLogLevel reads a --log-level value.
func parseLogLevel(level string) (slog.Level, error) {
	levels := map[string]slog.Level{"debug": slog.LevelDebug, "info": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError}
	lv, ok := levels[strings.ToLower(level)]
	if !ok {
		return 0, fmt.Errorf("--log-level must be debug, info, warn or error, not %q", level)
	}
	return lv, nil
}

// newLogger returns a slog logger in the given format, from the given
// level up.
func newLogger(format, level string, w io.Writer) (*slog.Logger, error) {
	lv, err := parseLogLevel(level)
	if err != nil {
		return nil, err
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format must be text or json, not %q", format)
}

// parseStopSignal reads a --stop-signal value: a name with or without SIG,
// in any case (QUIT, SIGQUIT, quit), or a number (3). A stop signal asks a
// server to drain, so it must be one a server can catch: SIGSTOP and SIGKILL
// are refused (SIGSTOP would freeze the server until the deadline; SIGKILL
// under --kill-mode main would kill a master and leave its workers serving,
// orphaned, until the deadline), and so are 32 and 33, which glibc keeps for
// itself.
func parseStopSignal(s string) (unix.Signal, error) {
	bad := fmt.Errorf("not a signal name or number like QUIT, SIGUSR1 or 3: %q", s)
	t := strings.TrimSpace(s)
	var sig unix.Signal
	if n, err := strconv.Atoi(t); err == nil {
		// 64 is the highest signal number on Linux (SIGRTMAX).
		if n < 1 || n > 64 {
			return 0, bad
		}
		sig = unix.Signal(n)
	} else {
		name := strings.ToUpper(t)
		if !strings.HasPrefix(name, "SIG") {
			name = "SIG" + name
		}
		if sig = unix.SignalNum(name); sig == 0 {
			return 0, bad
		}
	}
	switch sig {
	case unix.SIGSTOP, unix.SIGKILL:
		return 0, fmt.Errorf("%v cannot be caught, so it cannot ask a server to drain (the group gets SIGKILL at the drain deadline anyway): %q", unix.SignalName(sig), s)
	case 32, 33:
		return 0, fmt.Errorf("signal %d is reserved by the C library, not a stop signal: %q", sig, s)
	}
	return sig, nil
}

// stopFlags defines --stop-signal and --kill-mode, shared by run and swap.
func stopFlags(fs *flag.FlagSet) (*unix.Signal, *supervisor.KillMode) {
	sig, mode := new(unix.Signal), new(supervisor.KillMode)
	*sig, *mode = unix.SIGTERM, supervisor.KillGroup
	fs.Func("stop-signal", "signal that asks an old generation to drain, by name or number: QUIT for nginx and unicorn, USR1 for HAProxy, WINCH for Apache (default TERM)", func(s string) error {
		v, err := parseStopSignal(s)
		if err != nil {
			return err
		}
		*sig = v
		return nil
	})
	fs.Func("kill-mode", "who gets --stop-signal: group (every process of the generation's process group) or main (its main process only, as systemd's KillMode=mixed); both SIGKILL the group at the drain deadline (default group)", func(s string) error {
		switch m := supervisor.KillMode(s); m {
		case supervisor.KillGroup, supervisor.KillMain:
			*mode = m
			return nil
		}
		return fmt.Errorf("want group or main, not %q", s)
	})
	return sig, mode
}
