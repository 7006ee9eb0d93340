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
// Sticky) and the file passes CheckFile. It is OpenIn(path, DirOptions{}).
func Open(path string) (*os.File, error) { return OpenIn(path, DirOptions{}) }

// OpenIn opens path for reading if its directory passes CheckDir(o) and it
// passes CheckFile: a regular file, not a symlink (O_NOFOLLOW), owned by
// the effective uid, writable by no one else, with one link. With
// o.Sticky a sticky directory that others can write (as /tmp) is
// accepted: there others can create names but cannot remove, rename or
// replace a file they do not own, so a file that passes CheckFile is still
// ours. A missing file is an error that matches os.ErrNotExist.
func OpenIn(path string, o DirOptions) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, fmt.Errorf("%w: %s is a symlink", ErrNotPrivate, path)
		}
		return nil, err
	}
	err = CheckFile(f)
	if err == nil {
		err = CheckDir(filepath.Dir(path), o)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// CheckFile fails with ErrNotPrivate unless the open file f is a regular
// file owned by the effective uid, writable by neither its group nor
// others, with one link: a second link could be a name another user made
// for it (a hard link to our file in a shared directory, where
// fs.protected_hardlinks is off).
func CheckFile(f *os.File) error {
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("stat %s: %w", f.Name(), err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%w: %s is not a regular file", ErrNotPrivate, f.Name())
	}
	if err := checkOwner("file", f.Name(), fi); err != nil {
		return err
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink != 1 {
		return fmt.Errorf("%w: file %s has %d links", ErrNotPrivate, f.Name(), st.Nlink)
	}
	return nil
}

// ReadFile is Open and read the whole file.
func ReadFile(path string) ([]byte, error) { return ReadFileIn(path, DirOptions{}) }

// ReadFileIn is OpenIn and read the whole file.
func ReadFileIn(path string, o DirOptions) ([]byte, error) {
	f, err := OpenIn(path, o)
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
