package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Outcome kinds of one request. Only kindOK is a success: a complete 2xx
// answer whose body names the version and PID that served it.
const (
	kindOK       uint8 = iota
	kindCutShort       // headers arrived, the body did not (io.ErrUnexpectedEOF, or reset, while reading it)
	kind4xx
	kind5xx
	kindBadBody // a 2xx whose body lacks "version=… pid=…"
	kindRefused // ECONNREFUSED: nothing listened
	kindReset   // ECONNRESET/EPIPE before the answer's headers
	kindEOF     // the connection closed (FIN) before the answer's headers
	kindTimeout // no complete answer within the per-request timeout
	kindOther
	kindStranger // a 2xx naming a PID that is not one of the bench's server instances
	numKinds
)

var kindNames = [numKinds]string{"ok", "cut short", "4xx", "5xx", "no version/pid", "refused", "reset", "EOF", "timeout", "other", "not the bench's server"}

// classify maps the error of a request that got no answer (client.Do
// failed) to a failure kind.
func classify(err error) uint8 {
	var ne net.Error
	switch {
	case err == nil:
		return kindOK
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return kindReset
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return kindEOF
	case errors.Is(err, syscall.ECONNREFUSED):
		return kindRefused
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout():
		return kindTimeout
	}
	return kindOther
}

// classifyAnswer maps an answer (its headers arrived) to an outcome kind:
// bodyErr is the error reading its body, nil when the body was complete;
// isServer (nil: any) says whether the PID the body names is one of the
// bench's server instances.
func classifyAnswer(status int, body []byte, bodyErr error, isServer func(pid int32) bool) uint8 {
	var ne net.Error
	switch {
	case bodyErr != nil && (errors.Is(bodyErr, context.DeadlineExceeded) || errors.Is(bodyErr, os.ErrDeadlineExceeded) ||
		errors.As(bodyErr, &ne) && ne.Timeout()):
		return kindTimeout
	case bodyErr != nil:
		return kindCutShort
	case status >= 500:
		return kind5xx
	case status >= 400:
		return kind4xx
	case status < 200 || status >= 300:
		return kindOther
	case parsePID(body) == 0 || !bytes.Contains(body, []byte("version=")):
		return kindBadBody
	case isServer != nil && !isServer(parsePID(body)):
		return kindStranger
	}
	return kindOK
}

// Load modes.
const (
	modeNewConn   = "newconn"
	modeKeepAlive = "keepalive"
	modePost      = "post"
)

var allModes = []string{modeNewConn, modeKeepAlive, modePost}

var modeTitles = map[string]string{
	modeNewConn:   "new connection per request (GET)",
	modeKeepAlive: "keep-alive GET",
	modePost:      "keep-alive POST, 64-byte body",
}

// sample is one request as a client saw it.
type sample struct {
	start int64 // ns since the run's start
	lat   int64 // ns
	pid   int32 // server PID that answered, 0 on failure
	kind  uint8
	// retries: connections the client's transport used beyond the first
	// for this request (net/http's silent retry on a new connection).
	retries uint8
	// fresh: the request's last connection was a new one (not reused), or
	// dialing one failed.
	fresh bool
}

type loadConfig struct {
	addr     string // 127.0.0.1:PORT
	mode     string
	path     string // "/" or "/sleep?duration=..."
	clients  int
	timeout  time.Duration // per request
	maxReqs  int           // per client
	t0       time.Time     // the run's time origin
	deadline time.Time     // hard bound; the load normally ends earlier, at stop
	stop     <-chan struct{}
	// isServer says whether a PID is one of the bench's server instances
	// (nil: any PID in the body will do).
	isServer func(pid int32) bool
}

func checkLoopback(addr string) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil || host != "127.0.0.1" {
		panic("bench only talks to 127.0.0.1, got " + addr)
	}
}

func newTransport(keepAlive bool) *http.Transport {
	return &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
		DisableKeepAlives:   !keepAlive,
		MaxIdleConnsPerHost: 1,
		MaxConnsPerHost:     1,
		IdleConnTimeout:     time.Minute,
		DisableCompression:  true,
	}
}

// parsePID reads N from "version=V pid=N" in a response body; 0 if there is none.
func parsePID(b []byte) int32 {
	i := bytes.Index(b, []byte("pid="))
	if i < 0 {
		return 0
	}
	s := strings.TrimSpace(string(b[i+4:]))
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 || n > 1<<22 {
		return 0
	}
	return int32(n)
}

// doRequest sends req and reads the whole answer. It fills kind, pid,
// retries and fresh of a sample.
//
// net/http's Transport retries a request on a new connection, without
// telling the caller, when a reused keep-alive connection turns out to be
// closed: always when nothing was written yet, and for idempotent requests
// (GET, or a body it can rewind with GetBody) also when the server closed
// the connection after reading the request but before any byte of the
// answer (shouldRetryRequest in transport.go). Each connection the request
// gets shows as a GotConn in its trace, so GotConn count - 1 is the number
// of silent retries.
func doRequest(cl *http.Client, req *http.Request, isServer func(int32) bool) sample {
	var s sample
	var conns int
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		conns++ // the trace's callbacks for one request run one at a time
		s.fresh = !info.Reused
	}}
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
	resp, err := cl.Do(req)
	// No GotConn at all: the dial failed, so this was an attempt at a new
	// connection too.
	s.fresh = s.fresh || conns == 0
	s.retries = uint8(min(max(conns-1, 0), 255))
	if err != nil {
		s.kind = classify(err)
		return s
	}
	// The body is a short line; a limit keeps a wrong server from making
	// the client read forever.
	body, rerr := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	s.kind = classifyAnswer(resp.StatusCode, body, rerr, isServer)
	if s.kind == kindOK {
		s.pid = parsePID(body)
	}
	return s
}

// runLoad runs cfg.clients client loops, each bounded by maxReqs and the
// deadline (and ctx), and returns every sample.
func runLoad(ctx context.Context, cfg loadConfig) []sample {
	checkLoopback(cfg.addr)
	ctx, cancel := context.WithDeadline(ctx, cfg.deadline.Add(cfg.timeout))
	defer cancel()
	url := "http://" + cfg.addr + cfg.path
	body := bytes.Repeat([]byte("x"), 64)
	out := make([][]sample, cfg.clients)
	var wg sync.WaitGroup
	for c := 0; c < cfg.clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			tr := newTransport(cfg.mode != modeNewConn)
			defer tr.CloseIdleConnections()
			cl := &http.Client{Transport: tr, Timeout: cfg.timeout}
			ss := make([]sample, 0, 4096)
			for i := 0; i < cfg.maxReqs && time.Now().Before(cfg.deadline) && ctx.Err() == nil && !stopped(cfg.stop); i++ {
				var req *http.Request
				if cfg.mode == modePost {
					req, _ = http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
					req.Header.Set("Content-Type", "application/octet-stream")
				} else {
					req, _ = http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
				}
				st := time.Now()
				s := doRequest(cl, req, cfg.isServer)
				if s.kind != kindOK && ctx.Err() != nil {
					break // stopped by the bench (interrupted), not a failure
				}
				s.start = int64(st.Sub(cfg.t0))
				s.lat = int64(time.Since(st))
				ss = append(ss, s)
				if s.kind == kindRefused || s.kind == kindOther {
					// Don't spin on a closed port.
					time.Sleep(5 * time.Millisecond)
				}
			}
			out[c] = ss
		}(c)
	}
	wg.Wait()
	var n int
	for _, ss := range out {
		n += len(ss)
	}
	all := make([]sample, 0, n)
	for _, ss := range out {
		all = append(all, ss...)
	}
	return all
}

func stopped(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// prober asks the server which PID answers, on a new connection each time.
type prober struct {
	addr     string
	cl       *http.Client
	isServer func(int32) bool // nil: any
}

func newProber(addr string, isServer func(int32) bool) *prober {
	checkLoopback(addr)
	return &prober{addr: addr, cl: &http.Client{Transport: newTransport(false), Timeout: time.Second}, isServer: isServer}
}

func (p *prober) pid() (int, error) {
	resp, err := p.cl.Get("http://" + p.addr + "/")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 256))
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != 200 {
		return 0, fmt.Errorf("status %d", resp.StatusCode)
	}
	pid := int(parsePID(b))
	if pid == 0 {
		return 0, fmt.Errorf("no pid in %q", b)
	}
	if p.isServer != nil && !p.isServer(int32(pid)) {
		return 0, fmt.Errorf("pid %d is not one of the bench's server instances (%q)", pid, b)
	}
	return pid, nil
}

// waitServing polls until some instance answers, bounded by d.
func (p *prober) waitServing(d time.Duration) (int, error) {
	end := time.Now().Add(d)
	var err error
	for time.Now().Before(end) {
		var pid int
		if pid, err = p.pid(); err == nil {
			return pid, nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return 0, fmt.Errorf("not serving on %s within %v: %v", p.addr, d, err)
}

// freePort returns a loopback address that was free a moment ago.
func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}
