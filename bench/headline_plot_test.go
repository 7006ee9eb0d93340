package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriteHeadline(t *testing.T) {
	path := filepath.Join(t.TempDir(), "headline.svg")
	if err := writeHeadline(path, sampleReport()); err != nil {
		t.Fatalf("writeHeadline: %v", err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"<svg", "naive SO_REUSEPORT", "fd passing", "failed requests per restart"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("headline SVG lacks %q", want)
		}
	}
	if err := writeHeadline(path, &report{}); err == nil {
		t.Error("writeHeadline of an empty report: no error")
	}
}
