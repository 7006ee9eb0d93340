//go:build linux

package runner

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/changeover-dev/changeover/reuseport"
)

// TestSupervisedListenLeavesTheProgram: with CHANGEOVER_STEERING=supervisor
// (the supervisor owns the group's program), Listen attaches nothing: the
// program already there ("return 1", the new member) still decides, and a
// new connection reaches the Runner's listener. The control, without the
// variable, is today's Runner: its "return 0" sends the connection to the
// serving member.
func TestSupervisedListenLeavesTheProgram(t *testing.T) {
	for _, tc := range []struct {
		name       string
		supervised bool
	}{{"supervised", true}, {"control: runner steers itself", false}} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.supervised {
				t.Setenv(EnvSteering, "supervisor")
			} else {
				t.Setenv(EnvSteering, "")
			}
			serving := plainListen(t, "127.0.0.1:0")
			addr := serving.Addr().String()
			if err := reuseport.Steer(serving, 1); err != nil { // the supervisor's program, in short
				t.Fatal(err)
			}
			r := New(Options{Logger: discardLog})
			ln, err := r.Listen(context.Background(), "tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			c, err := net.DialTimeout("tcp", addr, 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			want, other := ln.(*net.TCPListener), serving
			if !tc.supervised {
				want, other = serving, ln.(*net.TCPListener)
			}
			_ = want.SetDeadline(time.Now().Add(5 * time.Second)) // a bound, not a timing
			a, err := want.Accept()
			if err != nil {
				t.Fatalf("the connection did not reach the listener the program names: %v", err)
			}
			a.Close()
			if q, err := reuseport.AcceptQueueLen(other); err != nil || q != 0 {
				t.Errorf("the other listener's queue: %d, %v; want 0", q, err)
			}
		})
	}
}
