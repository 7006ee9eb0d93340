// Command demo is the server of changeover's demonstrations and tests. It
// serves, through package runner (so it shares its port with its next
// version and hands it over without losing a request):
//
//	/                    any method; reads and discards the body; answers
//	                     "version=V pid=N\n"
//	/sleep?duration=D    the same answer after sleeping D (a Go duration);
//	                     400 with the error text if D is missing or bad
//
// Its health handler is served on CHANGEOVER_HEALTH_ADDR when that is set.
//
// Usage:
//
//	demo [-addr 127.0.0.1:8080] [-version v1]
//
// Without -version, the version is $DEMO_VERSION, else v1: a release
// directory's env file (changeover run --env-file) can set it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"time"

	"github.com/changeover-dev/changeover/runner"
)

func main() {
	ctx, stop := runner.SignalContext(context.Background())
	defer stop()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		os.Exit(0)
	case errors.As(err, new(usageError)):
		os.Exit(2)
	case err != nil:
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

type usageError struct{ error }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:8080", "address to serve (shared with the next version)")
	defVersion := "v1"
	if v := os.Getenv("DEMO_VERSION"); v != "" {
		defVersion = v
	}
	version := fs.String("version", defVersion, "version to report in every answer (default $DEMO_VERSION, else v1)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}

	log := slog.New(slog.NewTextHandler(stderr, nil)).With("version", *version)
	r := runner.New(runner.Options{Logger: log})
	ln, err := r.Listen(ctx, "tcp", *addr)
	if err != nil {
		return err
	}
	r.ServeHTTP(&http.Server{Handler: Handler(*version), ReadHeaderTimeout: 10 * time.Second}, ln)
	log.Info("serving", "addr", ln.Addr().String(), "pid", os.Getpid())
	return r.Run(ctx)
}

// Handler serves the demo's two endpoints for version.
func Handler(version string) http.Handler {
	answer := fmt.Sprintf("version=%s pid=%d\n", version, os.Getpid())
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, answer)
	})
	mux.HandleFunc("/sleep", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		d, err := time.ParseDuration(r.URL.Query().Get("duration"))
		if err != nil {
			http.Error(w, "duration: "+err.Error(), http.StatusBadRequest)
			return
		}
		select {
		case <-time.After(d):
			io.WriteString(w, answer)
		case <-r.Context().Done():
		}
	})
	return mux
}
