package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"
)

// rawServer is a loopback listener whose every accepted connection is
// handed to serve (in its own goroutine); the test's cleanup closes the
// listener and waits for those goroutines.
func rawServer(t *testing.T, serve func(n int, c net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen on 127.0.0.1:0: %v", err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for n := 0; ; n++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				serve(n, c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

// readRequest reads one request (and its body) from br.
func readRequest(br *bufio.Reader) error {
	req, err := http.ReadRequest(br)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, req.Body)
	return req.Body.Close()
}

// answer reads one request and writes raw as the response.
func answer(raw string) func(int, net.Conn) {
	return func(_ int, c net.Conn) {
		if readRequest(bufio.NewReader(c)) == nil {
			_, _ = io.WriteString(c, raw)
		}
	}
}

const goodBody = "version=1 pid=4242\n"

func okResponse(extraHeader string) string {
	return fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s", len(goodBody), extraHeader, goodBody)
}

// loadOnce runs the bench's load against addr for at most reqs requests
// from one client, and returns the samples.
func loadOnce(t *testing.T, addr, mode string, reqs int, timeout time.Duration) []sample {
	t.Helper()
	t0 := time.Now()
	cfg := loadConfig{addr: addr, mode: mode, path: "/", clients: 1, timeout: timeout,
		maxReqs: reqs, t0: t0, deadline: t0.Add(20 * time.Second)}
	return runLoad(context.Background(), cfg)
}

// TestRequestOutcome checks how one request's outcome is counted: only a
// complete 2xx answer that names the version and PID is a success.
func TestRequestOutcome(t *testing.T) {
	closedPort := func(t *testing.T) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("listen: %v", err)
		}
		addr := ln.Addr().String()
		ln.Close()
		return addr
	}
	cases := []struct {
		name     string
		serve    func(int, net.Conn) // nil: nothing listens
		wantKind string
		wantPID  int32
	}{
		{"complete answer", answer(okResponse("")), "ok", 4242},
		{"body cut short (Content-Length 100, 19 bytes, then FIN)",
			answer("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + goodBody), "cut short", 0},
		{"404", answer("HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\n\r\nnot found\n"), "4xx", 0},
		{"503", answer("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5\r\n\r\nbusy\n"), "5xx", 0},
		{"200 without version and pid", answer("HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhello\n"), "no version/pid", 0},
		{"closed before any answer (FIN)", answer(""), "EOF", 0},
		{"reset after the request", func(_ int, c net.Conn) {
			if readRequest(bufio.NewReader(c)) == nil {
				_ = c.(*net.TCPConn).SetLinger(0) // close sends RST
			}
		}, "reset", 0},
		{"no answer within the timeout", func(_ int, c net.Conn) {
			_ = readRequest(bufio.NewReader(c))
			_, _ = io.Copy(io.Discard, c) // until the client gives up
		}, "timeout", 0},
		{"connection refused", nil, "refused", 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var addr string
			if c.serve == nil {
				addr = closedPort(t)
			} else {
				addr = rawServer(t, c.serve)
			}
			ss := loadOnce(t, addr, modeNewConn, 1, 500*time.Millisecond)
			if len(ss) != 1 {
				t.Fatalf("got %d samples, want 1", len(ss))
			}
			if got := kindNames[ss[0].kind]; got != c.wantKind {
				t.Errorf("kind = %q, want %q", got, c.wantKind)
			}
			if ss[0].pid != c.wantPID {
				t.Errorf("pid = %d, want %d", ss[0].pid, c.wantPID)
			}
		})
	}
}

// TestSilentRetryCounted: net/http retries a GET on a new connection when a
// reused keep-alive connection was closed by the server after it read the
// request but before it answered. The client sees a success; the bench must
// count the retry.
func TestSilentRetryCounted(t *testing.T) {
	addr := rawServer(t, func(n int, c net.Conn) {
		br := bufio.NewReader(c)
		if n == 0 {
			// First connection: answer one request, read the next, close
			// (FIN) without answering it.
			if readRequest(br) != nil {
				return
			}
			_, _ = io.WriteString(c, okResponse(""))
			_ = readRequest(br)
			return
		}
		for readRequest(br) == nil {
			if _, err := io.WriteString(c, okResponse("")); err != nil {
				return
			}
		}
	})
	ss := loadOnce(t, addr, modeKeepAlive, 2, 2*time.Second)
	if len(ss) != 2 {
		t.Fatalf("got %d samples, want 2", len(ss))
	}
	for i, s := range ss {
		if kindNames[s.kind] != "ok" {
			t.Errorf("request %d: kind %q, want ok (the client retried it)", i, kindNames[s.kind])
		}
	}
	if ss[0].retries != 0 || ss[1].retries != 1 {
		t.Errorf("retries = %d, %d; want 0, 1", ss[0].retries, ss[1].retries)
	}
}
