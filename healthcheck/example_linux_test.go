//go:build linux

package healthcheck_test

import (
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/changeover-dev/changeover/healthcheck"
)

// The supervisor side of sd_notify for one new instance. (Compiled, not
// run: it starts a server binary.)
func ExampleListenNotify() {
	dir, err := os.MkdirTemp("", "changeover-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	cmd := exec.Command("./server")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// The socket must exist before the instance starts, and the instance's
	// process group is known only after; until it is set, pgid 0 rejects
	// every sender.
	var pgid atomic.Int64
	n, err := healthcheck.ListenNotify(filepath.Join(dir, "notify.sock"), healthcheck.NotifyOptions{
		Allow: func(pid int) bool { return healthcheck.InProcessGroup(int(pgid.Load()))(pid) },
	})
	if err != nil {
		log.Fatal(err)
	}
	defer n.Close()

	cmd.Env = append(os.Environ(), healthcheck.EnvNotifySocket+"="+n.Path())
	if err := cmd.Start(); err != nil {
		log.Fatal(err)
	}
	pgid.Store(int64(cmd.Process.Pid)) // Setpgid: the group id is the PID

	select {
	case <-n.Ready():
		log.Printf("instance %d ready: %s", cmd.Process.Pid, n.Status())
	case <-time.After(30 * time.Second):
		log.Printf("instance %d not ready: %s", cmd.Process.Pid, n.Status())
	}
}
