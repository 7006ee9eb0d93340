//go:build linux

package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestControlSocket: created 0600 in a 0700 directory; a second supervisor
// with the same socket is refused naming it; a stale socket is reused.
func TestControlSocket(t *testing.T) {
	e := newEnv(t)
	e.sock = filepath.Join(e.dir, "rt", "changeover", "app.sock")
	p := e.startInProcess("--name", "app")
	e.waitServing(p, 1)
	for path, want := range map[string]os.FileMode{e.sock: 0o600, filepath.Dir(e.sock): 0o700} {
		fi, err := os.Stat(path)
		if err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v (%v)", path, fi.Mode().Perm(), want, err)
		}
	}
	code, _, stderr := cli(e.runArgs("--name", "app")...)
	if code != 1 || !strings.Contains(stderr, "in use") || !strings.Contains(stderr, e.sock) {
		t.Errorf("second supervisor: exit %d: %s", code, stderr)
	}
	// Found without --control or --name when it is the only one.
	t.Setenv("XDG_RUNTIME_DIR", filepath.Join(e.dir, "rt"))
	if code, out, stderr := cli("status"); code != 0 || !strings.Contains(out, "supervisor app") {
		t.Errorf("status without --control: exit %d: %s %s", code, out, stderr)
	}
	if code, out, _ := cli("status", "--name", "app"); code != 0 || !strings.Contains(out, "generation 1 serving") {
		t.Errorf("status --name: exit %d: %s", code, out)
	}
}
