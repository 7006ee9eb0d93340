//go:build linux

package proc

import (
	"errors"
	"net/netip"
	"os"
	"testing"
)

func TestParseStat(t *testing.T) {
	line := []byte("42 (a) b) (c) S 1 40 40 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 123456 0 0")
	st, err := parseStat(42, line)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != 'S' || st.PPID != 1 || st.PGID != 40 || st.StartTime != 123456 {
		t.Errorf("parsed %+v", st)
	}
	if _, err := parseStat(1, []byte("garbage")); err == nil {
		t.Error("garbage parsed")
	}
}

func TestSelf(t *testing.T) {
	st, err := ReadStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if !Alive(os.Getpid(), st.StartTime) || Alive(os.Getpid(), st.StartTime+1) {
		t.Error("Alive does not check the start time")
	}
	if _, err := ReadStat(1 << 30); err == nil {
		t.Error("no error for a missing PID")
	}
}

func TestCoversAndMissing(t *testing.T) {
	ap := netip.MustParseAddrPort
	tests := []struct {
		have, want string
		ok         bool
	}{
		{"127.0.0.1:80", "127.0.0.1:80", true},
		{"0.0.0.0:80", "127.0.0.1:80", true},
		{"[::]:80", "127.0.0.1:80", true},
		{"127.0.0.1:81", "127.0.0.1:80", false},
		{"127.0.0.2:80", "127.0.0.1:80", false},
	}
	for _, tt := range tests {
		if got := Covers(ap(tt.have), ap(tt.want)); got != tt.ok {
			t.Errorf("Covers(%s, %s) = %v", tt.have, tt.want, got)
		}
	}
	miss := Missing([]netip.AddrPort{ap("0.0.0.0:80")}, []netip.AddrPort{ap("127.0.0.1:80"), ap("127.0.0.1:81")})
	if len(miss) != 1 || miss[0] != ap("127.0.0.1:81") {
		t.Errorf("Missing = %v", miss)
	}
}

func TestVerify(t *testing.T) {
	self, err := ReadStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		pid   int
		pgid  int
		start uint64
		want  error
	}{
		{"self", self.PID, self.PGID, self.StartTime, nil},
		{"start time 0 matches nothing", self.PID, self.PGID, 0, ErrNotRecorded},
		{"another start time", self.PID, self.PGID, self.StartTime + 1, ErrNotRecorded},
		{"another process group", self.PID, self.PGID + 1, self.StartTime, ErrNotRecorded},
		{"no such process", 1 << 30, 1 << 30, 1, ErrNoProcess},
		{"pid 1", 1, 1, 1, ErrNotRecorded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Verify(tt.pid, tt.pgid, tt.start)
			if tt.want == nil && err != nil || tt.want != nil && !errors.Is(err, tt.want) {
				t.Errorf("Verify(%d, %d, %d) = %v, want %v", tt.pid, tt.pgid, tt.start, err, tt.want)
			}
		})
	}
}
