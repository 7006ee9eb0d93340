//go:build linux

package proc

import (
	"os"
	"testing"
)

// BenchmarkGroupMembers is one scan of /proc for a group's members, as
// the supervisor makes between a new generation's readiness and the old
// one's stop signal.
func BenchmarkGroupMembers(b *testing.B) {
	for b.Loop() {
		GroupMembers(os.Getpid())
	}
}

func BenchmarkReadStat(b *testing.B) {
	for b.Loop() {
		if _, err := ReadStat(os.Getpid()); err != nil {
			b.Fatal(err)
		}
	}
}
