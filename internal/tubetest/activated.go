package tubetest

import (
	"os"
	"path/filepath"
	"testing"
)

// ActivatedScript writes dir/name.sh, an executable for a descriptor's
// <filepath> that runs the test binary as the on-demand service: the
// package's TestMain calls serve.ActivatedMain when ACTIVATED_SERVICE is
// set.
func ActivatedScript(t testing.TB, dir, name string) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(dir, name+".sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nACTIVATED_SERVICE=1 exec "+exe+" \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return script
}
