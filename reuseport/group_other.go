//go:build !linux

package reuseport

import "net/netip"

// Group is Linux-only: see the Linux documentation.
type Group struct{}

// NewGroup is Linux-only.
func NewGroup(addr netip.AddrPort, opts GroupOptions) *Group { return &Group{} }

// Dark is Linux-only.
func (g *Group) Dark(serving []uint64) error { return notSupported("Group.Dark") }

// Hold is Linux-only.
func (g *Group) Hold(members []uint64) error { return notSupported("Group.Hold") }

// ProbeTo is Linux-only.
func (g *Group) ProbeTo(members []uint64) error { return notSupported("Group.ProbeTo") }

// Cutover is Linux-only.
func (g *Group) Cutover(next []uint64) error { return notSupported("Group.Cutover") }

// PrepareDepartures is Linux-only.
func (g *Group) PrepareDepartures(n int) error { return notSupported("Group.PrepareDepartures") }

// Sync is Linux-only.
func (g *Group) Sync() error { return notSupported("Group.Sync") }

// Compact is Linux-only.
func (g *Group) Compact() error { return notSupported("Group.Compact") }

// Placeholders is Linux-only.
func (g *Group) Placeholders() int { return 0 }

// Close is Linux-only.
func (g *Group) Close() error { return nil }
