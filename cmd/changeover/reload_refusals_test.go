//go:build linux

package main

import (
	"strings"
	"testing"
	"time"
)

// TestReloadRefusals: a probe aimed at the shared port on the kernel path
// (nothing routes it to the new instance: TestSharedPortProbe has the
// steered case) and a new instance that does not listen where the old one
// does are refused; the old one keeps serving.
func TestReloadRefusals(t *testing.T) {
	e := newEnv(t)
	p := e.startInProcess("--health", "http://"+e.addr+"/", "--ready-timeout", "20s", "--steering", "kernel")
	e.waitServing(p, 1)
	e.setEnv("2")
	code, _, stderr := cli("reload", "--control", e.sock)
	if code != 1 || !strings.Contains(stderr, "would answer it") || !strings.Contains(stderr, e.addr) {
		t.Errorf("reload with a shared-port probe: exit %d, want 1 naming why: %s", code, stderr)
	}
	if got := get(e.addr); !strings.HasPrefix(got, "version=1 ") {
		t.Errorf("served %q, want version 1", got)
	}
	code, _, _ = cli("stop", "--control", e.sock)
	if code != 0 || p.wait(t, 10*time.Second) != nil {
		t.Fatal("stop failed")
	}

	e2 := newEnv(t)
	p2 := e2.startInProcess("--ready-timeout", "8s")
	e2.waitServing(p2, 1)
	other := freeAddr(t)
	e2.setEnv("2", envAddr+"="+other) // later line wins
	code, _, stderr = cli("reload", "--control", e2.sock)
	if code != 4 || !strings.Contains(stderr, "does not listen on "+e2.addr+", which generation 1 serves") {
		t.Errorf("reload to another port: exit %d, want 4: %s", code, stderr)
	}
	if got := get(e2.addr); !strings.HasPrefix(got, "version=1 ") {
		t.Errorf("served %q, want version 1", got)
	}
}
