// Package proc reads what the supervisor needs to know about processes from
// /proc: start times (to tell a live process from a reused PID), process
// group members, and the TCP addresses a process group listens on.
package proc
