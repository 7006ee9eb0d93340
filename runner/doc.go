// Package runner is the side of changeover that a server author calls from
// main: it binds listeners that share their port with the next version of the
// server, serves them, tells the supervisor when it is ready, and on the
// supervisor's SIGTERM hands the port over without dropping a connection.
//
// # The guarantee
//
// When the old instance is asked to stop (its Run context is cancelled, e.g.
// by SIGTERM through [SignalContext]) while a new instance listens beside it
// on the same address, no connection that reached the old instance is lost:
// connections waiting in its accept queue or still half-open are served by
// the old instance, requests in flight finish, keep-alive connections close
// cleanly after a response that carries "Connection: close" (HTTP/2: GOAWAY),
// and every new connection goes to the new instance. This holds on Linux 4.6
// and later (classic BPF reuseport programs; tested on 6.18) without any
// privilege or sysctl; with net.ipv4.tcp_migrate_req=1
// (Linux 5.14 and later) the kernel migrates queued connections as well, as a
// second line of defence. It holds within the drain deadline: what is still
// running at the deadline is cut, and the log says how many connections were.
//
// # Handover, in order
//
// A new instance, right after each listen, attaches a steering program that
// sends the group's new connections to its oldest member (reuseport.Dark): the
// new instance receives no connection until it is told to take over, so a new
// version that never becomes healthy costs no request.
//
// When Run's context is done, for each [http.Server] the old instance:
//
//  1. marks itself draining: every response from now on carries
//     "Connection: close" (not SetKeepAlivesEnabled(false), which closes idle
//     connections at once, racing clients that are sending on them);
//  2. if another member shares the listener's address, steers the group to it
//     (reuseport.Steer(l, 1): the old instance is member 0 since it joined
//     first), keeps accepting until its accept queue is empty and every
//     connection that was half-open at the steering has left SYN_RECV or
//     was seen 250 ms ago with its SYN-ACK retransmitted (its peer has not
//     answered for a retransmission timeout, 1 s, plus a generous round
//     trip: a scanner, a spoofed source, a vanished client, which would
//     otherwise hold the drain for a minute; a client whose first SYN-ACK
//     was lost answers the retransmitted one within that grace), twice in
//     a row a few milliseconds apart, and only then closes the listener
//     itself; alone on the address, it closes the listener at once;
//  3. waits for Serve to return, so that every accepted connection is known;
//  4. waits until its HTTP/1.x connections are gone or KeepAliveWindow has
//     passed: each keep-alive connection closes after its next response;
//     an HTTP/2 connection (TLS "h2" or h2c) is waited for in that window
//     only while it has streams open or has been idle for less than
//     Options.HTTP2IdleGrace (default half the window): each response during
//     the drain carries GOAWAY, which the client reads before its next
//     request, and a client between two requests is left the time to send
//     the next one; a connection that has
//     sent nothing yet (no request, or no HTTP/2 preface) is waited for in
//     the same window, then closed and counted in the log (Shutdown would
//     hold the drain for it: it closes a new HTTP/1 connection only once it
//     is 5 s old, and reaches HTTP/2 only after the preface);
//  5. calls [http.Server.Shutdown], which sends GOAWAY on every HTTP/2
//     connection (its streams finish; an idle one is closed 1 s later),
//     closes the HTTP/1 connections that stayed idle for the whole window and
//     waits for the active ones, until the drain deadline; then
//     [http.Server.Close] cuts what is left, and the cut connections are
//     counted in the log.
//
// An instance that is stopped while it is still dark (a newer member of the
// group, before the older one handed over) steers nothing: it got no
// connection, so it closes its listener and drains as above.
//
// Listeners that actors added with [Runner.Add] serve are steered and their
// queues waited for in step 2 before the actors' interrupt is called; the
// actors then close them and drain themselves, with no deadline from Run.
//
// The drain deadline is the smaller of Options.DrainTimeout and
// CHANGEOVER_DRAIN_TIMEOUT, else 30 s; the instance finishes a little before
// it (a tenth of it, at most 500 ms), because the supervisor kills the
// process group just after it.
//
// After the old instance has left, the survivor sees that it is alone on its
// address and attaches its own "return 0" program again, so that the program
// the old instance left behind ("return 1") cannot steer the next version's
// connections to it before it is healthy.
//
// Not covered: a connection idle during the whole KeepAliveWindow is closed at
// its end, and a request sent at that very instant races with the close, as
// with any HTTP/1.1 server (Go's client retries idempotent requests); the
// same holds for a connection that has sent nothing during the whole window
// (a preconnect; it has not been served, so nothing it sent is lost); on an
// HTTP/2 connection idle for HTTP2IdleGrace, a stream the client sends
// while Shutdown's GOAWAY is in flight (about one round trip) is refused
// unprocessed, since net/http's HTTP/2 server has no two-phase GOAWAY: Go's
// client retries it on a new connection when it can rewind the body (a GET,
// a body with GetBody) and fails it otherwise (a streamed POST);
// hijacked connections (WebSocket) are not tracked: the drain does not wait
// for them, and they end with the process, which can be as soon as the
// tracked connections are done (a streaming response that is not hijacked,
// such as SSE, is an active connection: the drain waits for it until the
// deadline); UDP and unix-socket listeners are not handed over.
//
// # HTTP/2 without TLS
//
// Serve h2c with [http.Server.Protocols] (SetUnencryptedHTTP2): net/http
// hands such connections to its HTTP/2 server through TLSNextProto, where
// the drain sees them. golang.org/x/net/http2/h2c.NewHandler hijacks each
// connection instead: the drain neither waits for it nor sends it GOAWAY,
// and it ends with the process.
//
// # Readiness
//
// Run sends READY=1 over NOTIFY_SOCKET (the sd_notify protocol, so the same
// binary works under systemd's Type=notify) once every server is serving and
// the health handler answers 2xx. The health handler is served on
// CHANGEOVER_HEALTH_ADDR, an address that only this instance serves, so the
// supervisor's probe reaches this instance and not whichever one the kernel
// picks on the shared port.
package runner
