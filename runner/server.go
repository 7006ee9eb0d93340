package runner

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/changeover-dev/changeover/reuseport"
)

// pollInterval paces the drain's checks of queues and connections.
const pollInterval = 5 * time.Millisecond

// listener is a listener bound by Runner.Listen.
type listener struct {
	*net.TCPListener
	self  reuseport.Socket // as sock_diag lists it
	addr  netip.AddrPort   // self.Addr
	steer bool             // the group has our steering program
	owned bool             // served by ServeHTTP (else by an actor)

	listSockets func() ([]reuseport.Socket, error)                                      // Runner.listSockets
	halfOpen    func(netip.AddrPort) (map[netip.AddrPort]reuseport.HalfOpenConn, error) // Runner.halfOpen

	// older holds the inodes of the members that were in the group when we
	// joined. While one of them is there, we are not member 0 and the
	// group's connections are not ours to steer. leader says we are member
	// 0: we were alone, or every older member has left.
	older  map[uint64]bool
	leader atomic.Bool

	// steering serialises the two writers of the group's program: the
	// watch's "return 0" once the older members have left, and the drain's
	// "return 1". handedOver is set by the drain, after which the watch
	// must not attach anything.
	steering   sync.Mutex
	handedOver bool
}

// findOlder records the members already in the group; it returns the
// listening sockets it read.
func (l *listener) findOlder() ([]reuseport.Socket, error) {
	socks, err := l.listSockets()
	if err != nil {
		return nil, err
	}
	l.older = map[uint64]bool{}
	for _, s := range socks {
		if s.SameGroup(l.self) && s.Inode != l.self.Inode {
			l.older[s.Inode] = true
		}
	}
	l.leader.Store(len(l.older) == 0)
	return socks, nil
}

// groupSize returns how many members l's group has.
func (l *listener) groupSize() (int, error) {
	socks, err := l.listSockets()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, s := range socks {
		if s.SameGroup(l.self) {
			n++
		}
	}
	return n, nil
}

// served is one listener of an http.Server; l is nil for a listener that
// did not come from Runner.Listen (it is simply closed at the drain).
type served struct {
	raw net.Listener
	l   *listener
}

// httpServer drives one *http.Server through serving and draining.
type httpServer struct {
	srv *http.Server
	log *slog.Logger
	lns []served

	draining atomic.Bool
	serving  sync.WaitGroup // one per Serve call

	mu    sync.Mutex
	conns map[net.Conn]connState

	// h2IdleGrace is Options.HTTP2IdleGrace, set before the drain: how long
	// an HTTP/2 connection must have been idle (no stream open) before the
	// drain lets Shutdown send it GOAWAY. net/http's HTTP/2 server has no
	// two-phase GOAWAY (one with the last stream ID 2^31-1, a round trip,
	// then the real one, RFC 9113 6.8): Shutdown's GOAWAY refuses a stream
	// the client sent while it was in flight, and Go's client retries that
	// stream when it can rewind its body and fails it otherwise. The only
	// clean GOAWAY is the one a response during the drain carries, which
	// the client reads before it sends another request; the grace leaves
	// a client between two requests the time to send the next one. A
	// connection quiet for longer is idle for real (a browser tab, a gRPC
	// channel) and its next request is rarely that close.
	h2IdleGrace time.Duration

	wrapNextProto sync.Once
}

// connState is what the drain knows of one connection.
type connState struct {
	state http.ConnState
	// http2 is set when net/http hands the connection to its HTTP/2 server
	// (TLS with ALPN "h2", or h2c with the prior-knowledge preface).
	// net/http then marks it active for itself without calling ConnState,
	// and the HTTP/2 server calls ConnState (active, idle) only once it has
	// read the client's preface; until then the hook still says StateNew.
	http2 bool
	since time.Time // when state last changed
}

func (s *httpServer) addListener(l *listener, raw net.Listener) {
	s.lns = append(s.lns, served{raw: raw, l: l})
}

// prepare wraps the server's handler, its ConnState hook and, once Serve has
// set them up, the HTTP/2 entries of its TLSNextProto.
func (s *httpServer) prepare() {
	s.serving.Add(len(s.lns)) // before any drain can wait on it
	h := s.srv.Handler
	if h == nil {
		h = http.DefaultServeMux
	}
	s.srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		dw := &drainWriter{ResponseWriter: w, draining: &s.draining}
		h.ServeHTTP(dw, r)
		dw.mark() // a handler that wrote nothing: net/http writes the header now
	})
	prev := s.srv.ConnState
	s.srv.ConnState = func(c net.Conn, st http.ConnState) {
		if st == http.StateNew {
			// Serve has set up HTTP/2 (TLSNextProto) before its first
			// Accept, and calls this hook before it starts serving the
			// connection: no connection can be handed to HTTP/2 yet.
			s.wrapNextProto.Do(s.wrapHTTP2)
		}
		s.mu.Lock()
		switch st {
		case http.StateClosed, http.StateHijacked:
			delete(s.conns, c)
		default:
			cs := s.conns[c]
			cs.state, cs.since = st, time.Now()
			s.conns[c] = cs
		}
		s.mu.Unlock()
		if prev != nil {
			prev(c, st)
		}
	}
}

// nextProtoH2C is the TLSNextProto key under which net/http hands over an
// unencrypted HTTP/2 connection, wrapped in a *tls.Conn whose NetConn has
// an UnencryptedNetConn method (net/http server.go, h2_bundle.go).
const nextProtoH2C = "unencrypted_http2"

// wrapHTTP2 wraps the server's HTTP/2 entries of TLSNextProto so that each
// connection handed to HTTP/2 is known as such. It replaces the map with a
// copy rather than writing into the caller's.
func (s *httpServer) wrapHTTP2() {
	next := maps.Clone(s.srv.TLSNextProto)
	for _, proto := range []string{"h2", nextProtoH2C} {
		fn := next[proto]
		if fn == nil {
			continue
		}
		next[proto] = func(hs *http.Server, tc *tls.Conn, h http.Handler) {
			var c net.Conn = tc // the connection ConnState sees
			if u, ok := tc.NetConn().(interface{ UnencryptedNetConn() net.Conn }); ok {
				c = u.UnencryptedNetConn()
			}
			s.mu.Lock()
			if cs, ok := s.conns[c]; ok {
				cs.http2 = true
				s.conns[c] = cs
			}
			s.mu.Unlock()
			fn(hs, tc, h)
		}
	}
	if next != nil {
		s.srv.TLSNextProto = next
	}
}

// drainWriter adds "Connection: close" to a response whose header is
// written while the server drains, so that requests that were already in
// flight when the drain started close their connection too. HTTP/1.1 closes
// the connection after such a response; HTTP/2 sends GOAWAY and closes once
// its streams are done. It keeps Flush, Hijack and ReadFrom, and Unwrap for
// http.ResponseController.
type drainWriter struct {
	http.ResponseWriter
	draining *atomic.Bool
	wrote    bool
}

func (w *drainWriter) mark() {
	if !w.wrote {
		w.wrote = true
		if w.draining.Load() {
			w.Header().Set("Connection", "close")
		}
	}
}

func (w *drainWriter) WriteHeader(code int) {
	if code >= 200 { // 1xx are informational: the real header comes later
		w.mark()
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *drainWriter) Write(b []byte) (int, error) {
	w.mark()
	return w.ResponseWriter.Write(b)
}

func (w *drainWriter) ReadFrom(r io.Reader) (int64, error) {
	w.mark()
	return io.Copy(w.ResponseWriter, r) // keeps net/http's sendfile path
}

func (w *drainWriter) Flush() {
	w.mark()
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *drainWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	hj, ok := w.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, fmt.Errorf("runner: %T cannot be hijacked", w.ResponseWriter)
	}
	return hj.Hijack()
}

func (w *drainWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// serve runs Serve on every listener. It returns the first error that is
// not the drain closing a listener, or nil once every Serve has returned.
func (s *httpServer) serve() error {
	errc := make(chan error, len(s.lns))
	for _, ln := range s.lns {
		go func() {
			defer s.serving.Done()
			err := s.srv.Serve(ln.raw)
			if s.draining.Load() && (errors.Is(err, net.ErrClosed) || errors.Is(err, http.ErrServerClosed)) {
				err = nil
			}
			if err != nil {
				err = fmt.Errorf("runner: serve %s: %w", ln.raw.Addr(), err)
			}
			errc <- err
		}()
	}
	for range s.lns {
		if err := <-errc; err != nil {
			return err
		}
	}
	return nil
}

// connCount is what the drain waits on.
type connCount struct {
	open   int // every connection
	http1  int // HTTP/1.x connections (not handed to HTTP/2)
	busyH2 int // HTTP/2 connections not idle for h2IdleGrace yet
	active int // serving a request (HTTP/1) or streams, or waiting for its preface (HTTP/2)
	fresh  int // HTTP/1.x, accepted, no request read yet (cut at the deadline)
}

func (s *httpServer) count() connCount {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := connCount{open: len(s.conns)}
	for _, cs := range s.conns {
		switch {
		case cs.http2:
			if cs.state != http.StateIdle {
				n.active++
			}
			if cs.state != http.StateIdle || time.Since(cs.since) < s.h2IdleGrace {
				n.busyH2++
			}
		case cs.state == http.StateActive:
			n.http1++
			n.active++
		case cs.state == http.StateNew:
			n.http1++
			n.fresh++
		default:
			n.http1++
		}
	}
	return n
}

// closeSilent closes the connections that have not sent a request (HTTP/1)
// or their preface (HTTP/2) yet, and returns how many it closed. A TLS
// connection is closed under its TLS layer, which would otherwise try to
// send close_notify first.
func (s *httpServer) closeSilent() int {
	s.mu.Lock()
	var silent []net.Conn
	for c, cs := range s.conns {
		if cs.state == http.StateNew {
			silent = append(silent, c)
		}
	}
	s.mu.Unlock()
	for _, c := range silent {
		if tc, ok := c.(*tls.Conn); ok {
			c = tc.NetConn()
		}
		c.Close()
	}
	return len(silent)
}

// drain runs steps 1 to 5 of the package doc for this server.
func (s *httpServer) drain(deadline time.Time, window time.Duration) error {
	start := time.Now()
	s.draining.Store(true)

	var wg sync.WaitGroup
	for _, ln := range s.lns {
		wg.Go(func() { s.handoff(ln, deadline) })
	}
	wg.Wait()
	s.serving.Wait() // every accepted connection is now in s.conns

	// HTTP/1.x: each keep-alive connection closes after its next response
	// (Connection: close); the idle ones are left the window to send it.
	// HTTP/2: a stream answered during the drain carries GOAWAY (net/http's
	// HTTP/2 server sends it before the response when the header says
	// Connection: close), so the connections with streams open, or that
	// were between two requests, are left the window to get one. One that
	// has been idle for h2IdleGrace is not waited for: Shutdown sends it
	// GOAWAY, which, unlike closing an idle HTTP/1 connection, is graceful
	// (RFC 9113 6.8: streams it covers finish, a stream it crosses is
	// refused unprocessed and the client retries it).
	end := time.Now().Add(window)
	if deadline.Before(end) {
		end = deadline
	}
	for {
		n := s.count()
		if n.http1+n.busyH2 == 0 || !time.Now().Before(end) {
			break
		}
		time.Sleep(pollInterval)
	}
	// A connection that has sent nothing yet (a browser's preconnect, a TCP
	// health check, TLS "h2" without its preface) was left the window to
	// send its request, like an idle keep-alive connection; it is closed
	// now rather than left to Shutdown, which would hold the drain for it:
	// Shutdown closes an HTTP/1 connection in StateNew only once it is 5 s
	// old (and a request read from it after Shutdown started is closed
	// without a response: conn.serve checks shuttingDown() right after
	// reading it), and its GOAWAY reaches an HTTP/2 connection only after
	// the preface (the server waits 10 s for it). A request sent at this
	// very instant races with the close, as on an idle keep-alive
	// connection; none that has been read is lost.
	if n := s.closeSilent(); n > 0 {
		s.log.Info("closed connections that sent nothing in the keep-alive window", "pid", os.Getpid(),
			"closed_before_request", n)
	}
	open := s.count().open

	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if err == nil {
		s.log.Info("drained", "pid", os.Getpid(), "duration", time.Since(start), "left_for_shutdown", open)
		return nil
	}
	n := s.count()
	s.srv.Close()
	s.log.Warn("drain deadline passed: cut connections", "pid", os.Getpid(),
		"duration", time.Since(start), "cut", n.active, "cut_before_request", n.fresh)
	return fmt.Errorf("%w: cut %d active connections and %d that had not sent a request yet",
		ErrDrainTimeout, n.active, n.fresh)
}

// handoff makes sure no connection waiting on ln is lost, then closes it.
func (s *httpServer) handoff(ln served, deadline time.Time) {
	defer ln.raw.Close()
	if ln.l != nil {
		ln.l.steerAway(deadline, s.log)
	}
}

// steerAway, if this instance is member 0 of a group with a newer member,
// steers the group's new connections to member 1 and waits until l's queue
// and the connections half-open on it are gone (Serve or the actor keeps
// accepting meanwhile). Alone, or dark (a newer member that never got a
// connection, stopping before it took over), there is nothing to hand over.
func (l *listener) steerAway(deadline time.Time, log *slog.Logger) {
	if !l.steer {
		return // the kernel path: tcp_migrate_req=1 moves the queue, or nothing does
	}
	n, err := l.groupSize()
	if err != nil {
		log.Warn("cannot see the reuseport group; closing at once", "addr", l.addr, "err", err)
		return
	}
	if n < 2 {
		return // alone: there is nobody to hand over to
	}
	if !l.leader.Load() {
		if gone, err := l.olderGone(); err != nil || !gone {
			log.Info("stopping while dark: the older instance still has the address", "addr", l.addr)
			return
		}
		l.leader.Store(true) // it left a moment ago
	}
	l.steering.Lock()
	l.handedOver = true
	err = reuseport.Steer(l, 1)
	l.steering.Unlock()
	if err != nil {
		log.Warn("cannot steer to the new instance; closing at once", "addr", l.addr, "err", err)
		return
	}
	start := time.Now()
	queued, halfOpen := waitQuiet(l, deadline, log)
	if queued+halfOpen > 0 {
		log.Warn("drain deadline passed before the listener was quiet", "addr", l.addr,
			"queued", queued, "half_open", halfOpen)
	}
	log.Info("handed over", "addr", l.addr, "pid", os.Getpid(), "duration", time.Since(start))
}

// waitQuiet waits until l is quiet by the rule of [reuseport.DrainWatch]
// (its accept queue empty and every connection half-open on its address
// at the steering completed or given up on, twice in a row), or until
// deadline. Serve keeps accepting meanwhile. It returns what was still
// waiting at the deadline. A read that fails (the sock_diag dump through
// l.halfOpen, the queue's TCP_INFO) makes the listener not quiet: it is
// logged once and retried at each poll, until the deadline.
func waitQuiet(l *listener, deadline time.Time, log *slog.Logger) (queued, halfOpen int) {
	failed := map[string]int{} // failures per kind of read
	fail := func(what string, err error) {
		failed[what]++
		if failed[what] == 1 {
			log.Warn("cannot "+what+"; the listener is not known to be quiet, retrying until the deadline",
				"addr", l.addr, "err", err)
		}
	}
	defer func() {
		if len(failed) > 0 {
			log.Info("reads of the listener failed during the handover", "addr", l.addr,
				"failed_half_open_dumps", failed["list half-open connections"],
				"failed_queue_reads", failed["read the accept queue"])
		}
	}()
	watch := reuseport.NewDrainWatch([]netip.AddrPort{l.addr}, l.halfOpen)
	if err := watch.Start(time.Now()); err != nil {
		fail("list half-open connections", err)
	}
	for {
		if !time.Now().Before(deadline) {
			return watch.Waiting()
		}
		time.Sleep(pollInterval)
		queued, queueErr := reuseport.AcceptQueueLen(l)
		if queueErr != nil {
			fail("read the accept queue", queueErr)
		}
		quiet, err := watch.Poll(time.Now(), queued, queueErr)
		if err != nil {
			fail("list half-open connections", err)
		}
		if quiet {
			return 0, 0
		}
	}
}

// olderGone reports whether every member that was in the group when we
// joined has left.
func (l *listener) olderGone() (bool, error) {
	socks, err := l.listSockets()
	if err != nil {
		return false, err
	}
	for _, s := range socks {
		if l.older[s.Inode] && s.SameGroup(l.self) {
			return false, nil
		}
	}
	return true, nil
}

// watchOlder waits until every member that was in the group when we joined
// has left: we are member 0 then, so we attach "return 0" again (the
// "return 1" that the old instance left behind would otherwise send
// everything to the next version the moment that one listens) and may steer
// the group ourselves at our own drain. A failed sock_diag dump is retried
// at the next tick. It stops when ctx is done or the drain starts, and
// attaches nothing once this instance's own handover has steered the group.
func (l *listener) watchOlder(ctx context.Context, draining <-chan struct{}, log *slog.Logger) {
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	failures := 0
	for {
		if l.closed() {
			return // closed by its caller: nothing of ours left to steer
		}
		gone, err := l.olderGone()
		switch {
		case err != nil:
			failures++
			if failures == 1 {
				log.Warn("cannot watch the reuseport group; retrying", "addr", l.addr, "err", err)
			}
		case gone:
			l.steering.Lock()
			if !l.handedOver {
				if err := reuseport.Dark(l); err != nil {
					log.Warn("cannot reset reuseport steering", "addr", l.addr, "err", err)
				}
			}
			l.leader.Store(true)
			l.steering.Unlock()
			if failures > 0 {
				log.Info("watching the reuseport group again", "addr", l.addr, "failed_dumps", failures)
			}
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-draining:
			return
		case <-tick.C:
		}
	}
}
