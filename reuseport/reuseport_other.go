//go:build !linux

package reuseport

import (
	"fmt"
	"net/netip"
	"syscall"
)

// AcceptQueueLen is Linux-only.
func AcceptQueueLen(l syscall.Conn) (int, error) { return 0, notSupported("AcceptQueueLen") }

// Steer is Linux-only.
func Steer(l syscall.Conn, index uint32) error { return notSupported("Steer") }

// Dark is Linux-only.
func Dark(l syscall.Conn) error { return notSupported("Dark") }

// Detach is Linux-only.
func Detach(l syscall.Conn) error { return notSupported("Detach") }

// MigrateReq is Linux-only.
func MigrateReq() (bool, error) { return false, notSupported("MigrateReq") }

// EnableMigrateReq is Linux-only.
func EnableMigrateReq() error { return notSupported("EnableMigrateReq") }

// Inode is Linux-only.
func Inode(l syscall.Conn) (uint64, error) { return 0, notSupported("Inode") }

// Describe is Linux-only.
func Describe(l syscall.Conn) (Socket, error) { return Socket{}, notSupported("Describe") }

// ListeningSockets is Linux-only.
func ListeningSockets() ([]Socket, error) { return nil, notSupported("ListeningSockets") }

// GroupSize is Linux-only.
func GroupSize(addr netip.AddrPort) (int, error) { return 0, notSupported("GroupSize") }

// HalfOpen is Linux-only.
func HalfOpen(addr netip.AddrPort) (map[netip.AddrPort]HalfOpenConn, error) {
	return nil, notSupported("HalfOpen")
}

func holder(address string) string { return "the port is in use" }

func notSupported(op string) error { return fmt.Errorf("reuseport.%s: %w", op, ErrNotSupported) }
