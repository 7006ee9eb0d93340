//go:build !linux

package healthcheck

import "fmt"

// ListenNotify would create the sd_notify receiving socket at path; it
// needs SO_PASSCRED and SCM_CREDENTIALS, which only Linux has, so here it
// always returns an error wrapping ErrNotSupported.
func ListenNotify(path string, opts NotifyOptions) (*NotifySocket, error) {
	return nil, fmt.Errorf("healthcheck: listen notify socket %q: %w", path, ErrNotSupported)
}

// InProcessGroup returns an Allow function for NotifyOptions that admits a
// PID whose process group is pgid. ListenNotify is not supported on this
// system, so the function rejects every PID.
func InProcessGroup(pgid int) func(pid int) bool {
	return func(int) bool { return false }
}
