// Command benchserver is the one server that bench/ runs under every restart
// method. The handler is the same for every method; only the way the
// listening socket is obtained and handed over differs (-method).
//
//	/                 any method; reads and discards the body; "version=V pid=N\n"
//	/sleep?duration=D sleeps D (max 60s), then answers like /
//
// It prints "READY pid=N" on stdout once it serves, and drains with
// http.Server.Shutdown when told to stop.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/cloudflare/tableflip"
	reuseport "github.com/libp2p/go-reuseport"
)

var (
	method       = flag.String("method", "plain", "tableflip | tableflip-careful | fdpass | naive | plain | runner")
	addr         = flag.String("addr", "127.0.0.1:8080", "address to listen on (loopback only)")
	version      = flag.String("version", "1", "version reported in responses")
	drainTimeout = flag.Duration("drain-timeout", 30*time.Second, "upper bound for the drain; the process exits 1s after it (not for -method runner, which follows CHANGEOVER_DRAIN_TIMEOUT)")
)

// fdpassEnv marks a child started by the fd-passing method; the listener is fd 3.
const fdpassEnv = "BENCHSERVER_FDPASS_LISTENER"

func main() {
	flag.Parse()
	log.SetPrefix(fmt.Sprintf("benchserver[%s %d] ", *method, os.Getpid()))
	log.SetFlags(log.Lmicroseconds)
	if host, _, err := net.SplitHostPort(*addr); err != nil || host != "127.0.0.1" {
		log.Fatalf("-addr must be 127.0.0.1:PORT, got %q", *addr)
	}
	var err error
	switch *method {
	case "plain":
		err = runPlain(false)
	case "naive":
		err = runPlain(true)
	case "fdpass":
		err = runFDPass()
	case "tableflip":
		err = runTableflip(false)
	case "tableflip-careful":
		err = runTableflip(true)
	case "runner":
		err = runRunner()
	default:
		err = fmt.Errorf("unknown -method %q", *method)
	}
	if err != nil {
		log.Fatal(err)
	}
}

func versionString() string {
	// Under the changeover supervisor each generation gets its number.
	if g := os.Getenv("CHANGEOVER_GENERATION"); g != "" {
		return *version + "." + g
	}
	return *version
}

func handler() http.Handler {
	v := versionString()
	pid := os.Getpid()
	reply := func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("X-Pid", strconv.Itoa(pid))
		fmt.Fprintf(w, "version=%s pid=%d\n", v, pid)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/sleep", func(w http.ResponseWriter, r *http.Request) {
		d, err := time.ParseDuration(r.URL.Query().Get("duration"))
		if err != nil || d < 0 || d > time.Minute {
			http.Error(w, "bad duration", http.StatusBadRequest)
			return
		}
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			return
		}
		reply(w, r)
	})
	mux.HandleFunc("/", reply)
	return mux
}

func newServer() *http.Server {
	return &http.Server{Handler: handler(), ReadHeaderTimeout: 10 * time.Second}
}

func ready() {
	fmt.Printf("READY pid=%d\n", os.Getpid())
}

// shutdown calls srv.Shutdown bounded by timeout and exits the process a
// second after it regardless.
func shutdown(srv *http.Server, timeout time.Duration) error {
	start := time.Now()
	log.Println("draining")
	// The hammer (endless, tableflip's example): Shutdown's context does not
	// bound its wait for Serve to return, which can hang when a listener's
	// accept is stuck in the kernel, so exit at the deadline regardless.
	time.AfterFunc(timeout+time.Second, func() {
		log.Printf("drain did not finish within %v: exiting", timeout)
		os.Exit(1)
	})
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err := srv.Shutdown(ctx)
	log.Printf("drained in %v (err=%v)", time.Since(start).Round(time.Millisecond), err)
	return err
}

// runPlain serves until SIGTERM/SIGINT, then calls Shutdown at once. With
// reuse it binds with SO_REUSEPORT so that a new instance can bind beside
// it (the "naive" method); without, it is the stop-then-start server.
func runPlain(reuse bool) error {
	lc := net.ListenConfig{}
	if reuse {
		lc.Control = reuseport.Control
	}
	ln, err := lc.Listen(context.Background(), "tcp", *addr)
	if err != nil {
		return err
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	srv := newServer()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	ready()
	select {
	case <-sig:
	case err := <-errc:
		return err
	}
	return shutdown(srv, *drainTimeout)
}

// runTableflip follows tableflip's README / http example: SIGHUP upgrades,
// the old process drains with Shutdown once Exit is closed. With careful,
// the old process drains the careful way instead (carefulDrain), so that
// the bench can tell the losses of tableflip's handover from those of a
// drain that calls Shutdown at once.
func runTableflip(careful bool) error {
	upg, err := tableflip.New(tableflip.Options{UpgradeTimeout: 30 * time.Second})
	if err != nil {
		return err
	}
	defer upg.Stop()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		for s := range sig {
			if s != syscall.SIGHUP {
				upg.Stop()
				continue
			}
			if err := upg.Upgrade(); err != nil {
				log.Println("upgrade failed:", err)
			}
		}
	}()
	ln, err := upg.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	srv := newServer()
	var drain *connTracker
	if careful {
		drain = trackConns(srv)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		if err := srv.Serve(ln); err != http.ErrServerClosed && !(careful && errors.Is(err, net.ErrClosed)) {
			log.Println("serve:", err)
		}
	}()
	if err := upg.Ready(); err != nil {
		return err
	}
	ready()
	<-upg.Exit()
	if careful {
		return carefulDrain(srv, ln, served, drain)
	}
	return shutdown(srv, *drainTimeout)
}

// runFDPass is the fd-passing pattern of facebookgo/grace and fvbock/endless:
// on SIGHUP fork/exec self with the listener as fd 3 (ExtraFiles); the child
// serves on it and then signals its parent (SIGTERM), which drains through
// Shutdown.
func runFDPass() error {
	var ln net.Listener
	child := os.Getenv(fdpassEnv) == "3"
	if child {
		f := os.NewFile(3, "listener")
		l, err := net.FileListener(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("inherited listener: %w", err)
		}
		ln = l
	} else {
		l, err := net.Listen("tcp", *addr)
		if err != nil {
			return err
		}
		ln = l
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	srv := newServer()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	ready()
	if child {
		// grace and endless: the child tells the parent to stop once it serves.
		ppid := os.Getppid()
		if err := syscall.Kill(ppid, syscall.SIGTERM); err != nil {
			log.Println("signal parent:", err)
		} else {
			log.Printf("serving; sent SIGTERM to parent %d", ppid)
		}
	}
	forked := false
	for {
		select {
		case err := <-errc:
			return err
		case s := <-sig:
			if s != syscall.SIGHUP {
				log.Println("got", s)
				return shutdown(srv, *drainTimeout)
			}
			log.Println("got SIGHUP: fork")
			if forked {
				log.Println("already forked; ignoring SIGHUP")
				continue
			}
			if err := fork(ln); err != nil {
				log.Println("fork:", err)
				continue
			}
			forked = true
		}
	}
}

func fork(ln net.Listener) error {
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		return err
	}
	defer f.Close()
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	env := append(os.Environ(), fdpassEnv+"=3")
	p, err := os.StartProcess(exe, os.Args, &os.ProcAttr{
		Env:   env,
		Files: []*os.File{os.Stdin, os.Stdout, os.Stderr, f},
	})
	if err != nil {
		return err
	}
	return p.Release()
}
