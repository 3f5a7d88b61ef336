package daemon

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/internal/atomicfile"
	"github.com/tubes-dev/tubes/tperr"
)

// Exports survive a restart: every account's exports, but those of a
// parameters generator (a local-API client's, which end with it), are
// kept in exports.json (mode 0600: fixed parameters may be secrets),
// written after each change, and exported again when the daemon starts.
// A change that cannot be saved is undone and refused, so that what the
// daemon exports and what it will export after a restart agree.

// exportsFile is the file's shape.
type exportsFile struct {
	Exports []api.Export `json:"exports"`
}

func (d *Daemon) exportsPath() string { return filepath.Join(d.cfg.StateDir, "exports.json") }

// durable says whether an export is kept across restarts.
func durable(e api.Export) bool { return !e.ParamsGenerator }

// saveExports writes every account's durable exports. d.expMu is held.
func (d *Daemon) saveExports() error {
	f := exportsFile{Exports: []api.Export{}}
	for _, m := range d.managers() {
		for _, e := range m.Exports() {
			if durable(e) {
				f.Exports = append(f.Exports, e)
			}
		}
	}
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(d.exportsPath(), append(b, '\n'), 0o600); err != nil {
		return tperr.Wrap(err, tperr.NotAvailable, "the exports could not be saved, so nothing changed: %v", err)
	}
	return nil
}

// restoreExports exports again what exports.json holds, for the accounts
// there are; an export that is refused now (the account is gone, or its
// address no longer valid) is logged and left out of the next save. A
// file that cannot be read or parsed stops the daemon, as the other
// state files do.
func (d *Daemon) restoreExports() error {
	b, err := os.ReadFile(d.exportsPath())
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var f exportsFile
	if err := json.Unmarshal(b, &f); err != nil {
		return tperr.New(tperr.InvalidArgument, "%s is corrupt: %v", d.exportsPath(), err)
	}
	for _, e := range f.Exports {
		a := d.accounts[e.Account]
		if a == nil || !durable(e) {
			d.log.Warn("an export not restored: its account is gone", "account", e.Account, "service", e.Service)
			continue
		}
		if _, err := a.tubes.Export("", e); err != nil {
			d.log.Warn("an export not restored", "account", e.Account, "service", e.Service, "err", err)
		}
	}
	return nil
}

// changeExport makes an export change (change, on manager service's
// exports) and saves it; if the save fails the change is undone.
func (d *Daemon) changeExport(name, service string, change func() error) error {
	m, err := d.tubesOf(name)
	if err != nil {
		return err
	}
	d.expMu.Lock()
	defer d.expMu.Unlock()
	undo := m.KeepExport(service)
	if err := change(); err != nil {
		return err
	}
	if err := d.saveExports(); err != nil {
		undo()
		return err
	}
	return nil
}

// forgetExports saves the exports after an account went: its exports do
// not come back with an account of the same name.
func (d *Daemon) forgetExports() error {
	d.expMu.Lock()
	defer d.expMu.Unlock()
	return d.saveExports()
}
