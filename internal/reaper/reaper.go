//go:build linux

package reaper

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/changeover-dev/changeover/internal/proc"
)

// Exit is how a child ended.
type Exit struct {
	Status unix.WaitStatus
	Lost   bool // someone else reaped it; the status is unknown
	Time   time.Time
}

func (e Exit) String() string {
	switch {
	case e.Lost:
		return "exited (status unknown)"
	case e.Status.Signaled():
		return "killed by signal " + e.Status.Signal().String()
	case e.Status.Exited():
		return fmt.Sprintf("exit status %d", e.Status.ExitStatus())
	}
	return fmt.Sprintf("wait status %#x", uint32(e.Status))
}

// Success reports a zero exit status.
func (e Exit) Success() bool { return !e.Lost && e.Status.Exited() && e.Status.ExitStatus() == 0 }

// Child is a started process whose exit the reaper reports.
type Child struct {
	PID  int
	done chan struct{}
	exit Exit
}

// Done is closed once the child has been reaped.
func (c *Child) Done() <-chan struct{} { return c.done }

// Exit is valid once Done is closed.
func (c *Child) Exit() Exit { <-c.done; return c.exit }

// Reaper reaps children. Create with New, stop with Close.
type Reaper struct {
	log     *slog.Logger
	orphans bool

	mu       sync.Mutex
	children map[int]*Child
	groups   map[int]bool      // process groups of children started here
	zombies  map[int]time.Time // unknown zombies, first seen

	kick chan struct{}
	quit chan struct{}
	wg   sync.WaitGroup
}

// New starts a reaper. If orphans is true, zombie children that were not
// started through Start (re-parented orphans) are reaped too.
func New(log *slog.Logger, orphans bool) *Reaper {
	r := &Reaper{
		log: log, orphans: orphans, children: map[int]*Child{},
		groups: map[int]bool{}, zombies: map[int]time.Time{},
		kick: make(chan struct{}, 1), quit: make(chan struct{}),
	}
	sig := make(chan os.Signal, 8)
	signal.Notify(sig, unix.SIGCHLD)
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer signal.Stop(sig)
		t := time.NewTicker(250 * time.Millisecond) // backstop for coalesced signals
		defer t.Stop()
		for {
			select {
			case <-r.quit:
				return
			case <-sig:
			case <-r.kick:
			case <-t.C:
			}
			r.reap()
		}
	}()
	return r
}

// Start starts cmd and registers it; never call cmd.Wait on it.
func (r *Reaper) Start(cmd *exec.Cmd) (*Child, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &Child{PID: cmd.Process.Pid, done: make(chan struct{})}
	r.children[c.PID] = c
	if a := cmd.SysProcAttr; a != nil && (a.Setpgid && a.Pgid == 0 || a.Setsid) {
		r.groups[c.PID] = true
	}
	_ = cmd.Process.Release() // we wait by PID; drop the pidfd
	return c, nil
}

func (r *Reaper) reap() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for pid, c := range r.children {
		var ws unix.WaitStatus
		got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		switch {
		case err != nil && errors.Is(err, unix.EINTR):
			continue
		case err != nil: // ECHILD: reaped elsewhere
			c.exit = Exit{Lost: true, Time: time.Now()}
		case got == pid:
			c.exit = Exit{Status: ws, Time: time.Now()}
		default:
			continue
		}
		delete(r.children, pid)
		close(c.done)
	}
	if !r.orphans {
		return
	}
	const grace = time.Second
	now := time.Now()
	zombies := map[int]time.Time{}
	for _, z := range proc.ZombieChildren(os.Getpid(), -1) {
		if _, ours := r.children[z.PID]; ours {
			continue
		}
		first, seen := r.zombies[z.PID]
		if !seen {
			first = now
		}
		if !r.groups[z.PGID] && now.Sub(first) < grace {
			zombies[z.PID] = first
			continue
		}
		var ws unix.WaitStatus
		if got, err := unix.Wait4(z.PID, &ws, unix.WNOHANG, nil); err == nil && got == z.PID {
			r.log.Debug("reaped orphan", "pid", z.PID, "status", Exit{Status: ws}.String())
		}
	}
	r.zombies = zombies
}

// Close stops reaping. Children still registered are not reported.
func (r *Reaper) Close() {
	close(r.quit)
	r.wg.Wait()
}
