package runner_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/changeover-dev/changeover/runner"
)

// fakeNotify plays systemd: a unixgram socket in NOTIFY_SOCKET that
// collects what the runner says.
type fakeNotify struct {
	conn *net.UnixConn
	msgs chan string
}

func newFakeNotify(t *testing.T) *fakeNotify {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("NOTIFY_SOCKET", path)
	f := &fakeNotify{conn: c, msgs: make(chan string, 16)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			f.msgs <- string(buf[:n])
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return f
}

func (f *fakeNotify) expect(t *testing.T, want string) {
	t.Helper()
	select {
	case got := <-f.msgs:
		if got != want {
			t.Fatalf("notify: got %q, want %q", got, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("notify: no %q in 10s", want)
	}
}

// started is a Runner serving h on a fresh loopback port.
type started struct {
	r    *runner.Runner
	ln   net.Listener
	addr string
	stop context.CancelFunc
	done chan error
}

func start(t *testing.T, opts runner.Options, h http.Handler) *started {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	r := runner.New(opts)
	ctx, cancel := context.WithCancel(context.Background())
	ln, err := r.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.ServeHTTP(&http.Server{Handler: h}, ln)
	s := &started{r: r, ln: ln, addr: ln.Addr().String(), stop: cancel, done: make(chan error, 1)}
	go func() { s.done <- r.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-s.done })
	select {
	case <-r.Ready():
	case err := <-s.done:
		s.done <- err
		t.Fatalf("Run returned before ready: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("not ready in 10s")
	}
	return s
}

func (s *started) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-s.done:
		s.done <- err
		return err
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return in 20s")
		return nil
	}
}

func get(t *testing.T, c *http.Client, url string) (string, *http.Response) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b), resp
}

func text(s string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, s) })
}

func TestRunReadyHealthAndStop(t *testing.T) {
	n := newFakeNotify(t)
	health := freeAddr(t)
	s := start(t, runner.Options{HealthAddr: health, Health: text("healthy")}, text("hello"))
	n.expect(t, "READY=1")
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	if body, _ := get(t, c, "http://"+s.addr+"/"); body != "hello" {
		t.Fatalf("server answered %q", body)
	}
	if body, _ := get(t, c, "http://"+health+"/anything"); body != "healthy" {
		t.Fatalf("health answered %q", body)
	}
	s.stop()
	if err := s.wait(t); err != nil {
		t.Fatalf("Run = %v, want nil after a clean drain", err)
	}
	n.expect(t, "STOPPING=1")
	if _, err := net.Dial("tcp", health); err == nil {
		t.Fatalf("health address %s still served after Run returned", health)
	}
}

func TestNotReadyWhileHealthFails(t *testing.T) {
	var mu sync.Mutex
	healthy := false
	h := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if !healthy {
			http.Error(w, "warming up", http.StatusServiceUnavailable)
		}
	})
	r := runner.New(runner.Options{Health: h, HealthAddr: freeAddr(t), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	ctx, cancel := context.WithCancel(context.Background())
	ln, err := r.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.ServeHTTP(&http.Server{Handler: text("x")}, ln)
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()

	// The server answers while the runner is not ready yet.
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	get(t, c, "http://"+ln.Addr().String()+"/")
	select {
	case <-r.Ready():
		t.Fatal("ready while the health handler fails")
	default:
	}
	mu.Lock()
	healthy = true
	mu.Unlock()
	select {
	case <-r.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("not ready 10s after the health handler passed")
	}
}

func TestInFlightRequestFinishes(t *testing.T) {
	entered := make(chan struct{})
	var s *started
	h := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		close(entered)
		<-s.r.Draining() // still in flight when the drain starts
		io.WriteString(w, "finished")
	})
	s = start(t, runner.Options{}, h)
	got := make(chan string, 1)
	go func() {
		resp, err := http.Post("http://"+s.addr+"/", "text/plain", strings.NewReader("body"))
		if err != nil {
			got <- err.Error()
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		got <- fmt.Sprintf("%d %s close=%v", resp.StatusCode, b, resp.Close)
	}()
	<-entered
	s.stop()
	// Its response went out during the drain, so it closes its connection.
	if got, want := <-got, "200 finished close=true"; got != want {
		t.Fatalf("in-flight request: %q, want %q", got, want)
	}
	if err := s.wait(t); err != nil {
		t.Fatal(err)
	}
}

// TestKeepAliveClosesAfterNextResponse: while draining, a keep-alive
// connection carries one more request and is closed by its response.
func TestKeepAliveClosesAfterNextResponse(t *testing.T) {
	s := start(t, runner.Options{KeepAliveWindow: 10 * time.Second}, text("ok"))
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	// get asks on c and says whether the request went on a connection the
	// client already had (httptrace GotConn).
	get := func() (resp *http.Response, reused bool, err error) {
		trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused }}
		req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", "http://"+s.addr+"/", nil)
		resp, err = c.Do(req)
		return resp, reused, err
	}
	resp, _, err := get()
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.Close {
		t.Fatal("Connection: close before draining")
	}
	s.stop()
	<-s.r.Draining()
	// The drain waits for this connection (window 10s), so it is still open.
	resp, reused, err := get()
	if err != nil {
		t.Fatalf("request on the kept-alive connection during the drain: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if !reused {
		t.Fatal("the request during the drain went on a new connection, not the kept-alive one")
	}
	if !resp.Close {
		t.Fatal("response during the drain lacks Connection: close")
	}
	start := time.Now()
	if err := s.wait(t); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("drain took %v after the last connection closed; it should not wait out the window", d)
	}
}

func TestDrainDeadlineCutsAndCounts(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	entered := make(chan struct{}, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	s := start(t, runner.Options{DrainTimeout: 500 * time.Millisecond}, h)
	go func() {
		resp, err := http.Get("http://" + s.addr + "/")
		if err == nil {
			resp.Body.Close()
		}
	}()
	<-entered
	s.stop()
	err := s.wait(t)
	if !errors.Is(err, runner.ErrDrainTimeout) || !strings.Contains(err.Error(), "cut 1 active connection") {
		t.Fatalf("Run = %v, want ErrDrainTimeout counting 1 cut connection", err)
	}
}

// TestServeFailureEndsRun: a server whose Serve fails (here its listener
// is closed under it) makes Run return that error instead of hanging.
func TestServeFailureEndsRun(t *testing.T) {
	r := runner.New(runner.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	ln, err := r.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.ServeHTTP(&http.Server{Handler: text("x")}, ln)
	ln.Close()
	done := make(chan error, 1)
	go func() { done <- r.Run(context.Background()) }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), ln.Addr().String()) {
			t.Fatalf("Run = %v, want the Serve error naming %s", err, ln.Addr())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after Serve failed")
	}
}

func TestBadDrainTimeoutEnv(t *testing.T) {
	t.Setenv(runner.EnvDrainTimeout, "banana")
	r := runner.New(runner.Options{})
	err := r.Run(context.Background())
	if !errors.Is(err, runner.ErrBadEnv) || !strings.Contains(err.Error(), `"banana"`) {
		t.Fatalf("Run = %v, want ErrBadEnv naming the value", err)
	}
}

func TestActorInterruptedOnStop(t *testing.T) {
	r := runner.New(runner.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	stopped := make(chan struct{})
	r.Add(func() error { <-stopped; return nil }, func(error) { close(stopped) })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	select {
	case <-r.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("not ready in 10s")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
