package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/tubes-dev/tubes/identity"
	"github.com/tubes-dev/tubes/internal/atomicfile"
	"github.com/tubes-dev/tubes/tperr"
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
	dir  string
	lock *os.File // daemon.lock, flocked while the daemon runs
}

// openStore opens the state directory for this daemon alone: a second
// daemon given the same directory is refused (each would undo the
// other's writes, and both log in as the same accounts). Once it holds
// the directory, what a daemon killed mid-write left (atomicfile's
// temporary files) is removed.
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
	name := filepath.Join(dir, "daemon.lock")
	// O_NONBLOCK: a FIFO put there does not hang the open.
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0o600)
	if err != nil {
		return nil, fmt.Errorf("daemon: state directory: %w", err)
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, tperr.New(tperr.InvalidArgument, "%s is not a regular file: move it away", name)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		holder := make([]byte, 16)
		n, _ := f.ReadAt(holder, 0)
		holder = holder[:n]
		f.Close()
		if err == unix.EWOULDBLOCK {
			return nil, tperr.New(tperr.NotAvailable, "the state directory %s is in use by another daemon (pid %s); stop it, or give this one --state of its own",
				dir, strings.TrimSpace(string(holder)))
		}
		return nil, fmt.Errorf("daemon: lock %s: %w", name, err)
	}
	f.Truncate(0)
	f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	for _, d := range []string{dir, filepath.Join(dir, "keys"), filepath.Join(dir, "pins")} {
		atomicfile.RemoveLeftovers(d)
	}
	return &store{dir: dir, lock: f}, nil
}

// close gives the state directory up.
func (s *store) close() {
	if s.lock != nil {
		s.lock.Close() // closing releases the lock
		s.lock = nil
	}
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

// importKey saves k as name's key. A different key already there is an
// error: importing must not overwrite an identity. created says whether
// the file is new, as for key.
func (s *store) importKey(name string, k *identity.Key) (created bool, err error) {
	old, err := identity.Load(s.keyPath(name))
	switch {
	case err == nil && old.Public().Equal(k.Public()):
		return false, nil
	case err == nil:
		return false, tperr.New(tperr.NotAvailable, "this daemon holds another key for %s already (%s); remove it first if the imported one should replace it", name, s.keyPath(name))
	case !errors.Is(err, os.ErrNotExist):
		return false, err
	}
	if err := os.MkdirAll(filepath.Dir(s.keyPath(name)), 0o700); err != nil {
		return false, err
	}
	return true, k.Save(s.keyPath(name))
}

// exportKey returns name's key file as it is saved.
func (s *store) exportKey(name string) ([]byte, error) {
	k, err := identity.Load(s.keyPath(name))
	if err != nil {
		return nil, err
	}
	return k.PEM()
}

func (s *store) removeKey(name string) error {
	err := os.Remove(s.keyPath(name))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}
