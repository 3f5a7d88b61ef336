package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/identity"
	"github.com/tubes-dev/tubes/internal/atomicfile"
	"github.com/tubes-dev/tubes/rendezvous"
	"github.com/tubes-dev/tubes/tperr"
)

// Pinned keys: the relay hands out the keys of contacts and room
// co-members, and a dishonest relay could hand out its own. So each
// account pins every key it uses on first sight (trust on first use,
// marked unverified), and refuses a different key for the same name
// later: no link, nothing sealed to it, a ContactKeyChanged event and a
// line in the status. The user compares safety numbers with the contact
// (identity.PublicKey.SafetyNumber) and runs tube contact verify, which
// marks a match verified and is the only way to trust a changed key.

// pin is one name's pinned key.
type pin struct {
	Key      string    `json:"key"` // U…
	Verified bool      `json:"verified,omitempty"`
	Since    time.Time `json:"since"`
	// Changed is a different key the relay gave for the name since; it
	// is refused until the user verifies it.
	Changed   string    `json:"changed,omitempty"`
	ChangedAt time.Time `json:"changed_at,omitzero"`
}

// maxPins bounds one account's pin file (names it has talked to).
const maxPins = 100_000

// pins is one account's pinned keys, kept in its own file.
type pins struct {
	file     string
	onChange func(name string, old, new identity.PublicKey)

	mu   sync.Mutex     // guards keys and the file
	keys map[string]pin // by account name
}

// decodePins reads a pin file. A file that is not valid, or names a key
// that is not one, is refused whole: a pin must not be guessed at.
func decodePins(b []byte) (map[string]pin, error) {
	var m map[string]pin
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	if len(m) > maxPins {
		return nil, fmt.Errorf("%d pins, more than %d", len(m), maxPins)
	}
	for name, p := range m {
		if rendezvous.ValidName("account", name) != nil {
			return nil, fmt.Errorf("pin for %q: not an account name", name)
		}
		if _, err := identity.ParsePublicKey(p.Key); err != nil {
			return nil, fmt.Errorf("pin for %s: %v", name, err)
		}
		if p.Changed != "" {
			if _, err := identity.ParsePublicKey(p.Changed); err != nil {
				return nil, fmt.Errorf("changed key for %s: %v", name, err)
			}
		}
	}
	if m == nil {
		m = map[string]pin{}
	}
	return m, nil
}

func loadPins(file string, onChange func(name string, old, new identity.PublicKey)) (*pins, error) {
	p := &pins{file: file, onChange: onChange, keys: map[string]pin{}}
	b, err := os.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		return p, nil
	}
	if err != nil {
		return nil, err
	}
	if p.keys, err = decodePins(b); err != nil {
		return nil, tperr.Wrap(err, tperr.InvalidArgument, "%s is corrupt (%s); the pinned keys it held cannot be trusted, so the account does not start", file, tperr.Reason(err))
	}
	return p, nil
}

// saveLocked writes the pins; callers hold p.mu.
func (p *pins) saveLocked() error {
	b, err := json.MarshalIndent(p.keys, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p.file), 0o700); err != nil {
		return err
	}
	return atomicfile.WriteFile(p.file, append(b, '\n'), 0o600)
}

// keyChanged is the error for a name whose key is not its pinned one.
func keyChanged(name string, pinned, got identity.PublicKey) error {
	return tperr.New(tperr.CertUntrusted, "%s's key is not the one pinned for them (pinned %s, the relay gave %s): compare safety numbers with %s, then run tube contact verify %s NUMBER",
		name, pinned.SafetyNumber(), got.SafetyNumber(), name, name)
}

// checkAll pins the given keys on first sight and accepts them; a key
// that is not its name's pinned one is refused (and, the first time it is
// seen, recorded and reported). One write of the file for all; it returns
// the refusals by name.
func (p *pins) checkAll(given map[string]identity.PublicKey) map[string]error {
	refused := map[string]error{}
	type change struct {
		name     string
		old, new identity.PublicKey
	}
	var changes []change
	p.mu.Lock()
	var added []string
	dirty := false
	for name, key := range given {
		if rendezvous.ValidName("account", name) != nil {
			refused[name] = tperr.New(tperr.InvalidHandle, "%q is not an account name", name)
			continue
		}
		cur, ok := p.keys[name]
		switch {
		case !ok && len(p.keys) >= maxPins:
			refused[name] = tperr.New(tperr.CertLimitExceeded, "%d keys are pinned already; %s's cannot be", maxPins, name)
		case !ok:
			p.keys[name] = pin{Key: key.String(), Since: time.Now().UTC()}
			added = append(added, name)
			dirty = true
		case cur.Key == key.String():
		default:
			pinned, _ := identity.ParsePublicKey(cur.Key)
			if cur.Changed != key.String() {
				cur.Changed, cur.ChangedAt = key.String(), time.Now().UTC()
				p.keys[name] = cur
				dirty = true
				changes = append(changes, change{name, pinned, key})
			}
			refused[name] = keyChanged(name, pinned, key)
		}
	}
	if dirty {
		if err := p.saveLocked(); err != nil {
			for _, name := range added {
				delete(p.keys, name)
				refused[name] = err
			}
		}
	}
	p.mu.Unlock()
	if p.onChange != nil {
		for _, c := range changes {
			p.onChange(c.name, c.old, c.new)
		}
	}
	return refused
}

// verify marks name's key verified when fp is its safety number (or
// SHA256: fingerprint). A fingerprint of the changed key the relay gave
// makes that key the pinned one: the only way to trust a changed key.
func (p *pins) verify(name, fp string) (pin, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	cur, ok := p.keys[name]
	if !ok {
		return pin{}, tperr.New(tperr.NotFound, "no key is pinned for %s yet: it is pinned when you first talk to them (a contact, or a room member)", name)
	}
	pinned, _ := identity.ParsePublicKey(cur.Key)
	switch {
	case cur.Changed != "" && pinned.MatchesFingerprint(fp):
		// The user compared the pinned key again: it stays, and the
		// change the relay showed is dismissed (it may have gone back).
		cur.Changed, cur.ChangedAt, cur.Verified = "", time.Time{}, true
	case cur.Changed != "":
		changed, _ := identity.ParsePublicKey(cur.Changed)
		if !changed.MatchesFingerprint(fp) {
			return cur, tperr.New(tperr.CertFingerprintMismatch, "%s is not the safety number of the key the relay now gives for %s; do not trust that key until %s reads you theirs", strings.TrimSpace(fp), name, name)
		}
		cur = pin{Key: cur.Changed, Verified: true, Since: time.Now().UTC()}
	case pinned.MatchesFingerprint(fp):
		cur.Verified = true
	default:
		return cur, tperr.New(tperr.CertFingerprintMismatch, "%s is not the safety number of the key pinned for %s; ask %s to read you theirs (tube account list shows it)", strings.TrimSpace(fp), name, name)
	}
	old := p.keys[name]
	p.keys[name] = cur
	if err := p.saveLocked(); err != nil {
		p.keys[name] = old
		return old, err
	}
	return cur, nil
}

func (p *pins) get(name string) (pin, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	cur, ok := p.keys[name]
	return cur, ok
}

// changes lists the names whose key changed and is not yet verified.
func (p *pins) changes() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for name, cur := range p.keys {
		if cur.Changed != "" {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// keyInfo is how a pinned key shows in the local API.
func keyInfo(cur pin, ok bool) api.PinnedKey {
	if !ok {
		return api.PinnedKey{}
	}
	k, _ := identity.ParsePublicKey(cur.Key)
	info := api.PinnedKey{Key: cur.Key, SafetyNumber: k.SafetyNumber(), Fingerprint: k.Fingerprint(), Verified: cur.Verified}
	if cur.Changed != "" {
		c, _ := identity.ParsePublicKey(cur.Changed)
		info.ChangedTo = c.SafetyNumber()
	}
	return info
}

// pinContacts pins the keys of the account's mutual contacts, as soon as
// it connects (the first start after pinning came: existing contacts).
func (a *account) pinContacts(ctx context.Context, c *rendezvous.Client) {
	cs, err := c.Contacts(ctx)
	if err != nil {
		a.log.Info("contacts' keys not pinned yet", "err", err)
		return
	}
	var names []string
	for _, x := range cs {
		if x.State == rendezvous.ContactMutual {
			names = append(names, x.Name)
		}
	}
	if len(names) == 0 {
		return
	}
	if _, err := (signaller{a}).Keys(ctx, names); err != nil {
		a.log.Info("contacts' keys not pinned yet", "err", err)
	}
}
