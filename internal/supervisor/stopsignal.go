//go:build linux

package supervisor

import (
	"fmt"
	"log/slog"

	"golang.org/x/sys/unix"
)

// KillMode says which processes of an instance get the stop signal. At the
// drain deadline every mode SIGKILLs the whole process group.
type KillMode string

const (
	// KillGroup sends the stop signal to every process of the instance's
	// process group (systemd's KillMode=control-group, its default). A
	// wrapper script that does not exec its server needs it: the shell
	// would not pass the signal on. Master/worker servers whose workers
	// treat the stop signal as their master does (nginx, gunicorn, unicorn)
	// drain with it too.
	KillGroup KillMode = "group"
	// KillMain sends it to the main process only (systemd's
	// KillMode=mixed): the master of a master/worker server stops its
	// workers itself, in its own order.
	KillMain KillMode = "main"
)

// stopSignal is the signal that asks an instance to drain: l.StopSignal,
// else SIGTERM.
func (l *Launch) stopSignal() unix.Signal {
	if l.StopSignal == 0 {
		return unix.SIGTERM
	}
	return l.StopSignal
}

// killMode is l.KillMode, else KillGroup.
func (l *Launch) killMode() KillMode {
	if l.KillMode == "" {
		return KillGroup
	}
	return l.KillMode
}

// sendStop sends the stop signal of l to in, as l's kill mode says, logs
// which processes got it and returns their PIDs. A process that does not
// lead a process group of its own (a swap pidfile written by something
// else) is signalled alone whatever the mode: its group is not the
// instance's.
func sendStop(in *Instance, l *Launch, log *slog.Logger) []int {
	sig, mode := l.stopSignal(), l.killMode()
	// With the group, one kill(2) reaches a process forked after the
	// members were listed too, though it is not in the list.
	pids := in.signalStop(sig, mode == KillGroup)
	log.Info("stop signal sent", KeyGeneration, in.Gen, KeyPID, in.PID,
		"signal", signalName(sig), "kill_mode", string(mode), "pids", pids)
	return pids
}

// signalName names sig for the log: SIGQUIT, or SIGRTMIN+N for the
// real-time signals, which unix.SignalName does not know.
func signalName(sig unix.Signal) string {
	if name := unix.SignalName(sig); name != "" {
		return name
	}
	const rtmin = 34 // glibc's SIGRTMIN: 32 and 33 are its own
	if sig >= rtmin {
		return fmt.Sprintf("SIGRTMIN+%d", sig-rtmin)
	}
	return fmt.Sprintf("signal %d", int(sig))
}
