//go:build linux

package private

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
)

// ErrNotPrivate means a file or directory is not the user's alone: owned by
// another uid, or writable by other users.
var ErrNotPrivate = errors.New("not private to this user")

// DirOptions relax CheckDir.
type DirOptions struct {
	// Sticky accepts a directory writable by others if it has the sticky
	// bit (as /tmp): others cannot remove or replace a file they do not
	// own there, though they can create new names. Default false.
	Sticky bool
}

// CheckDir fails with ErrNotPrivate unless dir (symlinks followed) is a
// directory owned by the effective uid that neither its group nor others can
// write (with o.Sticky: or a sticky directory, whoever owns it).
func CheckDir(dir string, o DirOptions) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("directory %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	sticky := fi.Mode()&os.ModeSticky != 0
	if o.Sticky && sticky {
		return nil
	}
	return checkOwner("directory", dir, fi)
}

// checkOwner fails unless fi belongs to the effective uid and is not
// writable by its group or others.
func checkOwner(what, path string, fi os.FileInfo) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%s %s: no owner information", what, path)
	}
	if uid := os.Geteuid(); int(st.Uid) != uid {
		return fmt.Errorf("%w: %s %s is not owned by uid %d (owner %d)", ErrNotPrivate, what, path, uid, st.Uid)
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("%w: %s %s is writable by others (mode %v)", ErrNotPrivate, what, path, perm)
	}
	return nil
}

// Open opens path for reading if its directory passes CheckDir (without
// Sticky) and it is a regular file, not a symlink (O_NOFOLLOW), owned by
// the effective uid and writable by no one else. A missing file is an
// error that matches os.ErrNotExist.
func Open(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, fmt.Errorf("%w: %s is a symlink", ErrNotPrivate, path)
		}
		return nil, err
	}
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = fmt.Errorf("%w: %s is not a regular file", ErrNotPrivate, path)
	}
	if err == nil {
		err = checkOwner("file", path, fi)
	}
	if err == nil {
		err = CheckDir(filepath.Dir(path), DirOptions{})
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// ReadFile is Open and read the whole file.
func ReadFile(path string) ([]byte, error) {
	f, err := Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return b, nil
}
