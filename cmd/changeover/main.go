//go:build linux

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/changeover-dev/changeover/internal/supervisor"
)

// Exit codes.
const (
	exitOK        = 0
	exitError     = 1
	exitUsage     = 2
	exitExited    = 3
	exitNotReady  = 4
	exitCheck     = 5
	exitCrashLoop = 6
)

// usageError is a command-line mistake; usage has been printed.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

// codeError carries an exit code decided elsewhere (the supervisor's answer
// to reload).
type codeError struct {
	code int
	err  error
}

func (e *codeError) Error() string { return e.err.Error() }
func (e *codeError) Unwrap() error { return e.err }

// exitCode maps an error from run to the process exit code.
func exitCode(err error) int {
	var ue *usageError
	var ce *codeError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.As(err, &ue):
		return exitUsage
	case errors.As(err, &ce):
		return ce.code
	case errors.Is(err, supervisor.ErrExited), errors.Is(err, supervisor.ErrExitedInHandover):
		return exitExited
	case errors.Is(err, supervisor.ErrNotReady):
		return exitNotReady
	case errors.Is(err, supervisor.ErrCheckFailed):
		return exitCheck
	case errors.Is(err, supervisor.ErrCrashLoop):
		return exitCrashLoop
	case errors.Is(err, supervisor.ErrUsage):
		return exitUsage
	}
	return exitError
}

func main() {
	supervisor.MaybeRelay()
	if code, ok := supervisor.MaybeKeep(); ok {
		os.Exit(code)
	}
	err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr)
	code := exitCode(err)
	var ue *usageError
	if err != nil && code != exitOK && !errors.As(err, &ue) {
		fmt.Fprintf(os.Stderr, "changeover: %v\n", err)
	}
	os.Exit(code)
}
