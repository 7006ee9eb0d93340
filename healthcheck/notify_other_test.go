//go:build !linux

package healthcheck

import (
	"errors"
	"path/filepath"
	"testing"
)

func TestListenNotifyNotSupported(t *testing.T) {
	n, err := ListenNotify(filepath.Join(t.TempDir(), "notify.sock"), NotifyOptions{})
	if !errors.Is(err, ErrNotSupported) || n != nil {
		t.Fatalf("ListenNotify = %v, %v; want nil, ErrNotSupported", n, err)
	}
	if InProcessGroup(1)(1) {
		t.Error("InProcessGroup accepts a PID where it cannot check")
	}
}
