package main

import (
	"context"
	"fmt"
	"os"

	"github.com/changeover-dev/changeover/runner"
)

// runRunner serves through the project's runner library: an SO_REUSEPORT
// listener with the zero-loss handover, READY=1 on NOTIFY_SOCKET, and a
// drain when SIGTERM/SIGINT cancels the context.
func runRunner() error {
	ctx, stop := runner.SignalContext(context.Background())
	defer stop()
	r := runner.New(runner.Options{})
	ln, err := r.Listen(ctx, "tcp", *addr)
	if err != nil {
		return err
	}
	r.ServeHTTP(newServer(), ln)
	go func() {
		select {
		case <-r.Ready():
			ready()
		case <-ctx.Done():
		}
	}()
	if err := r.Run(ctx); err != nil {
		return fmt.Errorf("runner: %w", err)
	}
	fmt.Fprintf(os.Stderr, "benchserver[runner %d] drained\n", os.Getpid())
	return nil
}
