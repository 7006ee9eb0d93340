//go:build linux

package main

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestUsageAndExitCodes(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "c.sock")
	tests := []struct {
		name string
		args []string
		code int
		want string // substring of stderr
	}{
		{"no subcommand", nil, 2, "no command given"},
		{"unknown subcommand", []string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{"help", []string{"-h"}, 0, "usage:"},
		{"run help", []string{"run", "-h"}, 0, "-drain-timeout"},
		{"swap help", []string{"swap", "-h"}, 0, "-pidfile"},
		{"reload help", []string{"reload", "-h"}, 0, "-control"},
		{"run nothing after --", []string{"run", "--control", sock, "--"}, 2, "nothing after --"},
		{"run bad duration", []string{"run", "--drain-timeout", "banana", "--", "true"}, 2, `"banana"`},
		{"run bad ready timeout", []string{"run", "--ready-timeout=-1s", "--", "true"}, 2, `"-1s"`},
		{"run unknown flag", []string{"run", "--frob", "--", "true"}, 2, "-frob"},
		{"run bad log format", []string{"run", "--log-format", "xml", "--", "true"}, 2, `"xml"`},
		{"run bad probe", []string{"run", "--control", sock, "--health", "ftp://x", "--", "true"}, 2, `"ftp://x"`},
		{"run empty http probe", []string{"run", "--control", sock, "--health", "http://", "--", "true"}, 2, `"http://"`},
		{"run missing command", []string{"run", "--control", sock, "--", "/nonexistent/server"}, 1, "/nonexistent/server"},
		{"run check refuses generation 1", []string{"run", "--control", sock, "--check", "echo nope >&2; exit 3", "--", "/bin/sh"}, 5, "nope"},
		{"run bad log level", []string{"run", "--log-level", "loud", "--", "true"}, 2, `"loud"`},
		{"run log level slog would parse", []string{"run", "--log-level", "ERROR+8", "--", "true"}, 2, `"ERROR+8"`},
		{"run error logs only", []string{"run", "--log-level", "error", "--control", sock, "--check", "false", "--", "/bin/sh"}, 5, "generation failed"},
		{"run json logs", []string{"run", "--log-format", "json", "--control", sock, "--check", "false", "--", "/bin/sh"}, 5, `"msg":"generation failed"`},
		{"swap without pidfile", []string{"swap", "--", "true"}, 2, "--pidfile is required"},
		{"swap nothing after --", []string{"swap", "--pidfile", filepath.Join(dir, "p"), "--"}, 2, "nothing after --"},
		{"status extra arg", []string{"status", "--control", sock, "extra"}, 2, `unexpected argument "extra"`},
		{"reload unreachable", []string{"reload", "--control", filepath.Join(dir, "none.sock")}, 1, "none.sock"},
		{"status bad timeout", []string{"status", "--timeout", "banana"}, 2, `"banana"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := cli(tt.args...)
			if code != tt.code {
				t.Errorf("exit code %d, want %d; stderr:\n%s", code, tt.code, stderr)
			}
			if !strings.Contains(stderr, tt.want) {
				t.Errorf("stderr does not contain %q:\n%s", tt.want, stderr)
			}
			if slices.Contains(tt.args, "error") && strings.Contains(stderr, "level=INFO") {
				t.Errorf("--log-level error logged INFO lines:\n%s", stderr)
			}
			if tt.code == 2 && !strings.Contains(stderr, "usage") {
				t.Errorf("usage error without usage:\n%s", stderr)
			}
		})
	}
}
