//go:build linux

package private

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestOpen(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("x"), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ok := write("ok", 0o600)
	readable := write("readable", 0o644)
	open := write("open", 0o666)
	link := filepath.Join(dir, "link")
	if err := os.Symlink(ok, link); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, path string
		want       error
	}{
		{"0600", ok, nil},
		{"0644", readable, nil},
		{"writable by others", open, ErrNotPrivate},
		{"symlink", link, ErrNotPrivate},
		{"missing", filepath.Join(dir, "none"), os.ErrNotExist},
		{"directory", dir, ErrNotPrivate},
	}
	if os.Geteuid() == 0 {
		other := write("other", 0o600)
		if err := os.Chown(other, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		tests = append(tests, struct {
			name, path string
			want       error
		}{"another uid", other, ErrNotPrivate})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := Open(tt.path)
			if err == nil {
				f.Close()
			}
			if tt.want == nil && err != nil || tt.want != nil && !errors.Is(err, tt.want) {
				t.Errorf("Open(%s) = %v, want %v", tt.path, err, tt.want)
			}
		})
	}
}

func TestCheckDir(t *testing.T) {
	base := t.TempDir()
	mk := func(name string, mode os.FileMode) string {
		d := filepath.Join(base, name)
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, mode); err != nil {
			t.Fatal(err)
		}
		return d
	}
	private, shared, sticky := mk("private", 0o700), mk("shared", 0o777), mk("sticky", 0o777|os.ModeSticky)
	for _, tt := range []struct {
		dir    string
		sticky bool
		ok     bool
	}{
		{private, false, true},
		{shared, false, false},
		{shared, true, false},
		{sticky, false, false},
		{sticky, true, true},
	} {
		err := CheckDir(tt.dir, DirOptions{Sticky: tt.sticky})
		if (err == nil) != tt.ok {
			t.Errorf("CheckDir(%s, sticky=%v) = %v, want ok=%v", tt.dir, tt.sticky, err, tt.ok)
		}
	}
}
