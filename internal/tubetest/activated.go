package tubetest

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
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

// AskActivated sends "hi" to the on-demand service ActivatedScript runs,
// through the Unix socket at path, and returns the pid that answered
// ("activated PID …").
func AskActivated(t testing.TB, path string) int {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	io.WriteString(c, "hi")
	c.(*net.UnixConn).CloseWrite()
	got, _ := io.ReadAll(c)
	var pid int
	if _, err := fmt.Sscanf(string(got), "activated %d", &pid); err != nil {
		t.Fatalf("the service at %s answered %q", path, got)
	}
	return pid
}
