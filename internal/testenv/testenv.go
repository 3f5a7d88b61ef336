// Package testenv decides what a test does when something it needs is
// missing: outside CI it skips, under CI (CI=true) it fails, so a CI run
// never passes by silently testing less.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// CI reports whether the tests run under CI.
func CI() bool { return os.Getenv("CI") == "true" }

// MustHave fails (under CI) or skips (elsewhere) unless ok.
func MustHave(t testing.TB, ok bool, what string) {
	t.Helper()
	if ok {
		return
	}
	if CI() {
		t.Fatalf("missing test dependency under CI: %s", what)
	}
	t.Skipf("skipping outside CI: missing %s", what)
}

// MustHaveRoot requires running as root (network namespaces, other uids).
func MustHaveRoot(t testing.TB) {
	t.Helper()
	MustHave(t, os.Geteuid() == 0, "root (run the tests as root)")
}

// MustHaveCommand requires an executable on PATH and returns its path.
func MustHaveCommand(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	MustHave(t, err == nil, "the "+name+" command (apt-get install it, or run .ci/run as root)")
	return p
}
