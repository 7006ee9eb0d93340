//go:build linux

package main

import (
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMigrateReqFlag: --tcp-migrate-req sets the sysctl for the network
// namespace the supervisor and its instances share. It runs in a network
// namespace of its own, so the machine's setting is not touched.
func TestMigrateReqFlag(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("not root: cannot make a network namespace to set tcp_migrate_req in")
	}
	dir := t.TempDir()
	out, err := os.CreateTemp(dir, "out")
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd := exec.Command(os.Args[0], "run", "--control", dir+"/c.sock", "--tcp-migrate-req",
		"--notify=false", "--health", "exec:true", "--drain-timeout", "1s",
		"--", "/bin/sh", "-c", "echo migrate=$(cat /proc/sys/net/ipv4/tcp_migrate_req); exec sleep 30")
	cmd.Env = append(os.Environ(), envHelper+"=main")
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Cloneflags: syscall.CLONE_NEWNET}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	read := func() string { b, _ := os.ReadFile(out.Name()); return string(b) }
	waitFor(t, 10*time.Second, "the instance to print the sysctl", func() bool { return strings.Contains(read(), "migrate=") })
	if !strings.Contains(read(), "migrate=1") {
		t.Fatalf("instance saw tcp_migrate_req != 1:\n%s", read())
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("changeover run after SIGTERM: %v\n%s", err, read())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("changeover run did not exit after SIGTERM:\n%s", read())
	}
}
