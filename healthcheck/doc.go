// Package healthcheck answers one question for a supervisor: is *this* new
// instance ready to take traffic?
//
// During a changeover the new instance binds the shared port with
// SO_REUSEPORT beside the old one, so a probe against the shared port may be
// answered by either instance and proves nothing. The package therefore has
// two halves that only ever talk to the new instance:
//
//   - Probes (HTTP, TCP, exec) run against an address that only the new
//     instance serves (CHANGEOVER_HEALTH_ADDR), never the shared port. Parse
//     builds them from specs such as "http://{health_addr}/healthz", and Wait
//     runs them under a Policy until each has passed often enough in a row.
//   - The receiving side of the sd_notify protocol (Linux only): one unixgram
//     socket per instance (NOTIFY_SOCKET), which accepts datagrams only from
//     senders that NotifyOptions.Allow admits, typically the instance's own
//     process group (see InProcessGroup). ListenNotify creates it.
//
// The package holds no global mutable state; everything is configured per
// call or per value.
package healthcheck

// Environment variables that the supervisor sets for every instance. They are
// a contract with servers in any language.
const (
	// EnvNotifySocket is the unixgram socket path; the instance sends
	// "READY=1" to it once it is serving.
	EnvNotifySocket = "NOTIFY_SOCKET"
	// EnvHealthAddr is a host:port that only this instance serves (HTTP
	// health). The "{health_addr}" placeholder in probe specs expands to it.
	EnvHealthAddr = "CHANGEOVER_HEALTH_ADDR"
	// EnvDrainTimeout is a Go duration, e.g. "30s": after SIGTERM the
	// instance must finish draining within it.
	EnvDrainTimeout = "CHANGEOVER_DRAIN_TIMEOUT"
	// EnvGeneration is the instance's generation: 1, 2, 3, ...
	EnvGeneration = "CHANGEOVER_GENERATION"
)
