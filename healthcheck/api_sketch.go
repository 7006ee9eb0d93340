// API SKETCH: to be replaced by the real implementation (see the team notes).
//
// Package healthcheck answers one question for a supervisor: is *this* new
// instance ready to take traffic? It has two halves:
//
//   - Probes (HTTP, TCP, exec) run against an address that only the new
//     instance serves (CHANGEOVER_HEALTH_ADDR), never the shared port.
//   - The receiving side of the sd_notify protocol: one unixgram socket per
//     instance (NOTIFY_SOCKET), which accepts datagrams only from that
//     instance's process group.
package healthcheck

import (
	"context"
	"errors"
	"time"
)

// Environment variables that the supervisor sets for every instance. They are
// a contract with servers in any language.
const (
	EnvNotifySocket = "NOTIFY_SOCKET"            // unixgram socket path; send "READY=1" when serving
	EnvHealthAddr   = "CHANGEOVER_HEALTH_ADDR"   // host:port that only this instance serves (HTTP health)
	EnvDrainTimeout = "CHANGEOVER_DRAIN_TIMEOUT" // Go duration, e.g. "30s": finish draining within it
	EnvGeneration   = "CHANGEOVER_GENERATION"    // 1, 2, 3, ...
)

// ErrNotHealthy is returned (wrapped) by Wait when the probes did not pass in time.
var ErrNotHealthy = errors.New("not healthy")

// Probe checks one thing once.
type Probe interface {
	Check(ctx context.Context) error
	String() string
}

// HTTP probes with GET: healthy on 2xx (and Body, if set, is a substring of the body).
type HTTP struct {
	URL  string
	Body string
}

// TCP probes by connecting to Addr.
type TCP struct{ Addr string }

// Exec probes by running a command through /bin/sh -c; healthy on exit 0.
type Exec struct {
	Command string
	Env     []string
	Dir     string
}

// Policy says how often and how long to probe. Zero values: Timeout 2s,
// Interval 100ms, Successes 1, Deadline 30s.
type Policy struct {
	Timeout   time.Duration
	Interval  time.Duration
	Successes int
	Deadline  time.Duration
}

// Parse reads a probe spec: "http://..." / "https://...", "tcp:ADDR", "exec:CMD".
// {health_addr} in the spec is replaced by healthAddr.
func Parse(spec, healthAddr string) (Probe, error) { panic("sketch") }

// Wait runs every probe until each has passed Successes times in a row, or
// returns an error wrapping ErrNotHealthy with the last failure of each.
func Wait(ctx context.Context, p Policy, probes ...Probe) error { panic("sketch") }

// FreeLoopbackAddr returns a 127.0.0.1:PORT that was free a moment ago.
func FreeLoopbackAddr() (string, error) { panic("sketch") }

// NotifyMessage is one parsed sd_notify datagram.
type NotifyMessage struct {
	PID    int               // sender PID from SCM_CREDENTIALS
	Fields map[string]string // READY=1, STATUS=..., STOPPING=1, ...
}

// ParseNotify parses the newline-separated KEY=VALUE lines of a datagram.
func ParseNotify(b []byte) (map[string]string, error) { panic("sketch") }

// NotifyOptions configures ListenNotify. Allow decides whether a sender PID
// may speak for the instance (default: everyone).
type NotifyOptions struct {
	Allow func(pid int) bool
}

// NotifySocket is the receiving side for one instance.
type NotifySocket struct{}

// ListenNotify creates the unixgram socket at path (0600) with SO_PASSCRED.
func ListenNotify(path string, opts NotifyOptions) (*NotifySocket, error) { panic("sketch") }

// Path is the socket path to put in NOTIFY_SOCKET.
func (n *NotifySocket) Path() string { panic("sketch") }

// Ready is closed once READY=1 has been received from an allowed sender.
func (n *NotifySocket) Ready() <-chan struct{} { panic("sketch") }

// Messages delivers every accepted message (buffered; drops oldest when full).
func (n *NotifySocket) Messages() <-chan NotifyMessage { panic("sketch") }

// Status is the last STATUS= received.
func (n *NotifySocket) Status() string { panic("sketch") }

// Close stops receiving and removes the socket file.
func (n *NotifySocket) Close() error { panic("sketch") }
