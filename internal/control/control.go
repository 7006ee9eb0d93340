//go:build linux

package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/changeover-dev/changeover/internal/private"
)

// Request is what a client asks.
type Request struct {
	Op string `json:"op"` // "reload", "status", "stop"
}

// Response is the answer. Code is the exit code the client should use.
type Response struct {
	Code  int             `json:"code"`
	Error string          `json:"error,omitempty"`
	Body  json.RawMessage `json:"body,omitempty"`
}

// Peer is the credentials of a client.
type Peer struct{ PID, UID, GID int }

// Handler answers requests.
type Handler func(ctx context.Context, peer Peer, req Request) Response

// ErrInUse means a live supervisor holds the socket.
var ErrInUse = errors.New("control socket in use by a running supervisor")

// ErrNoSupervisor means no running supervisor could be found.
var ErrNoSupervisor = errors.New("no running supervisor found")

// DefaultDir is $XDG_RUNTIME_DIR/changeover, else /run/changeover.
func DefaultDir() string {
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "changeover")
	}
	return "/run/changeover"
}

// DefaultPath is DefaultDir()/NAME.sock.
func DefaultPath(name string) string { return filepath.Join(DefaultDir(), name+".sock") }

// Server is a listening control socket.
type Server struct {
	path string
	ln   *net.UnixListener
	lock *os.File // flock held on PATH.lock while listening

	mu     sync.Mutex // orders wg.Add in Serve before wg.Wait in Close
	closed bool
	wg     sync.WaitGroup
}

// Listen creates the socket at path. The directory is created 0700 if
// missing; it must be owned by the user and writable by no one else, or be
// a sticky directory such as /tmp (then the socket and lock files found
// there must be the user's). An existing directory's mode is never changed.
//
// Who holds the socket is decided by a lock, not by dialing it: Listen takes
// an exclusive flock on PATH.lock (created beside it, kept afterwards) and
// holds it until Close. If another process holds it, that is a live
// supervisor: ErrInUse. Once the lock is ours, a socket file at path was
// left by a dead supervisor and is replaced. (A dial can fail on a live
// socket, when its accept queue is full; a dial-then-remove would then
// unlink a live supervisor's socket.) The lock file is opened close-on-exec,
// so instances that outlive a killed supervisor do not hold it.
func Listen(path string) (*Server, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("control socket directory %s: %w", dir, err)
	}
	// A directory is never chmodded here: MkdirAll made a missing one
	// 0700, and one that existed is someone's choice (as root, chmodding
	// a shared /tmp to 0700 broke every other user of it). One that others
	// can write is accepted only with the sticky bit, where others cannot
	// remove or replace our files, and our socket and lock are checked to
	// be ours.
	if err := private.CheckDir(dir, private.DirOptions{Sticky: true}); err != nil {
		return nil, fmt.Errorf("control socket: %w (use a directory of your own, such as the default %s, or one with the sticky bit, such as /tmp)", err, DefaultDir())
	}
	lock, err := lockFile(path + ".lock")
	if err != nil {
		return nil, err
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			lock.Close()
			return nil, fmt.Errorf("control socket path %s exists and is not a socket", path)
		}
		// In a sticky shared directory, a socket of another user is not
		// a stale one of ours (root could unlink it).
		if st, ok := fi.Sys().(*syscall.Stat_t); !ok || int(st.Uid) != os.Geteuid() {
			lock.Close()
			return nil, fmt.Errorf("%w: control socket %s belongs to another user; not replacing it", private.ErrNotPrivate, path)
		}
		if err := os.Remove(path); err != nil {
			lock.Close()
			return nil, fmt.Errorf("remove stale control socket %s: %w", path, err)
		}
	}
	old := unix.Umask(0o177)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen on control socket %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(true)
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		lock.Close()
		return nil, fmt.Errorf("chmod control socket %s: %w", path, err)
	}
	return &Server{path: path, ln: ln, lock: lock}, nil
}

// lockFile opens (creating it 0600, never through a symlink) and locks
// path exclusively without waiting: ErrInUse if another process holds it.
// A lock file of another user is refused.
func lockFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("control socket lock %s: %w", path, err)
	}
	if err = private.CheckFile(f); err != nil {
		err = fmt.Errorf("control socket lock: %w", err)
	}
	if err == nil {
		if err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); errors.Is(err, unix.EWOULDBLOCK) {
			err = fmt.Errorf("%w: %s (lock %s held)", ErrInUse, strings.TrimSuffix(path, ".lock"), path)
		} else if err != nil {
			err = fmt.Errorf("lock %s: %w", path, err)
		}
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// Path is the socket path.
func (s *Server) Path() string { return s.path }

// Serve answers connections until Close. Each request runs with ctx.
func (s *Server) Serve(ctx context.Context, h Handler) error {
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("accept on %s: %w", s.path, err)
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return nil
		}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			defer c.Close()
			serveConn(ctx, c, h)
		}()
	}
}

func serveConn(ctx context.Context, c *net.UnixConn, h Handler) {
	peer, err := peerCred(c)
	if err != nil {
		_ = json.NewEncoder(c).Encode(Response{Code: 1, Error: err.Error()})
		return
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var req Request
	if err := json.NewDecoder(bufio.NewReader(c)).Decode(&req); err != nil {
		_ = json.NewEncoder(c).Encode(Response{Code: 2, Error: "bad request: " + err.Error()})
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	if req.Op != "status" && peer.UID != 0 && peer.UID != os.Getuid() {
		_ = json.NewEncoder(c).Encode(Response{Code: 1,
			Error: fmt.Sprintf("permission denied: uid %d may not %s a supervisor of uid %d", peer.UID, req.Op, os.Getuid())})
		return
	}
	// A client that goes away cancels nothing: a reload it asked for runs on.
	resp := h(ctx, peer, req)
	_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_ = json.NewEncoder(c).Encode(resp)
}

func peerCred(c *net.UnixConn) (Peer, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return Peer{}, fmt.Errorf("peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Peer{}, fmt.Errorf("peer credentials: %w", err)
	}
	if cerr != nil {
		return Peer{}, fmt.Errorf("peer credentials: %w", cerr)
	}
	return Peer{PID: int(cred.Pid), UID: int(cred.Uid), GID: int(cred.Gid)}, nil
}

// Close stops listening, removes the socket and waits for open requests.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	err := s.ln.Close()
	s.wg.Wait()
	s.lock.Close() // after the socket is gone: the next supervisor may take it
	return err
}

// Call sends req to the supervisor at path and returns its response.
func Call(ctx context.Context, path string, req Request) (Response, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return Response{}, fmt.Errorf("connect to control socket %s: %w", path, err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Now()) })
	defer stop()
	if err := json.NewEncoder(c).Encode(req); err != nil {
		return Response{}, fmt.Errorf("send %s to %s: %w", req.Op, path, err)
	}
	var resp Response
	if err := json.NewDecoder(c).Decode(&resp); err != nil {
		return Response{}, fmt.Errorf("read answer to %s from %s: %w", req.Op, path, err)
	}
	return resp, nil
}

// FindOnly returns the socket of the only running supervisor in dir.
func FindOnly(dir string) (string, error) {
	matches, _ := filepath.Glob(filepath.Join(dir, "*.sock"))
	var live []string
	for _, m := range matches {
		c, err := net.DialTimeout("unix", m, time.Second)
		if err == nil {
			c.Close()
			live = append(live, m)
		}
	}
	sort.Strings(live)
	switch len(live) {
	case 0:
		return "", fmt.Errorf("%w in %s (use --control or --name)", ErrNoSupervisor, dir)
	case 1:
		return live[0], nil
	}
	names := make([]string, len(live))
	for i, l := range live {
		names[i] = strings.TrimSuffix(filepath.Base(l), ".sock")
	}
	return "", fmt.Errorf("%d supervisors running in %s (%s): choose one with --name or --control", len(live), dir, strings.Join(names, ", "))
}
