//go:build linux

package supervisor

import "errors"

// Sentinel errors; the command maps them to exit codes.
var (
	// ErrExited: the new instance exited before it was ready (exit code 3).
	ErrExited = errors.New("new instance exited before it was ready")
	// ErrExitedInHandover: the new instance was ready and took over, then
	// exited before the old one's listeners were gone (exit code 3).
	ErrExitedInHandover = errors.New("new instance exited during the handover")
	// ErrNotReady: the new instance was not ready in time (exit code 4).
	ErrNotReady = errors.New("new instance not ready in time")
	// ErrCheckFailed: --check refused the reload (exit code 5).
	ErrCheckFailed = errors.New("check refused the new generation")
	// ErrStart: the command could not be started at all (exit code 1).
	ErrStart = errors.New("cannot start command")
	// ErrCrashLoop: the serving instance crashed too often.
	ErrCrashLoop = errors.New("instance crashed too often")
	// ErrProbeSharedPort: a probe targets a port the old instance serves.
	ErrProbeSharedPort = errors.New("probe targets a shared port")
	// ErrStopping: the supervisor is stopping; no reload.
	ErrStopping = errors.New("supervisor is stopping")
	// ErrInterrupted: swap was interrupted (SIGINT, SIGTERM) before the
	// pidfile named the new instance, which was killed.
	ErrInterrupted = errors.New("interrupted")
	// ErrTooManyDraining: a reload waited the ready timeout for one of
	// Config.MaxDraining draining generations to finish.
	ErrTooManyDraining = errors.New("too many generations draining")
)

// ErrUsage: a bad value in the swap pidfile or configuration (exit code 2).
var ErrUsage = errors.New("usage")
