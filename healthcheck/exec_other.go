//go:build !unix

package healthcheck

import "os/exec"

// ownProcessGroup does nothing where process groups are not available;
// cancelling the check kills the shell only (exec.Cmd's default).
func ownProcessGroup(*exec.Cmd) {}
