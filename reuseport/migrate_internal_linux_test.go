//go:build linux

package reuseport

import (
	"path/filepath"
	"testing"
)

// TestMigrateReqMissingIsZero: kernels before 5.14 have no
// net.ipv4.tcp_migrate_req; they behave as with 0 (a closing listener's
// queue is reset), so MigrateReq says false, with no error.
func TestMigrateReqMissingIsZero(t *testing.T) {
	on, err := readMigrateReq(filepath.Join(t.TempDir(), "tcp_migrate_req"))
	if on || err != nil {
		t.Fatalf("without the sysctl: %v, %v; want false, nil", on, err)
	}
}
