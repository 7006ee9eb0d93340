//go:build linux

package supervisor

import (
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
)

// TestKeeperLogLevel (review 2): swap's --log-level reached swap's own log
// but not its drain keeper's, which logged at info whatever it said.
func TestKeeperLogLevel(t *testing.T) {
	b, err := json.Marshal(KeeperOrder{LogLevel: slog.LevelError})
	if err != nil {
		t.Fatal(err)
	}
	var order KeeperOrder
	if err := json.Unmarshal(b, &order); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	log := keeperLogger(order, &out)
	log.Info("drain keeper: watching")
	log.Error("drain keeper: cannot read")
	if strings.Contains(out.String(), "watching") || !strings.Contains(out.String(), "cannot read") {
		t.Errorf("keeper told to log errors only wrote:\n%s", out.String())
	}
}
