package healthcheck

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
)

// ErrNotSupported is returned (wrapped) by ListenNotify on systems without
// SO_PASSCRED/SCM_CREDENTIALS, that is everywhere but Linux.
var ErrNotSupported = errors.New("sd_notify receiver not supported on this system")

// DefaultNotifyBuffer is the capacity of NotifySocket.Messages when
// NotifyOptions.Buffer is zero.
const DefaultNotifyBuffer = 16

// NotifyMessage is one parsed sd_notify datagram.
type NotifyMessage struct {
	PID    int               // sender PID from SCM_CREDENTIALS
	Fields map[string]string // READY=1, STATUS=..., STOPPING=1, ...
}

// ParseNotify parses the newline-separated KEY=VALUE lines of a datagram.
// Empty lines are ignored; the value is everything after the first '=' and
// may be empty; a later duplicate key wins. A line without '=', with an
// empty key, or with a key that is not made of upper-case ASCII letters,
// digits and '_' is an error naming the line.
func ParseNotify(b []byte) (map[string]string, error) {
	fields := make(map[string]string)
	for i, line := range strings.Split(string(b), "\n") {
		if line == "" {
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		switch {
		case !ok:
			return nil, fmt.Errorf("healthcheck: notify line %d %s: missing '='", i+1, quoteLine(line))
		case key == "":
			return nil, fmt.Errorf("healthcheck: notify line %d %s: empty key", i+1, quoteLine(line))
		case !validNotifyKey(key):
			return nil, fmt.Errorf("healthcheck: notify line %d %s: key %s is not made of A-Z, 0-9 and _",
				i+1, quoteLine(line), quoteLine(key))
		}
		fields[key] = value
	}
	return fields, nil
}

// validNotifyKey reports whether key is made of A-Z, 0-9 and '_' only.
func validNotifyKey(key string) bool {
	for i := 0; i < len(key); i++ {
		c := key[i]
		if (c < 'A' || c > 'Z') && (c < '0' || c > '9') && c != '_' {
			return false
		}
	}
	return true
}

// quoteLine quotes the start of a line for an error message.
func quoteLine(s string) string {
	const max = 64
	if len(s) > max {
		return fmt.Sprintf("%q...", s[:max])
	}
	return fmt.Sprintf("%q", s)
}

// NotifyOptions configures ListenNotify.
type NotifyOptions struct {
	// Allow decides whether a sender PID may speak for the instance; nil
	// allows everyone. It is called from the socket's reader goroutine for
	// every datagram and must not block. See InProcessGroup.
	Allow func(pid int) bool
	// Logger receives a warning for every dropped datagram; nil means
	// slog.Default().
	Logger *slog.Logger
	// Buffer is the capacity of the Messages channel; zero means
	// DefaultNotifyBuffer.
	Buffer int
}

// NotifySocket is the receiving side of the sd_notify protocol for one
// instance. Create it with ListenNotify. Its methods are safe for concurrent
// use.
type NotifySocket struct {
	path   string
	allow  func(pid int) bool
	logger *slog.Logger
	conn   *net.UnixConn

	ready    chan struct{} // closed by the reader goroutine
	stopping chan struct{} // closed by the reader goroutine
	msgs     chan NotifyMessage
	done     chan struct{} // closed when the reader goroutine has returned

	mu     sync.Mutex
	status string

	dropped atomic.Uint64

	closeOnce sync.Once
	closeErr  error
}

// newNotifySocket sets up the channels around conn; the caller starts the
// reader goroutine.
func newNotifySocket(path string, conn *net.UnixConn, opts NotifyOptions) *NotifySocket {
	logger := opts.Logger
	if logger == nil {
		logger = slog.Default()
	}
	buffer := opts.Buffer
	if buffer <= 0 {
		buffer = DefaultNotifyBuffer
	}
	return &NotifySocket{
		path:     path,
		allow:    opts.Allow,
		logger:   logger,
		conn:     conn,
		ready:    make(chan struct{}),
		stopping: make(chan struct{}),
		msgs:     make(chan NotifyMessage, buffer),
		done:     make(chan struct{}),
	}
}

// Path is the socket path to put in NOTIFY_SOCKET.
func (n *NotifySocket) Path() string { return n.path }

// Ready is closed once READY=1 has been received from an allowed sender.
// By then that message is in Messages and Status reflects it.
func (n *NotifySocket) Ready() <-chan struct{} { return n.ready }

// Stopping is closed once STOPPING=1 has been received from an allowed
// sender. By then that message is in Messages and Status reflects it.
func (n *NotifySocket) Stopping() <-chan struct{} { return n.stopping }

// Messages delivers every accepted message. It is buffered (see
// NotifyOptions.Buffer); when it is full the oldest message is dropped to
// make room, so the reader never blocks. It is closed when the socket stops
// receiving (after Close, or after a read error, which is logged).
func (n *NotifySocket) Messages() <-chan NotifyMessage { return n.msgs }

// Status is the last STATUS= received from an allowed sender ("" if none).
func (n *NotifySocket) Status() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.status
}

// Dropped is the number of datagrams dropped so far: without credentials,
// from a sender that Allow rejected, truncated, or malformed. Messages
// evicted from a full Messages channel are not counted.
func (n *NotifySocket) Dropped() uint64 { return n.dropped.Load() }

// Close stops receiving, waits for the reader goroutine to return and
// removes the socket file. It is idempotent: later calls return the first
// call's result.
func (n *NotifySocket) Close() error {
	n.closeOnce.Do(func() {
		var errs []error
		if err := n.conn.Close(); err != nil {
			errs = append(errs, fmt.Errorf("healthcheck: close notify socket %q: %w", n.path, err))
		}
		<-n.done
		if !isAbstract(n.path) {
			if err := os.Remove(n.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, fmt.Errorf("healthcheck: remove notify socket: %w", err))
			}
		}
		n.closeErr = errors.Join(errs...)
	})
	return n.closeErr
}

// isAbstract reports whether path names a Linux abstract socket ("@name"),
// which has no file to chmod or remove.
func isAbstract(path string) bool { return strings.HasPrefix(path, "@") }

// handle processes one datagram with valid credentials. It runs on the
// reader goroutine only.
func (n *NotifySocket) handle(pid int, data []byte) {
	if n.allow != nil && !n.allow(pid) {
		n.drop(pid, len(data), "sender not allowed")
		return
	}
	fields, err := ParseNotify(data)
	if err != nil {
		n.drop(pid, len(data), err.Error())
		return
	}
	if s, ok := fields["STATUS"]; ok {
		n.mu.Lock()
		n.status = s
		n.mu.Unlock()
	}
	n.deliver(NotifyMessage{PID: pid, Fields: fields})
	if fields["READY"] == "1" {
		closeOnce(n.ready)
	}
	if fields["STOPPING"] == "1" {
		closeOnce(n.stopping)
	}
}

// closeOnce closes ch unless it is closed already. Only the reader goroutine
// closes these channels, so the check cannot race with another close.
func closeOnce(ch chan struct{}) {
	select {
	case <-ch:
	default:
		close(ch)
	}
}

// deliver puts m on the Messages channel, evicting the oldest message if
// the channel is full. Only the reader goroutine sends and consumers only
// take, so once a message has been evicted (or taken) there is room and the
// loop ends on its second pass at the latest.
func (n *NotifySocket) deliver(m NotifyMessage) {
	for {
		select {
		case n.msgs <- m:
			return
		default:
		}
		select {
		case <-n.msgs: // evict the oldest
		default:
		}
	}
}

// drop counts and logs a dropped datagram.
func (n *NotifySocket) drop(pid, size int, reason string) {
	n.dropped.Add(1)
	n.logger.Warn("healthcheck: dropped notify datagram",
		"socket", n.path, "pid", pid, "bytes", size, "reason", reason)
}
