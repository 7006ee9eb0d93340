//go:build linux

package runner_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/changeover-dev/changeover/runner"
)

// h2Client is an HTTP/2 client with one connection that counts the
// connections it gets: more than one for a request is a silent retry.
type h2Client struct {
	c    *http.Client
	url  string
	gets atomic.Int64
}

func (h *h2Client) get(ctx context.Context, path string) (*http.Response, string, error) {
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(httptrace.GotConnInfo) { h.gets.Add(1) }})
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, h.url+path, nil)
	resp, err := h.c.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, string(b), err
}

// TestHTTP2DrainsPromptly: idle HTTP/2 connections, over TLS (ALPN "h2")
// and h2c, do not hold the drain: once idle for HTTP2IdleGrace they get
// GOAWAY and close. With a 500 ms grace the old instance's Run returns nil
// within the keep-alive window (a drain that waited for them like HTTP/1
// keep-alive connections would take the window plus the second the server
// waits after its GOAWAY); with the default (half the window), within the
// window plus 1 s. A request sent on an HTTP/2 connection just before the
// drain is answered on it.
func TestHTTP2DrainsPromptly(t *testing.T) {
	const window = 3 * time.Second
	for _, tc := range []struct {
		mode  string
		grace time.Duration // 0: the default
		bound time.Duration // for Run
	}{
		{"tls-h2", 500 * time.Millisecond, window},
		{"h2c", 500 * time.Millisecond, window},
		{"tls-h2", 0, window + time.Second},
		{"h2c", 0, window + time.Second},
	} {
		mode, grace := tc.mode, tc.grace
		t.Run(fmt.Sprintf("%s/grace=%v", mode, grace), func(t *testing.T) {
			started := make(chan struct{}, 1)
			mux := http.NewServeMux()
			mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "old") })
			mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
				started <- struct{}{}
				time.Sleep(300 * time.Millisecond)
				io.WriteString(w, "old")
			})
			var protos http.Protocols
			protos.SetHTTP1(true)
			protos.SetHTTP2(true)
			protos.SetUnencryptedHTTP2(true)
			var mu sync.Mutex
			open := map[net.Conn]bool{}
			srv := &http.Server{Handler: mux, Protocols: &protos, ConnState: func(c net.Conn, st http.ConnState) {
				mu.Lock()
				defer mu.Unlock()
				switch st {
				case http.StateNew:
					open[c] = true
				case http.StateClosed, http.StateHijacked:
					delete(open, c)
				}
			}}
			openConns := func() int { mu.Lock(); defer mu.Unlock(); return len(open) }

			r := runner.New(runner.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
				KeepAliveWindow: window, HTTP2IdleGrace: grace, DrainTimeout: 10 * time.Second})
			ctx, stop := context.WithCancel(context.Background())
			defer stop()
			ln, err := r.Listen(ctx, "tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			newClient := func() *h2Client {
				tr := &http.Transport{}
				var p http.Protocols
				if mode == "h2c" {
					p.SetUnencryptedHTTP2(true)
				} else {
					p.SetHTTP2(true)
				}
				tr.Protocols = &p
				scheme := "http://"
				if mode == "tls-h2" {
					tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true}
					scheme = "https://"
				}
				return &h2Client{c: &http.Client{Transport: tr, Timeout: 10 * time.Second}, url: scheme + ln.Addr().String()}
			}
			served := net.Listener(ln)
			if mode == "tls-h2" {
				ts := httptest.NewUnstartedServer(nil) // for its certificate
				ts.StartTLS()
				cfg := &tls.Config{Certificates: ts.TLS.Certificates, NextProtos: []string{"h2", "http/1.1"}}
				ts.Close()
				served = tls.NewListener(ln, cfg)
			}
			r.ServeHTTP(srv, served)
			done := make(chan error, 1)
			go func() { done <- r.Run(ctx) }()
			<-r.Ready()

			idle, busy := newClient(), newClient()
			for name, c := range map[string]*h2Client{"idle": idle, "busy": busy} {
				resp, body, err := c.get(context.Background(), "/")
				if err != nil {
					t.Fatalf("%s client: %v", name, err)
				}
				if resp.ProtoMajor != 2 || body != "old" {
					t.Fatalf("%s client: %s %q, want HTTP/2 from the server", name, resp.Proto, body)
				}
			}
			type answer struct {
				resp *http.Response
				body string
				err  error
			}
			slow := make(chan answer, 1)
			go func() {
				resp, body, err := busy.get(context.Background(), "/slow")
				slow <- answer{resp, body, err}
			}()
			<-started // the request is in the handler: sent just before the drain
			if n := openConns(); n != 2 {
				t.Fatalf("%d connections open when the drain starts, want 2 (idle and busy)", n)
			}

			begin := time.Now()
			stop()
			var runErr error
			select {
			case runErr = <-done:
			case <-time.After(15 * time.Second):
				t.Fatal("Run did not return in 15s")
			}
			took := time.Since(begin)
			a := <-slow
			if a.err != nil {
				t.Fatalf("the request sent just before the drain: %v", a.err)
			}
			t.Logf("%s: Run returned %v after %v (keep-alive window %v, idle grace %v); the request sent just before the drain: %s %q; connections got: idle %d, busy %d",
				mode, runErr, took.Round(time.Millisecond), window, grace, a.resp.Proto, a.body, idle.gets.Load(), busy.gets.Load())
			if a.body != "old" || a.resp.ProtoMajor != 2 {
				t.Errorf("the request sent just before the drain: %s %q, want %q over HTTP/2", a.resp.Proto, a.body, "old")
			}
			if busy.gets.Load() != 2 {
				t.Errorf("busy client got %d connections for 2 requests: a silent retry", busy.gets.Load())
			}
			if runErr != nil {
				t.Errorf("Run: %v", runErr)
			}
			if took > tc.bound {
				t.Errorf("Run took %v with idle HTTP/2 connections (idle grace %v, 0: default), want at most %v (keep-alive window %v)", took, grace, tc.bound, window)
			}
			if n := openConns(); n != 0 {
				t.Errorf("%d connections still open after Run", n)
			}
		})
	}
}
