package reuseport

import (
	"net/netip"
	"testing"
)

// TestShadows: which layouts of two listeners on one port, in two
// reuseport groups, let the first take connections the second would
// (TestOverlappingAddressesAreSeparateGroups checks the kernel facts).
func TestShadows(t *testing.T) {
	v4 := func(a string) Socket { return Socket{Addr: netip.MustParseAddrPort(a)} }
	v6 := func(a string, only bool) Socket { return Socket{Addr: netip.MustParseAddrPort(a), V6Only: only} }
	dev := func(s Socket, i int) Socket { s.Dev = i; return s }
	for _, tc := range []struct {
		name string
		s, o Socket
		want bool
	}{
		{"v4 specific in v4 wildcard", v4("127.0.0.1:80"), v4("0.0.0.0:80"), true},
		{"v4 wildcard beside v6 dual-stack wildcard", v4("0.0.0.0:80"), v6("[::]:80", false), true},
		{"v4 specific in v6 dual-stack wildcard", v4("127.0.0.1:80"), v6("[::]:80", false), true},
		{"v4-mapped specific in v4 wildcard", v6("[::ffff:127.0.0.1]:80", false), v4("0.0.0.0:80"), true},
		{"v4 specific beside the same v4-mapped address", v4("127.0.0.1:80"), v6("[::ffff:127.0.0.1]:80", false), true},
		{"v6 specific in v6 wildcard", v6("[::1]:80", false), v6("[::]:80", true), true},
		{"v6 specific in v6 dual-stack wildcard", v6("[::1]:80", true), v6("[::]:80", false), true},
		{"bound to a device beside the same address", dev(v4("0.0.0.0:80"), 2), v4("0.0.0.0:80"), true},
		{"identical address", v4("0.0.0.0:80"), v4("0.0.0.0:80"), false},
		{"identical dual-stack address", v6("[::]:80", false), v6("[::]:80", false), false},
		{"different port", v4("127.0.0.1:81"), v4("0.0.0.0:80"), false},
		{"v6-only wildcard beside v4 wildcard", v6("[::]:80", true), v4("0.0.0.0:80"), false},
		{"v4 wildcard beside v6-only wildcard", v4("0.0.0.0:80"), v6("[::]:80", true), false},
		{"v4 wildcard beside v4 specific (wider)", v4("0.0.0.0:80"), v4("127.0.0.1:80"), false},
		{"v6 dual-stack wildcard beside v4 wildcard (wider)", v6("[::]:80", false), v4("0.0.0.0:80"), false},
		{"two v4 specific addresses", v4("127.0.0.2:80"), v4("127.0.0.1:80"), false},
		{"v6 specific beside v4 wildcard", v6("[::1]:80", false), v4("0.0.0.0:80"), false},
		{"other devices", dev(v4("0.0.0.0:80"), 2), dev(v4("0.0.0.0:80"), 3), false},
		{"not bound to a device beside one that is", v4("0.0.0.0:80"), dev(v4("0.0.0.0:80"), 2), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.s.Shadows(tc.o); got != tc.want {
				t.Errorf("%+v.Shadows(%+v) = %v, want %v", tc.s, tc.o, got, tc.want)
			}
		})
	}
}
