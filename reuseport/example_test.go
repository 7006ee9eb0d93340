package reuseport_test

import (
	"context"
	"fmt"
	"net"

	"github.com/changeover-dev/changeover/reuseport"
)

// Two listeners on one port: what the old and the new version of a server
// do during a restart.
func ExampleListen() {
	ctx := context.Background()
	old, err := reuseport.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer old.Close()
	next, err := reuseport.Listen(ctx, "tcp", old.Addr().String())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer next.Close()
	fmt.Println(old.Addr().String() == next.Addr().String())
	// Output: true
}

// ListenConfig keeps a Control hook of the caller's and adds SO_REUSEPORT.
func ExampleListenConfig() {
	lc := reuseport.ListenConfig(net.ListenConfig{KeepAlive: -1})
	l, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer l.Close()
	fmt.Println(l.Addr().Network())
	// Output: tcp
}
