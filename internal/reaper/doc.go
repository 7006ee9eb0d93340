// Package reaper owns every wait(2) of the supervisor: it starts children,
// reaps them when SIGCHLD arrives, and hands each its exit status. As PID 1
// or a child subreaper it also reaps orphans that were re-parented to us:
// a zombie child that nobody reaped for a grace period (a command run with
// exec.Cmd.Wait elsewhere in the process, such as an exec probe, is reaped
// by its own Wait at once and keeps its exit status), or at once if it is in
// the process group of a child started through Start (an instance's
// orphaned descendants).
package reaper
