package runner

import (
	"testing"
	"time"
)

func TestDrainTimeoutChoice(t *testing.T) {
	for _, tc := range []struct {
		name string
		opt  time.Duration
		env  string
		want time.Duration
	}{
		{"defaults", 0, "", DefaultDrainTimeout},
		{"option only", 7 * time.Second, "", 7 * time.Second},
		{"env only", 0, "3s", 3 * time.Second},
		{"env smaller", 10 * time.Second, "2s", 2 * time.Second},
		{"option smaller", 1 * time.Second, "20s", 1 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(EnvDrainTimeout, tc.env)
			got, err := New(Options{DrainTimeout: tc.opt}).drainTimeout()
			if err != nil || got != tc.want {
				t.Fatalf("drainTimeout() = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
	for _, bad := range []string{"banana", "-1s", "0"} {
		t.Setenv(EnvDrainTimeout, bad)
		if _, err := New(Options{}).drainTimeout(); err == nil {
			t.Errorf("%s=%q accepted", EnvDrainTimeout, bad)
		}
	}
}
