//go:build linux

package supervisor

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/changeover-dev/changeover/internal/reaper"
)

// Stderr tail, and why a relay process.
//
// An instance's stderr must keep working when the supervisor dies (the
// instances keep serving), so it cannot be a pipe that the supervisor reads:
// a Go server writing to fd 2 after the reader is gone dies of SIGPIPE. Yet
// the supervisor wants the last lines of an instance's stderr to explain a
// failed start ("address already in use"). So the instance's stderr is a
// pipe read by a tiny relay process (this executable, re-run with
// EnvRelay=1), which copies every byte to the supervisor's stderr and a copy,
// best effort and never blocking, to a second pipe that the supervisor
// reads into a Tail. The relay ignores SIGTERM, SIGINT and SIGHUP, lives in
// its own process group and exits at EOF, i.e. when the instance (and every
// descendant holding its stderr) is gone: it outlives a killed supervisor.
// If the relay cannot be started the instance inherits stderr directly and
// no tail is kept.

// EnvRelay marks a re-executed changeover as a stderr relay.
const EnvRelay = "CHANGEOVER_INTERNAL_STDERR_RELAY"

// MaybeRelay runs the relay and exits if this process was started as one.
// Call it first thing in main (and in TestMain of tests that re-execute).
func MaybeRelay() {
	if os.Getenv(EnvRelay) != "1" {
		return
	}
	// SIGPIPE too: if our stdout (the supervisor's stderr, say a pipe to
	// tee) breaks, keep reading the instance's stderr and drop it, so the
	// instance's writes keep working. The relay execs nothing, so the
	// ignored disposition reaches no one else.
	signal.Ignore(unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGPIPE)
	in := os.NewFile(3, "instance-stderr")
	tail := os.NewFile(4, "tail")
	_ = unix.SetNonblock(4, true)
	buf := make([]byte, 32<<10)
	for {
		n, err := in.Read(buf)
		if n > 0 {
			_, _ = os.Stdout.Write(buf[:n])
			if tail != nil {
				if _, werr := unix.Write(4, buf[:n]); werr == unix.EPIPE || werr == unix.EBADF {
					tail = nil // supervisor gone
				}
			}
		}
		if err != nil {
			os.Exit(0)
		}
	}
}

// Tail keeps the last bytes written to it, up to a size.
type Tail struct {
	mu      sync.Mutex
	max     int
	buf     []byte
	drained chan struct{} // closed when drain has seen EOF
}

func newTail(max int) *Tail { return &Tail{max: max, drained: make(chan struct{})} }

// settle waits (bounded) until the writer side is closed: after the
// instance exits, the relay forwards its last bytes and exits.
func (t *Tail) settle(d time.Duration) {
	if t == nil {
		return
	}
	select {
	case <-t.drained:
	case <-time.After(d):
	}
}

func (t *Tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append([]byte(nil), t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

// Lines returns up to n last complete or partial lines.
func (t *Tail) Lines(n int) string {
	if t == nil {
		return ""
	}
	t.mu.Lock()
	b := bytes.TrimRight(t.buf, "\n")
	t.mu.Unlock()
	lines := bytes.Split(b, []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// drain copies r into t until EOF, then closes r.
func (t *Tail) drain(r io.ReadCloser) {
	defer close(t.drained)
	_, _ = io.Copy(t, r)
	_ = r.Close()
}

// relay is a stderr relay process that runs: stderr is the write end of
// the pipe it reads (the instance's stderr), tail the read end of the
// pipe it copies to.
type relay struct {
	stderr, tail *os.File
	proc         *reaper.Child
}

// alive reports whether the relay process still runs: a spare that died
// (killed by someone) would leave the instance a pipe nobody reads.
func (rl *relay) alive() bool {
	select {
	case <-rl.proc.Done():
		return false
	default:
		return true
	}
}

func (rl *relay) close() {
	rl.stderr.Close() // the relay reads EOF and exits
	rl.tail.Close()
}

// startRelay starts a stderr relay; nil if it cannot.
func startRelay(r *reaper.Reaper, l *Launch) *relay {
	ir, iw, err := os.Pipe()
	if err != nil {
		return nil
	}
	tr, tw, err := os.Pipe()
	if err != nil {
		ir.Close()
		iw.Close()
		return nil
	}
	cmd := exec.Command(l.Relay[0], l.Relay[1:]...)
	cmd.Env = append(os.Environ(), EnvRelay+"=1")
	cmd.Stdout = l.Stderr
	cmd.ExtraFiles = []*os.File{ir, tw}
	cmd.SysProcAttr = &unix.SysProcAttr{Setpgid: true}
	child, err := r.Start(cmd)
	ir.Close()
	tw.Close()
	if err != nil {
		iw.Close()
		tr.Close()
		return nil
	}
	return &relay{stderr: iw, tail: tr, proc: child}
}

// relayPool keeps one stderr relay started ahead for the next generation:
// starting a process (fork and exec of this executable) is then off the
// path from a reload's trigger to its new instance's start. A spare relay
// that is never used exits when the supervisor does: its pipe's write end
// closes, it reads EOF.
type relayPool struct {
	mu     sync.Mutex
	spare  *relay
	filled chan struct{} // closed once the refill under way has ended; nil: none under way
	closed bool
}

// take returns the spare relay (waiting for one being started), else starts
// one; then starts the next spare in the background. Nil if no relay could
// be started. A nil pool starts one each time.
func (p *relayPool) take(r *reaper.Reaper, l *Launch) *relay {
	if p == nil {
		return startRelay(r, l)
	}
	p.mu.Lock()
	filling := p.filled
	p.mu.Unlock()
	if filling != nil {
		<-filling
	}
	p.mu.Lock()
	rl := p.spare
	p.spare = nil
	if !p.closed {
		done := make(chan struct{})
		p.filled = done
		go func() {
			defer close(done)
			next := startRelay(r, l)
			p.mu.Lock()
			defer p.mu.Unlock()
			if p.closed || next == nil {
				if next != nil {
					next.close()
				}
				return
			}
			p.spare = next
		}()
	}
	p.mu.Unlock()
	if rl != nil && !rl.alive() {
		rl.close()
		rl = nil
	}
	if rl == nil {
		rl = startRelay(r, l)
	}
	return rl
}

// close ends the spare relay and starts no other.
func (p *relayPool) close() {
	if p == nil {
		return
	}
	p.mu.Lock()
	p.closed = true
	rl := p.spare
	p.spare = nil
	filling := p.filled
	p.mu.Unlock()
	if rl != nil {
		rl.close()
	}
	if filling != nil {
		<-filling
	}
}
