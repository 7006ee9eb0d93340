//go:build linux

// Command showcase is changeover's main demonstration, the first command of
// the README: it builds the demo server and the changeover supervisor, runs
// the demo under `changeover run` with clients sending requests, deploys
// three new versions with `changeover reload` (one while a slow request is
// in flight), and prints what the clients saw.
//
// Each version is a release directory (release-vN/ with the demo binary and
// an env file that sets DEMO_VERSION) and `current` is a symlink flipped to
// the next release before each reload, the way a blue-green deploy on one
// host works. Everything runs on 127.0.0.1 and stops by itself.
//
//	go run ./cmd/demo/showcase [-clients 4] [-keep DIR]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "showcase:", err)
		os.Exit(1)
	}
}

var answerRE = regexp.MustCompile(`^version=(\S+) pid=(\d+)\n$`)

// tally is what the clients saw.
type tally struct {
	mu       sync.Mutex
	sent     int
	failed   int
	failures map[string]int
	versions map[string]int
	pids     map[string]map[string]bool // version -> PIDs
}

func (t *tally) add(body string, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.sent++
	if err == nil {
		m := answerRE.FindStringSubmatch(body)
		if m == nil {
			err = fmt.Errorf("unexpected answer %q", body)
		} else {
			t.versions[m[1]]++
			if t.pids[m[1]] == nil {
				t.pids[m[1]] = map[string]bool{}
			}
			t.pids[m[1]][m[2]] = true
			return
		}
	}
	t.failed++
	t.failures[err.Error()]++
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("showcase", flag.ContinueOnError)
	fs.SetOutput(stderr)
	clients := fs.Int("clients", 4, "concurrent clients (half open a connection per request, half keep-alive POST)")
	keep := fs.String("keep", "", "work in this directory and keep it (default: a temporary one, removed)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *clients < 1 || *clients > 64 {
		return fmt.Errorf("-clients %d: want 1 to 64", *clients)
	}
	dir := *keep
	if dir == "" {
		d, err := os.MkdirTemp("", "changeover-showcase")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	say := func(format string, a ...any) { fmt.Fprintf(stderr, "showcase: "+format+"\n", a...) }

	say("building demo and changeover into %s", dir)
	for _, pkg := range []string{"demo", "changeover"} {
		out, err := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(dir, pkg), "./cmd/"+pkg).CombinedOutput()
		if err != nil {
			return fmt.Errorf("go build ./cmd/%s (run this from the changeover checkout): %w\n%s", pkg, err, out)
		}
	}
	// Release directories v1..v4, each with the binary and its env file.
	versions := []string{"v1", "v2", "v3", "v4"}
	for _, v := range versions {
		rel := filepath.Join(dir, "release-"+v)
		if err := os.MkdirAll(rel, 0o755); err != nil {
			return err
		}
		bin, err := os.ReadFile(filepath.Join(dir, "demo"))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(rel, "demo"), bin, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(rel, "env"), []byte("DEMO_VERSION="+v+"\n"), 0o644); err != nil {
			return err
		}
	}
	current := filepath.Join(dir, "current")
	flip := func(v string) error {
		tmp := current + ".new"
		os.Remove(tmp)
		if err := os.Symlink("release-"+v, tmp); err != nil {
			return err
		}
		return os.Rename(tmp, current) // atomic
	}
	if err := flip("v1"); err != nil {
		return err
	}

	addr, err := freeAddr()
	if err != nil {
		return err
	}
	control := filepath.Join(dir, "control.sock")
	changeover := filepath.Join(dir, "changeover")
	sup := exec.Command(changeover, "run", "--name", "showcase", "--control", control,
		"--env-file", filepath.Join(current, "env"), "--drain-timeout", "10s",
		"--", filepath.Join(current, "demo"), "-addr", addr)
	logf, err := os.Create(filepath.Join(dir, "supervisor.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	sup.Stdout, sup.Stderr = logf, logf
	sup.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := sup.Start(); err != nil {
		return fmt.Errorf("start %s: %w", changeover, err)
	}
	supDone := make(chan error, 1)
	go func() { supDone <- sup.Wait() }()
	defer func() {
		select {
		case <-supDone:
		default:
			syscall.Kill(-sup.Process.Pid, syscall.SIGKILL)
			<-supDone
		}
	}()
	say("changeover run (pid %d) serves the demo on %s; log: %s", sup.Process.Pid, addr, logf.Name())

	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	if err := waitServing(ctx, c, addr, "v1", supDone); err != nil {
		return fmt.Errorf("%w (supervisor log: %s)", err, tail(logf.Name()))
	}

	t := &tally{failures: map[string]int{}, versions: map[string]int{}, pids: map[string]map[string]bool{}}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range *clients {
		keepAlive := i%2 == 1
		wg.Go(func() { load(ctx, addr, keepAlive, stop, t) })
	}

	type deploy struct {
		version  string
		took     time.Duration
		err      error
		inflight string
	}
	var deploys []deploy
	for i, v := range versions[1:] {
		pause(ctx, 500*time.Millisecond) // steady load between deploys
		var inflight chan string
		if i == 1 {
			// A slow request that starts on the serving version before the
			// deploy: it must be answered by that version.
			inflight = make(chan string, 1)
			started := make(chan struct{})
			go func() {
				close(started)
				resp, err := c.Get("http://" + addr + "/sleep?duration=2s")
				if err != nil {
					inflight <- "failed: " + err.Error()
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				inflight <- fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(string(b)))
			}()
			<-started
			pause(ctx, 200*time.Millisecond) // let it reach the server
		}
		if err := flip(v); err != nil {
			return err
		}
		say("deploying %s: changeover reload", v)
		start := time.Now()
		out, err := exec.CommandContext(ctx, changeover, "reload", "--control", control).CombinedOutput()
		d := deploy{version: v, took: time.Since(start)}
		if err != nil {
			d.err = fmt.Errorf("%v: %s", err, strings.TrimSpace(string(out)))
		}
		if inflight != nil {
			d.inflight = <-inflight
		}
		deploys = append(deploys, d)
	}
	pause(ctx, 500*time.Millisecond)
	close(stop)
	wg.Wait()

	say("stopping the supervisor with SIGTERM")
	sup.Process.Signal(syscall.SIGTERM)
	var supErr error
	select {
	case supErr = <-supDone:
		supDone <- supErr
	case <-time.After(30 * time.Second):
		supErr = errors.New("did not exit within 30s of SIGTERM")
	}

	// The table.
	w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "changeover showcase\t\n")
	fmt.Fprintf(w, "requests sent\t%d\n", t.sent)
	fmt.Fprintf(w, "requests failed\t%d\n", t.failed)
	for msg, n := range t.failures {
		fmt.Fprintf(w, "  failure\t%d × %s\n", n, msg)
	}
	fmt.Fprintf(w, "supervisor pid\t%d (the same for the whole run)\n", sup.Process.Pid)
	var vs []string
	for v := range t.versions {
		vs = append(vs, v)
	}
	sort.Strings(vs)
	for _, v := range vs {
		var pids []string
		for p := range t.pids[v] {
			pids = append(pids, p)
		}
		sort.Strings(pids)
		fmt.Fprintf(w, "version %s\t%d answers from pid %s\n", v, t.versions[v], strings.Join(pids, ", "))
	}
	for _, d := range deploys {
		res := "took over"
		if d.err != nil {
			res = "FAILED: " + d.err.Error()
		}
		fmt.Fprintf(w, "deploy %s\t%s in %v (changeover reload, trigger to old listeners gone)\n", d.version, res, d.took.Round(time.Millisecond))
		if d.inflight != "" {
			fmt.Fprintf(w, "  in-flight /sleep?duration=2s\tstarted before the deploy, answered: %s\n", d.inflight)
		}
	}
	exit := "exit 0"
	if supErr != nil {
		exit = supErr.Error()
	}
	fmt.Fprintf(w, "supervisor after SIGTERM\t%s\n", exit)
	w.Flush()

	var problems []string
	if t.failed > 0 {
		problems = append(problems, fmt.Sprintf("%d requests failed", t.failed))
	}
	for _, d := range deploys {
		if d.err != nil {
			problems = append(problems, "deploy "+d.version+" failed")
		}
	}
	if len(t.versions) != len(versions) {
		problems = append(problems, fmt.Sprintf("answers came from %d versions, want %d", len(t.versions), len(versions)))
	}
	if supErr != nil {
		problems = append(problems, "supervisor: "+supErr.Error())
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s (supervisor log: %s)", strings.Join(problems, "; "), tail(logf.Name()))
	}
	return nil
}

// load sends requests until stop, at most 100000 or 2 minutes.
func load(ctx context.Context, addr string, keepAlive bool, stop <-chan struct{}, t *tally) {
	tr := &http.Transport{DisableKeepAlives: !keepAlive}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	deadline := time.Now().Add(2 * time.Minute)
	for n := 0; n < 100000 && time.Now().Before(deadline); n++ {
		select {
		case <-stop:
			return
		default:
		}
		var resp *http.Response
		var err error
		if keepAlive {
			resp, err = c.Post("http://"+addr+"/", "text/plain", strings.NewReader("hello from a keep-alive client"))
		} else {
			resp, err = c.Get("http://" + addr + "/")
		}
		if err != nil {
			t.add("", err)
			continue
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil && resp.StatusCode != 200 {
			err = fmt.Errorf("status %s", resp.Status)
		}
		t.add(string(b), err)
	}
}

func waitServing(ctx context.Context, c *http.Client, addr, version string, supDone chan error) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-supDone:
			supDone <- err
			return fmt.Errorf("changeover run exited before serving: %v", err)
		default:
		}
		if resp, err := c.Get("http://" + addr + "/"); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if strings.HasPrefix(string(b), "version="+version+" ") {
				return nil
			}
		}
		pause(ctx, 20*time.Millisecond)
	}
	return fmt.Errorf("%s not served on %s within 30s", version, addr)
}

func pause(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return "\n" + strings.Join(lines, "\n")
}
