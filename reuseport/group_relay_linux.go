//go:build linux

package reuseport

import (
	"io"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// relayStranded accepts the n clients queued on placeholder p and relays
// each to the group's address, where the program (attached by then) sends
// the relay's connection to a serving member. The server sees the relay's
// address instead of the client's; the relay ends when both sides have
// closed. This happens only to clients that reached the group's first
// placeholder in the moment between its listen(2) and the attach of the
// program.
func (g *Group) relayStranded(p *placeholder, n int) {
	_, dst, err := g.plugAddrs()
	if err != nil {
		g.log.Warn("cannot relay the clients stranded on a placeholder", "addr", g.addr, "err", err)
		return
	}
	to := netip.AddrPortFrom(dst, g.addr.Port()).String()
	for range n {
		fd, _, err := unix.Accept4(p.fd, unix.SOCK_CLOEXEC)
		if err != nil {
			g.log.Warn("cannot accept a client stranded on a placeholder", "addr", g.addr, "err", err)
			return
		}
		f := os.NewFile(uintptr(fd), "stranded")
		client, err := net.FileConn(f)
		f.Close()
		if err != nil {
			g.log.Warn("cannot relay a client stranded on a placeholder", "addr", g.addr, "err", err)
			continue
		}
		go relay(client, to)
	}
}

// relay copies between client and a new connection to addr: the client's
// bytes until its end (then a half close), the server's until its end,
// then it closes both.
func relay(client net.Conn, addr string) {
	defer client.Close()
	server, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return // the client is reset: as it would have been
	}
	defer server.Close()
	go func() {
		_, _ = io.Copy(server, client)
		if c, ok := server.(*net.TCPConn); ok {
			_ = c.CloseWrite()
		}
	}()
	_, _ = io.Copy(client, server)
}
