// Package atomicfile writes files so that a reader, or a restart after a
// crash, sees either the old content or the new one, never a mix.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// WriteFile writes data to path atomically with the given permissions: it
// writes a temporary file in the same directory, syncs it, renames it over
// path and syncs the directory.
func WriteFile(path string, data []byte, perm os.FileMode) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("atomicfile: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err = f.Chmod(perm); err != nil {
		return fmt.Errorf("atomicfile: %w", err)
	}
	if _, err = f.Write(data); err != nil {
		return fmt.Errorf("atomicfile: write %s: %w", path, err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("atomicfile: sync %s: %w", path, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("atomicfile: close %s: %w", path, err)
	}
	if err = os.Rename(tmp, path); err != nil {
		return fmt.Errorf("atomicfile: %w", err)
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("atomicfile: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("atomicfile: sync dir %s: %w", dir, err)
	}
	return nil
}

// RemoveLeftovers removes from dir the temporary files WriteFile leaves
// when its process dies mid-write (".NAME.tmpDIGITS"). Only a process
// that alone writes dir's files may call it: another's write in progress
// would lose its temporary file.
func RemoveLeftovers(dir string) error {
	tmps, err := filepath.Glob(filepath.Join(dir, ".*.tmp*"))
	if err != nil {
		return err
	}
	for _, t := range tmps {
		// WriteFile's names end in ".tmp" and CreateTemp's digits.
		_, digits, _ := strings.Cut(filepath.Base(t)[1:], ".tmp")
		if digits == "" || strings.Trim(digits, "0123456789") != "" {
			continue
		}
		if fi, err := os.Lstat(t); err == nil && fi.Mode().IsRegular() {
			os.Remove(t)
		}
	}
	return nil
}
