//go:build linux

package reaper

import (
	"log/slog"
	"os/exec"
	"testing"
	"time"
)

func TestReaperReportsExitStatus(t *testing.T) {
	r := New(slog.New(slog.DiscardHandler), false)
	defer r.Close()
	c, err := r.Start(exec.Command("/bin/sh", "-c", "exit 7"))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("exit not reported")
	}
	if ex := c.Exit(); ex.Success() || ex.Status.ExitStatus() != 7 || ex.String() != "exit status 7" {
		t.Errorf("exit %v", ex)
	}
	// A command waited for with exec.Cmd.Wait keeps its status.
	if err := exec.Command("/bin/sh", "-c", "exit 0").Run(); err != nil {
		t.Errorf("Run beside the reaper: %v", err)
	}
}
