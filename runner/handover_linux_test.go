//go:build linux

package runner_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/changeover-dev/changeover/internal/netnstest"
	"github.com/changeover-dev/changeover/reuseport"
	"github.com/changeover-dev/changeover/runner"
)

// The test binary plays three roles, chosen by RUNNER_TEST_ROLE:
//
//	(none)   the tests
//	server   a server built on runner (one generation)
//	netns    the load scenario, run inside a new network namespace
func TestMain(m *testing.M) {
	switch os.Getenv("RUNNER_TEST_ROLE") {
	case "server":
		os.Exit(serverMain())
	case "netns":
		os.Exit(netnsMain())
	}
	goleak.VerifyTestMain(m)
}

// serverMain serves "gen=N" on $TEST_ADDR, HTTP/1.1 and h2c, and on
// $TEST_TLS_ADDR (if set) over TLS, HTTP/2 and HTTP/1.1, through runner.
func serverMain() int {
	ctx, stop := runner.SignalContext(context.Background())
	defer stop()
	gen := os.Getenv("CHANGEOVER_GENERATION")
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, req *http.Request) {
		io.Copy(io.Discard, req.Body)
		if d, _ := time.ParseDuration(req.URL.Query().Get("sleep")); d > 0 {
			time.Sleep(d)
		}
		fmt.Fprintf(w, "gen=%s", gen)
	})
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	protos.SetHTTP2(true)
	srv := &http.Server{Handler: mux, Protocols: &protos}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("gen", gen)
	opts := runner.Options{Logger: log}
	if os.Getenv("TEST_BROKEN") == "1" {
		opts.Health = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			http.Error(w, "broken on purpose", http.StatusServiceUnavailable)
		})
	}
	r := runner.New(opts)
	ln, err := r.Listen(ctx, "tcp", os.Getenv("TEST_ADDR"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	r.ServeHTTP(srv, ln)
	if tlsAddr := os.Getenv("TEST_TLS_ADDR"); tlsAddr != "" {
		tln, err := r.Listen(ctx, "tcp", tlsAddr)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		r.ServeHTTP(srv, tls.NewListener(tln, serverTLSConfig()))
	}
	if err := r.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// scenario is one load test: generations of serverMain on one address,
// restarted under load from every client mode at once.
type scenario struct {
	Restarts int
	Clients  int // per mode
	Addr     string
	TLSAddr  string // for the h2-tls mode
	Broken   bool   // before each restart, a generation that never gets ready comes and is killed
	Progress int64  // answers per mode between restarts
}

// modeResult is what the clients of one mode saw.
type modeResult struct {
	Requests int64
	Failures int64
	// Retries counts the requests for which the Go client got more than
	// one connection (httptrace GotConn): it retried them silently, on a
	// connection that the server closed (HTTP/1) or that refused the
	// stream (HTTP/2 GOAWAY), so a failure may hide in a success.
	Retries  int64
	Kinds    map[string]int64
	Gens     map[string]int64 // answers per generation
	Examples []string
}

type result struct {
	Migrate bool
	Modes   map[string]*modeResult
	Err     string
}

var modes = []string{"newconn-get", "keepalive-get", "keepalive-post", "h2c", "h2-tls"}

func client(mode string) *http.Client {
	tr := &http.Transport{MaxIdleConnsPerHost: 16, DisableCompression: true}
	switch mode {
	case "newconn-get":
		tr.DisableKeepAlives = true
	case "h2c":
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		tr.Protocols = &p
	case "h2-tls":
		var p http.Protocols
		p.SetHTTP2(true)
		tr.Protocols = &p
		tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true} // the test certificate
	}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func classify(err error) string {
	switch {
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	return "other"
}

// run starts generation 1, then restarts it s.Restarts times while the
// clients send requests; each restart waits for the new generation's
// READY=1, SIGTERMs the old one and waits for it to exit, then waits until
// every mode has had answers since.
func (s scenario) run(ctx context.Context) (res result) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	migrate, _ := reuseport.MigrateReq()
	res = result{Migrate: migrate, Modes: map[string]*modeResult{}}
	dir, err := os.MkdirTemp("", "handover")
	if err != nil {
		res.Err = err.Error()
		return res
	}
	defer os.RemoveAll(dir)

	var procs []*proc
	defer func() {
		for _, p := range procs {
			p.kill()
		}
		if res.Err != "" {
			for _, p := range procs {
				res.Err += "\n--- gen " + strconv.Itoa(p.gen) + " stderr:\n" + p.stderr.String()
			}
		}
	}()
	start := func(gen int) (*proc, error) {
		p, err := startServer(ctx, dir, s.Addr, s.TLSAddr, gen, false)
		if p != nil {
			procs = append(procs, p)
		}
		return p, err
	}
	cur, err := start(1)
	if err != nil {
		res.Err = err.Error()
		return res
	}

	var mu sync.Mutex
	progress := map[string]*atomic.Int64{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, mode := range modes {
		mr := &modeResult{Kinds: map[string]int64{}, Gens: map[string]int64{}}
		res.Modes[mode] = mr
		answered := new(atomic.Int64)
		progress[mode] = answered
		for i := range s.Clients {
			c := client(mode)
			wg.Go(func() {
				defer c.CloseIdleConnections()
				for n := 0; n < 200000; n++ {
					select {
					case <-stop:
						return
					case <-ctx.Done():
						return
					default:
					}
					gen, conns, err := doRequest(ctx, c, mode, s, i, n)
					mu.Lock()
					mr.Requests++
					if conns > 1 {
						mr.Retries++
					}
					if err != nil {
						mr.Failures++
						mr.Kinds[classify(err)]++
						if len(mr.Examples) < 5 {
							mr.Examples = append(mr.Examples, err.Error())
						}
					} else {
						mr.Gens[gen]++
					}
					mu.Unlock()
					if err == nil {
						answered.Add(1)
					}
				}
			})
		}
	}
	waitProgress := func() error {
		marks := map[string]int64{}
		for m, p := range progress {
			marks[m] = p.Load()
		}
		for _, m := range modes {
			for progress[m].Load() < marks[m]+s.Progress {
				if ctx.Err() != nil {
					return fmt.Errorf("mode %s made no progress: %w", m, ctx.Err())
				}
				time.Sleep(2 * time.Millisecond)
			}
		}
		return nil
	}

	for gen := 2; gen <= s.Restarts+1 && res.Err == ""; gen++ {
		if err := waitProgress(); err != nil {
			res.Err = err.Error()
			break
		}
		if s.Broken {
			// A broken new version: it listens beside the serving one but
			// never becomes ready, and is killed while the load runs.
			b, err := startServer(ctx, dir, s.Addr, s.TLSAddr, brokenGen+gen, true)
			if b != nil {
				procs = append(procs, b)
			}
			if err == nil {
				err = waitProgress()
			}
			if err != nil {
				res.Err = err.Error()
				break
			}
			b.kill()
		}
		next, err := start(gen)
		if err != nil {
			res.Err = err.Error()
			break
		}
		cur.cmd.Process.Signal(syscall.SIGTERM)
		if err := cur.wait(ctx); err != nil {
			res.Err = fmt.Sprintf("gen %d: %v", cur.gen, err)
			break
		}
		cur = next
	}
	if res.Err == "" {
		if err := waitProgress(); err != nil {
			res.Err = err.Error()
		}
	}
	close(stop)
	wg.Wait()
	return res
}

// doRequest sends one request and returns the generation that answered
// and how many connections the client got for it (more than one: it was
// retried).
func doRequest(ctx context.Context, c *http.Client, mode string, s scenario, client, n int) (gen string, conns int64, err error) {
	url := "http://" + s.Addr + "/"
	if mode == "h2-tls" {
		url = "https://" + s.TLSAddr + "/"
	}
	method, body := http.MethodGet, io.Reader(nil)
	switch {
	case mode == "keepalive-post":
		method, body = http.MethodPost, strings.NewReader(strings.Repeat("x", 512))
	case (mode == "h2c" || mode == "h2-tls") && client == 0 && n%4 == 0:
		url += "?sleep=50ms" // streams in flight across the GOAWAY
	}
	var got atomic.Int64
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(httptrace.GotConnInfo) { got.Add(1) }})
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		return "", 0, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", got.Load(), err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", got.Load(), err
	}
	if resp.StatusCode != http.StatusOK {
		return "", got.Load(), fmt.Errorf("status %s", resp.Status)
	}
	if (mode == "h2c" || mode == "h2-tls") && resp.ProtoMajor != 2 {
		return "", got.Load(), fmt.Errorf("%s request answered over %s", mode, resp.Proto)
	}
	return strings.TrimPrefix(string(b), "gen="), got.Load(), nil
}

// serverTLSConfig serves net/http/httptest's certificate (for 127.0.0.1
// and example.com), HTTP/2 first.
func serverTLSConfig() *tls.Config {
	ts := httptest.NewUnstartedServer(nil)
	ts.StartTLS()
	defer ts.Close()
	return &tls.Config{Certificates: ts.TLS.Certificates, NextProtos: []string{"h2", "http/1.1"}}
}

// proc is one server generation.
type proc struct {
	gen    int
	cmd    *exec.Cmd
	stderr *lockedBuffer
	done   chan error
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// brokenGen is added to the generation numbers of broken instances.
const brokenGen = 1000

// startServer starts one generation and waits for its READY=1, or, for a
// broken one (whose health handler always fails), until it listens.
func startServer(ctx context.Context, dir, addr, tlsAddr string, gen int, broken bool) (*proc, error) {
	sock := filepath.Join(dir, fmt.Sprintf("notify-%d.sock", gen))
	nc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	p := &proc{gen: gen, stderr: &lockedBuffer{}, done: make(chan error, 1)}
	p.cmd = exec.Command(os.Args[0])
	p.cmd.Env = append(os.Environ(), "RUNNER_TEST_ROLE=server", "TEST_ADDR="+addr,
		"NOTIFY_SOCKET="+sock, "CHANGEOVER_GENERATION="+strconv.Itoa(gen), "CHANGEOVER_DRAIN_TIMEOUT=20s",
		"TEST_TLS_ADDR="+tlsAddr)
	if broken {
		p.cmd.Env = append(p.cmd.Env, "TEST_BROKEN=1")
	}
	p.cmd.Stderr = p.stderr
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { p.done <- p.cmd.Wait() }()

	got := make(chan error, 1)
	if broken {
		go func() {
			ap := netip.MustParseAddrPort(addr)
			for ctx.Err() == nil {
				if n, err := reuseport.GroupSize(ap); err != nil || n >= 2 {
					got <- err
					return
				}
				time.Sleep(2 * time.Millisecond)
			}
		}()
	} else {
		go readReady(nc, got)
	}
	select {
	case err := <-got:
		if err != nil {
			return p, fmt.Errorf("gen %d: read notify socket: %w", gen, err)
		}
		return p, nil
	case err := <-p.done:
		p.done <- err
		return p, fmt.Errorf("gen %d exited before READY=1: %v", gen, err)
	case <-time.After(20 * time.Second):
		return p, fmt.Errorf("gen %d: no READY=1 in 20s", gen)
	case <-ctx.Done():
		return p, ctx.Err()
	}
}

// readReady reads datagrams until READY=1.
func readReady(nc *net.UnixConn, got chan<- error) {
	buf := make([]byte, 4096)
	for {
		n, err := nc.Read(buf)
		if err != nil {
			got <- err
			return
		}
		if bytes.Contains(buf[:n], []byte("READY=1")) {
			got <- nil
			return
		}
	}
}

func (p *proc) wait(ctx context.Context) error {
	select {
	case err := <-p.done:
		p.done <- err
		if err != nil {
			return fmt.Errorf("exited with %v", err)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// kill kills the generation's process group and waits for it; it may be
// called again.
func (p *proc) kill() {
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	err := <-p.done
	p.done <- err
}

// netnsMain runs inside a new network namespace: it brings up lo, sets
// tcp_migrate_req as asked, runs the scenario and prints the result.
func netnsMain() int {
	if err := netnstest.LoUp(); err != nil {
		fmt.Fprintln(os.Stderr, "bring up lo:", err)
		return 1
	}
	if os.Getenv("TEST_MIGRATE") == "1" { // a new namespace starts with 0
		if err := reuseport.EnableMigrateReq(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	var s scenario
	if err := json.Unmarshal([]byte(os.Getenv("TEST_SCENARIO")), &s); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	res := s.run(context.Background())
	json.NewEncoder(os.Stdout).Encode(res)
	return 0
}

// runInNetns runs the scenario in a fresh network namespace with
// tcp_migrate_req set to migrate.
func runInNetns(t *testing.T, s scenario, migrate int) result {
	sj, _ := json.Marshal(s)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "RUNNER_TEST_ROLE=netns", "TEST_SCENARIO="+string(sj),
		"TEST_MIGRATE="+strconv.Itoa(migrate))
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Setpgid: true}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start the scenario in a new network namespace: %v", err)
	}
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	// The scenario bounds itself to 3 minutes; this is the backstop.
	backstop := time.AfterFunc(4*time.Minute, func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	defer backstop.Stop()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("scenario in netns: %v\n%s", err, stderr.String())
	}
	var res result
	sc := bufio.NewScanner(&stdout)
	sc.Buffer(nil, 1<<24)
	for sc.Scan() {
		if json.Unmarshal(sc.Bytes(), &res) == nil && res.Modes != nil {
			return res
		}
	}
	t.Fatalf("no result from the scenario: %s\n%s", stdout.String(), stderr.String())
	return res
}

// TestBrokenNewVersionCostsNothing: before each restart a new version that
// never becomes ready listens beside the serving one under load and is
// killed; it is dark the whole time, so it answers nothing and costs nothing.
func TestBrokenNewVersionCostsNothing(t *testing.T) {
	s := scenario{Restarts: 5, Clients: 2, Progress: 50, Broken: true}
	var res result
	if os.Geteuid() == 0 {
		s.Addr, s.TLSAddr = "127.0.0.1:8080", "127.0.0.1:8443"
		res = runInNetns(t, s, 0)
	} else {
		s.Addr, s.TLSAddr = freeAddr(t), freeAddr(t)
		res = s.run(context.Background())
	}
	if res.Err != "" {
		t.Fatal(res.Err)
	}
	for _, mode := range modes {
		mr := res.Modes[mode]
		t.Logf("%-15s requests=%d failures=%d retries=%d generations=%v", mode, mr.Requests, mr.Failures, mr.Retries, mr.Gens)
		if mr.Retries != 0 {
			t.Errorf("%s: the client silently retried %d of %d requests", mode, mr.Retries, mr.Requests)
		}
		if mr.Failures != 0 {
			t.Errorf("%s: %d of %d requests failed: %v, e.g. %q", mode, mr.Failures, mr.Requests, mr.Kinds, mr.Examples)
		}
		for gen := range mr.Gens {
			if n, _ := strconv.Atoi(gen); n >= brokenGen {
				t.Errorf("%s: the broken generation %s answered %d requests; it should have been dark", mode, gen, mr.Gens[gen])
			}
		}
		if len(mr.Gens) != s.Restarts+1 {
			t.Errorf("%s: answers from %d generations, want %d", mode, len(mr.Gens), s.Restarts+1)
		}
	}
}

// TestHandoverZeroLoss is the product's promise: restarts under load, in
// every client mode at once, cost no request, with tcp_migrate_req 0 and 1.
func TestHandoverZeroLoss(t *testing.T) {
	s := scenario{Restarts: 20, Clients: 2, Progress: 50}
	if testing.Short() {
		s.Restarts = 5
	}
	for _, migrate := range []int{0, 1} {
		t.Run(fmt.Sprintf("tcp_migrate_req=%d", migrate), func(t *testing.T) {
			var res result
			if os.Geteuid() == 0 {
				s.Addr, s.TLSAddr = "127.0.0.1:8080", "127.0.0.1:8443" // a namespace of our own: any port is free
				res = runInNetns(t, s, migrate)
			} else {
				current, err := reuseport.MigrateReq()
				if err != nil || current != (migrate == 1) {
					t.Skipf("not root, so no network namespace of our own; this namespace has tcp_migrate_req=%v", current)
				}
				s.Addr, s.TLSAddr = freeAddr(t), freeAddr(t)
				res = s.run(context.Background())
			}
			if res.Err != "" {
				t.Fatal(res.Err)
			}
			if res.Migrate != (migrate == 1) {
				t.Fatalf("scenario ran with tcp_migrate_req=%v, want %d", res.Migrate, migrate)
			}
			for _, mode := range modes {
				mr := res.Modes[mode]
				t.Logf("%-15s requests=%d failures=%d retries=%d kinds=%v generations=%d", mode, mr.Requests, mr.Failures, mr.Retries, mr.Kinds, len(mr.Gens))
				// A silent retry is a failure the client hid: a request sent
				// on a connection the server closed, or a stream refused.
				if mr.Retries != 0 {
					t.Errorf("%s: the client silently retried %d of %d requests", mode, mr.Retries, mr.Requests)
				}
				if mr.Failures != 0 {
					t.Errorf("%s: %d of %d requests failed: %v, e.g. %q", mode, mr.Failures, mr.Requests, mr.Kinds, mr.Examples)
				}
				// Each generation served every mode: the load really crossed each restart.
				if len(mr.Gens) != s.Restarts+1 {
					t.Errorf("%s: answers came from %d generations, want %d: %v", mode, len(mr.Gens), s.Restarts+1, mr.Gens)
				}
			}
		})
	}
}
