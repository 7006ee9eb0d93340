//go:build linux

package runner_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/changeover-dev/changeover/runner"
)

// TestSilentConnectionsDoNotHoldDrain: a connection that has sent nothing
// (a browser's preconnect, a TCP health check, a TLS client that negotiated
// "h2" and has not sent its preface) is left the keep-alive window to send
// its request; then it is closed, counted in the log, and Run returns nil
// instead of holding the drain to its deadline and returning ErrDrainTimeout.
func TestSilentConnectionsDoNotHoldDrain(t *testing.T) {
	const (
		window = time.Second
		budget = 6 * time.Second
	)
	for _, mode := range []string{"tcp", "tls-h2-no-preface"} {
		t.Run(mode, func(t *testing.T) {
			var cfg *tls.Config
			if mode != "tcp" {
				ts := httptest.NewUnstartedServer(nil) // for its certificate
				ts.StartTLS()
				cfg = &tls.Config{Certificates: ts.TLS.Certificates, NextProtos: []string{"h2", "http/1.1"}}
				ts.Close()
			}
			var logs lockedBuffer
			r := runner.New(runner.Options{Logger: slog.New(slog.NewTextHandler(&logs, nil)),
				KeepAliveWindow: window, DrainTimeout: budget})
			ctx, stop := context.WithCancel(context.Background())
			defer stop()
			ln, err := r.Listen(ctx, "tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			served := net.Listener(ln)
			if cfg != nil {
				served = tls.NewListener(ln, cfg)
			}
			r.ServeHTTP(&http.Server{Handler: text("old")}, served)
			done := make(chan error, 1)
			go func() { done <- r.Run(ctx) }()
			<-r.Ready()
			startOn(t, ln.Addr().String(), text("new"))

			var c net.Conn
			if cfg == nil {
				c, err = net.Dial("tcp", ln.Addr().String())
			} else {
				var tc *tls.Conn
				tc, err = tls.Dial("tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
				if err == nil && tc.ConnectionState().NegotiatedProtocol != "h2" {
					t.Fatalf("negotiated %q, want h2", tc.ConnectionState().NegotiatedProtocol)
				}
				c = tc
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			time.Sleep(100 * time.Millisecond) // accepted by the old instance

			begin := time.Now()
			stop()
			var runErr error
			select {
			case runErr = <-done:
			case <-time.After(2 * budget):
				t.Fatal("Run did not return")
			}
			took := time.Since(begin)
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, readErr := io.ReadAll(c)
			var ne net.Error
			closed := !errors.As(readErr, &ne) || !ne.Timeout()
			t.Logf("%s: Run returned %v after %v (window %v, budget %v); the silent connection closed: %v (%v)",
				mode, runErr, took.Round(time.Millisecond), window, budget, closed, readErr)
			if runErr != nil {
				t.Errorf("Run: %v, want nil (a connection that sent nothing has lost nothing)", runErr)
			}
			if took > budget/2 {
				t.Errorf("Run took %v of a %v budget: the silent connection held the drain", took, budget)
			}
			if !closed {
				t.Errorf("the silent connection is still open after Run")
			}
			if !strings.Contains(logs.String(), "closed_before_request=1") {
				t.Errorf("the log does not count the connection closed before its request:\n%s", logs.String())
			}
		})
	}
}
