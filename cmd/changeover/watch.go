//go:build linux

package main

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// fileID identifies what a path resolves to now: the directory it resolves
// in (a flipped "current" symlink changes it), the symlink's own target if
// it is one, and the final file's identity, size and mtime.
type fileID struct {
	dir    string
	link   string
	target string
	ino    uint64
	size   int64
	mtime  time.Time
}

func identify(cmd, dir string) (fileID, bool) {
	path := cmd
	if strings.Contains(cmd, "/") {
		if !filepath.IsAbs(cmd) && dir != "" {
			path = filepath.Join(dir, cmd)
		}
	} else if p, err := exec.LookPath(cmd); err == nil {
		path = p
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return fileID{}, false
	}
	fi, err := os.Stat(real)
	if err != nil {
		return fileID{}, false
	}
	rdir, _ := filepath.EvalSymlinks(filepath.Dir(path))
	link, _ := os.Readlink(path)
	id := fileID{dir: rdir, link: link, target: real, size: fi.Size(), mtime: fi.ModTime()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		id.ino = st.Ino
	}
	return id, true
}

// watchCommand polls COMMAND's file (through symlinks) and calls reload once
// a change has stayed unchanged for debounce, so that a binary still being
// copied is not started.
func watchCommand(ctx context.Context, cmd, dir string, debounce time.Duration, log *slog.Logger, reload func()) {
	const poll = 200 * time.Millisecond
	cur, _ := identify(cmd, dir)
	var cand fileID
	var since time.Time
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		id, ok := identify(cmd, dir)
		if !ok || id == cur {
			since = time.Time{}
			continue
		}
		if id != cand || since.IsZero() {
			cand, since = id, time.Now()
			continue
		}
		if time.Since(since) >= debounce && id.size > 0 && id.mtime.Before(time.Now().Add(-debounce/2)) {
			log.Info("command changed on disk; reloading", "path", id.target)
			cur = id
			since = time.Time{}
			reload()
		}
	}
}
