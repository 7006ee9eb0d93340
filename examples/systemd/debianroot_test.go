//go:build linux

package systemd

// The Debian root file system the units boot in: debootstrap bookworm
// (minbase), then systemd from bookworm-backports (254, which has
// Type=notify-reload) or, when backports cannot be had, bookworm's own (252).
// Built once per machine and cached: see rootCacheDir.

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// debianSuite is the release the root is made of. Its systemd is 252;
// debianSuite-backports has 254.
const debianSuite = "bookworm"

// rootRecipe is everything the cached root is made of. The cache key is its
// hash: change anything here (or in buildBaseRoot/installSystemd) and bump
// the version so that the next run builds afresh.
const rootRecipe = "recipe v1; debootstrap --variant=minbase " + debianSuite +
	"; useradd --system demo (User= and Group= of the units); apt-get clean"

// debianRoot describes a root ready to boot.
type debianRoot struct {
	dir            string // the root file system (used read-only: each boot lays an overlay on it)
	systemdVersion int    // 254, 252, ...
	systemdLine    string // `systemd --version`'s first line
	source         string // where systemd came from, and why
}

// rootCacheDir is where the roots are kept between runs: outside the
// repository, one directory per recipe hash. CHANGEOVER_SYSTEMD_TEST_CACHE
// overrides it.
func rootCacheDir() string {
	if d := os.Getenv("CHANGEOVER_SYSTEMD_TEST_CACHE"); d != "" {
		return d
	}
	return "/var/cache/changeover-systemd-test"
}

func recipeKey(parts ...string) string {
	h := sha256.Sum256([]byte(strings.Join(parts, "\n")))
	return hex.EncodeToString(h[:6])
}

// prepareDebianRoot returns a root with systemd installed, building what is
// not in the cache. The caller holds the cache lock. systemd comes from
// bookworm-backports unless CHANGEOVER_SYSTEMD_TEST_NO_BACKPORTS=1 or the
// backports install fails: then bookworm's (252), and the root says why.
func prepareDebianRoot(t *testing.T, cache string) debianRoot {
	t.Helper()
	mirror := debianMirror()
	base := filepath.Join(cache, "base-"+recipeKey(rootRecipe))
	if !exists(filepath.Join(base, "complete")) {
		start := time.Now()
		t.Logf("building the base root with debootstrap (%s %s, from %s): minutes, once per machine", debianSuite, "minbase", mirror)
		if err := buildBaseRoot(base, mirror); err != nil {
			t.Fatalf("base root: %v", err)
		}
		t.Logf("base root built in %v: %s", time.Since(start).Round(time.Second), base)
	}
	wantBackports := os.Getenv("CHANGEOVER_SYSTEMD_TEST_NO_BACKPORTS") == ""
	var whyNot string
	if wantBackports {
		dir := filepath.Join(cache, "systemd-backports-"+recipeKey(rootRecipe, "systemd from "+debianSuite+"-backports"))
		r, err := systemdRoot(t, base, dir, mirror, debianSuite+"-backports")
		if err == nil {
			return r
		}
		whyNot = err.Error()
		t.Logf("systemd from %s-backports unavailable, falling back to %s's: %v", debianSuite, debianSuite, err)
	} else {
		whyNot = "CHANGEOVER_SYSTEMD_TEST_NO_BACKPORTS is set"
	}
	dir := filepath.Join(cache, "systemd-"+debianSuite+"-"+recipeKey(rootRecipe, "systemd from "+debianSuite))
	r, err := systemdRoot(t, base, dir, mirror, debianSuite)
	if err != nil {
		t.Fatalf("systemd from %s: %v", debianSuite, err)
	}
	r.source += " (not backports: " + whyNot + ")"
	return r
}

// systemdRoot returns the cached root at dir, or makes it: a copy of base
// with systemd installed from suite.
func systemdRoot(t *testing.T, base, dir, mirror, suite string) (debianRoot, error) {
	t.Helper()
	rootDir := filepath.Join(dir, "root")
	if !exists(filepath.Join(dir, "complete")) {
		start := time.Now()
		if err := os.RemoveAll(dir); err != nil {
			return debianRoot{}, err
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return debianRoot{}, err
		}
		if out, err := exec.Command("cp", "-a", "--reflink=auto", filepath.Join(base, "root"), rootDir).CombinedOutput(); err != nil {
			return debianRoot{}, fmt.Errorf("copy the base root: %w: %s", err, out)
		}
		if err := installSystemd(rootDir, mirror, suite); err != nil {
			os.RemoveAll(dir)
			return debianRoot{}, err
		}
		if err := os.WriteFile(filepath.Join(dir, "complete"), []byte(suite+"\n"), 0o644); err != nil {
			return debianRoot{}, err
		}
		t.Logf("systemd from %s installed in %v: %s", suite, time.Since(start).Round(time.Second), dir)
	}
	out, err := exec.Command("chroot", rootDir, "/lib/systemd/systemd", "--version").Output()
	if err != nil {
		return debianRoot{}, fmt.Errorf("systemd --version in %s: %w", rootDir, err)
	}
	line, _, _ := strings.Cut(string(out), "\n")
	m := regexp.MustCompile(`^systemd (\d+) `).FindStringSubmatch(line)
	if m == nil {
		return debianRoot{}, fmt.Errorf("systemd --version says %q", line)
	}
	v, _ := strconv.Atoi(m[1])
	return debianRoot{dir: rootDir, systemdVersion: v, systemdLine: line, source: suite}, nil
}

// buildBaseRoot runs debootstrap into dir/root (a temporary name first, so
// that an interrupted build is never taken for a complete one).
func buildBaseRoot(dir, mirror string) error {
	if _, err := exec.LookPath("debootstrap"); err != nil {
		return fmt.Errorf("debootstrap is not installed (apt-get install debootstrap; .ci/run does): %w", err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	root := filepath.Join(dir, "root")
	// In a mount namespace of its own: the proc and sys it mounts in the
	// root go with it if the test dies, instead of staying on the host.
	if out, err := exec.Command("unshare", "--mount", "--propagation", "private",
		"debootstrap", "--variant=minbase", debianSuite, root, mirror).CombinedOutput(); err != nil {
		return fmt.Errorf("debootstrap %s %s: %w\n%s", debianSuite, mirror, err, tail(string(out), 3000))
	}
	// The units run as User=demo, Group=demo.
	if out, err := inChroot(root, "useradd", "--system", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", "demo"); err != nil {
		return fmt.Errorf("useradd demo: %w\n%s", err, out)
	}
	if out, err := inChroot(root, "apt-get", "clean"); err != nil {
		return fmt.Errorf("apt-get clean: %w\n%s", err, out)
	}
	return os.WriteFile(filepath.Join(dir, "complete"), []byte(rootRecipe+"\n"), 0o644)
}

// installSystemd installs systemd (with no recommends: no udev, no dbus) from
// suite ("bookworm" or "bookworm-backports") into root.
func installSystemd(root, mirror, suite string) error {
	list := fmt.Sprintf("deb %s %s main\n", mirror, debianSuite)
	if suite != debianSuite {
		list += fmt.Sprintf("deb %s %s main\n", mirror, suite)
	}
	if err := os.WriteFile(filepath.Join(root, "etc/apt/sources.list"), []byte(list), 0o644); err != nil {
		return err
	}
	if out, err := inChroot(root, "apt-get", "update", "-q"); err != nil {
		return fmt.Errorf("apt-get update: %w\n%s", err, tail(out, 2000))
	}
	if out, err := inChroot(root, "apt-get", "install", "-y", "-q", "--no-install-recommends", "-t", suite, "systemd"); err != nil {
		return fmt.Errorf("apt-get install -t %s systemd: %w\n%s", suite, err, tail(out, 2000))
	}
	if out, err := inChroot(root, "apt-get", "clean"); err != nil {
		return fmt.Errorf("apt-get clean: %w\n%s", err, out)
	}
	return os.RemoveAll(filepath.Join(root, "var/lib/apt/lists")) // 50 MB, rebuilt by apt-get update
}

// inChroot runs a command in root with /proc mounted, in a mount namespace of
// its own so that nothing stays mounted if the test dies.
func inChroot(root string, argv ...string) (string, error) {
	script := `mount -t proc proc "$1/proc" && exec chroot "$@"`
	args := append([]string{"--mount", "--fork", "--propagation", "private", "/bin/sh", "-c", script, "sh", root}, argv...)
	cmd := exec.Command("unshare", args...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "DEBIAN_FRONTEND=noninteractive"}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// debianMirror is the Debian archive the host's apt uses for debianSuite
// (its sources.list or a deb822 .sources file), so that debootstrap goes
// where apt-get already can. CHANGEOVER_DEBIAN_MIRROR overrides it.
func debianMirror() string {
	if m := os.Getenv("CHANGEOVER_DEBIAN_MIRROR"); m != "" {
		return m
	}
	files, _ := filepath.Glob("/etc/apt/sources.list.d/*")
	for _, f := range append([]string{"/etc/apt/sources.list"}, files...) {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if m := mirrorIn(string(b)); m != "" {
			return m
		}
	}
	return "http://deb.debian.org/debian"
}

// mirrorIn returns the URI of the first "deb" source for debianSuite itself
// (not -security or -updates) in an apt source file, either format.
func mirrorIn(text string) string {
	// One-line format: deb [options] URI SUITE COMPONENT...
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 3 || f[0] != "deb" {
			continue
		}
		f = f[1:]
		if strings.HasPrefix(f[0], "[") {
			for len(f) > 0 && !strings.HasSuffix(f[0], "]") {
				f = f[1:]
			}
			if len(f) > 0 {
				f = f[1:]
			}
		}
		if len(f) >= 2 && f[1] == debianSuite {
			return f[0]
		}
	}
	// deb822: stanzas of "Key: value" lines, separated by blank lines.
	for _, stanza := range regexp.MustCompile(`\n\s*\n`).Split(text, -1) {
		fields := map[string][]string{}
		for _, l := range strings.Split(stanza, "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && !strings.HasPrefix(l, "#") {
				fields[strings.ToLower(strings.TrimSpace(k))] = strings.Fields(v)
			}
		}
		has := func(k, v string) bool {
			for _, x := range fields[k] {
				if x == v {
					return true
				}
			}
			return false
		}
		if has("types", "deb") && has("suites", debianSuite) && len(fields["uris"]) > 0 {
			return fields["uris"][0]
		}
	}
	return ""
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return !errors.Is(err, os.ErrNotExist)
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}
