package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// sampleReport is a small report with one restarting method in one mode,
// plus a fd-passing run whose old instance left at the hammer.
func sampleReport() *report {
	return &report{
		Date: "2026-12-01T10:00:00Z", Kernel: "6.18", CPUs: 2, MigrateReq: "0", GoVersion: "go1.26.8",
		Commit: "0123456789abcdef0123456789abcdef01234567", Clients: 8, Restarts: 2, IntervalSec: 3,
		Runs: []*runResult{
			{Method: "naive", Title: "naive SO_REUSEPORT", Mode: modeNewConn, Scenario: "load", Requests: 1000, Failed: 3,
				PerRestart: 1.5, Retries: 4, Failures: map[string]int{"EOF": 2, "reset": 1},
				Restarts: []restartEvent{
					{AtSec: 2, OldGoneMs: 30, FirstNewByLoadMs: 10, AllNewByLoadMs: 20},
					{AtSec: 5, OldGoneMs: 50, FirstNewByLoadMs: 20, AllNewByLoadMs: -1, WithoutLoad: true},
				}},
			{Method: "fdpass", Title: "fd passing", Mode: modeNewConn, Scenario: "load", Requests: 1000,
				Failures: map[string]int{},
				Restarts: []restartEvent{{AtSec: 2, OldGoneMs: 11012, FirstNewByLoadMs: 12, AllNewByLoadMs: 12}}},
		},
	}
}

func TestFillTables(t *testing.T) {
	dir := t.TempDir()
	b, err := json.Marshal(sampleReport())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "full.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	md := filepath.Join(dir, "README.md")
	before := "# Title\n\nprose before\n\n" +
		"<!-- bench:table summary full.json BEGIN -->\nstale table\n<!-- bench:table summary END -->\n\nprose between\n" +
		"<!-- bench:table notes full.json BEGIN -->\n<!-- bench:table notes END -->\nprose after\n"
	if err := os.WriteFile(md, []byte(before), 0o644); err != nil {
		t.Fatal(err)
	}
	changed, err := regenerateTables(dir, []string{md})
	if err != nil || len(changed) != 1 {
		t.Fatalf("regenerateTables: changed %v, err %v", changed, err)
	}
	got, _ := os.ReadFile(md)
	for _, want := range []string{
		"# Title\n\nprose before\n\n<!-- bench:table summary full.json BEGIN -->\n| method |",
		"| naive SO_REUSEPORT | 1.5 (1 of 2 restarts without load) | 2.0 | 15; 20 / 40; 50 | none |\n",
		"| fd passing | **0** |",
		"<!-- bench:table summary END -->\n\nprose between\n<!-- bench:table notes full.json BEGIN -->\n- **1 restarts happened without load**",
		"fd passing pitfall",
		"<!-- bench:table notes END -->\nprose after\n",
	} {
		if !strings.Contains(string(got), want) {
			t.Errorf("regenerated file lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(string(got), "stale table") {
		t.Errorf("stale content kept:\n%s", got)
	}
	// A second run changes nothing.
	if changed, err := regenerateTables(dir, []string{md}); err != nil || len(changed) != 0 {
		t.Errorf("second regenerateTables: changed %v, err %v", changed, err)
	}
}

func TestFillTablesErrors(t *testing.T) {
	load := func(string) (*report, error) { return sampleReport(), nil }
	cases := []struct{ name, md, want string }{
		{"unknown table", "<!-- bench:table nosuch full.json BEGIN -->\n<!-- bench:table nosuch END -->\n", "unknown table"},
		{"no END", "<!-- bench:table summary full.json BEGIN -->\ntext\n", "has no"},
		{"END of another table", "<!-- bench:table summary full.json BEGIN -->\n<!-- bench:table notes END -->\n", "has no"},
		{"BEGIN inside BEGIN", "<!-- bench:table summary full.json BEGIN -->\n<!-- bench:table notes full.json BEGIN -->\n<!-- bench:table notes END -->\n<!-- bench:table summary END -->\n", "before the next BEGIN"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := fillTables([]byte(c.md), load)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("err = %v, want one containing %q", err, c.want)
			}
		})
	}
}

func TestNotesOnlyWhenTheRunShowsThem(t *testing.T) {
	rep := sampleReport()
	var b strings.Builder
	writeNotes(&b, rep)
	if !strings.Contains(b.String(), "fd passing pitfall") {
		t.Errorf("an 11 s fd-passing restart should bring the pitfall note:\n%s", b.String())
	}
	rep.Runs[1].Restarts[0].OldGoneMs = 102
	rep.Runs[0].Restarts[1].WithoutLoad = false
	b.Reset()
	writeNotes(&b, rep)
	for _, absent := range []string{"fd passing pitfall", "without load", "tableflip", "Supervisor"} {
		if strings.Contains(b.String(), absent) {
			t.Errorf("notes mention %q, which this run does not show:\n%s", absent, b.String())
		}
	}
}

// TestFillTablesSkipsCodeFences: a marker shown as an example inside a
// fenced code block (as bench/README.md shows one) is text, not a table
// to fill: the block is left as it is, and the real markers after it are
// still filled.
func TestFillTablesSkipsCodeFences(t *testing.T) {
	dir := t.TempDir()
	b, err := json.Marshal(sampleReport())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "full.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	md := filepath.Join(dir, "README.md")
	example := "```\n<!-- bench:table summary results/full.json BEGIN -->\n<!-- bench:table summary END -->\n```\n"
	tilde := "~~~md\n<!-- bench:table nosuchtable nosuch.json BEGIN -->\n~~~\n"
	before := "put marker pairs around a table\n\n" + example + "\nor\n\n" + tilde +
		"\n<!-- bench:table summary full.json BEGIN -->\n<!-- bench:table summary END -->\n"
	if err := os.WriteFile(md, []byte(before), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := regenerateTables(dir, []string{md}); err != nil {
		t.Fatalf("regenerateTables: %v", err)
	}
	got, _ := os.ReadFile(md)
	if !strings.Contains(string(got), "put marker pairs around a table\n\n"+example+"\nor\n\n"+tilde) {
		t.Errorf("the fenced examples changed:\n%s", got)
	}
	if !strings.Contains(string(got), "<!-- bench:table summary full.json BEGIN -->\n| method |") {
		t.Errorf("the marker after the fences was not filled:\n%s", got)
	}
}
