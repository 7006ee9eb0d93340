//go:build linux

package supervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/changeover-dev/changeover/internal/proc"
	"github.com/changeover-dev/changeover/internal/reaper"
)

// SwapConfig configures Swap.
type SwapConfig struct {
	Pidfile      string // holds "PID STARTTICKS GENERATION HEALTH_ADDR"
	LogFile      string // instance stdout and stderr (appended)
	Launch       Launch // Stdout/Stderr/Relay/Setsid are set by Swap
	Probes       []string
	Notify       bool
	ReadyTimeout time.Duration
	Log          *slog.Logger
}

// SwapResult says what Swap did.
type SwapResult struct {
	Generation int
	PID        int
	OldPID     int // 0 on a first deploy
	OldKilled  bool
}

// pidRecord is the content of a swap pidfile.
type pidRecord struct {
	PID    int
	Ticks  uint64
	Gen    int
	Health string
}

func parsePidfile(path string) (*pidRecord, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: read pidfile %s: %w; nothing touched", ErrUsage, path, err)
	}
	f := strings.Fields(string(b))
	bad := fmt.Errorf("%w: pidfile %s holds %q, want \"PID STARTTIME [GENERATION [HEALTH_ADDR]]\"; nothing touched", ErrUsage, path, strings.TrimSpace(string(b)))
	if len(f) < 1 || len(f) > 4 {
		return nil, bad
	}
	var r pidRecord
	if r.PID, err = strconv.Atoi(f[0]); err != nil || r.PID <= 1 {
		return nil, bad
	}
	if len(f) > 1 {
		if r.Ticks, err = strconv.ParseUint(f[1], 10, 64); err != nil {
			return nil, bad
		}
	}
	r.Gen = 1
	if len(f) > 2 {
		if r.Gen, err = strconv.Atoi(f[2]); err != nil || r.Gen < 1 {
			return nil, bad
		}
	}
	if len(f) > 3 {
		r.Health = f[3]
	}
	return &r, nil
}

// Swap starts the command detached (own session, output to LogFile), waits
// until it is ready, writes it to the pidfile and retires the process named
// there. Two Swaps on one pidfile are serialised by a flock on PIDFILE.lock.
func Swap(ctx context.Context, cfg SwapConfig) (*SwapResult, error) {
	log := cfg.Log
	lock, err := os.OpenFile(cfg.Pidfile+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("%w: lock for pidfile %s: %w; nothing touched", ErrUsage, cfg.Pidfile, err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return nil, fmt.Errorf("lock %s: %w", lock.Name(), err)
	}
	defer unix.Flock(int(lock.Fd()), unix.LOCK_UN)

	rec, err := parsePidfile(cfg.Pidfile)
	if err != nil {
		return nil, err
	}
	probe, err := os.CreateTemp(filepath.Dir(cfg.Pidfile), "."+filepath.Base(cfg.Pidfile)+".tmp*")
	if err != nil {
		return nil, fmt.Errorf("%w: pidfile %s is not writable: %w; nothing touched", ErrUsage, cfg.Pidfile, err)
	}
	probe.Close()
	os.Remove(probe.Name())

	var old *Instance
	gen := 1
	if rec != nil {
		gen = rec.Gen + 1
		st, err := proc.ReadStat(rec.PID)
		switch {
		case err != nil || st.State == 'Z':
			log.Warn("pidfile names a process that is gone; first deploy", "pidfile", cfg.Pidfile, KeyPID, rec.PID)
		case rec.Ticks != 0 && st.StartTime != rec.Ticks:
			log.Warn("pidfile names a reused PID (start time differs); not signalling it; first deploy",
				"pidfile", cfg.Pidfile, KeyPID, rec.PID, "want_start", rec.Ticks, "have_start", st.StartTime)
		default:
			old = adopt(rec.Gen, rec.PID, st.PGID, st.StartTime, rec.Health)
			if st.PGID != rec.PID || st.PGID == unix.Getpgrp() {
				old.PGID = 0 // not a group of its own: signal the PID alone
			}
		}
	}

	logPath := cfg.LogFile
	if logPath == "" {
		logPath = strings.TrimSuffix(cfg.Pidfile, ".pid") + ".log"
	}
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open instance log %s: %w", logPath, err)
	}
	defer lf.Close()
	offset, _ := lf.Seek(0, 2)

	l := cfg.Launch
	l.Stdout, l.Stderr, l.Relay, l.Setsid = lf, lf, nil, true
	if l.RuntimeDir == "" {
		l.RuntimeDir = filepath.Dir(cfg.Pidfile)
	}
	rp := reaper.New(log, false)
	defer rp.Close()
	s := New(Config{Launch: l, Probes: cfg.Probes, Notify: cfg.Notify, ReadyTimeout: cfg.ReadyTimeout, Log: log, Reaper: rp})
	in, err := s.startReady(ctx, gen, old)
	if err != nil {
		if tail := fileTail(logPath, offset, 5); tail != "" && !strings.Contains(err.Error(), "last stderr") {
			err = fmt.Errorf("%w; last lines of %s: %s", err, logPath, tail)
		}
		return nil, err
	}
	in.closeNotify()
	content := fmt.Sprintf("%d %d %d %s\n", in.PID, in.StartTicks, gen, in.HealthAddr)
	if err := writeFileAtomic(cfg.Pidfile, []byte(content), 0o644); err != nil {
		killGroupAndWait(in)
		return nil, fmt.Errorf("new instance killed: %w", err)
	}
	log.Info("generation ready", KeyGeneration, gen, KeyPID, in.PID, "pidfile", cfg.Pidfile)
	res := &SwapResult{Generation: gen, PID: in.PID}
	if old == nil {
		return res, nil
	}
	res.OldPID = old.PID
	start := time.Now()
	out := stopInstance(old, &l, l.DrainTimeout, nil, log)
	res.OldKilled = out.Killed
	logStopped(log, old, out, start)
	return res, nil
}

// fileTail returns up to n last lines of path after offset.
func fileTail(path string, offset int64, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return ""
	}
	if fi.Size()-offset > 8192 {
		offset = fi.Size() - 8192
	}
	buf := make([]byte, fi.Size()-offset)
	if _, err := f.ReadAt(buf, offset); err != nil {
		return ""
	}
	t := newTail(8192)
	t.Write(buf)
	return t.Lines(n)
}
