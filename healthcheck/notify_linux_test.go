//go:build linux

package healthcheck

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// bound is how long a test waits for something that should happen at once
// before it fails.
const bound = 10 * time.Second

// listenNotify creates a notify socket in a fresh temporary directory and
// closes it at the end of the test.
func listenNotify(t *testing.T, opts NotifyOptions) *NotifySocket {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(t.Output(), nil))
	}
	n, err := ListenNotify(filepath.Join(t.TempDir(), "notify.sock"), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return n
}

func send(t *testing.T, n *NotifySocket, msg string) {
	t.Helper()
	if err := sendDatagram(n.Path(), msg); err != nil {
		t.Fatal(err)
	}
}

func waitClosed(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(bound):
		t.Fatalf("%s not closed within %v", what, bound)
	}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func receive(t *testing.T, n *NotifySocket) NotifyMessage {
	t.Helper()
	select {
	case m, ok := <-n.Messages():
		if !ok {
			t.Fatal("Messages closed")
		}
		return m
	case <-time.After(bound):
		t.Fatalf("no message within %v", bound)
		return NotifyMessage{}
	}
}

func TestNotifyReadyFromSelf(t *testing.T) {
	n := listenNotify(t, NotifyOptions{})
	fi, err := os.Stat(n.Path())
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket file mode = %v, want a socket with mode 0600", fi.Mode())
	}

	send(t, n, "STATUS=starting")
	m := receive(t, n)
	if m.PID != os.Getpid() || m.Fields["STATUS"] != "starting" {
		t.Errorf("first message = %+v, want STATUS=starting from PID %d", m, os.Getpid())
	}
	if isClosed(n.Ready()) {
		t.Fatal("Ready closed before READY=1")
	}

	send(t, n, "READY=1\nSTATUS=serving\n")
	waitClosed(t, n.Ready(), "Ready")
	if got := n.Status(); got != "serving" {
		t.Errorf("Status() = %q, want %q", got, "serving")
	}
	if m := receive(t, n); m.Fields["READY"] != "1" {
		t.Errorf("second message = %+v, want READY=1", m)
	}
	if isClosed(n.Stopping()) {
		t.Fatal("Stopping closed before STOPPING=1")
	}

	send(t, n, "STOPPING=1")
	waitClosed(t, n.Stopping(), "Stopping")
	send(t, n, "READY=1") // a second READY=1 must not close Ready again
	if m := receive(t, n); m.Fields["STOPPING"] != "1" {
		t.Errorf("third message = %+v, want STOPPING=1", m)
	}
	if m := receive(t, n); m.Fields["READY"] != "1" {
		t.Errorf("fourth message = %+v, want READY=1", m)
	}
	if got := n.Dropped(); got != 0 {
		t.Errorf("Dropped() = %d, want 0", got)
	}
}

func TestNotifyRejectedSenderIsDropped(t *testing.T) {
	// Allow rejects the first datagram and accepts the rest, so the
	// second message proves the first was read and dropped.
	var calls atomic.Int64
	n := listenNotify(t, NotifyOptions{Allow: func(pid int) bool { return calls.Add(1) > 1 }})
	send(t, n, "READY=1\nSTATUS=impostor")
	send(t, n, "STATUS=genuine")
	if m := receive(t, n); m.Fields["STATUS"] != "genuine" || len(m.Fields) != 1 {
		t.Errorf("first delivered message = %+v, want only STATUS=genuine", m)
	}
	if isClosed(n.Ready()) {
		t.Error("Ready closed by a rejected sender")
	}
	if got := n.Status(); got != "genuine" {
		t.Errorf("Status() = %q, want %q", got, "genuine")
	}
	if got := n.Dropped(); got != 1 {
		t.Errorf("Dropped() = %d, want 1", got)
	}
}

func TestNotifyMalformedIsDroppedAndLogged(t *testing.T) {
	var logs bytes.Buffer
	n := listenNotify(t, NotifyOptions{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	send(t, n, "READY=1\nthis is not a notify line")
	send(t, n, "READY=1")
	waitClosed(t, n.Ready(), "Ready")
	if got := n.Dropped(); got != 1 {
		t.Errorf("Dropped() = %d, want 1", got)
	}
	if got := len(n.Messages()); got != 1 {
		t.Errorf("%d messages queued, want 1", got)
	}
	if err := n.Close(); err != nil { // orders the log write before the read below
		t.Fatal(err)
	}
	for _, want := range []string{"dropped notify datagram", `missing '='`, fmt.Sprintf("pid=%d", os.Getpid())} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log %q does not contain %q", logs.String(), want)
		}
	}
}

func TestNotifyMessagesDropOldest(t *testing.T) {
	n := listenNotify(t, NotifyOptions{Buffer: 2})
	for i := 1; i <= 4; i++ {
		send(t, n, fmt.Sprintf("STATUS=%d", i))
	}
	send(t, n, "STATUS=5\nREADY=1")
	waitClosed(t, n.Ready(), "Ready") // by now message 5 is queued
	if got := len(n.Messages()); got != 2 {
		t.Fatalf("%d messages queued, want 2", got)
	}
	for _, want := range []string{"4", "5"} {
		if m := receive(t, n); m.Fields["STATUS"] != want {
			t.Errorf("message = %+v, want STATUS=%s", m, want)
		}
	}
}

func TestNotifyClose(t *testing.T) {
	n, err := ListenNotify(filepath.Join(t.TempDir(), "notify.sock"), NotifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := n.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := os.Stat(n.Path()); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket file after Close: %v, want it removed", err)
	}
	if _, ok := <-n.Messages(); ok {
		t.Error("Messages still open after Close")
	}
	if err := sendDatagram(n.Path(), "READY=1"); err == nil {
		t.Error("sending to a closed socket succeeded")
	}
}

func TestListenNotifyErrors(t *testing.T) {
	existing := filepath.Join(t.TempDir(), "taken")
	if err := os.WriteFile(existing, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for name, path := range map[string]string{
		"exists":   existing,
		"no dir":   filepath.Join(t.TempDir(), "missing", "notify.sock"),
		"too long": "/tmp/" + strings.Repeat("x", 200),
	} {
		t.Run(name, func(t *testing.T) {
			n, err := ListenNotify(path, NotifyOptions{})
			if err == nil {
				n.Close()
				t.Fatalf("ListenNotify(%q) succeeded", path)
			}
			if !strings.Contains(err.Error(), fmt.Sprintf("%q", path)) {
				t.Errorf("error %q does not quote the path", err)
			}
		})
	}
	if _, err := ListenNotify("", NotifyOptions{}); err == nil {
		t.Error("ListenNotify with an empty path succeeded")
	}
}

func TestReadCredentials(t *testing.T) {
	pid, err := readCredentials(unix.UnixCredentials(&unix.Ucred{Pid: 4242, Uid: 1, Gid: 2}))
	if err != nil || pid != 4242 {
		t.Errorf("readCredentials(pid 4242) = %d, %v", pid, err)
	}
	if _, err := readCredentials(nil); err == nil || !strings.Contains(err.Error(), "no sender credentials") {
		t.Errorf("readCredentials(nil) = %v, want a missing-credentials error", err)
	}
}

func TestInProcessGroupSelf(t *testing.T) {
	self := os.Getpid()
	if !InProcessGroup(syscall.Getpgrp())(self) {
		t.Error("InProcessGroup(own group) rejects this process")
	}
	if InProcessGroup(syscall.Getpgrp() + 1)(self) {
		t.Error("InProcessGroup(other group) accepts this process")
	}
	for _, pid := range []int{0, -1} {
		if InProcessGroup(syscall.Getpgrp())(pid) {
			t.Errorf("InProcessGroup accepts PID %d", pid)
		}
	}
}

// TestInProcessGroupChild starts this test binary as a child in its own
// process group and lets it send READY=1 to two sockets: one that admits
// the child's group and one that admits only the test's own group.
func TestInProcessGroupChild(t *testing.T) {
	var childPGID atomic.Int64 // set before the child may send
	inChildGroup := listenNotify(t, NotifyOptions{Allow: func(pid int) bool {
		return InProcessGroup(int(childPGID.Load()))(pid)
	}})
	type decision struct {
		pid     int
		allowed bool
	}
	decisions := make(chan decision, 1)
	ownGroup := syscall.Getpgrp()
	inOwnGroup := listenNotify(t, NotifyOptions{Allow: func(pid int) bool {
		ok := InProcessGroup(ownGroup)(pid)
		decisions <- decision{pid, ok}
		return ok
	}})

	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(),
		helperEnv+"=notify",
		EnvNotifySocket+"="+inChildGroup.Path(),
		helperSecondEnv+"="+inOwnGroup.Path(),
	)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	child := cmd.Process.Pid
	childPGID.Store(int64(child)) // Setpgid: the group id is the child's PID
	defer func() {
		stdin.Close() // lets the helper exit
		if err := cmd.Wait(); err != nil {
			t.Errorf("helper: %v; stderr:\n%s", err, stderr.String())
		}
	}()
	if _, err := stdin.Write([]byte("go\n")); err != nil {
		t.Fatal(err)
	}

	select {
	case <-inChildGroup.Ready():
	case <-time.After(bound):
		t.Fatalf("READY=1 from the child not accepted within %v; helper stderr:\n%s", bound, stderr.String())
	}
	if m := receive(t, inChildGroup); m.PID != child {
		t.Errorf("message from PID %d, want the child %d", m.PID, child)
	}
	if want := fmt.Sprintf("child %d", child); inChildGroup.Status() != want {
		t.Errorf("Status() = %q, want %q", inChildGroup.Status(), want)
	}

	select {
	case d := <-decisions:
		if d.pid != child || d.allowed {
			t.Errorf("InProcessGroup(test's group %d) decided %+v for the child %d, want a rejection", ownGroup, d, child)
		}
	case <-time.After(bound):
		t.Fatalf("no datagram from the child on the second socket within %v", bound)
	}
	// The direct check, while the child is certainly alive.
	if !InProcessGroup(child)(child) || InProcessGroup(ownGroup)(child) {
		t.Errorf("InProcessGroup misjudges the child %d in group %d", child, child)
	}
	if err := inOwnGroup.Close(); err != nil { // waits until the datagram is fully handled
		t.Fatal(err)
	}
	if isClosed(inOwnGroup.Ready()) || inOwnGroup.Dropped() != 1 {
		t.Errorf("socket for another group: Ready closed = %v, Dropped = %d; want open and 1",
			isClosed(inOwnGroup.Ready()), inOwnGroup.Dropped())
	}
}
