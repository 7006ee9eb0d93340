//go:build linux

package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestNoReadyHint: a server that never sends READY=1 (one that does not
// speak sd_notify, here sleep) fails generation 1 with exit 4, and the
// error says what to do: --notify=false with a --health probe on
// {health_addr}.
func TestNoReadyHint(t *testing.T) {
	e := newEnv(t)
	silent := filepath.Join(e.dir, "silent.sh")
	if err := os.WriteFile(silent, []byte("#!/bin/sh\nexec sleep 60\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	p := e.startCommand(silent, "--ready-timeout", "500ms")
	err := p.wait(t, 15*time.Second)
	if code := exitCode(err); code != exitNotReady {
		t.Errorf("exit %d, want %d: %v", code, exitNotReady, err)
	}
	for _, w := range []string{"no READY=1", "--notify=false", "--health http://{health_addr}/"} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q: %v", w, err)
		}
	}
}
