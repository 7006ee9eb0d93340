//go:build linux

package supervisor

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestProbeTarget(t *testing.T) {
	tests := map[string]string{
		"http://127.0.0.1:8080/healthz": "127.0.0.1:8080",
		"http://localhost/":             "127.0.0.1:80",
		"https://127.0.0.1/":            "127.0.0.1:443",
		"tcp:127.0.0.1:9000":            "127.0.0.1:9000",
		"http://{health_addr}/":         "",
		"exec:true":                     "",
	}
	for spec, want := range tests {
		ap, ok := ProbeTarget(spec)
		if got := map[bool]string{true: ap.String(), false: ""}[ok]; got != want {
			t.Errorf("ProbeTarget(%q) = %q, want %q", spec, got, want)
		}
	}
}

func TestReadEnvFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "env")
	content := "# comment\n\nA=1\nexport B = \"two words\"\nC='x=y'\n"
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := ReadEnvFile(path)
	if want := []string{"A=1", "B=two words", "C=x=y"}; err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("ReadEnvFile = %q, %v; want %q", got, err, want)
	}
	if err := os.WriteFile(path, []byte("no equals sign\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadEnvFile(path); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Errorf("bad line: %v", err)
	}
}

func TestParsePidfile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "p")
	if r, err := parsePidfile(path); r != nil || err != nil {
		t.Errorf("missing pidfile: %v %v", r, err)
	}
	for content, ok := range map[string]bool{
		"123 456 3 127.0.0.1:9\n": true, "123\n": true, "": false, "garbage": false,
		"1 2": false, "12 x": false, "12 3 0": false, "1 2 3 4 5": false,
	} {
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := parsePidfile(path)
		if (err == nil) != ok {
			t.Errorf("parsePidfile(%q): %v", content, err)
		}
	}
}

func TestTail(t *testing.T) {
	tl := newTail(16)
	tl.Write([]byte("first line\nsecond\nthird\n"))
	if got := tl.Lines(2); got != "second\nthird" {
		t.Errorf("Lines(2) = %q", got)
	}
	var nilTail *Tail
	if nilTail.Lines(3) != "" {
		t.Error("nil tail")
	}
}
