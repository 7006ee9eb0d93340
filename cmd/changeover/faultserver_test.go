//go:build linux

package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/changeover-dev/changeover/internal/proc"
	"github.com/changeover-dev/changeover/internal/supervisor"
	"github.com/changeover-dev/changeover/reuseport"
	"github.com/changeover-dev/changeover/runner"
)

// The fault tests run, as instances, this test binary as a server built on
// package runner (the same contract and handler as cmd/demo: "/" answers
// "version=V pid=N", "/sleep?duration=D" answers after D), which can be told
// to misbehave. It is selected by CHANGEOVER_TEST_FAULT in the instance's
// environment (through --env-file, like the helper server) and reads
// HELPER_ADDR, HELPER_VERSION, HELPER_PIDDIR and HELPER_READY_DELAY.
const envFault = "CHANGEOVER_TEST_FAULT"

// Fault modes.
const (
	faultOK         = "ok"          // a well-behaved runner server
	faultExit       = "exit"        // writes a line to stderr and exits 7 at once
	faultHang       = "hang"        // binds nothing, never ready; leaves a child in its group
	faultDark       = "dark"        // listens (dark) but its health never passes
	faultFlap       = "flap"        // health alternates 200 and 503
	faultIgnoreTerm = "ignore-term" // serves, ignores SIGTERM (never drains)
	faultSendReady  = "send-ready"  // not a server: sends READY=1 to $STRANGER_SOCKET and exits
	faultDaemonize  = "daemonize"   // serves, and leaves a setsid child holding its listener
	// faultLinger serves and drains at SIGTERM as runner does (its listener
	// closed at once), then never exits (for at most two minutes), whatever
	// it is sent but SIGKILL: a drain that overstays its deadline.
	faultLinger = "linger"
)

func init() {
	if os.Getenv(supervisor.EnvRelay) != "" {
		return
	}
	if os.Getenv(envWrapper) != "" {
		os.Exit(npmLikeWrapper())
	}
	if os.Getenv(envHold) != "" {
		os.Exit(holdInheritedListener())
	}
	mode := os.Getenv(envFault)
	if mode == "" {
		return
	}
	os.Exit(faultServer(mode))
}

func faultServer(mode string) int {
	if dir := os.Getenv(envPidDir); dir != "" {
		_ = os.WriteFile(filepath.Join(dir, strconv.Itoa(os.Getpid())), nil, 0o644)
	}
	switch mode {
	case faultSendReady:
		c, err := net.Dial("unixgram", os.Getenv("STRANGER_SOCKET"))
		if err != nil {
			fmt.Fprintln(os.Stderr, "stranger:", err)
			return 1
		}
		defer c.Close()
		if _, err := c.Write([]byte("READY=1")); err != nil {
			fmt.Fprintln(os.Stderr, "stranger:", err)
			return 1
		}
		return 0
	case faultExit:
		fmt.Fprintln(os.Stderr, "fault: exiting at start as asked")
		return 7
	case faultHang:
		// A child in our process group: the supervisor must kill the group.
		_ = exec.Command("sleep", "60").Start()
		fmt.Fprintln(os.Stderr, "fault: hanging without listening")
		select {}
	}
	if d, err := time.ParseDuration(os.Getenv(envReadyDelay)); err == nil {
		time.Sleep(d)
	}
	ctx := context.Background()
	if mode == faultIgnoreTerm {
		signal.Ignore(syscall.SIGTERM)
	} else {
		var stop context.CancelFunc
		ctx, stop = runner.SignalContext(ctx)
		defer stop()
	}
	version := os.Getenv(envVersion)
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("version", version)
	var calls atomic.Int64
	health := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := calls.Add(1)
		if mode == faultDark || mode == faultFlap && n%2 == 0 {
			http.Error(w, "fault: not healthy", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok\n")
	})
	r := runner.New(runner.Options{Logger: log, Health: health, KeepAliveWindow: 200 * time.Millisecond})
	ln, err := r.Listen(ctx, "tcp", os.Getenv(envAddr))
	if err != nil {
		fmt.Fprintln(os.Stderr, "fault server:", err)
		return 1
	}
	if mode == faultDaemonize {
		if err := startListenerHolder(ln); err != nil {
			fmt.Fprintln(os.Stderr, "fault server:", err)
			return 1
		}
	}
	answer := fmt.Sprintf("version=%s pid=%d\n", version, os.Getpid())
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, answer)
	})
	mux.HandleFunc("/sleep", func(w http.ResponseWriter, r *http.Request) {
		d, _ := time.ParseDuration(r.URL.Query().Get("duration"))
		select {
		case <-time.After(d):
			io.WriteString(w, answer)
		case <-r.Context().Done():
		}
	})
	r.ServeHTTP(&http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}, ln)
	if err := r.Run(ctx); err != nil && !errors.Is(err, runner.ErrDrainTimeout) {
		fmt.Fprintln(os.Stderr, "fault server:", err)
		return 1
	}
	if mode == faultLinger {
		signal.Ignore(syscall.SIGTERM, syscall.SIGINT)
		fmt.Fprintln(os.Stderr, "fault: drained, lingering as asked")
		time.Sleep(2 * time.Minute)
	}
	return 0
}

// setFault rewrites the env file for the fault server.
func (e *env) setFault(mode, version string, kv ...string) {
	e.setEnv(version, append([]string{envFault + "=" + mode}, kv...)...)
}

// loadLoop is a small bounded request loop: a few clients, each opening a
// new connection per request, until stop (or a bound on count and time).
type loadLoop struct {
	addr         string
	sent, failed atomic.Int64
	mu           sync.Mutex
	errs         []string
	firstFail    time.Time
	lastFail     time.Time
	recs         []loadRec // every request, in the order they ended
	stopc        chan struct{}
	wg           sync.WaitGroup
}

// loadRec is one request of a loadLoop: when it was sent and the answer
// ("" if it failed).
type loadRec struct {
	sent   time.Time
	answer string
}

// answerOf is what generation version with pid answers on "/".
func answerOf(version string, pid int) string {
	return fmt.Sprintf("version=%s pid=%d\n", version, pid)
}

// answeredBy checks who answered the requests sent in [from, to) (a zero
// to: until now): every answer must be one of allowed (a failed request is
// counted by report, not here), and each answer listed in required must
// appear. It returns the count per answer.
func (l *loadLoop) answeredBy(t *testing.T, phase string, from, to time.Time, allowed []string, required ...string) map[string]int {
	t.Helper()
	l.mu.Lock()
	recs := slices.Clone(l.recs)
	l.mu.Unlock()
	counts := map[string]int{}
	for _, r := range recs {
		if r.sent.Before(from) || !to.IsZero() && !r.sent.Before(to) || r.answer == "" {
			continue
		}
		counts[r.answer]++
	}
	for a, n := range counts {
		if !slices.Contains(allowed, a) {
			t.Errorf("%s: %d requests answered %q, which is not one of %q", phase, n, a, allowed)
		}
	}
	for _, a := range required {
		if counts[a] == 0 {
			t.Errorf("%s: no request answered %q (answers %v)", phase, a, counts)
		}
	}
	t.Logf("ANSWERS %s: %s", phase, strings.ReplaceAll(fmt.Sprint(counts), "\n", " "))
	return counts
}

// answersIn counts the answers to the requests sent in [from, now).
func (l *loadLoop) answersIn(from time.Time) map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	counts := map[string]int{}
	for _, r := range l.recs {
		if !r.sent.Before(from) && r.answer != "" {
			counts[r.answer]++
		}
	}
	return counts
}

func startLoad(t *testing.T, addr string, clients int) *loadLoop {
	l := &loadLoop{addr: addr, stopc: make(chan struct{})}
	for range clients {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			deadline := time.Now().Add(60 * time.Second)
			for i := 0; i < 20000 && time.Now().Before(deadline); i++ {
				select {
				case <-l.stopc:
					return
				default:
				}
				l.sent.Add(1)
				sent := time.Now()
				got := get(l.addr)
				if !strings.HasPrefix(got, "version=") {
					got = ""
				}
				l.mu.Lock()
				l.recs = append(l.recs, loadRec{sent: sent, answer: got})
				l.mu.Unlock()
				if got == "" {
					l.failed.Add(1)
					l.mu.Lock()
					if l.firstFail.IsZero() {
						l.firstFail = time.Now()
					}
					l.lastFail = time.Now()
					if len(l.errs) < 5 {
						l.errs = append(l.errs, fmt.Sprintf("%s: %q", time.Now().Format("15:04:05.000"), got))
					}
					l.mu.Unlock()
				}
				time.Sleep(2 * time.Millisecond) // pacing, not a wait for a condition
			}
		}()
	}
	t.Cleanup(l.stop)
	return l
}

// stop ends the loop and returns the counts.
func (l *loadLoop) stop() {
	select {
	case <-l.stopc:
	default:
		close(l.stopc)
	}
	l.wg.Wait()
}

// waitSent waits until at least n more requests than now were sent: the
// loop is running through whatever happens next.
func (l *loadLoop) waitSent(t *testing.T, n int64) {
	t.Helper()
	want := l.sent.Load() + n
	waitFor(t, 10*time.Second, "load loop progress", func() bool { return l.sent.Load() >= want })
}

func (l *loadLoop) report(t *testing.T, what string) (sent, failed int64) {
	t.Helper()
	l.stop()
	sent, failed = l.sent.Load(), l.failed.Load()
	t.Logf("REQUESTS %s: sent=%d failed=%d %v", what, sent, failed, l.errs)
	if sent == 0 {
		t.Errorf("%s: no request sent", what)
	}
	return sent, failed
}

// burst opens n new connections one after the other; every one must be
// answered by the serving generation (version and pid): no steering program
// left behind sends a connection anywhere else.
func burst(t *testing.T, addr string, n int, version string, pid int) {
	t.Helper()
	want := fmt.Sprintf("version=%s pid=%d\n", version, pid)
	bad := 0
	for i := range n {
		if got := get(addr); got != want {
			bad++
			if bad <= 3 {
				t.Errorf("burst request %d answered %q, want %q", i, got, want)
			}
		}
	}
	t.Logf("burst: %d new connections, %d not answered by generation with pid %d", n, bad, pid)
}

// servingPID returns the PID of the serving generation.
func servingPID(t *testing.T, st supervisor.Status) int {
	t.Helper()
	for _, g := range st.Generations {
		if g.Generation == st.Serving {
			return g.PID
		}
	}
	t.Fatalf("no serving generation in %+v", st)
	return 0
}

// genByNumber returns generation n of a status.
func genByNumber(st supervisor.Status, n int) (supervisor.GenStatus, bool) {
	for _, g := range st.Generations {
		if g.Generation == n {
			return g, true
		}
	}
	return supervisor.GenStatus{}, false
}

// groupGone waits until no process is left in process group pgid
// (kill(-pgid, 0) fails with ESRCH).
func groupGone(t *testing.T, pgid int) {
	t.Helper()
	if pgid <= 1 {
		t.Fatalf("bad process group %d", pgid)
	}
	var err error
	waitFor(t, 5*time.Second, fmt.Sprintf("process group %d empty", pgid), func() bool {
		err = syscall.Kill(-pgid, 0)
		return errors.Is(err, syscall.ESRCH)
	})
}

// notifySocket is where generation gen of the supervisor pid gets its
// NOTIFY_SOCKET (beside the control socket).
func (e *env) notifySocket(pid, gen int) string {
	return filepath.Join(filepath.Dir(e.sock), fmt.Sprintf("notify-%d-%d.sock", pid, gen))
}

// slowRequest connects to addr (so the connection has reached whoever
// serves the address now) and sends GET /sleep?duration=d on it; the
// channel gets the response body, or the error.
func slowRequest(t *testing.T, addr string, d time.Duration) <-chan string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	out := make(chan string, 1)
	go func() {
		_ = c.SetDeadline(time.Now().Add(d + 10*time.Second))
		if _, err := fmt.Fprintf(c, "GET /sleep?duration=%s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", d); err != nil {
			out <- "error: " + err.Error()
			return
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			out <- "error: " + err.Error()
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			out <- "error: " + err.Error()
			return
		}
		out <- string(b)
	}()
	return out
}

// startCommand is startInProcess with another COMMAND than the test binary.
func (e *env) startCommand(command string, flags ...string) *inProcess {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p := &inProcess{errc: make(chan error, 1), cancel: cancel, stderr: &syncBuffer{}, stdout: &syncBuffer{}}
	args := append(append([]string{"run", "--control", e.sock, "--env-file", e.envFile}, flags...), "--", command)
	go func() { p.errc <- run(ctx, args, p.stdout, p.stderr) }()
	e.t.Cleanup(func() {
		cancel()
		p.wait(e.t, 20*time.Second)
	})
	return p
}

// accepted waits until no connection waits in the accept queue of a
// listener on addr: a connection made before has been accepted.
func accepted(t *testing.T, addr string) {
	t.Helper()
	want := netip.MustParseAddrPort(addr)
	waitFor(t, 5*time.Second, "accept queue of "+addr+" empty", func() bool {
		socks, err := reuseport.ListeningSockets()
		if err != nil {
			t.Fatal(err)
		}
		// The in-process supervisor's placeholders hold one connection of
		// their own each (their queue is full on purpose): not the server's.
		own := proc.SocketInodes(os.Getpid())
		for _, s := range socks {
			if s.Addr == want && s.Queue > 0 && !own[s.Inode] {
				return false
			}
		}
		return true
	})
}
