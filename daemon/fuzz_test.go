package daemon

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/tubes-dev/tubes/identity"
	"github.com/tubes-dev/tubes/rendezvous"
)

// FuzzLoadState: accounts.json as found on disk.
func FuzzLoadState(f *testing.F) {
	f.Add([]byte(`{"accounts":[{"name":"alice","server":"127.0.0.1:4222","auto_connect":true}]}`))
	f.Add([]byte(`{"accounts":[{"name":"alice","ca":"-----BEGIN CERTIFICATE-----"}]}`))
	f.Add([]byte(`{"accounts":{}}`))
	f.Add([]byte(``))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "accounts.json"), data, 0o600)
		s := &store{dir: dir}
		st, err := s.load()
		if err != nil {
			return
		}
		k, _ := identity.FromSeed(make([]byte, 32))
		d := &Daemon{log: discard}
		d.cfg.StateDir = t.TempDir()
		for _, as := range st.Accounts {
			newAccount(d, as, k) // a bad CA is an error, not a panic
		}
	})
}

// FuzzOnMessage: deliveries from the relay into an account's inbox.
func FuzzOnMessage(f *testing.F) {
	f.Add(rendezvous.KindPresence, []byte(`{"name":"bob","online":true}`))
	f.Add(rendezvous.KindContacts, []byte(`{"name":"bob","state":"pending"}`))
	f.Add(rendezvous.KindRooms, []byte(`{"room":"lab","member":"bob","joined":true}`))
	f.Add(rendezvous.KindMessage, []byte(`{"from":"bob","kind":"x","body":"aGk="}`))
	f.Add(rendezvous.KindMessage, []byte(`{"from":5}`))
	f.Fuzz(func(t *testing.T, kind string, data []byte) {
		k, _ := identity.FromSeed(make([]byte, 32))
		d := &Daemon{log: discard}
		d.cfg.StateDir = t.TempDir()
		a, err := newAccount(d, accountState{Name: "alice"}, k)
		if err != nil {
			t.Fatal(err)
		}
		sub := d.bus.Subscribe()
		defer sub.Close()
		a.onMessage(kind, data)
	})
}
