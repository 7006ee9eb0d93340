//go:build linux

package control

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestListenCallAndStale(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "x.sock")
	srv, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	// Leave a stale socket file behind at Close, as a killed supervisor
	// does. (Set before Serve runs: it is not safe beside Accept.)
	srv.ln.SetUnlinkOnClose(false)
	done := make(chan error, 1)
	go func() {
		done <- srv.Serve(context.Background(), func(_ context.Context, p Peer, r Request) Response {
			if p.UID != os.Getuid() || p.PID != os.Getpid() {
				return Response{Code: 1, Error: "bad peer"}
			}
			return Response{Body: []byte(`"` + r.Op + `"`)}
		})
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := Call(ctx, path, Request{Op: "status"})
	if err != nil || resp.Code != 0 || string(resp.Body) != `"status"` {
		t.Fatalf("Call: %+v %v", resp, err)
	}
	if _, err := Listen(path); !errors.Is(err, ErrInUse) {
		t.Errorf("second Listen: %v, want ErrInUse", err)
	}
	if found, err := FindOnly(filepath.Dir(path)); err != nil || found != path {
		t.Errorf("FindOnly = %q, %v", found, err)
	}
	srv.Close()
	if err := <-done; err != nil {
		t.Errorf("Serve: %v", err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("stale socket not left: %v", err)
	}
	srv2, err := Listen(path)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	srv2.Close()
	if _, err := FindOnly(filepath.Dir(path)); !errors.Is(err, ErrNoSupervisor) {
		t.Errorf("FindOnly with none: %v", err)
	}
}
