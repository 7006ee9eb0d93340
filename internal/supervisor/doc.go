// Package supervisor runs generations of a command and hands traffic over
// from one to the next: generation N+1 starts beside N (both bind the shared
// ports with SO_REUSEPORT), and only once N+1 is ready (READY=1 on its own
// notify socket and every probe passing on its own health address) does N
// get SIGTERM and a drain deadline. A new generation that fails is killed
// with its process group and N keeps serving.
//
// What it promises: no generation's process starts while an older one,
// other than the serving one, still has a listening socket open (read
// through sock_diag), so the shared ports never hold more than two
// generations; a reload is done when the old generation has no listener
// left, and the old one drains in the background, at most MaxDraining at
// once; whenever nothing serves and nothing is starting, a restart is due
// or Run ends with ErrCrashLoop; every caller of Reload gets an answer.
//
// The decisions are a state machine (machine.go) in the way of etcd-io/raft:
// events in (a reload or stop asked for, an instance ready or exited, its
// listeners gone, its group empty, a check finished, a timer fired),
// actions out (start a generation, promote it, send the stop signal, kill a
// group, arm a timer, answer the waiters, notify systemd, save the state
// file, exit). Supervisor.Run is the loop that performs the actions and
// turns what happens into events; see the Supervisor type.
package supervisor
