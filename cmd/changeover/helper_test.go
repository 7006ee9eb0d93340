//go:build linux

package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/changeover-dev/changeover/healthcheck"
	"github.com/changeover-dev/changeover/internal/supervisor"
	"github.com/changeover-dev/changeover/reuseport"
)

// Environment of the re-executed test binary.
const (
	envHelper = "CHANGEOVER_TEST_HELPER" // "server": run helperServer; "main": run main()
	// helperServer configuration (usually through --env-file, which the
	// supervisor reads again at each reload):
	envAddr       = "HELPER_ADDR"        // shared address
	envVersion    = "HELPER_VERSION"     // answered on /
	envMode       = "HELPER_MODE"        // ok | exit | never-ready | ignore-term | crash
	envReadyDelay = "HELPER_READY_DELAY" // wait before READY=1
	envCrashOnce  = "HELPER_CRASH_ONCE"  // file: if present, remove it and crash after ready
	envPidDir     = "HELPER_PIDDIR"      // each helper writes its PID here
	envOrphan     = "HELPER_ORPHAN"      // file: leave an orphan that writes its PID there and exits
	// envBindAfterReady: a duration; send READY=1 first and bind the
	// shared address only that long after (a server that opens its ports
	// once it has told systemd it is ready).
	envBindAfterReady = "HELPER_BIND_AFTER_READY"
	// envPrivatePort: if set, also listen on 127.0.0.1:0 without
	// SO_REUSEPORT (a per-process port, like a pprof listener).
	envPrivatePort = "HELPER_PRIVATE_PORT"
)

func TestMain(m *testing.M) {
	supervisor.MaybeRelay()
	if code, ok := supervisor.MaybeKeep(); ok {
		os.Exit(code)
	}
	switch os.Getenv(envHelper) {
	case "server":
		os.Exit(helperServer())
	case "main":
		os.Unsetenv(envHelper)
		main()
	}
	reapOrphans = false
	os.Exit(m.Run())
}

// helperServer is a small server following the instance contract: it binds
// HELPER_ADDR with SO_REUSEPORT, serves "version=V pid=N" on it, serves
// health on CHANGEOVER_HEALTH_ADDR, sends READY=1, and drains on SIGTERM.
// HELPER_MODE makes it misbehave.
func helperServer() int {
	mode := os.Getenv(envMode)
	if dir := os.Getenv(envPidDir); dir != "" {
		_ = os.WriteFile(filepath.Join(dir, strconv.Itoa(os.Getpid())), nil, 0o644)
	}
	term := make(chan os.Signal, 1)
	if mode == "ignore-term" {
		signal.Ignore(syscall.SIGTERM)
	} else {
		signal.Notify(term, syscall.SIGTERM)
	}
	if mode == "exit" {
		fmt.Fprintln(os.Stderr, "helper: exiting at start as asked")
		return 1
	}
	version := os.Getenv(envVersion)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "version=%s pid=%d\n", version, os.Getpid())
	})}
	bindAfter, _ := time.ParseDuration(os.Getenv(envBindAfterReady))
	listen := func() bool {
		lc := net.ListenConfig{Control: reuseport.Control}
		ln, err := lc.Listen(context.Background(), "tcp", os.Getenv(envAddr))
		if err != nil {
			fmt.Fprintf(os.Stderr, "helper: %v\n", err)
			return false
		}
		go srv.Serve(ln)
		return true
	}
	if bindAfter == 0 && !listen() {
		return 1
	}
	if os.Getenv(envPrivatePort) != "" {
		pl, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			fmt.Fprintf(os.Stderr, "helper: private port: %v\n", err)
			return 1
		}
		go http.Serve(pl, http.NotFoundHandler())
	}
	if h := os.Getenv(healthcheck.EnvHealthAddr); h != "" {
		hl, err := net.Listen("tcp", h)
		if err != nil {
			fmt.Fprintf(os.Stderr, "helper: health: %v\n", err)
			return 1
		}
		go http.Serve(hl, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if mode == "never-ready" {
				http.Error(w, "never ready", http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintln(w, "ok")
		}))
	}
	if f := os.Getenv(envOrphan); f != "" {
		// sh exits at once; its background child is re-parented to the
		// supervisor (a subreaper), writes its PID and exits.
		script := `(echo $(exec sh -c 'echo $PPID') > "$0.tmp"; mv "$0.tmp" "$0"; sleep 0.2) &`
		_ = exec.Command("/bin/sh", "-c", script, f).Run()
	}
	if d, err := time.ParseDuration(os.Getenv(envReadyDelay)); err == nil {
		time.Sleep(d)
	}
	if mode != "never-ready" {
		daemon.SdNotify(false, "READY=1\nSTATUS=serving "+version)
	}
	if bindAfter > 0 {
		time.Sleep(bindAfter)
		if !listen() {
			return 1
		}
	}
	crash := make(<-chan time.Time)
	if f := os.Getenv(envCrashOnce); mode == "crash" || f != "" && os.Remove(f) == nil {
		crash = time.After(200 * time.Millisecond)
	}
	select {
	case <-crash:
		fmt.Fprintln(os.Stderr, "helper: crashing as asked")
		return 3
	case <-term:
	}
	daemon.SdNotify(false, "STOPPING=1")
	drain, _ := time.ParseDuration(os.Getenv(healthcheck.EnvDrainTimeout))
	ctx, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		return 1
	}
	return 0
}
