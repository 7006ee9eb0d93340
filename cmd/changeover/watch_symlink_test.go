//go:build linux

package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestWatchSymlinkFlip: with --watch, flipping a "current" symlink to another
// release reloads by itself, with that release's env file, working directory
// and binary (COMMAND relative to --dir).
func TestWatchSymlinkFlip(t *testing.T) {
	e := newEnv(t)
	for _, v := range []string{"1", "2"} {
		rel := filepath.Join(e.dir, "releases", v)
		if err := os.MkdirAll(rel, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(e.exe, filepath.Join(rel, "server")); err != nil {
			t.Fatal(err)
		}
		e.setEnv(v)
		b, _ := os.ReadFile(e.envFile)
		if err := os.WriteFile(filepath.Join(rel, "env"), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	current := filepath.Join(e.dir, "current")
	if err := os.Symlink(filepath.Join(e.dir, "releases", "1"), current); err != nil {
		t.Fatal(err)
	}
	args := []string{"run", "--control", e.sock, "--watch", "--watch-debounce", "200ms",
		"--env-file", filepath.Join(current, "env"), "--dir", current, "--", "./server"}
	p := &inProcess{errc: make(chan error, 1), stderr: &syncBuffer{}, stdout: &syncBuffer{}}
	ctx, cancel := contextWithCancel()
	p.cancel = cancel
	go func() { p.errc <- run(ctx, args, p.stdout, p.stderr) }()
	t.Cleanup(func() { cancel(); p.wait(t, 20*time.Second) })
	e.waitServing(p, 1)
	if got := get(e.addr); !strings.HasPrefix(got, "version=1 ") {
		t.Fatalf("served %q", got)
	}
	tmp := current + ".new"
	if err := os.Symlink(filepath.Join(e.dir, "releases", "2"), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, current); err != nil {
		t.Fatal(err)
	}
	st := e.waitServing(p, 2)
	if got := get(e.addr); !strings.HasPrefix(got, "version=2 ") {
		t.Errorf("served %q after the flip, want version 2", got)
	}
	if cwd, err := os.Readlink("/proc/" + strconv.Itoa(st.Generations[len(st.Generations)-1].PID) + "/cwd"); err != nil || cwd != filepath.Join(e.dir, "releases", "2") {
		t.Errorf("generation 2 runs in %q (%v), want releases/2", cwd, err)
	}
}
