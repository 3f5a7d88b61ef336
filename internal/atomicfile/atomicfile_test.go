package atomicfile

import (
	"os"
	"path/filepath"
	"testing"
)

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := WriteFile(p, []byte("one"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(p, []byte("two"), 0o640); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	st, _ := os.Stat(p)
	if string(b) != "two" || st.Mode().Perm() != 0o640 {
		t.Fatalf("content %q mode %v", b, st.Mode().Perm())
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("leftover temporary files: %v", ents)
	}
	// A failed write leaves the old content and no temporary file.
	if err := WriteFile(filepath.Join(dir, "missing", "f"), []byte("x"), 0o600); err == nil {
		t.Fatal("write into a missing directory succeeded")
	}
}

// RemoveLeftovers removes what a write killed midway left, and nothing
// else that merely looks like it.
func TestRemoveLeftovers(t *testing.T) {
	dir := t.TempDir()
	files := map[string]bool{ // name → removed
		".accounts.json.tmp123456": true,
		".x.tmp9":                  true,
		".my.tmpl-notes":           false,
		".x.tmp":                   false,
		".x.tmp12a":                false,
		"accounts.json":            false,
	}
	for name := range files {
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	os.Mkdir(filepath.Join(dir, ".d.tmp1"), 0o700)
	if err := RemoveLeftovers(dir); err != nil {
		t.Fatal(err)
	}
	for name, removed := range files {
		if _, err := os.Stat(filepath.Join(dir, name)); os.IsNotExist(err) != removed {
			t.Errorf("%s: removed %v, want %v", name, os.IsNotExist(err), removed)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, ".d.tmp1")); err != nil {
		t.Errorf("a directory was removed: %v", err)
	}
}
