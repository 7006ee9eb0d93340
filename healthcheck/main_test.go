package healthcheck

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"testing"
)

// helperEnv gates the helper mode of the test binary: tests re-execute it
// as a child process that sends sd_notify messages (see runNotifyHelper).
const (
	helperEnv       = "CHANGEOVER_HEALTHCHECK_TEST_HELPER"
	helperSecondEnv = "CHANGEOVER_HEALTHCHECK_TEST_SECOND_SOCKET"
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "notify" {
		os.Exit(runNotifyHelper())
	}
	os.Exit(m.Run())
}

// runNotifyHelper waits for a line on stdin, sends "READY=1" with its PID in
// STATUS to $NOTIFY_SOCKET and to the socket in helperSecondEnv, then stays
// alive until stdin is closed, so that the receiver can look up its process
// group.
func runNotifyHelper() int {
	in := bufio.NewReader(os.Stdin)
	if _, err := in.ReadString('\n'); err != nil {
		fmt.Fprintln(os.Stderr, "helper: waiting for go-ahead:", err)
		return 1
	}
	msg := fmt.Sprintf("READY=1\nSTATUS=child %d\n", os.Getpid())
	for _, path := range []string{os.Getenv("NOTIFY_SOCKET"), os.Getenv(helperSecondEnv)} {
		if err := sendDatagram(path, msg); err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			return 1
		}
	}
	for {
		if _, err := in.ReadString('\n'); err != nil {
			return 0 // EOF: the parent is done with us
		}
	}
}

// sendDatagram sends msg as one unixgram datagram to path.
func sendDatagram(path, msg string) error {
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("dial %q: %w", path, err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(msg)); err != nil {
		return fmt.Errorf("send to %q: %w", path, err)
	}
	return nil
}
