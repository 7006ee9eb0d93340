package runner_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"

	"github.com/changeover-dev/changeover/runner"
)

// A server's main, in full: bind through the Runner, serve, drain on
// SIGTERM. (Here the context is cancelled by hand after one request.)
func ExampleRunner() {
	ctx, stop := runner.SignalContext(context.Background())
	defer stop()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	r := runner.New(runner.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	ln, err := r.Listen(ctx, "tcp", "127.0.0.1:0") // shared with the next version
	if err != nil {
		fmt.Println(err)
		return
	}
	r.ServeHTTP(&http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "hello\n")
	})}, ln)

	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }() // READY=1 goes to $NOTIFY_SOCKET, if set
	<-r.Ready()

	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + ln.Addr().String() + "/")
	if err != nil {
		fmt.Println(err)
		return
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Print(string(body))

	cancel() // what SIGTERM does
	fmt.Println("drained:", <-done)
	// Output:
	// hello
	// drained: <nil>
}
