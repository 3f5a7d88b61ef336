package daemon

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/tubes-dev/tubes/activation"
	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/internal/serve"
	"github.com/tubes-dev/tubes/internal/ucred"
	"github.com/tubes-dev/tubes/registry"
)

// Services with a <filepath> start on demand: the first connection
// (through a tube, handed over with Unit.Connect, or to the service's
// uid/gid-filtered Unix socket) starts the executable with the socket
// passed systemd-style. There is no TCP front socket: on loopback any
// local user could reach it, past the filter. A custom property of
// any of its interfaces chooses the instance mode ("instance": shared or
// per-client), the idle stop of a shared one ("idle": seconds) and how
// long a connection waits for a shared one to accept it
// ("start-timeout": seconds), and how many per-client ones run at once
// ("max-instances").

// localProperties are the custom properties that tell this daemon how to
// run a service (above) and who may reach its local socket: settings of
// this machine, not part of what the service offers, so they are not
// published.
var localProperties = []string{"instance", "idle", "start-timeout", "max-instances", "allow-uid", "allow-gid"}

type activated struct {
	unit   *activation.Unit
	local  net.Listener // Unix socket, for local clients (uid/gid filtered)
	socket string
	desc   *registry.Descriptor // as the unit was made for it
	id     unitID
	// serial names this unit and no other, before or after it: a tube
	// granted it carries it (api.Export.Unit), so that a unit made later
	// on the same socket (the service removed, another registered under
	// its name) is not reached through that tube.
	serial string
}

type activations struct {
	sync   sync.Mutex // one syncActivations at a time, so none undoes a newer one
	mu     sync.Mutex
	units  map[string]*activated // unit key (unitID.key) → unit
	serial uint64                // of the last unit made
	// failed are the units that could not be set up, by name, with why
	// (tube services activations shows them).
	failed map[string]api.ActivationStatus
	dir    string // where the local sockets are (localSocketDir), once made
}

// unitID names the unit of one location of an on-demand service. A
// service registered at several locations (each a <filepath>) has a unit
// for each: the first registered is known by the service's name, each
// further one as NAME@FILEPATH. The first location of a service whose
// name is plain (letters, digits and . _ + -, at most 48 bytes) has the
// socket NAME.sock; every other unit's is NAME~HASH.sock, NAME the name
// made a file name and cut to 40 bytes, HASH from the unit's key. A plain
// name has no "~": no two units' sockets have one name, and each keeps
// its name across restarts.
type unitID struct {
	key    string // folded name and path
	name   string // in tube services activations
	socket string // file name of the local socket
}

// onDemandUnit names the unit of desc, one of the locations locs of its
// service (the user's, in the order they were registered, then the
// system's).
func onDemandUnit(locs []*registry.Descriptor, desc *registry.Descriptor) unitID {
	id := unitID{key: registry.FoldName(desc.Name) + "\x00" + desc.FilePath, name: desc.Name}
	first := slices.IndexFunc(locs, func(l *registry.Descriptor) bool { return l.FilePath != "" })
	isFirst := first >= 0 && locs[first].FilePath == desc.FilePath
	if !isFirst {
		id.name = desc.Name + "@" + desc.FilePath
	}
	if isFirst && plainName(desc.Name) {
		id.socket = desc.Name + ".sock"
	} else {
		sum := sha256.Sum256([]byte(id.key))
		id.socket = fmt.Sprintf("%s~%x.sock", safeName(desc.Name), sum[:8])
	}
	return id
}

// plainName says whether a service name is a file name as it is.
func plainName(s string) bool {
	if s == "" || len(s) > 48 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '+' || c == '-') {
			return false
		}
	}
	return true
}

// onDemandLocations are the locations of service name that have units:
// the user's, then the system's (lookups list both; publication and
// tubes by name take the user's).
func (d *Daemon) onDemandLocations(name string) []*registry.Descriptor {
	locs, scope, _ := d.services.Service(name, registry.UserScope)
	if scope == registry.UserScope {
		sys, _, _ := d.services.Service(name, registry.SystemScope)
		locs = append(locs, sys...)
	}
	return locs
}

// activated returns the unit of service location desc, named id, making
// it on first use, and again when its descriptor or its name changed (a
// user's location of the name came before it, say). A unit that cannot
// be made is listed as failed, with why.
func (d *Daemon) activated(desc *registry.Descriptor, id unitID) (*activated, error) {
	d.acts.mu.Lock()
	defer d.acts.mu.Unlock()
	a, err := d.activatedLocked(desc, id)
	if d.acts.failed == nil {
		d.acts.failed = map[string]api.ActivationStatus{}
	}
	if err != nil {
		d.acts.failed[id.name] = api.ActivationStatus{Path: desc.FilePath, LastError: err.Error()}
	} else {
		delete(d.acts.failed, id.name)
	}
	return a, err
}

func (d *Daemon) activatedLocked(desc *registry.Descriptor, id unitID) (*activated, error) {
	if a := d.acts.units[id.key]; a != nil && a.id == id && reflect.DeepEqual(a.desc, desc) {
		return a, nil
	} else if a != nil {
		a.close()
		delete(d.acts.units, id.key)
	}
	for _, u := range d.acts.units {
		if filepath.Base(u.socket) == id.socket {
			// Not made by onDemandUnit: fail closed rather than take
			// another unit's socket.
			return nil, fmt.Errorf("its socket %s is the one of %s (%s)", id.socket, u.unit.Name(), u.desc.FilePath)
		}
	}
	cfg := activation.Config{Name: id.name, Path: desc.FilePath, Logger: d.log}
	for _, in := range desc.Interfaces {
		if m := in.Properties["instance"]; m == activation.PerClient || m == activation.Shared {
			cfg.Mode = m
		}
		if s, err := strconv.Atoi(in.Properties["idle"]); err == nil && s > 0 {
			cfg.Idle = time.Duration(s) * time.Second
		}
		if s, err := strconv.Atoi(in.Properties["start-timeout"]); err == nil && s > 0 {
			cfg.StartTimeout = time.Duration(s) * time.Second
		}
		if n, err := strconv.Atoi(in.Properties["max-instances"]); err == nil && n > 0 {
			cfg.MaxInstances = n
		}
	}
	d.acts.serial++
	act := &activated{unit: activation.New(cfg), desc: desc, id: id, serial: strconv.FormatUint(d.acts.serial, 10)}
	if err := d.serveLocal(act, desc, id.socket); err != nil {
		act.unit.Close()
		return nil, fmt.Errorf("no local socket for %s: %w", id.name, err)
	}
	if d.acts.units == nil {
		d.acts.units = map[string]*activated{}
	}
	d.acts.units[id.key] = act
	return act, nil
}

func (a *activated) close() {
	if a.local != nil {
		a.local.Close()
		os.Remove(a.socket)
	}
	a.unit.Close()
}

// localSocketDir holds the local sockets of on-demand services: a
// directory of this uid (and daemon: named after its state directory)
// that other users may enter; the sockets' uid and gid filter decides
// who gets in. tube services activations shows the sockets. The name is
// predictable, so another user may have made it first: then the daemon
// takes a fresh one of its own (a random name) and logs why. Callers
// hold d.acts.mu.
func (d *Daemon) localSocketDir() (string, error) {
	if d.acts.dir != "" {
		return d.acts.dir, nil
	}
	sum := sha256.Sum256([]byte(d.cfg.StateDir))
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("tube-%d-services-%x", os.Getuid(), sum[:4]))
	if err := os.Mkdir(dir, 0o755); err != nil && !os.IsExist(err) {
		return "", err
	}
	if err := ownDir(dir); err != nil {
		d.log.Warn("on-demand sockets go to a fresh directory", "taken", dir, "err", err)
		if dir, err = os.MkdirTemp("", fmt.Sprintf("tube-%d-services-", os.Getuid())); err != nil {
			return "", err
		}
		if err := os.Chmod(dir, 0o755); err != nil {
			return "", err
		}
	}
	d.acts.dir = dir
	return dir, nil
}

// ownDir checks that dir is a directory (not a link) of this uid that
// no one else can write.
func ownDir(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !fi.IsDir() || !ok || int(st.Uid) != os.Getuid() || fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("%s is not a directory of ours that only we can write", dir)
	}
	return nil
}

// serveLocal gives an on-demand service a Unix socket for local clients:
// this uid, and the uids and gids its interfaces' custom properties
// "allow-uid" and "allow-gid" (comma lists) name.
func (d *Daemon) serveLocal(act *activated, desc *registry.Descriptor, socket string) error {
	dir, err := d.localSocketDir()
	if err != nil {
		return err
	}
	uids, gids := []uint32{uint32(os.Getuid())}, []uint32{}
	for _, in := range desc.Interfaces {
		uids = append(uids, ids(in.Properties["allow-uid"])...)
		gids = append(gids, ids(in.Properties["allow-gid"])...)
	}
	path := filepath.Join(dir, socket)
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	if err := os.Chmod(path, 0o666); err != nil {
		ln.Close()
		return err
	}
	act.local, act.socket = ln, path
	go func() {
		ln := serve.Resilient{Listener: ln, OnError: func(err error) {
			d.log.Warn("accept failed; trying again", "listener", "activation", "service", desc.Name, "err", err)
			d.metrics.acceptError("activation")
		}}
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			cred, err := ucred.Peer(c.(*net.UnixConn))
			if err != nil || !(slices.Contains(uids, cred.UID) || slices.Contains(gids, cred.GID)) {
				d.log.Info("a local client refused by the service's uid/gid filter", "service", desc.Name,
					"uid", cred.UID, "gid", cred.GID, "err", err)
				c.Close()
				continue
			}
			go act.unit.Serve(c)
		}
	}()
	return nil
}

// ids parses a comma list of numeric ids.
func ids(s string) []uint32 {
	var out []uint32
	for _, f := range strings.Split(s, ",") {
		if n, err := strconv.ParseUint(strings.TrimSpace(f), 10, 32); err == nil {
			out = append(out, uint32(n))
		}
	}
	return out
}

// safeName turns a service name into a file name of at most 40 bytes
// (a Unix socket's path has room for 107).
func safeName(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == '/' || r == 0 || r < ' ' {
			return '_'
		}
		return r
	}, s)
	for len(s) > 40 {
		_, n := utf8.DecodeLastRuneInString(s)
		s = s[:len(s)-n]
	}
	return s
}

// syncActivations gives every registered <filepath> location its unit
// (sockets ready, nothing started) and ends those of locations gone,
// first, so that nothing of theirs is in the way.
func (d *Daemon) syncActivations() {
	d.acts.sync.Lock()
	defer d.acts.sync.Unlock()
	ds, _ := d.services.Services(registry.UserScope)
	type unit struct {
		desc *registry.Descriptor
		id   unitID
	}
	var units []unit
	want := map[string]unitID{}
	done := map[string]bool{}
	for _, desc := range ds {
		if done[registry.FoldName(desc.Name)] {
			continue
		}
		done[registry.FoldName(desc.Name)] = true
		locs := d.onDemandLocations(desc.Name)
		for _, l := range locs {
			if l.FilePath == "" {
				continue
			}
			// A path both scopes register under this name is one unit,
			// the user's.
			if id := onDemandUnit(locs, l); want[id.key] == (unitID{}) {
				want[id.key] = id
				units = append(units, unit{l, id})
			}
		}
	}
	d.acts.mu.Lock()
	for k, a := range d.acts.units {
		if id, ok := want[k]; !ok || id != a.id {
			a.close()
			delete(d.acts.units, k)
		}
	}
	for name, f := range d.acts.failed {
		if !slices.ContainsFunc(units, func(u unit) bool { return u.id.name == name && u.desc.FilePath == f.Path }) {
			delete(d.acts.failed, name)
		}
	}
	d.acts.mu.Unlock()
	for _, u := range units {
		if _, err := d.activated(u.desc, u.id); err != nil {
			d.log.Warn("on-demand service not set up", "service", u.id.name, "err", err)
		}
	}
}

// connectActivated connects a tube whose export is the local socket of
// a service started on demand to the service, through its unit, so
// that a service that does not take the connection is refused
// (ConnectionRefused), not cut after a connection seemed made. A tube
// granted a unit (a published service's: e.Unit) reaches that unit
// only: once it is gone, its connections are refused.
func (d *Daemon) connectActivated(e api.Export) (net.Conn, func(), bool, error) {
	if e.Unix == "" {
		return nil, nil, false, nil
	}
	d.acts.mu.Lock()
	var a *activated
	for _, u := range d.acts.units {
		if u.socket == e.Unix {
			a = u
		}
	}
	d.acts.mu.Unlock()
	if e.Unit != "" && (a == nil || a.serial != e.Unit) {
		return nil, nil, true, errors.New("the service this tube was granted is no longer registered")
	}
	if a == nil {
		return nil, nil, false, nil
	}
	c, err := a.unit.Connect()
	return c, func() {}, true, err
}

// Activations reports the on-demand services and what they are doing.
func (d *Daemon) Activations() map[string]api.ActivationStatus {
	d.acts.mu.Lock()
	defer d.acts.mu.Unlock()
	out := map[string]api.ActivationStatus{}
	// In the order of their keys, so that a name two units have (a
	// service named like another's further location) is told apart the
	// same way each time: the second gets "#2".
	for _, k := range slices.Sorted(maps.Keys(d.acts.units)) {
		a := d.acts.units[k]
		st := a.unit.Status()
		st.Socket, st.Path = a.socket, a.desc.FilePath
		name := a.unit.Name()
		for n := 2; ; n++ {
			if _, taken := out[name]; !taken {
				break
			}
			name = fmt.Sprintf("%s#%d", a.unit.Name(), n)
		}
		out[name] = st
	}
	for name, f := range d.acts.failed {
		if _, taken := out[name]; !taken {
			out[name] = f
		}
	}
	return out
}

// closeActivations stops every on-demand service.
func (d *Daemon) closeActivations() {
	d.acts.mu.Lock()
	defer d.acts.mu.Unlock()
	for k, a := range d.acts.units {
		a.close()
		delete(d.acts.units, k)
	}
	// The directory of on-demand sockets goes with the daemon (the next
	// one makes it again); one still holding a socket stays.
	if d.acts.dir != "" {
		os.Remove(d.acts.dir)
		d.acts.dir = ""
	}
}
