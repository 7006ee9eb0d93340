//go:build linux

package healthcheck

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

const (
	// maxNotifyDatagram is the receive buffer size; longer datagrams are
	// dropped as truncated. systemd itself accepts at most 4 KiB.
	maxNotifyDatagram = 16 << 10
	// maxNotifyFDs is the number of file descriptors (SCM_RIGHTS, e.g.
	// FDSTORE=1) the control buffer has room for. Received descriptors
	// are closed at once: the supervisor does not keep a descriptor store.
	maxNotifyFDs = 64
)

// ListenNotify creates the unixgram socket at path (mode 0600) with
// SO_PASSCRED and starts a goroutine that reads datagrams from it until
// Close. A path starting with '@' names an abstract socket, which has no
// file mode; rely on opts.Allow there.
//
// Every datagram must carry the sender's SCM_CREDENTIALS (the kernel adds
// them because of SO_PASSCRED); datagrams without them, from a PID that
// opts.Allow rejects, truncated or not parsable by ParseNotify are dropped,
// counted (see Dropped) and logged as warnings to opts.Logger.
//
// The path must not exist yet; on systems other than Linux ListenNotify
// returns an error wrapping ErrNotSupported.
func ListenNotify(path string, opts NotifyOptions) (*NotifySocket, error) {
	if path == "" {
		return nil, errors.New("healthcheck: listen notify socket: empty path")
	}
	if max := len(unix.RawSockaddrUnix{}.Path) - 1; len(path) > max {
		return nil, fmt.Errorf("healthcheck: listen notify socket %q: path longer than %d bytes", path, max)
	}
	lc := net.ListenConfig{
		// Control runs before bind, so no datagram can arrive without
		// credentials.
		Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
			})
			if err == nil && serr != nil {
				err = fmt.Errorf("setsockopt SO_PASSCRED: %w", serr)
			}
			return err
		},
	}
	pc, err := lc.ListenPacket(context.Background(), "unixgram", path)
	if err != nil {
		return nil, fmt.Errorf("healthcheck: listen notify socket %q: %w", path, err)
	}
	conn := pc.(*net.UnixConn)
	if !isAbstract(path) {
		if err := os.Chmod(path, 0o600); err != nil {
			conn.Close()
			os.Remove(path)
			return nil, fmt.Errorf("healthcheck: listen notify socket %q: %w", path, err)
		}
	}
	n := newNotifySocket(path, conn, opts)
	go n.readLoop()
	return n, nil
}

// readLoop receives datagrams until the socket is closed.
func (n *NotifySocket) readLoop() {
	defer close(n.done)
	defer close(n.msgs)
	buf := make([]byte, maxNotifyDatagram)
	oob := make([]byte, unix.CmsgSpace(unix.SizeofUcred)+unix.CmsgSpace(4*maxNotifyFDs))
	for {
		nb, noob, flags, _, err := n.conn.ReadMsgUnix(buf, oob)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				n.logger.Error("healthcheck: notify socket stopped receiving", "socket", n.path, "err", err)
			}
			return
		}
		pid, credErr := readCredentials(oob[:noob])
		switch {
		case credErr != nil:
			n.drop(pid, nb, credErr.Error())
		case flags&unix.MSG_TRUNC != 0:
			n.drop(pid, nb, fmt.Sprintf("datagram longer than %d bytes", len(buf)))
		case flags&unix.MSG_CTRUNC != 0:
			n.drop(pid, nb, "control data truncated (too many file descriptors)")
		default:
			n.handle(pid, buf[:nb])
		}
	}
}

// readCredentials returns the sender PID from the SCM_CREDENTIALS in oob and
// closes any file descriptors passed with SCM_RIGHTS. pid is 0 when the
// credentials are missing, and err says why.
func readCredentials(oob []byte) (pid int, err error) {
	scms, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return 0, fmt.Errorf("parse control data: %w", err)
	}
	var cred *unix.Ucred
	for i := range scms {
		scm := &scms[i]
		if scm.Header.Level != unix.SOL_SOCKET {
			continue
		}
		switch scm.Header.Type {
		case unix.SCM_CREDENTIALS:
			c, cerr := unix.ParseUnixCredentials(scm)
			if cerr != nil {
				err = fmt.Errorf("parse credentials: %w", cerr)
				continue
			}
			cred = c
		case unix.SCM_RIGHTS:
			fds, _ := unix.ParseUnixRights(scm)
			for _, fd := range fds {
				unix.Close(fd)
			}
		}
	}
	if cred == nil {
		if err == nil {
			err = errors.New("no sender credentials")
		}
		return 0, err
	}
	return int(cred.Pid), nil
}

// InProcessGroup returns an Allow function for NotifyOptions that admits a
// PID whose process group is pgid. The supervisor starts every instance in
// its own process group (SysProcAttr.Setpgid), so pgid is the instance's
// PID.
//
// PIDs that are not positive (e.g. 0 for a sender in another PID namespace)
// and processes that have exited by the time the datagram is read are
// rejected: a sender must stay alive until its message has been read, which
// short-lived helpers such as systemd-notify may not do.
func InProcessGroup(pgid int) func(pid int) bool {
	return func(pid int) bool {
		if pid <= 0 || pgid <= 0 {
			return false
		}
		g, err := unix.Getpgid(pid)
		return err == nil && g == pgid
	}
}
