package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Failure kinds. kindOK is a 2xx-4xx answer.
const (
	kindOK uint8 = iota
	kindReset
	kindEOF
	kindRefused
	kindTimeout
	kind5xx
	kindOther
	numKinds
)

var kindNames = [numKinds]string{"ok", "reset", "EOF", "refused", "timeout", "5xx", "other"}

// classify maps a client error to a failure kind.
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
	// for this request (not counted yet).
	retries uint8
}

type loadConfig struct {
	addr     string // 127.0.0.1:PORT
	mode     string
	path     string // "/" or "/sleep?duration=..."
	clients  int
	timeout  time.Duration // per request
	maxReqs  int           // per client
	t0       time.Time     // the run's time origin
	deadline time.Time
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

// parsePID reads "version=V pid=N" from a response body.
func parsePID(b []byte) int32 {
	i := bytes.Index(b, []byte("pid="))
	if i < 0 {
		return 0
	}
	s := strings.TrimSpace(string(b[i+4:]))
	n, _ := strconv.Atoi(s)
	return int32(n)
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
			buf := make([]byte, 256)
			ss := make([]sample, 0, 4096)
			for i := 0; i < cfg.maxReqs && time.Now().Before(cfg.deadline) && ctx.Err() == nil; i++ {
				var req *http.Request
				if cfg.mode == modePost {
					req, _ = http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
					req.Header.Set("Content-Type", "application/octet-stream")
				} else {
					req, _ = http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
				}
				st := time.Now()
				resp, err := cl.Do(req)
				var s sample
				if err == nil {
					n, rerr := io.ReadFull(resp.Body, buf)
					if rerr == io.ErrUnexpectedEOF || rerr == io.EOF {
						rerr = nil
					}
					if rerr == nil {
						_, rerr = io.Copy(io.Discard, resp.Body)
					}
					resp.Body.Close()
					switch {
					case rerr != nil:
						s.kind = classify(rerr)
					case resp.StatusCode >= 500:
						s.kind = kind5xx
					default:
						s.pid = parsePID(buf[:n])
					}
				} else {
					if ctx.Err() != nil {
						break // stopped by the bench (interrupted), not a failure
					}
					s.kind = classify(err)
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

// prober asks the server which PID answers, on a new connection each time.
type prober struct {
	addr string
	cl   *http.Client
}

func newProber(addr string) *prober {
	checkLoopback(addr)
	return &prober{addr: addr, cl: &http.Client{Transport: newTransport(false), Timeout: time.Second}}
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
