package runner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/oklog/run"

	"github.com/changeover-dev/changeover/reuseport"
)

// Environment variables read by Run. The supervisor sets them; a server in
// another language can honour the same contract.
const (
	EnvHealthAddr   = "CHANGEOVER_HEALTH_ADDR"
	EnvDrainTimeout = "CHANGEOVER_DRAIN_TIMEOUT"
	EnvNotifySocket = "NOTIFY_SOCKET"
	// EnvSteering, set to "supervisor", says that the supervisor owns the
	// steering program of the port's reuseport groups (through placeholder
	// members of its own): Listen attaches nothing, and the drain does not
	// steer; the supervisor has switched the port away before it sends
	// the stop signal. Unset, the Runner steers itself.
	EnvSteering = "CHANGEOVER_STEERING"
)

// Defaults of Options.
const (
	DefaultDrainTimeout    = 30 * time.Second
	DefaultKeepAliveWindow = 5 * time.Second
)

// Options configures a Runner. The zero value is ready to use.
type Options struct {
	// Logger receives one line per event. Default: slog.Default().
	Logger *slog.Logger
	// DrainTimeout bounds the drain. The smaller of it and
	// CHANGEOVER_DRAIN_TIMEOUT is used; default 30s.
	DrainTimeout time.Duration
	// KeepAliveWindow is how long a drain waits for keep-alive connections to
	// carry one more request (and close after its response) before Shutdown
	// closes those still idle. Default 5s, and never more than half the drain
	// deadline.
	KeepAliveWindow time.Duration
	// HTTP2IdleGrace is how long an HTTP/2 connection (TLS "h2" or h2c)
	// must have been idle, with no stream open, before the drain stops
	// waiting for it and lets Shutdown send it GOAWAY. Until then it is
	// waited for like an HTTP/1 keep-alive connection: its next response
	// carries GOAWAY, which the client reads before it sends another
	// request, so nothing crosses it. A stream the client sends while
	// Shutdown's GOAWAY is in flight is refused unprocessed: Go's client
	// retries it on a new connection when it can (a GET, a body with
	// GetBody) and fails it otherwise (a streamed POST). Shorter drains
	// sooner when browsers or gRPC channels hold idle connections; longer
	// spares clients that pause longer between requests. Default: half of
	// KeepAliveWindow (2.5s with its default), and never more than it.
	HTTP2IdleGrace time.Duration
	// Health answers the readiness probe. Default: 200 "ok".
	Health http.Handler
	// HealthAddr is where Health is served. Default: $CHANGEOVER_HEALTH_ADDR;
	// when both are empty, Health is only called in-process before READY=1.
	HealthAddr string
	// AllowOverlappingListeners lets Listen bind beside a listener that
	// holds the same port on an overlapping address in another reuseport
	// group (127.0.0.1:P beside 0.0.0.0:P or [::]:P, tcp4 0.0.0.0:P beside
	// [::]:P). Default false: Listen refuses with ErrOverlappingListener.
	AllowOverlappingListeners bool
}

// Errors Run can return.
var (
	// ErrBadEnv is returned when a CHANGEOVER_* variable cannot be parsed.
	ErrBadEnv = errors.New("runner: bad environment")
	// ErrDrainTimeout is returned when connections had to be cut at the
	// drain deadline.
	ErrDrainTimeout = errors.New("runner: drain deadline passed")
)

// Errors Listen can return.
var (
	// ErrAlreadyListening is returned by a second Listen on an address that
	// this Runner already listens on.
	ErrAlreadyListening = errors.New("runner: this Runner already listens on the address")
	// ErrOverlappingListener is returned by Listen when another listener
	// holds the same port on an overlapping address in another reuseport
	// group (see Options.AllowOverlappingListeners).
	ErrOverlappingListener = errors.New("runner: another listener holds the port on an overlapping address")
)

// Runner serves listeners through a zero-loss handover. Create it with New,
// bind with Listen, register servers with ServeHTTP or Add, then call Run
// once.
type Runner struct {
	opts Options
	log  *slog.Logger

	mu        sync.Mutex
	listeners map[net.Listener]*listener
	servers   []*httpServer
	actors    []actor

	// listSockets is reuseport.ListeningSockets (a sock_diag dump); tests
	// replace it to see what happens around the dumps, or to make them fail.
	listSockets func() ([]reuseport.Socket, error)
	// halfOpen is reuseport.HalfOpen (a sock_diag dump of SYN_RECV
	// requests); tests replace it to make it fail.
	halfOpen func(netip.AddrPort) (map[netip.AddrPort]reuseport.HalfOpenConn, error)

	ready      chan struct{}
	draining   chan struct{}
	healthAddr string // where Health is served, once Run has bound it

	supervised bool // EnvSteering=supervisor: the supervisor owns the steering
}

type actor struct {
	execute   func() error
	interrupt func(error)
}

// New returns a Runner. opts is copied; defaults are applied to the copy.
func New(opts Options) *Runner {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Health == nil {
		opts.Health = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	}
	if opts.HealthAddr == "" {
		opts.HealthAddr = os.Getenv(EnvHealthAddr)
	}
	return &Runner{
		opts:        opts,
		log:         opts.Logger,
		listeners:   map[net.Listener]*listener{},
		listSockets: reuseport.ListeningSockets,
		halfOpen:    reuseport.HalfOpen,
		ready:       make(chan struct{}),
		draining:    make(chan struct{}),
		supervised:  os.Getenv(EnvSteering) == "supervisor",
	}
}

// SignalContext returns a context that is cancelled on SIGTERM or SIGINT. It
// is the one place where this package calls signal.Notify, for main to use:
//
//	ctx, stop := runner.SignalContext(context.Background())
//	defer stop()
func SignalContext(parent context.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(parent, syscall.SIGTERM, os.Interrupt)
}

// Ready is closed once READY=1 has been sent: every server is serving and
// the health handler passes. It is never closed if Run's context is done
// before that.
func (r *Runner) Ready() <-chan struct{} { return r.ready }

// Draining is closed when the drain starts.
func (r *Runner) Draining() <-chan struct{} { return r.draining }

// Listen binds a TCP address with SO_REUSEPORT (see package reuseport) and
// keeps this instance dark on it: the group's new connections go to the
// instance that was there first, until that one hands over. network is
// "tcp", "tcp4" or "tcp6".
//
// A second Listen on an address this Runner already listens on returns
// ErrAlreadyListening: the handover tells the instances apart by their order
// in the address's reuseport group, one listener each. Listen also refuses,
// with ErrOverlappingListener naming both addresses, when a listener of
// another group holds the same port on an overlapping address (127.0.0.1:P
// beside 0.0.0.0:P or [::]:P, tcp4 0.0.0.0:P beside [::]:P): the kernel picks
// among groups before any steering, so such a new instance would not be
// dark, and such an old one would not hand over. Options.AllowOverlappingListeners
// turns that check off. Both checks are made before binding, so a refused
// Listen never takes a connection, and again once listening (for a
// neighbour that bound meanwhile). If the port's listeners cannot be read
// (two sock_diag dumps failed), Listen returns that error and binds nothing.
// A listener the caller has closed no longer counts as this Runner's.
func (r *Runner) Listen(ctx context.Context, network, address string) (net.Listener, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, fmt.Errorf("runner: listen %s %s: only TCP listeners (tcp, tcp4, tcp6) are handed over", network, address)
	}
	// Refuse before binding whatever can be refused: a socket that has
	// listened takes connections until it is closed, and closing it resets
	// those it has not accepted. On an address more specific than the
	// listener already there (127.0.0.1:P beside 0.0.0.0:P) it is a group of
	// its own that the kernel prefers, so it would take that group's
	// connections however short its life: 226 of 3,456 were reset over 200
	// refused Listens (TestRefusedOverlappingListenLosesNothing).
	bindAddress := address
	if want, resolved, ok := intendedSocket(ctx, network, address); ok {
		bindAddress = resolved
		r.mu.Lock()
		r.forgetClosedLocked()
		err := r.alreadyListeningLocked(network, want)
		r.mu.Unlock()
		if err != nil {
			return nil, err
		}
		if !r.opts.AllowOverlappingListeners {
			socks, err := r.listSockets()
			if err != nil {
				socks, err = r.listSockets() // once more: a dump can fail for want of memory
			}
			if err != nil {
				return nil, diagFailed(network, address, err)
			}
			if err := r.overlapping(network, want, socks); err != nil {
				return nil, err
			}
		}
	}
	l, err := reuseport.Listen(ctx, network, bindAddress)
	if err != nil {
		return nil, err
	}
	tl, ok := l.(*net.TCPListener)
	if !ok {
		l.Close()
		return nil, fmt.Errorf("runner: listen %s %s: got a %T, want a TCP listener", network, address, l)
	}
	// Steering first: from listen(2) until "return 0" is attached, a group
	// whose program still says "return 1" (left by an old instance that the
	// survivor has not replaced yet), or that has no program, can give this
	// listener connections. Only then read the group (sock_diag dumps take
	// long on a busy host). Attaching earlier is no option: a program
	// attached before listen stays with the socket's own group, and a
	// socket that has one cannot join an existing group (listen fails
	// with EADDRINUSE; see reuseport's doc).
	steer := true
	if r.supervised {
		// The supervisor owns the group's program: attaching ours would
		// replace its (and steer the group to member 0, whoever that is).
		steer = false
	} else if err := reuseport.Dark(tl); err != nil {
		// Not fatal: the handover falls back to what the kernel offers.
		steer = false
		r.log.Warn("cannot attach reuseport steering; handover relies on the kernel alone",
			"addr", address, "err", err)
	}
	self, err := reuseport.Describe(tl)
	if err != nil { // not Linux: no group to read either
		r.log.Warn("cannot describe the listening socket", "addr", address, "err", err)
		ap := tl.Addr().(*net.TCPAddr).AddrPort()
		self = reuseport.Socket{Addr: netip.AddrPortFrom(ap.Addr().WithZone(""), ap.Port())}
	}
	ln := &listener{TCPListener: tl, self: self, addr: self.Addr, steer: steer,
		listSockets: r.listSockets, halfOpen: r.halfOpen}
	socks, err := ln.findOlder()
	if err != nil {
		socks, err = ln.findOlder()
	}
	if err != nil {
		if !r.opts.AllowOverlappingListeners {
			l.Close()
			return nil, diagFailed(network, address, err)
		}
		r.log.Warn("cannot see the reuseport group", "addr", address, "err", err)
	}
	// Checked again now that we listen, for what the checks before binding
	// cannot see: a neighbour that bound meanwhile, another Listen of this
	// Runner running at the same time, or an address that Go bound
	// otherwise than intendedSocket expected. The refused socket joined its
	// group last, so closing it moves no other member to another index.
	if err := r.overlapping(network, self, socks); err != nil {
		l.Close()
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.forgetClosedLocked()
	if err := r.alreadyListeningLocked(network, self); err != nil {
		l.Close()
		return nil, err
	}
	r.listeners[tl] = ln
	return tl, nil
}

// diagFailed is Listen's error when it could not read the port's listeners
// (two sock_diag dumps failed), so could not check for an overlapping one.
func diagFailed(network, address string, err error) error {
	return fmt.Errorf("runner: listen %s %s: cannot read the port's listening sockets (sock_diag, tried twice) to check for "+
		"a listener on an overlapping address; set Options.AllowOverlappingListeners to listen without the check: %w",
		network, address, err)
}

// forgetClosedLocked drops the listeners that the caller has closed: they
// are no longer in any group, so they neither stand in the way of a new
// Listen on their address nor take part in a handover (logPath, watchOlder
// and handOffUnowned see only open ones). Listen returns the
// *net.TCPListener itself, not a wrapper whose Close could tell us, so this
// asks each listener.
func (r *Runner) forgetClosedLocked() {
	for key, l := range r.listeners {
		if l.closed() {
			delete(r.listeners, key)
		}
	}
}

// closed reports whether l has been closed (net.TCPListener.Close: its
// descriptor is released). A copy the caller kept with File keeps the
// socket in its group, but it is no longer one we serve or hand over.
func (l *listener) closed() bool {
	rc, err := l.TCPListener.SyscallConn()
	if err != nil {
		return true
	}
	return rc.Control(func(uintptr) {}) != nil // "use of closed network connection"
}

// alreadyListeningLocked returns ErrAlreadyListening if one of r's
// listeners is in the group that s is or would be in.
func (r *Runner) alreadyListeningLocked(network string, s reuseport.Socket) error {
	for _, other := range r.listeners {
		if other.self.SameGroup(s) && other.self.Inode != s.Inode {
			return fmt.Errorf("%w: %s %s: two listeners of one process on one address are two members of its reuseport group, "+
				"and the handover steers by join order (old instance member 0, new one member 1), so the old instance would "+
				"steer new connections to its own second listener, then close it and reset them; listen once per address",
				ErrAlreadyListening, network, s.Addr)
		}
	}
	return nil
}

// overlapping returns ErrOverlappingListener, naming both addresses, if one
// of socks holds the port of s on an overlapping address in another group
// (and Options.AllowOverlappingListeners is not set).
func (r *Runner) overlapping(network string, s reuseport.Socket, socks []reuseport.Socket) error {
	if r.opts.AllowOverlappingListeners {
		return nil
	}
	for _, o := range socks {
		if o.Inode != s.Inode && !o.SameGroup(s) && o.Overlaps(s) {
			return fmt.Errorf("%w: %s %s overlaps %s (uid %d, socket inode %d), which is another reuseport group: "+
				"the kernel picks among groups before any steering program runs (a specific address before a wildcard, "+
				"an AF_INET listener before a dual-stack [::] one for IPv4 clients), so a new instance there would not be "+
				"dark, and an old one there would believe it is alone and reset its queue at its drain; listen on the "+
				"address the other listener has, or set Options.AllowOverlappingListeners",
				ErrOverlappingListener, network, s.Addr, o.Addr, o.UID, o.Inode)
		}
	}
	return nil
}

// ServeHTTP registers srv to serve ln (from Listen) when Run runs. The same
// server may be registered with several listeners. Run wraps srv.Handler
// (to close connections while draining), srv.ConnState (to count them) and
// the HTTP/2 entries of srv.TLSNextProto (to know which connections are
// HTTP/2; the map is replaced by a copy); each calls what was there before.
func (r *Runner) ServeHTTP(srv *http.Server, ln net.Listener) {
	r.mu.Lock()
	defer r.mu.Unlock()
	l := r.lookupLocked(ln)
	if l == nil {
		r.log.Warn("listener not from Runner.Listen: it gets no handover", "addr", ln.Addr().String())
	} else {
		l.owned = true
	}
	for _, s := range r.servers {
		if s.srv == srv {
			s.addListener(l, ln)
			return
		}
	}
	s := &httpServer{srv: srv, log: r.log, conns: map[net.Conn]connState{}}
	s.addListener(l, ln)
	r.servers = append(r.servers, s)
}

// lookupLocked finds the listener that ln is or wraps (tls.NewListener and
// the like keep the address).
func (r *Runner) lookupLocked(ln net.Listener) *listener {
	r.forgetClosedLocked()
	if l, ok := r.listeners[ln]; ok {
		return l
	}
	for _, l := range r.listeners {
		if l.Addr().String() == ln.Addr().String() {
			return l
		}
	}
	return nil
}

// Add registers another server as an actor, as in github.com/oklog/run:
// execute runs until interrupt is called (for gRPC: Serve and
// GracefulStop). When the drain starts, every listener from Listen that no
// ServeHTTP serves is handed over first (steered to the new instance, its
// queue and half-open connections left to the actor to accept), then
// interrupt is called; the actor closes its listener and drains itself. Run
// waits for execute to return, without a deadline of its own.
func (r *Runner) Add(execute func() error, interrupt func(error)) {
	r.mu.Lock()
	r.actors = append(r.actors, actor{execute, interrupt})
	r.mu.Unlock()
}

// Run serves until ctx is done, then drains (see the package doc) and
// returns nil, or the first error of a server, or ErrDrainTimeout (wrapped)
// if connections had to be cut. Call it once.
func (r *Runner) Run(ctx context.Context) error {
	drainTimeout, err := r.drainTimeout()
	if err != nil {
		return err
	}
	window := r.opts.KeepAliveWindow
	if window <= 0 {
		window = DefaultKeepAliveWindow
	}
	window = min(window, drainTimeout/2)
	h2IdleGrace := r.opts.HTTP2IdleGrace
	if h2IdleGrace <= 0 {
		h2IdleGrace = window / 2
	}
	h2IdleGrace = min(h2IdleGrace, window)

	r.logPath()

	var g run.Group
	stop := make(chan struct{})
	g.Add(func() error {
		select {
		case <-ctx.Done():
		case <-stop:
		}
		return nil
	}, func(error) { close(stop) })

	var health *http.Server
	if r.opts.HealthAddr != "" {
		hl, err := net.Listen("tcp", r.opts.HealthAddr)
		if err != nil {
			return fmt.Errorf("runner: listen on health address %s: %w", r.opts.HealthAddr, err)
		}
		r.healthAddr = hl.Addr().String() // with the port, if it was :0
		health = &http.Server{Handler: r.opts.Health, ReadHeaderTimeout: 5 * time.Second}
		g.Add(func() error {
			if err := health.Serve(hl); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("runner: serve health on %s: %w", r.opts.HealthAddr, err)
			}
			return nil
		}, func(error) {})
	}

	var drainOnce sync.Once
	var drainErr error
	drainDone := make(chan struct{})
	drain := func() {
		drainOnce.Do(func() {
			go func() {
				defer close(drainDone)
				drainErr = r.drain(drainTimeout, window, h2IdleGrace)
				if health != nil {
					health.Close()
				}
			}()
		})
	}

	r.mu.Lock()
	servers, actors := r.servers, r.actors
	r.mu.Unlock()
	for _, s := range servers {
		s.prepare()
		g.Add(func() error {
			if err := s.serve(); err != nil {
				return err // the group interrupts everyone, and so drains
			}
			<-drainDone
			return nil
		}, func(error) { drain() })
	}
	var handOnce sync.Once
	handActors := func() {
		handOnce.Do(func() { r.handOffUnowned(drainTimeout) })
	}
	for _, a := range actors {
		g.Add(a.execute, func(err error) {
			handActors()
			a.interrupt(err)
		})
	}
	if len(servers) == 0 {
		// Nothing of ours to drain; still close health when stopping.
		g.Add(func() error { <-drainDone; return nil }, func(error) { drain() })
	}

	readyCtx, cancelReady := context.WithCancel(ctx)
	defer cancelReady()
	go r.announce(readyCtx)
	r.mu.Lock()
	r.forgetClosedLocked()
	for _, l := range r.listeners {
		if l.steer && len(l.older) > 0 {
			go l.watchOlder(readyCtx, r.draining, r.log)
		}
	}
	r.mu.Unlock()

	err = g.Run()
	cancelReady()
	<-drainDone
	return errors.Join(err, drainErr)
}

// drainTimeout returns the drain budget from Options and the environment.
func (r *Runner) drainTimeout() (time.Duration, error) {
	d := r.opts.DrainTimeout
	if v := os.Getenv(EnvDrainTimeout); v != "" {
		env, err := time.ParseDuration(v)
		if err != nil || env <= 0 {
			return 0, fmt.Errorf("%w: %s=%q is not a positive duration", ErrBadEnv, EnvDrainTimeout, v)
		}
		if d <= 0 || env < d {
			d = env
		}
	}
	if d <= 0 {
		d = DefaultDrainTimeout
	}
	return d, nil
}

// announce sends READY=1 once the health handler passes.
func (r *Runner) announce(ctx context.Context) {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		err := r.checkHealth(ctx)
		if err == nil {
			break
		}
		r.log.Debug("not ready yet", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
	notify(daemon.SdNotifyReady)
	close(r.ready)
	r.log.Info("ready", "pid", os.Getpid(), "health_addr", r.healthAddr)
}

// checkHealth asks the health handler once: over HealthAddr if there is
// one (which proves it is served), else in-process.
func (r *Runner) checkHealth(ctx context.Context) error {
	if r.healthAddr == "" {
		rec := &statusRecorder{header: http.Header{}}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "/", nil)
		r.opts.Health.ServeHTTP(rec, req)
		if rec.status != 0 && (rec.status < 200 || rec.status > 299) {
			return fmt.Errorf("health handler answered %d", rec.status)
		}
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+r.healthAddr+"/", nil)
	if err != nil {
		return err
	}
	// No keep-alive: nothing of ours stays open on the health address.
	resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("health handler at %s answered %s", r.healthAddr, resp.Status)
	}
	return nil
}

// drainBudget is the part of the drain timeout the instance uses: it
// finishes a little before the timeout (a tenth of it, at most 500 ms),
// because the supervisor kills the process group just after it.
func drainBudget(timeout time.Duration) time.Duration {
	return timeout - min(timeout/10, 500*time.Millisecond)
}

// handOffUnowned steers the listeners that actors serve (those not given to
// ServeHTTP) to the new instance and waits until their queues are quiet;
// the actors accept meanwhile and close the listeners themselves.
func (r *Runner) handOffUnowned(timeout time.Duration) {
	deadline := time.Now().Add(drainBudget(timeout))
	r.mu.Lock()
	r.forgetClosedLocked()
	var lns []*listener
	for _, l := range r.listeners {
		if !l.owned {
			lns = append(lns, l)
		}
	}
	r.mu.Unlock()
	var wg sync.WaitGroup
	for _, l := range lns {
		wg.Go(func() { l.steerAway(deadline, r.log) })
	}
	wg.Wait()
}

// drain hands over every server's listeners and shuts the servers down.
func (r *Runner) drain(timeout, window, h2IdleGrace time.Duration) error {
	r.mu.Lock()
	servers := r.servers
	r.mu.Unlock()
	for _, s := range servers {
		s.h2IdleGrace = h2IdleGrace
		s.draining.Store(true) // before Draining() tells anyone
	}
	close(r.draining)
	notify(daemon.SdNotifyStopping)
	budget := drainBudget(timeout)
	deadline := time.Now().Add(budget)
	r.log.Info("draining", "pid", os.Getpid(), "deadline", budget)

	errs := make([]error, len(servers))
	var wg sync.WaitGroup
	for i, s := range servers {
		wg.Go(func() { errs[i] = s.drain(deadline, window) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (r *Runner) logPath() {
	migrate, err := reuseport.MigrateReq()
	steer := false
	r.mu.Lock()
	r.forgetClosedLocked()
	for _, l := range r.listeners {
		steer = steer || l.steer
	}
	r.mu.Unlock()
	switch {
	case r.supervised && err == nil:
		r.log.Info("handover path", "steering", "supervisor", "tcp_migrate_req", migrate)
	case err != nil:
		r.log.Info("handover path", "steering", steer, "tcp_migrate_req", "unknown", "err", err)
	case !steer && !migrate:
		r.log.Warn("handover path: neither reuseport steering nor tcp_migrate_req=1; connections queued on a closing listener may be reset",
			"steering", steer, "tcp_migrate_req", migrate)
	default:
		r.log.Info("handover path", "steering", steer, "tcp_migrate_req", migrate)
	}
}

// notify sends one sd_notify state, if NOTIFY_SOCKET is set. A failure is
// not the server's problem: the supervisor will see no READY and act.
func notify(state string) { daemon.SdNotify(false, state) }

// statusRecorder is the least ResponseWriter that remembers the status.
type statusRecorder struct {
	header http.Header
	status int
}

func (s *statusRecorder) Header() http.Header { return s.header }
func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return len(b), nil
}
func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
}
