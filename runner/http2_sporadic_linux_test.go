//go:build linux

package runner_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/changeover-dev/changeover/runner"
)

// TestHTTP2SporadicClientsAreNotRefused: HTTP/2 clients that send a
// request every 450 to 750 ms (a browser tab, a gRPC channel), over a link
// with a 50 ms round trip, half of them POSTs with a streamed body (no
// GetBody: the client cannot send it again). With the default idle grace,
// the drain leaves each of them the time to send its next request, whose
// response carries GOAWAY, so no stream crosses Shutdown's GOAWAY: none
// failed and none was retried silently. Run still returns nil within the
// keep-alive window plus 1 s.
func TestHTTP2SporadicClientsAreNotRefused(t *testing.T) {
	const (
		rounds  = 3
		clients = 40
		window  = 3 * time.Second
	)
	var total, failed, retried atomic.Int64
	var mu sync.Mutex
	var examples []string
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	startH2C := func(addr, body string) (*runner.Runner, string, context.CancelFunc, chan error) {
		r := runner.New(runner.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
			KeepAliveWindow: window, DrainTimeout: 8 * time.Second})
		ctx, stop := context.WithCancel(context.Background())
		ln, err := r.Listen(ctx, "tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		r.ServeHTTP(&http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			io.Copy(io.Discard, req.Body)
			io.WriteString(w, body)
		})}, ln)
		done := make(chan error, 1)
		go func() { done <- r.Run(ctx) }()
		<-r.Ready()
		return r, ln.Addr().String(), stop, done
	}
	for round := range rounds {
		_, addr, stopOld, oldDone := startH2C("127.0.0.1:0", "old")
		_, _, stopNew, newDone := startH2C(addr, "new")
		ctx, stopClients := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		for i := range clients {
			wg.Go(func() {
				var p http.Protocols
				p.SetUnencryptedHTTP2(true)
				tr := &http.Transport{Protocols: &p, DialContext: latencyDial}
				defer tr.CloseIdleConnections()
				c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
				post := i%2 == 0
				for ctx.Err() == nil {
					time.Sleep(450*time.Millisecond + rand.N(300*time.Millisecond))
					var conns int
					rctx := httptrace.WithClientTrace(context.Background(),
						&httptrace.ClientTrace{GotConn: func(httptrace.GotConnInfo) { conns++ }})
					var req *http.Request
					if post { // a streamed body: no GetBody, so no retry
						req, _ = http.NewRequestWithContext(rctx, http.MethodPost, "http://"+addr+"/", io.NopCloser(io.LimitReader(zeroReader{}, 512)))
						req.ContentLength = 512
					} else {
						req, _ = http.NewRequestWithContext(rctx, http.MethodGet, "http://"+addr+"/", nil)
					}
					resp, err := c.Do(req)
					total.Add(1)
					if err != nil {
						failed.Add(1)
						mu.Lock()
						examples = append(examples, fmt.Sprintf("post=%v: %v", post, err))
						mu.Unlock()
						continue
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if conns > 1 {
						retried.Add(1)
					}
				}
			})
		}
		time.Sleep(2 * time.Second)
		begin := time.Now()
		stopOld()
		var runErr error
		select {
		case runErr = <-oldDone:
		case <-time.After(20 * time.Second):
			t.Fatal("the old Run did not return in 20s")
		}
		took := time.Since(begin)
		time.Sleep(time.Second) // the clients go on with the new instance
		stopClients()
		wg.Wait()
		stopNew()
		<-newDone
		t.Logf("round %d: the old Run returned %v after %v (keep-alive window %v)", round, runErr, took.Round(time.Millisecond), window)
		if runErr != nil {
			t.Errorf("round %d: old Run: %v", round, runErr)
		}
		if took > window+time.Second {
			t.Errorf("round %d: the old Run took %v, want at most the keep-alive window (%v) plus 1s", round, took, window)
		}
	}
	t.Logf("%d handovers, %d h2c clients each (half POST with a streamed body), a request every 450-750 ms, RTT 50 ms: %d requests, %d failed, %d silently retried; %v",
		rounds, clients, total.Load(), failed.Load(), retried.Load(), examples)
	if failed.Load()+retried.Load() > 0 {
		t.Errorf("%d failed and %d silently retried: streams crossed the drain's GOAWAY", failed.Load(), retried.Load())
	}
}

type zeroReader struct{}

func (zeroReader) Read(b []byte) (int, error) { clear(b); return len(b), nil }

// oneWayDelay is the latency latencyDial adds each way: a 50 ms round trip,
// so that a GOAWAY is in flight long enough for a request to cross it.
const oneWayDelay = 25 * time.Millisecond

// latencyDial dials a TCP connection whose reads and writes each arrive
// oneWayDelay late, in order.
func latencyDial(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	lc := &latencyConn{Conn: c, out: make(chan delayed, 1024), in: make(chan delayed, 1024)}
	go func() {
		for d := range lc.out {
			time.Sleep(time.Until(d.at))
			c.Write(d.b)
		}
	}()
	go func() {
		defer close(lc.in)
		for {
			b := make([]byte, 32<<10)
			n, err := c.Read(b)
			if n > 0 {
				lc.in <- delayed{b[:n], time.Now().Add(oneWayDelay)}
			}
			if err != nil {
				return
			}
		}
	}()
	return lc, nil
}

type delayed struct {
	b  []byte
	at time.Time
}

type latencyConn struct {
	net.Conn
	out, in chan delayed
	pending []byte
	once    sync.Once
}

func (lc *latencyConn) Write(b []byte) (int, error) {
	lc.out <- delayed{append([]byte(nil), b...), time.Now().Add(oneWayDelay)}
	return len(b), nil
}

func (lc *latencyConn) Read(b []byte) (int, error) {
	if len(lc.pending) == 0 {
		d, ok := <-lc.in
		if !ok {
			return 0, io.EOF
		}
		time.Sleep(time.Until(d.at))
		lc.pending = d.b
	}
	n := copy(b, lc.pending)
	lc.pending = lc.pending[n:]
	return n, nil
}

func (lc *latencyConn) Close() error {
	lc.once.Do(func() { close(lc.out) })
	return lc.Conn.Close()
}
