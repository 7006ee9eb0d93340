//go:build linux

package main

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

const nobodyUID = 65534

// asNobody returns a command running this test binary as the changeover
// command under uid/gid 65534, from a copy in a 0755 directory that user
// can execute.
func asNobody(t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("needs root to run a client as another uid")
	}
	dir, err := os.MkdirTemp("", "changeover-sec")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	src, err := os.Open(exe)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	bin := filepath.Join(dir, "changeover")
	dst, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = []string{envHelper + "=main", "PATH=/usr/bin:/bin"}
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true,
		Credential: &syscall.Credential{Uid: nobodyUID, Gid: nobodyUID}}
	return cmd
}

// runNobody runs cmd with a time bound and returns its exit code and output.
func runNobody(t *testing.T, cmd *exec.Cmd) (int, string) {
	t.Helper()
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		t.Fatalf("client as uid %d did not exit; output:\n%s", nobodyUID, out.String())
	}
	return cmd.ProcessState.ExitCode(), out.String()
}

// TestSecurityControlSocketOtherUID: a client of another uid can neither
// reload nor stop the supervisor. By default the 0600 socket in its 0700
// directory cannot even be reached (permission denied, naming the socket);
// if an operator opened the permissions, the SO_PEERCRED check refuses
// the request. In both cases nothing happens to the serving instance.
func TestSecurityControlSocketOtherUID(t *testing.T) {
	e := newEnv(t)
	e.sock = filepath.Join(e.dir, "rt", "changeover", "app.sock")
	p := e.startInProcess("--name", "app")
	st := e.waitServing(p, 1)
	pid1 := servingPID(t, st)
	for _, op := range []string{"reload", "stop"} {
		code, out := runNobody(t, asNobody(t, op, "--control", e.sock))
		if code != 1 || !strings.Contains(out, e.sock) || !strings.Contains(out, "permission denied") {
			t.Errorf("%s as uid %d through the 0700 directory: exit %d, want 1 naming the socket:\n%s", op, nobodyUID, code, out)
		}
	}

	// Permissions opened by mistake: the supervisor still refuses.
	e2 := newEnv(t)
	for _, d := range []string{filepath.Dir(e2.dir), e2.dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	e2.sock = filepath.Join(e2.dir, "open", "app2.sock")
	if err := os.Mkdir(filepath.Dir(e2.sock), 0o755); err != nil {
		t.Fatal(err)
	}
	p2 := e2.startInProcess("--name", "app2")
	e2.waitServing(p2, 1)
	if err := os.Chmod(e2.sock, 0o666); err != nil {
		t.Fatal(err)
	}
	for _, op := range []string{"reload", "stop"} {
		code, out := runNobody(t, asNobody(t, op, "--control", e2.sock))
		want := "permission denied: uid 65534 may not " + op
		if code != 1 || !strings.Contains(out, want) {
			t.Errorf("%s as uid %d on a 0666 socket: exit %d, want 1 with %q:\n%s", op, nobodyUID, code, want, out)
		}
	}
	if code, out := runNobody(t, asNobody(t, "status", "--control", e2.sock)); code != 0 || !strings.Contains(out, "generation 1 serving") {
		t.Errorf("status as uid %d on a 0666 socket: exit %d:\n%s", nobodyUID, code, out)
	}
	for _, x := range []*env{e, e2} {
		st, err := x.status()
		if err != nil || st.Serving != 1 || st.LastReload == nil || st.LastReload.Generation != 1 || p.exited() || p2.exited() {
			t.Errorf("supervisor %s touched by another uid: %+v %v", x.sock, st, err)
		}
	}
	burst(t, e.addr, 50, "1", pid1)
}

// TestSecurityNotifyStranger: READY=1 sent to a new instance's notify
// socket by a process outside its process group does not make it ready:
// the reload fails and the old instance keeps every connection.
func TestSecurityNotifyStranger(t *testing.T) {
	e := newEnv(t)
	e.setFault(faultOK, "1")
	p := e.startInProcess("--ready-timeout", "8s")
	st := e.waitServing(p, 1)
	pid1 := servingPID(t, st)
	e.setFault(faultDark, "bad") // listens (dark), never healthy, never sends READY=1
	reload := make(chan string, 1)
	codes := make(chan int, 1)
	go func() { c, _, stderr := cli("reload", "--control", e.sock); codes <- c; reload <- stderr }()
	sock := e.notifySocket(os.Getpid(), 2)
	waitFor(t, 5*time.Second, "generation 2 notify socket", func() bool {
		_, err := os.Stat(sock)
		return err == nil
	})
	stranger := exec.Command(e.exe)
	stranger.Env = append(os.Environ(), envFault+"="+faultSendReady, "STRANGER_SOCKET="+sock)
	stranger.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := stranger.CombinedOutput()
	if err != nil {
		t.Fatalf("stranger could not send READY=1: %v %s", err, out)
	}
	code, stderr := <-codes, <-reload
	if code != exitNotReady || !strings.Contains(stderr, "no READY=1") {
		t.Errorf("reload after a stranger's READY=1: exit %d, want %d (no READY=1):\n%s", code, exitNotReady, stderr)
	}
	st = e.waitServing(p, 1)
	if g, ok := genByNumber(st, 2); !ok || g.State != "failed" {
		t.Errorf("generation 2: %+v", st.Generations)
	} else {
		groupGone(t, g.PGID)
	}
	burst(t, e.addr, 50, "1", pid1)
}
