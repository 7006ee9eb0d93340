// Command changeover restarts network servers on Linux with zero downtime
// without passing file descriptors: each new generation of the server is an
// independent process that binds the same ports with SO_REUSEPORT beside the
// old one; only once the new one is ready, the old one gets SIGTERM and
// drains within a deadline. A new version that fails is killed and the old
// one keeps serving.
//
// # Commands
//
//	changeover run [flags] -- COMMAND [ARGS...]
//	changeover reload [--name NAME | --control PATH] [--timeout 10m]
//	changeover status [--json] [--name NAME | --control PATH]
//	changeover stop [--name NAME | --control PATH]
//	changeover swap --pidfile F [flags] -- COMMAND [ARGS...]
//
// reload, status and stop find the supervisor by --control, or by --name
// (NAME.sock in the default directory), or else as the only running
// supervisor in the default directory ($XDG_RUNTIME_DIR/changeover, else
// /run/changeover).
//
// # run flags (defaults)
//
//	--name NAME              base name of COMMAND; names the control socket (and so the state file)
//	--control PATH           $XDG_RUNTIME_DIR/changeover/NAME.sock, else /run/changeover/NAME.sock
//	--dir DIR                working directory of instances, symlinks resolved at each start
//	--env-file F             KEY=VALUE lines added to instances' environment, read at each start
//	--health PROBE           repeatable: http://..., https://..., tcp:ADDR, exec:CMD; {health_addr}
//	                         is replaced by the instance's own CHANGEOVER_HEALTH_ADDR
//	--notify                 true: wait for READY=1 on the instance's NOTIFY_SOCKET
//	--check CMD              repeatable; sh -c CMD in the new generation's dir and environment
//	                         before it starts; non-zero refuses the reload
//	--watch                  false: reload when COMMAND's file, or a symlink on its path, changes
//	--watch-debounce 1s      the change must stay still this long (a binary being copied is not started)
//	--ready-timeout 30s      time a new generation has to become ready, --check commands included
//	--drain-timeout 30s      time an old generation has to drain (also CHANGEOVER_DRAIN_TIMEOUT); then SIGKILL
//	--stop-signal TERM       the signal that asks an old generation to drain, by name (QUIT, SIGQUIT, quit) or number (3)
//	--kill-mode group        who gets it: group (every process of the generation's process group) or main (its
//	                         main process only, as systemd's KillMode=mixed); both SIGKILL the group at the deadline
//	--max-draining 4         old generations that may drain at once; a reload beyond waits (up to --ready-timeout)
//	--restart-backoff 1s     delay before restarting after the second crash in the window (the first
//	                         restarts at once); doubles per crash
//	--restart-backoff-max 30s
//	--crash-limit 5          more crashes than this within --crash-window: exit 6 (let systemd restart)
//	--crash-window 1m
//	--pidfile F              the supervisor's own PID
//	--log-format text        or json (log/slog; keys generation, pid, duration)
//	--log-level info         debug (also each step of the steering), info, warn or error
//	--tcp-migrate-req        false: set net.ipv4.tcp_migrate_req=1 for the network namespace first
//	                         (needs root; a second line of defence, the handover does not need it)
//
// Ready means READY=1 received (unless --notify=false) and every --health
// probe passing 3 times in a row, 100 ms apart (a flapping probe never
// makes an instance ready). With --notify=false and no --health, the probe is
// http://{health_addr}/. With no flag at all a server built on package
// runner (cmd/demo) just works: it sends READY=1 once it is serving and its
// health handler passes. A --health probe aimed at a port that the old
// generation listens on would be answered by the old generation: a reload
// with such a probe is refused, saying so. Before a new generation is
// promoted, its listening sockets must cover every address the old one
// shares with SO_REUSEPORT (its health address and ports of its own, such as
// a pprof listener on :0, aside); this is checked again until the ready
// deadline (a server may bind just after READY=1), then the reload fails
// (exit 4).
//
// A server that does not speak sd_notify (nginx, gunicorn, most servers
// not written for systemd) never sends READY=1, so with --notify at its
// default it is never ready: run it with --notify=false and a --health
// probe, best one that reaches that instance alone: serve a health check on
// $CHANGEOVER_HEALTH_ADDR and probe http://{health_addr}/ (the error of a
// generation that sent no READY=1 says so). --notify stays true by default:
// READY=1 is the server's own word that it serves, stronger than a probe
// from outside, and the servers built on package runner send it; a server
// without it fails at generation 1 with that hint, never silently at a
// reload.
//
// # Stop signal and kill mode
//
// --stop-signal is the signal that asks an old generation to drain. SIGTERM
// suits servers built on package runner and gunicorn, but it is the *fast*
// shutdown of nginx and HAProxy, which then cut the requests in flight. Use
// each server's graceful stop:
//
//	nginx                      QUIT (TERM, INT: fast shutdown)
//	gunicorn                   TERM (QUIT, INT: quick shutdown)
//	unicorn                    QUIT (TERM, INT: quick shutdown)
//	HAProxy (-W -db)           USR1 (soft stop; TERM: hard stop)
//	Apache httpd -DFOREGROUND  WINCH (graceful-stop; TERM: stop)
//
// --kill-mode group (the default) sends it to every process of the
// generation's process group, as systemd's default KillMode=control-group
// does; --kill-mode main sends it to the main process only, as systemd's
// KillMode=mixed does, and the main process stops the others itself. Both
// SIGKILL the whole group at the drain deadline. group is the default
// because it is the one that always reaches the server: a wrapper script
// that does not exec it (sh -c 'setup; server', npm start) would keep the
// signal to itself under main and the server would never drain; and
// master/worker servers whose workers take the master's stop signal as
// their own graceful stop (nginx, gunicorn and unicorn do) drain the same
// under group (TestRealServers runs nginx and gunicorn under both; the
// two lost about as many requests, within the noise of one run). Choose main for a server that wants its workers stopped by
// its master alone, as its systemd unit says with KillMode=mixed. The
// supervisor logs which PIDs got the signal ("stop signal sent ...
// kill_mode=group pids=[...]").
//
// Every instance gets NOTIFY_SOCKET (its own unixgram socket beside the
// control socket, accepting datagrams only from the instance's process
// group), CHANGEOVER_HEALTH_ADDR (a free port of a random 127/8 address, only it serves),
// CHANGEOVER_DRAIN_TIMEOUT and CHANGEOVER_GENERATION. The supervisor's own
// NOTIFY_SOCKET (from systemd) is never passed on. Instances start in their
// own process group and are signalled and killed by group.
//
// # Reloads
//
// SIGHUP, `changeover reload`, or --watch start generation N+1, wait until
// it is ready, and send the stop signal (SIGTERM unless --stop-signal) to
// generation N (its process group, or its main process with --kill-mode
// main). The reload is done when the port is handed over: sock_diag shows
// none of N's listening sockets on a shared address (or its group is
// empty). N drains in the background until its group is empty, or is
// SIGKILLed with its group at its deadline (--drain-timeout after the stop
// signal; logged killed=true, killed=false when the group emptied in time);
// `status` lists it as draining. The whole group counts, not only COMMAND:
// a wrapper that does not exec the server (sh run.sh, npm start) may exit at
// the first SIGTERM while the server drains in its group. Several
// generations may drain at once, up to --max-draining; a reload beyond that
// waits for one to finish, up to --ready-timeout, then fails. No generation
// starts while an older one other than the serving one still has a listener
// open, so the ports never hold more than two generations.
//
// A process that leaves the group (setsid; a server that daemonizes, such as
// nginx with its default "daemon on") is not tracked: it is neither drained
// nor killed. The group's listening sockets are read when the stop signal
// is sent; if a process still in the group holds one then, and once the
// group is empty a process outside it still holds that socket, the
// supervisor logs "a process started by this generation left its process
// group ..." with its PID. A daemon that alone holds the socket at stop
// time is not reported. Run servers in the foreground (nginx: daemon off).
//
// Reloads asked for while one runs are coalesced into one more;
// every `reload` waiting for it gets its outcome. If N+1 exits or is not
// ready in time it is killed with its group (the reload fails once its group
// is empty) and N keeps serving. COMMAND's path, --dir and --env-file are
// resolved again at each reload, so a binary replaced on disk or a flipped
// `current` symlink is what starts next.
//
// # Crashes and stop
//
// If the serving instance exits on its own, the exit is logged with its
// status and the last lines of its stderr, its group is killed, and a new
// generation starts: for the first crash in --crash-window at once (as soon
// as no older generation has a listener open), from the second after
// --restart-backoff, doubling. A new generation that fails while nothing
// serves counts as a crash too. Whenever nothing serves and nothing is
// starting, a restart is due, or the crash limit ends run (exit 6). A crash
// while a reload's new generation is starting starts nothing more: that one
// serves when it is ready. A new generation that took over and exits before
// the old one's listeners are gone fails its reload (exit 3) and is
// restarted as a crash. A reload asked for during a backoff is the
// restart, at once. Generation numbers are never given twice, also when a
// supervisor restarted after a SIGKILL adopts its predecessor's instances
// (the state file records the last one given). SIGTERM or SIGINT (or `changeover stop`) drain every
// generation at once (a reload in progress is abandoned: its new instance
// is killed) and exit 0 when every group is empty; a second SIGTERM/SIGINT
// SIGKILLs at once. A stop while generation 1 is still starting kills it and
// exits 0; if generation 1 fails, run exits with its code (3, 4 or 5) and a
// `reload` waiting meanwhile gets the same answer. Output to a broken pipe
// (`run ... | tee`, tee gone) is dropped; run goes on.
//
// # systemd
//
// With NOTIFY_SOCKET set, run speaks Type=notify-reload: READY=1 with
// MAINPID (always the supervisor) once generation 1 is ready; RELOADING=1
// with MONOTONIC_USEC when a reload starts and READY=1 when it ends (either
// way); STATUS= with the serving generation; EXTEND_TIMEOUT_USEC when a drain
// starts; STOPPING=1. Type=notify with ExecReload=changeover reload works
// too (on older systemd), and reports the outcome in the reload's exit code.
//
// # Instance stderr
//
// Instances inherit the supervisor's stdout. Their stderr must also survive
// a killed supervisor (instances keep serving), so it is not a pipe read by
// the supervisor: a Go server writing to a broken fd 2 dies of SIGPIPE.
// Instead it is a pipe read by a small relay process (this binary re-run,
// in its own process group, ignoring SIGTERM/SIGINT/SIGHUP) that copies
// every byte unchanged to the supervisor's stderr and a best-effort,
// never-blocking copy to the supervisor, which keeps the last lines. The
// relay exits when the instance (and every descendant holding its stderr)
// is gone, so it outlives a killed supervisor. Those last lines explain a
// failed start: "generation 1 (pid N) exit status 1; last stderr: listen
// tcp 127.0.0.1:8080: bind: address already in use".
//
// # State file and adoption
//
// The state file, the control socket's path with .state for .sock
// (NAME.state beside NAME.sock; two supervisors with different --control
// paths never share one), is rewritten (atomically) on every change:
// generations, their states, PIDs, process groups, start times (from
// /proc/PID/stat), health addresses and, for a draining one, its drain
// deadline. It is removed when run returns. When run starts and finds one
// whose serving instance is alive with the same start time and process
// group (the previous supervisor was SIGKILLed and its instance kept
// serving), it adopts it: generation N+1 starts as usual and the adopted one
// is retired through a normal handover (SIGTERM, exit detected by polling
// /proc since it is not our child, SIGKILL of its group after the deadline).
// Non-serving leftovers of the dead supervisor (a half-done reload) are
// killed.
//
// The state file is trusted only if it is a regular file (not a symlink)
// owned by the supervisor's user, in a directory owned by that user, and
// neither is writable by group or others; otherwise it is ignored with a
// warning naming it, and nothing it names is adopted or signalled. A process
// it names is signalled only if /proc shows the recorded start time and
// process group; a start time of 0 matches nothing, and a process that
// cannot be read is never signalled.
//
// # Control socket
//
// A unix socket created 0600 in a directory that only its owner can write
// (created 0700 if missing; an existing directory's mode is never changed).
// A directory that others can write is accepted only with the sticky bit,
// as /tmp, and then a socket or PATH.lock of another user found there is
// refused, never replaced; without the sticky bit it is refused, as is a
// directory of another user. Only peers (SO_PEERCRED) with the
// supervisor's UID or root may reload or stop. A live supervisor holds a
// flock on PATH.lock beside the socket; a second one is refused (exit 1,
// naming it), and a socket file left by a killed supervisor, whose lock is
// free, is replaced. A busy supervisor's socket is never taken for a stale
// one.
//
// # Containers
//
// As PID 1, or otherwise as a child subreaper (PR_SET_CHILD_SUBREAPER), run
// reaps orphans re-parented to it. One reaper owns every wait: instances and
// --check commands are reaped by PID and their status goes to the
// supervisor; an orphan in an instance's process group is reaped at once,
// any other zombie child only after a grace second, so commands waited for
// elsewhere (exec probes) keep their status.
//
// # swap
//
// `changeover swap --pidfile F -- COMMAND` deploys without a resident
// supervisor: it starts COMMAND in its own session (output appended to
// --log, default F with .log for .pid), waits until it is ready, writes F
// atomically, sends the stop signal (--stop-signal, SIGTERM by default) to
// the process that F named and exits 0 once the port is handed over: none
// of the old instance's listening sockets is left (sock_diag), or its
// process group is empty, as reload does. The old instance finishes its
// requests in the background, and swap prints until when. Its drain
// deadline (--drain-timeout after the stop signal, recorded in F.state) is
// enforced by swap itself while the old instance still listens (SIGKILL of
// its group at the deadline, and swap exits then), and after the handover
// by a drain keeper that swap leaves behind: this binary re-run in a
// hidden mode (the environment variable CHANGEOVER_INTERNAL_DRAIN_KEEPER;
// ps shows "changeover drain-keeper F"), in a session of its own, its
// output appended to the instance log, which verifies the old instance as
// swap does, SIGKILLs its group at the deadline if it is still there, never
// before, and drops it from F.state. If swap is killed before it starts the
// keeper, or the keeper is killed, the next swap does (see below). A
// failed new instance is killed; F and the old process are left alone.
// Concurrent swaps on one F are serialised by a flock on F.lock. An empty,
// garbage or unwritable F exits 2 with nothing touched. swap takes --log,
// --dir, --env-file, --health, --check, --notify, --ready-timeout,
// --drain-timeout, --stop-signal, --kill-mode, --log-format and --log-level as run does:
// the stop signal goes to the old process, and with --kill-mode group to its
// process group if it leads one.
//
// F holds the PID alone on one line, so kill -0 $(cat F), pgrep -F F,
// systemd's PIDFile= and init scripts read it. What swap needs besides
// (start time, process group, generation, health address; during a
// handover, the draining generation and its deadline) is in F.state, a JSON
// state file beside it, trusted only if it is the user's alone (as run's
// state file). The process F names is signalled only if it is verified as
// the one a swap started: F.state names it with the start time and process
// group that /proc shows. A PID that is gone or now belongs to another
// process (start time differs) is never signalled: reported, and treated as
// a first deploy. A live process that cannot be verified (F.state missing,
// as with a pidfile written by another tool, untrusted, or naming another
// PID) is refused: exit 2, nothing touched, and the message says so. To take
// over from another tool's pidfile, pass --takeover: the process F names is
// then retired like an instance swap started. A pidfile of the previous
// format ("PID STARTTIME GENERATION HEALTH_ADDR") is verified by its start
// time and migrated without asking. If the process F names has exited but
// its process group still runs (a wrapper such as sh -c 'srv & ...'), the
// group is retired. Every other generation F.state names (one a swap
// killed during its drain left as draining) is retired too: SIGKILLed with
// its group if its drain deadline has passed, else at that deadline (by
// this swap while it still listens, else by the keeper recorded beside it
// in F.state if that one still runs, else by this swap's keeper).
//
// Where F may live, for every swap alike (checked before anything starts):
// a directory of the user that no one else can write, or a sticky one such
// as /tmp. F, F.state and F.lock, whatever their format, are trusted only
// if they are regular files of the user (effective uid), writable by no
// one else, with one link; otherwise exit 2, nothing touched. A directory
// that others can write without the sticky bit is refused. The same rule
// holds for run's control socket and state file.
//
// SIGINT or SIGTERM to swap before F names the new instance kill the new
// instance with its process group and leave F and the old instance as they
// were (exit 128+signal: 130, 143); after, swap finishes the handover and
// exits as it would have. F.lock and the log file are opened with
// O_NOFOLLOW: a symlink there is refused (exit 2, nothing touched).
//
// # Exit codes
//
//	0  success (reload/swap: the new generation took over)
//	1  an error of changeover's own: control socket unreachable or in use,
//	   COMMAND cannot be started (the message names the path), ...
//	2  usage: unknown command, bad flag or value (named), nothing after --,
//	   a garbage swap pidfile, or one naming a live process swap cannot
//	   verify (without --takeover), a symlinked swap lock or log file
//	3  the new instance exited before it was ready, or took over and exited
//	   before the old one's listeners were gone (run then restarts it as a
//	   crash, once no older generation listens)
//	4  the new instance was not ready in time (probe failing, no READY=1,
//	   or it does not listen on an address the old one serves)
//	5  --check refused the new generation
//	6  run: the serving instance crashed more than --crash-limit times
//	130, 143  swap: interrupted by SIGINT or SIGTERM before the new instance
//	   took over (it was killed; nothing else changed)
//
// In 3 (before it was ready), 4 and 5 the old version keeps serving. run exits with 3, 4 or 5 too
// when generation 1 fails that way, with the instance's error in the message.
package main
