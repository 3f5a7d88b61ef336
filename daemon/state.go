package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/tubes-dev/tubes/identity"
	"github.com/tubes-dev/tubes/internal/atomicfile"
)

// The state directory (mode 0700) holds:
//
//	accounts.json     the accounts, in order (0600, written atomically)
//	keys/<name>.key   each account's private key (0600, PKCS#8 PEM)
//
// A key is written before its account is registered and removed again
// only if registration fails, so a crash never loses a registered
// identity: adding the account again reuses the key it finds.
type stateFile struct {
	Accounts []accountState `json:"accounts"`
}

type accountState struct {
	Name        string `json:"name"`
	Server      string `json:"server"`
	CA          string `json:"ca,omitempty"` // PEM
	AutoConnect bool   `json:"auto_connect"`
}

type store struct {
	dir string
}

func openStore(dir string) (*store, error) {
	if dir == "" {
		return nil, errors.New("daemon: no state directory")
	}
	if err := os.MkdirAll(filepath.Join(dir, "keys"), 0o700); err != nil {
		return nil, fmt.Errorf("daemon: state directory: %w", err)
	}
	for _, d := range []string{dir, filepath.Join(dir, "keys")} {
		if err := os.Chmod(d, 0o700); err != nil {
			return nil, fmt.Errorf("daemon: state directory: %w", err)
		}
	}
	return &store{dir: dir}, nil
}

func (s *store) path() string { return filepath.Join(s.dir, "accounts.json") }

func (s *store) keyPath(name string) string { return filepath.Join(s.dir, "keys", name+".key") }

func (s *store) load() (stateFile, error) {
	var st stateFile
	b, err := os.ReadFile(s.path())
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("daemon: %w", err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("daemon: %s is corrupt: %w", s.path(), err)
	}
	return st, nil
}

func (s *store) save(st stateFile) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(s.path(), append(b, '\n'), 0o600)
}

// key loads name's key, or creates and saves a new one. created says
// which, so a failed registration removes only a key it made.
func (s *store) key(name string) (k *identity.Key, created bool, err error) {
	k, err = identity.Load(s.keyPath(name))
	if err == nil {
		return k, false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, false, err
	}
	if k, err = identity.Generate(); err != nil {
		return nil, false, err
	}
	if err := k.Save(s.keyPath(name)); err != nil {
		return nil, false, err
	}
	return k, true, nil
}

func (s *store) removeKey(name string) error {
	err := os.Remove(s.keyPath(name))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}
