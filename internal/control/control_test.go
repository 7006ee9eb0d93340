//go:build linux

package control

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/changeover-dev/changeover/internal/private"
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

// TestListenNeverUnlinksLive: a live supervisor's socket is never taken for
// a stale one, even when a dial to it fails. A dial fails on a live socket
// whose accept queue is full (a busy supervisor): connect(2) on a unix
// socket then returns EAGAIN.
func TestListenNeverUnlinksLive(t *testing.T) {
	path := filepath.Join(t.TempDir(), "live.sock")
	srv, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	// Fill its accept queue (it does not Serve): somaxconn connections,
	// bounded.
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	full := false
	for range 70000 {
		c, err := net.DialTimeout("unix", path, 100*time.Millisecond)
		if err != nil {
			full = true
			break
		}
		conns = append(conns, c)
	}
	if !full {
		t.Fatalf("accept queue of %s not full after %d connections", path, len(conns))
	}
	before, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	second, err := Listen(path)
	if err == nil {
		second.Close()
	}
	if !errors.Is(err, ErrInUse) {
		t.Errorf("Listen beside a live, busy supervisor: %v, want ErrInUse", err)
	}
	after, err := os.Stat(path)
	if err != nil || !os.SameFile(before, after) {
		t.Errorf("the live supervisor's socket %s was replaced or removed (%v)", path, err)
	}
}

// TestSecurityListenNeverChmodsSharedDir: Listen in a sticky directory
// writable by all (as /tmp) leaves its mode alone, and a directory of ours
// that others can write without the sticky bit is refused, not chmodded.
// (Issue 11 review: as root, --control /tmp/x.sock made /tmp 0700.) A
// socket or lock of another user in the sticky directory is refused.
func TestSecurityListenNeverChmodsSharedDir(t *testing.T) {
	shared := t.TempDir()
	if err := os.Chmod(shared, os.ModePerm|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	srv, err := Listen(filepath.Join(shared, "x.sock"))
	if err != nil {
		t.Fatalf("Listen in a sticky shared directory: %v", err)
	}
	srv.Close()
	if fi, err := os.Stat(shared); err != nil || fi.Mode()&(os.ModePerm|os.ModeSticky) != os.ModePerm|os.ModeSticky {
		t.Errorf("sticky shared directory mode after Listen: %v (%v), want drwxrwxrwt", fi.Mode(), err)
	}

	open := t.TempDir()
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	if srv, err := Listen(filepath.Join(open, "x.sock")); err == nil {
		srv.Close()
		t.Errorf("Listen in a directory writable by others (not sticky) succeeded")
	}
	if fi, err := os.Stat(open); err != nil || fi.Mode().Perm() != 0o777 {
		t.Errorf("open directory mode after Listen: %v (%v), want 0777 untouched", fi.Mode(), err)
	}

	if os.Geteuid() != 0 {
		t.Skip("chown to another user needs root")
	}
	for _, planted := range []string{"y.sock.lock", "z.sock"} {
		p := filepath.Join(shared, planted)
		if planted == "z.sock" {
			ln, err := net.Listen("unix", p)
			if err != nil {
				t.Fatal(err)
			}
			ln.(*net.UnixListener).SetUnlinkOnClose(false)
			ln.Close()
		} else if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(p, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		sock := strings.TrimSuffix(p, ".lock")
		if srv, err := Listen(sock); err == nil {
			srv.Close()
			t.Errorf("Listen at %s beside %s of uid 65534 succeeded", sock, p)
		} else if !errors.Is(err, private.ErrNotPrivate) {
			t.Errorf("Listen at %s beside %s of uid 65534: %v, want ErrNotPrivate", sock, p, err)
		}
		if fi, err := os.Lstat(p); err != nil {
			t.Errorf("%s of another user was removed: %v", p, err)
		} else if st := fi.Sys().(*syscall.Stat_t); st.Uid != 65534 {
			t.Errorf("%s now owned by %d", p, st.Uid)
		}
	}
}
