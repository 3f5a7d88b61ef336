package daemon

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/internal/atomicfile"
	"github.com/tubes-dev/tubes/registry"
	"github.com/tubes-dev/tubes/tperr"
)

// Capabilities in a descriptor are what a caller must hold: a contact
// reaches a published service only with every capability its interfaces
// name granted to it (tube services grant CONTACT CAP...).

func (d *Daemon) grantsFile() string { return filepath.Join(d.cfg.StateDir, "grants.json") }

// grants are account → contact → capabilities; callers hold pubs.mu.
func (d *Daemon) loadGrants() (map[string]map[string][]string, error) {
	g := map[string]map[string][]string{}
	b, err := os.ReadFile(d.grantsFile())
	if errors.Is(err, fs.ErrNotExist) {
		return g, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, &g); err != nil {
		return nil, tperr.New(tperr.InvalidArgument, "%s is corrupt: %v", d.grantsFile(), err)
	}
	return g, nil
}

// Grant gives (or, with revoke, takes back) capabilities to a contact.
func (d *Daemon) Grant(name string, g api.Grant, revoke bool) (api.Grant, error) {
	a, err := d.account(name)
	if err != nil {
		return api.Grant{}, err
	}
	if g.Contact == "" || len(g.Capabilities) == 0 {
		return api.Grant{}, tperr.New(tperr.InvalidArgument, "a grant names a contact and at least one capability")
	}
	for _, c := range g.Capabilities {
		if c == "" || strings.ContainsAny(c, ", \t\n") || len(c) > 255 {
			return api.Grant{}, tperr.New(tperr.InvalidArgument, "capability %q: a name without commas or spaces", c)
		}
	}
	d.pubs.mu.Lock()
	defer d.pubs.mu.Unlock()
	all, err := d.loadGrants()
	if err != nil {
		return api.Grant{}, err
	}
	if all[a.name] == nil {
		all[a.name] = map[string][]string{}
	}
	have := all[a.name][g.Contact]
	for _, c := range g.Capabilities {
		if revoke {
			have = slices.DeleteFunc(have, func(x string) bool { return x == c })
		} else if !slices.Contains(have, c) {
			have = append(have, c)
		}
	}
	slices.Sort(have)
	if len(have) == 0 {
		delete(all[a.name], g.Contact)
	} else {
		all[a.name][g.Contact] = have
	}
	b, _ := json.MarshalIndent(all, "", "  ")
	if err := atomicfile.WriteFile(d.grantsFile(), append(b, '\n'), 0o600); err != nil {
		return api.Grant{}, err
	}
	return api.Grant{Contact: g.Contact, Capabilities: have}, nil
}

// Grants lists an account's grants.
func (d *Daemon) Grants(name string) ([]api.Grant, error) {
	a, err := d.account(name)
	if err != nil {
		return nil, err
	}
	d.pubs.mu.Lock()
	defer d.pubs.mu.Unlock()
	all, err := d.loadGrants()
	if err != nil {
		return nil, err
	}
	out := []api.Grant{}
	for c, caps := range all[a.name] {
		out = append(out, api.Grant{Contact: c, Capabilities: caps})
	}
	slices.SortFunc(out, func(x, y api.Grant) int { return strings.Compare(x.Contact, y.Contact) })
	return out, nil
}

// missingCaps lists what a service's interfaces require that contact
// lacks.
func (d *Daemon) missingCaps(account, contact string, desc *registry.Descriptor) []string {
	d.pubs.mu.Lock()
	all, err := d.loadGrants()
	d.pubs.mu.Unlock()
	var have []string
	if err == nil {
		have = all[account][contact]
	}
	var missing []string
	for _, in := range desc.Interfaces {
		for _, c := range in.Capabilities {
			if !slices.Contains(have, c) && !slices.Contains(missing, c) {
				missing = append(missing, c)
			}
		}
	}
	return missing
}
