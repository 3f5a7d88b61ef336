package registry

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tubes-dev/tubes/internal/atomicfile"
)

// Scope is where a service is registered: for one user or the system.
type Scope string

// Scopes. RemoteScope marks what contacts publish.
const (
	UserScope   Scope = "user"
	SystemScope Scope = "system"
	RemoteScope Scope = "remote"
)

// Error codes, Qt's QServiceManager errors.
const (
	ServiceAlreadyExists        = "ServiceAlreadyExists"
	ImplementationAlreadyExists = "ImplementationAlreadyExists"
	ComponentNotFound           = "ComponentNotFound"
	InvalidFilter               = "InvalidFilter"
	InvalidServiceXML           = "InvalidServiceXml"
	PermissionDenied            = "PermissionDenied"
)

// Error is a refused registry operation.
type Error struct {
	Code string
	Msg  string
}

func (e *Error) Error() string { return e.Msg + " (" + e.Code + ")" }

// CodeOf returns the registry error code in err, or "".
func CodeOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

func errf(code, format string, a ...any) error {
	return &Error{Code: code, Msg: fmt.Sprintf(format, a...)}
}

// Implementation is one interface implementation of a registered service
// (Qt's QServiceInterfaceDescriptor).
type Implementation struct {
	Service      string            `json:"service"`
	Interface    string            `json:"interface"`
	Version      Version           `json:"version"`
	Scope        Scope             `json:"scope"`
	Description  string            `json:"description,omitempty"` // the interface's
	Capabilities []string          `json:"capabilities,omitempty"`
	Properties   map[string]string `json:"properties,omitempty"`
	FilePath     string            `json:"filepath,omitempty"`
	IPCAddress   string            `json:"ipcaddress,omitempty"`
	// ServiceDescription is the service's own <description>.
	ServiceDescription string `json:"service_description,omitempty"`
}

// DefaultRule is one scope's default for an interface: the rule, kept in
// Scope, and the implementation it names, which may be registered in
// another scope (a user rule naming a system service).
type DefaultRule struct {
	Interface      string         `json:"interface"`
	Scope          Scope          `json:"scope"`
	Implementation Implementation `json:"implementation"`
}

// ref names a default implementation.
type ref struct {
	Service string  `json:"service"`
	Version Version `json:"version"`
	Scope   Scope   `json:"scope"` // where the service is registered
}

// state is one scope's registry, as stored. A state in Registry.st is
// never changed: a write changes a copy (edit) and swaps it in once it
// is saved (commit), so a failed save leaves nothing to undo.
type state struct {
	Services []*Descriptor `json:"services"`
	// Defaults maps a lower-case interface name to its default.
	Defaults map[string]ref `json:"defaults"`

	// idx is built by the first lookup that needs it, under Registry.mu.
	idx *index
	// dropped says what load left out of the file, and why.
	dropped []string
}

// edit returns a copy of st to change: its own service list and
// defaults, sharing st's descriptors, which a change replaces rather
// than modifies.
func (st *state) edit() *state {
	return &state{Services: slices.Clone(st.Services), Defaults: maps.Clone(st.Defaults)}
}

// named returns the descriptors of service name in st: one per
// location, in the order they were registered.
func (st *state) named(name string) []*Descriptor {
	key := foldKey(name)
	i, _ := slices.BinarySearchFunc(st.Services, key, func(d *Descriptor, key string) int {
		return strings.Compare(foldKey(d.Name), key)
	})
	j := i
	for j < len(st.Services) && foldKey(st.Services[j].Name) == key {
		j++
	}
	return st.Services[i:j:j]
}

// eachName calls f with the descriptors of each service in st, in name
// order.
func (st *state) eachName(f func(ds []*Descriptor)) {
	for i := 0; i < len(st.Services); {
		ds := st.named(st.Services[i].Name)
		f(ds)
		i += len(ds)
	}
}

// Event is a registry change: ServiceAdded or ServiceRemoved.
type Event struct {
	Type    string `json:"type"`
	Service string `json:"service"`
	Scope   Scope  `json:"scope"`
	// Remains, on ServiceRemoved, says that the other scope registers
	// the name too, as the removal leaves the registry: a user's lookups
	// of it find that one now (or still).
	Remains bool `json:"-"`
}

// Event types.
const (
	ServiceAdded   = "ServiceAdded"
	ServiceRemoved = "ServiceRemoved"
)

// Config says where a registry keeps its scopes.
type Config struct {
	// UserFile and SystemFile hold the scopes (JSON, written atomically);
	// empty keeps a scope in memory.
	UserFile, SystemFile string
	// CanWriteSystem says whether this process may change the system
	// scope (default: only root).
	CanWriteSystem func() bool
	// Notify receives every change, in order.
	Notify func(Event)
	// Warn is told of each service a scope's file held that the registry
	// left out (it breaks a rule Add would have enforced), as the file is
	// read.
	Warn func(msg string)
}

// Registry is the services of a user and of the system.
type Registry struct {
	cfg Config

	// writer orders this registry's own changes to the system scope
	// (a token, taken before the file lock): they queue here rather than
	// in lockScope's retries.
	writer chan struct{}

	mu sync.Mutex // guards the following
	st map[Scope]*state
	// sysStamp is the system scope's file as last read or written here:
	// other daemons (root's) change it too. sysFile is that version of
	// the file, kept open so that its inode number cannot name a later
	// version (a file system reuses the number of a freed inode, and a
	// same-size rewrite within one clock tick has the same times).
	sysStamp fileStamp
	sysFile  *os.File
	sysKnown bool // the last read of the system file succeeded
	// scratch holds Find's candidate lists, one per scope searched,
	// reused so that a lookup allocates little more than its result.
	scratch [2][]int32
}

// Open loads both scopes. A user file that cannot be read or is corrupt
// fails it; a system file (root's) that cannot be read or is corrupt
// leaves the system scope empty until the file changes, as a later sync
// would: a bad system file must not keep every user's daemon from
// starting.
func Open(cfg Config) (*Registry, error) {
	if cfg.CanWriteSystem == nil {
		cfg.CanWriteSystem = func() bool { return os.Geteuid() == 0 }
	}
	if cfg.Notify == nil {
		cfg.Notify = func(Event) {}
	}
	if cfg.Warn == nil {
		cfg.Warn = func(string) {}
	}
	r := &Registry{cfg: cfg, st: map[Scope]*state{}, writer: make(chan struct{}, 1)}
	st, _, f, err := load(cfg.UserFile, UserScope)
	if f != nil {
		f.Close()
	}
	if err != nil {
		return nil, err
	}
	r.st[UserScope] = st
	r.warnDropped(cfg.UserFile, st)
	sys, stamp, f, err := load(cfg.SystemFile, SystemScope)
	r.sysKnown = err == nil
	switch {
	case err == nil:
		r.st[SystemScope] = sys
		r.warnDropped(cfg.SystemFile, sys)
		r.holdSystem(stamp, f)
	case f != nil: // corrupt: read again once it changes
		cfg.Warn(err.Error() + ": the system scope is empty until it is written again")
		r.st[SystemScope] = emptyState()
		r.holdSystem(stamp, f)
	default: // unreadable: read again at the next sync
		r.st[SystemScope] = emptyState()
	}
	return r, nil
}

// fileStamp identifies a version of a file: an atomic write makes a new
// inode, and an inode changed in place changes its size or times.
type fileStamp struct {
	dev, ino     uint64
	size         int64
	mtime, ctime int64 // nanoseconds
}

func stampFrom(fi fs.FileInfo) fileStamp {
	st := fileStamp{size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	if s, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.dev, st.ino, st.ctime = s.Dev, s.Ino, s.Ctim.Nano()
	}
	return st
}

// stampOf stamps file as it is now; a file that is not there has the
// zero stamp.
func stampOf(file string) fileStamp {
	if file == "" {
		return fileStamp{}
	}
	fi, err := os.Stat(file)
	if err != nil {
		return fileStamp{}
	}
	return stampFrom(fi)
}

// holdSystem records f (nil: no file), stamped stamp, as the system
// scope's file last read or written here. r.mu is held.
func (r *Registry) holdSystem(stamp fileStamp, f *os.File) {
	if r.sysFile != nil {
		r.sysFile.Close()
	}
	r.sysStamp, r.sysFile = stamp, f
}

// lockWait bounds how long a change waits for the system scope's file
// lock; lockRetry bounds the pause between two tries.
var lockWait = 5 * time.Second

const lockRetry = 50 * time.Millisecond

// change begins a change of scope: it checks the scope may be changed,
// takes the system scope's file lock, then the registry's, and takes in
// what another daemon wrote. end releases both.
func (r *Registry) change(scope Scope) (end func(), err error) {
	if err := r.writable(scope); err != nil {
		return nil, err
	}
	unlock, err := r.lockScope(scope)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	r.syncSystem()
	return func() { r.mu.Unlock(); unlock() }, nil
}

// lockScope takes the system scope's file lock (FILE.lock, flock) for a
// change: root's daemons then change the file one at a time, each
// starting from what the one before wrote. The user scope is this
// daemon's alone. It is taken before r.mu, never under it, so lookups
// do not wait for it, and it waits at most lockWait: a process holding
// the lock for longer gets a change refused, not a daemon hung. Root's
// lock file is root's own, mode 0600: another user cannot open it to
// take the lock.
func (r *Registry) lockScope(scope Scope) (func(), error) {
	file := r.cfg.SystemFile
	if scope != SystemScope || file == "" {
		return func() {}, nil
	}
	name := file + ".lock"
	deadline := time.Now().Add(lockWait)
	select {
	case r.writer <- struct{}{}:
	default:
		t := time.NewTimer(lockWait)
		select {
		case r.writer <- struct{}{}:
			t.Stop()
		case <-t.C:
			return nil, fmt.Errorf("registry: the system scope is locked by another change of this daemon (%s)", name)
		}
	}
	release := func() { <-r.writer }
	f, err := openLock(filepath.Dir(file), name)
	if err != nil {
		release()
		return nil, err
	}
	for pause := time.Millisecond; ; pause = min(2*pause, lockRetry) {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close(); release() }, nil // closing releases the lock
		}
		if err == unix.EINTR {
			continue
		}
		if err != unix.EWOULDBLOCK {
			f.Close()
			release()
			return nil, fmt.Errorf("registry: lock %s: %w", name, err)
		}
		left := time.Until(deadline)
		if left <= 0 {
			f.Close()
			release()
			return nil, fmt.Errorf("registry: the system scope is locked by another process (%s)", name)
		}
		time.Sleep(min(pause, left))
	}
}

// openLock opens (or makes) the lock file name in dir. It does not
// follow a symbolic link and is not another kind of file; root's is
// owned by root and made mode 0600 (a lock file made by an older daemon
// was 0644).
func openLock(dir, name string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0o600)
	if errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("registry: lock file %s is a symbolic link: refusing it", name)
	}
	if err != nil {
		return nil, fmt.Errorf("registry: lock file: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("registry: lock file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("registry: lock file %s is not a regular file: refusing it", name)
	}
	if os.Geteuid() == 0 {
		if s, ok := fi.Sys().(*syscall.Stat_t); !ok || s.Uid != 0 {
			f.Close()
			return nil, fmt.Errorf("registry: lock file %s is not owned by root: refusing it", name)
		}
		if fi.Mode().Perm() != 0o600 {
			if err := f.Chmod(0o600); err != nil {
				f.Close()
				return nil, fmt.Errorf("registry: lock file: %w", err)
			}
		}
	}
	return f, nil
}

// Refresh takes in changes another process (root's daemon) made to the
// system scope's file, with their events. Every lookup and change does
// this first; Refresh is for a caller that wants the events without
// looking anything up.
func (r *Registry) Refresh() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.syncSystem()
}

// syncSystem reloads the system scope if its file is not the one last
// read or written here, and notifies the services that appeared,
// changed (ServiceAdded) or went (ServiceRemoved). A file that cannot be
// read leaves the scope as it was, and is tried again at the next sync;
// a corrupt one too, and is tried again once it changes. r.mu is held.
func (r *Registry) syncSystem() {
	file := r.cfg.SystemFile
	if file == "" {
		return
	}
	if stampOf(file) == r.sysStamp {
		return
	}
	next, stamp, f, err := load(file, SystemScope)
	r.sysKnown = err == nil
	if err != nil {
		if f != nil { // read, and corrupt: not worth reading again
			r.cfg.Warn(err.Error() + ": the system scope stays as it was until it is written again")
			r.holdSystem(stamp, f)
		}
		return
	}
	r.holdSystem(stamp, f)
	r.warnDropped(file, next)
	old := r.st[SystemScope]
	r.st[SystemScope] = next
	// A service changes in place only by gaining locations (Add); any
	// other difference is a removal, maybe followed by a registration
	// under the name, and is told as both: what was published of the
	// removed one must not pass to the newcomer.
	kept := func(o, n []*Descriptor) bool {
		return len(n) >= len(o) && reflect.DeepEqual(n[:len(o)], o)
	}
	old.eachName(func(ds []*Descriptor) {
		if !kept(ds, next.named(ds[0].Name)) {
			r.cfg.Notify(Event{Type: ServiceRemoved, Service: ds[0].Name, Scope: SystemScope,
				Remains: len(r.st[UserScope].named(ds[0].Name)) > 0})
		}
	})
	next.eachName(func(ds []*Descriptor) {
		o := old.named(ds[0].Name)
		if !kept(o, ds) || len(ds) > len(o) {
			r.cfg.Notify(Event{Type: ServiceAdded, Service: ds[0].Name, Scope: SystemScope})
		}
	})
}

// warnDropped tells Config.Warn what load left out of file.
func (r *Registry) warnDropped(file string, st *state) {
	for _, why := range st.dropped {
		r.cfg.Warn("registry: " + file + ": left out " + why)
	}
	st.dropped = nil
}

// maxScopeFile bounds the size of a scope's file.
const maxScopeFile = 64 << 20

func emptyState() *state { return &state{Defaults: map[string]ref{}} }

// load reads scope's file, stamped as the version read: it stamps the
// descriptor it reads through. A file that is not there is an empty
// scope. It returns the file, open, when it read it (the caller closes
// it), even when what it read is corrupt: then the error says so. Another
// error (no file returned) is one of reading, which may pass.
//
// What another process wrote is checked as Add would have: services
// that are null, break a descriptor rule (Validate), repeat a location
// or repeat an implementation of the same service are dropped, the rest
// put back in order, and defaults that name a scope the file cannot
// refer to are dropped. A default naming a service that is not there
// stays: lookups pass over it.
func load(file string, scope Scope) (*state, fileStamp, *os.File, error) {
	st := emptyState()
	if file == "" {
		return st, fileStamp{}, nil, nil
	}
	// O_NONBLOCK: a FIFO put there does not hang the open.
	f, err := os.OpenFile(file, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return st, fileStamp{}, nil, nil
	}
	if err != nil {
		return nil, fileStamp{}, nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fileStamp{}, nil, err
	}
	stamp := stampFrom(fi)
	if !fi.Mode().IsRegular() {
		return nil, stamp, f, fmt.Errorf("registry: %s is corrupt: not a regular file", file)
	}
	if fi.Size() > maxScopeFile {
		return nil, stamp, f, fmt.Errorf("registry: %s is corrupt: larger than %d MiB", file, maxScopeFile>>20)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxScopeFile+1))
	if err != nil {
		f.Close()
		return nil, fileStamp{}, nil, err
	}
	if len(b) > maxScopeFile {
		return nil, stamp, f, fmt.Errorf("registry: %s is corrupt: larger than %d MiB", file, maxScopeFile>>20)
	}
	if err := json.Unmarshal(b, st); err != nil {
		return nil, stamp, f, fmt.Errorf("registry: %s is corrupt: %v", file, err)
	}
	st.sanitize(scope)
	return st, stamp, f, nil
}

// sanitize drops from st, just read as scope's, what Add would not have
// put there, and restores the order lookups rely on.
func (st *state) sanitize(scope Scope) {
	locations := map[string]bool{}
	impls := map[string]bool{} // service, interface, version
	st.Services = slices.DeleteFunc(st.Services, func(d *Descriptor) bool {
		if d == nil {
			st.dropped = append(st.dropped, "a null service")
			return true
		}
		where := fmt.Sprintf("service %q at %q", clip(d.Name), clip(d.Location()))
		if err := Validate(d); err != nil {
			var pe *ParseError
			if errors.As(err, &pe) {
				err = fmt.Errorf("%s (%s)", pe.Msg, pe.Rule)
			}
			st.dropped = append(st.dropped, where+": "+err.Error())
			return true
		}
		if locations[foldKey(d.Location())] {
			st.dropped = append(st.dropped, where+": the location is registered already (ServiceAlreadyExists)")
			return true
		}
		keys := make([]string, len(d.Interfaces))
		for i, in := range d.Interfaces {
			keys[i] = implKey(d.Name, in)
			if impls[keys[i]] {
				st.dropped = append(st.dropped, fmt.Sprintf("%s: the service implements %s %s already (ImplementationAlreadyExists)", where, clip(in.Name), in.Version))
				return true
			}
		}
		locations[foldKey(d.Location())] = true
		for _, k := range keys {
			impls[k] = true
		}
		return false
	})
	slices.SortStableFunc(st.Services, func(a, b *Descriptor) int {
		return strings.Compare(foldKey(a.Name), foldKey(b.Name))
	})
	for _, d := range st.Services {
		sortInterfaces(d.Interfaces)
	}
	if st.Defaults == nil {
		st.Defaults = map[string]ref{}
	}
	defaults := map[string]ref{}
	for key, def := range st.Defaults {
		if def.Scope == scope || (scope == UserScope && def.Scope == SystemScope) {
			defaults[foldKey(key)] = def
		}
	}
	st.Defaults = defaults
}

// commit saves next as scope's state and makes it current; if the save
// fails the current state stays, so memory and disk agree.
func (r *Registry) commit(scope Scope, next *state) error {
	if err := r.save(scope, next); err != nil {
		return err
	}
	r.st[scope] = next
	if scope == SystemScope && r.cfg.SystemFile != "" {
		// The file lock is held: the file is the one just written.
		f, err := os.Open(r.cfg.SystemFile)
		if err != nil {
			r.holdSystem(fileStamp{}, nil) // read again at the next sync
			return nil
		}
		fi, err := f.Stat()
		if err != nil {
			f.Close()
			r.holdSystem(fileStamp{}, nil)
			return nil
		}
		r.holdSystem(stampFrom(fi), f)
	}
	return nil
}

// save writes st as scope's file.
func (r *Registry) save(scope Scope, st *state) error {
	file := r.cfg.UserFile
	if scope == SystemScope {
		file = r.cfg.SystemFile
	}
	if file == "" {
		return nil
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		return err
	}
	return atomicfile.WriteFile(file, append(b, '\n'), 0o644)
}

func checkScope(s Scope) error {
	if s != UserScope && s != SystemScope {
		return errf(InvalidFilter, "scope %q is neither user nor system", s)
	}
	return nil
}

func (r *Registry) writable(scope Scope) error {
	if err := checkScope(scope); err != nil {
		return err
	}
	if scope == SystemScope && !r.cfg.CanWriteSystem() {
		return errf(PermissionDenied, "only root may change the system scope")
	}
	return nil
}

// Add registers d in scope, as Qt's registerService does. A location
// already registered (to this service or another) is
// ServiceAlreadyExists; a service name already registered at other
// locations takes d as one more (several plugins of one service), its
// implementations added to theirs; an interface version the service
// already provides, at any location, is ImplementationAlreadyExists.
// Each interface d provides that has no default in scope gets d's
// highest version of it.
func (r *Registry) Add(d *Descriptor, scope Scope) error {
	end, err := r.change(scope)
	if err != nil {
		return err
	}
	defer end()
	st := r.st[scope]
	for _, o := range st.Services {
		if strings.EqualFold(o.Location(), d.Location()) {
			return errf(ServiceAlreadyExists, "location %s is registered to service %s already", d.Location(), o.Name)
		}
	}
	same := st.named(d.Name)
	for _, in := range d.Interfaces {
		for _, o := range same {
			for _, e := range o.Interfaces {
				if strings.EqualFold(e.Name, in.Name) && e.Version == in.Version {
					return errf(ImplementationAlreadyExists, "service %s implements %s %s already, at %s", o.Name, in.Name, in.Version, o.Location())
				}
			}
		}
	}
	next := st.edit()
	// The registry keeps its own copy of what it indexes: the caller may
	// reuse d.
	ins := make([]Interface, len(d.Interfaces))
	for i, in := range d.Interfaces {
		in.Capabilities = slices.Clone(in.Capabilities)
		in.Properties = maps.Clone(in.Properties)
		ins[i] = in
	}
	c := *d
	c.Interfaces = ins
	sortInterfaces(c.Interfaces)
	// After the service's other locations: they stay in the order they
	// were registered.
	i, _ := slices.BinarySearchFunc(next.Services, foldKey(c.Name), func(o *Descriptor, name string) int {
		return strings.Compare(foldKey(o.Name), name)
	})
	next.Services = slices.Insert(next.Services, i+len(same), &c)
	for _, in := range d.Interfaces {
		key := foldKey(in.Name)
		if _, ok := next.Defaults[key]; ok {
			continue
		}
		best := in.Version
		for _, o := range d.Interfaces {
			if strings.EqualFold(o.Name, in.Name) && best.Less(o.Version) {
				best = o.Version
			}
		}
		next.Defaults[key] = ref{Service: d.Name, Version: best, Scope: scope}
	}
	if err := r.commit(scope, next); err != nil {
		return err
	}
	r.cfg.Notify(Event{Type: ServiceAdded, Service: d.Name, Scope: scope})
	return nil
}

// Remove unregisters a service from scope: every location it is
// registered at. Each interface it was the default for gets the highest remaining version in scope (major, then
// minor; equal versions go to the service name first in order), or no
// default.
func (r *Registry) Remove(name string, scope Scope) error {
	end, err := r.change(scope)
	if err != nil {
		return err
	}
	defer end()
	st := r.st[scope]
	gone := st.named(name)
	if len(gone) == 0 {
		return errf(ComponentNotFound, "there is no service %s in the %s scope", name, scope)
	}
	d := gone[0]
	next := st.edit()
	next.Services = slices.DeleteFunc(next.Services, func(o *Descriptor) bool { return slices.Contains(gone, o) })
	for key, def := range next.Defaults {
		if !strings.EqualFold(def.Service, d.Name) || def.Scope != scope {
			continue
		}
		if best, ok := latest(next, scope, key); ok {
			next.Defaults[key] = best
		} else {
			delete(next.Defaults, key)
		}
	}
	if err := r.commit(scope, next); err != nil {
		return err
	}
	other := SystemScope
	if scope == SystemScope {
		other = UserScope
	}
	r.cfg.Notify(Event{Type: ServiceRemoved, Service: d.Name, Scope: scope, Remains: len(r.st[other].named(d.Name)) > 0})
	return nil
}

// latest is the highest version of interface key registered in st.
func latest(st *state, scope Scope, key string) (ref, bool) {
	var best ref
	found := false
	for _, d := range st.Services {
		for _, in := range d.Interfaces {
			if foldKey(in.Name) != key {
				continue
			}
			if !found || best.Version.Less(in.Version) ||
				(best.Version == in.Version && foldKey(d.Name) < foldKey(best.Service)) {
				best, found = ref{Service: d.Name, Version: in.Version, Scope: scope}, true
			}
		}
	}
	return best, found
}

// Find lists the implementations matching f: in the user scope the
// user's first, then the system's; in the system scope the system's only.
// They are the registry's own, shared and read only (a lookup copies
// nothing: over thousands of results, copies made the garbage collector
// the slowest part of it).
func (r *Registry) Find(f Filter, scope Scope) ([]*Implementation, error) {
	if err := checkScope(scope); err != nil {
		return nil, err
	}
	m, err := f.compile()
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.syncSystem()
	// Services are kept in name order, their interfaces in name and
	// version order, and so are the index's lists: results come out
	// sorted.
	type part struct {
		ix  *index
		ps  []int32 // positions in ix.all to check
		all bool    // check all of ix.all
	}
	var parts []part
	size, sized := 0, true
	for j, s := range scopesFor(scope) {
		ix := r.st[s].index(s)
		ps, ok := ix.candidates(m.f, &r.scratch[j])
		parts = append(parts, part{ix, ps, !ok})
		if ok {
			size += len(ps)
		} else {
			size += len(ix.all)
			// Size the result by a full scan only when it selects all.
			sized = sized && m.matchesAll()
		}
	}
	var out []*Implementation
	if sized && size > 0 {
		out = make([]*Implementation, 0, size)
	}
	for _, pt := range parts {
		if pt.all {
			for i := range pt.ix.all {
				if in := &pt.ix.all[i]; m.matchRest(in.Version, in.Capabilities) {
					out = append(out, in)
				}
			}
			continue
		}
		for _, p := range pt.ps {
			if in := &pt.ix.all[p]; m.matchRest(in.Version, in.Capabilities) {
				out = append(out, in)
			}
		}
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

func scopesFor(scope Scope) []Scope {
	if scope == SystemScope {
		return []Scope{SystemScope}
	}
	return []Scope{UserScope, SystemScope}
}

// sortInterfaces orders a service's interfaces by name (any case), then
// version.
func sortInterfaces(ins []Interface) {
	slices.SortStableFunc(ins, func(a, b Interface) int {
		if c := strings.Compare(foldKey(a.Name), foldKey(b.Name)); c != 0 {
			return c
		}
		switch {
		case a.Version == b.Version:
			return 0
		case a.Version.Less(b.Version):
			return -1
		}
		return 1
	})
}

// implKey names one implementation: service, interface and version.
func implKey(service string, in Interface) string {
	return foldKey(service) + "\x00" + foldKey(in.Name) + "\x00" + in.Version.String()
}

func implOf(d *Descriptor, in Interface, scope Scope) Implementation {
	return Implementation{Service: d.Name, Interface: in.Name, Version: in.Version, Scope: scope,
		Description: in.Description, Capabilities: in.Capabilities, Properties: in.Properties,
		FilePath: d.FilePath, IPCAddress: d.IPCAddress, ServiceDescription: d.Description}
}

// lookup finds one implementation in scope.
func (r *Registry) lookup(scope Scope, service, iface string, v Version) (Implementation, bool) {
	st := r.st[scope]
	if st == nil {
		return Implementation{}, false
	}
	for _, d := range st.named(service) {
		for _, in := range d.Interfaces {
			if strings.EqualFold(in.Name, iface) && in.Version == v {
				return implOf(d, in, scope), true
			}
		}
	}
	return Implementation{}, false
}

// Default returns the default implementation of iface. In the user
// scope: the user's default, else the system's. A user default pointing
// at a system implementation that is gone is dropped, and the latest
// user implementation becomes the default.
func (r *Registry) Default(iface string, scope Scope) (Implementation, error) {
	if err := checkScope(scope); err != nil {
		return Implementation{}, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.syncSystem()
	key := foldKey(iface)
	if scope == UserScope {
		if def, ok := r.st[UserScope].Defaults[key]; ok {
			if impl, ok := r.lookup(def.Scope, def.Service, iface, def.Version); ok {
				return impl, nil
			}
			st := r.st[UserScope]
			next := st.edit()
			next.idx = st.idx // the services are the same
			if best, ok := latest(next, UserScope, key); ok {
				next.Defaults[key] = best
			} else {
				delete(next.Defaults, key)
			}
			if err := r.commit(UserScope, next); err != nil {
				return Implementation{}, err
			}
			if best, ok := next.Defaults[key]; ok {
				impl, _ := r.lookup(UserScope, best.Service, iface, best.Version)
				return impl, nil
			}
		}
	}
	if def, ok := r.st[SystemScope].Defaults[key]; ok {
		if impl, ok := r.lookup(SystemScope, def.Service, iface, def.Version); ok {
			return impl, nil
		}
	}
	return Implementation{}, errf(ComponentNotFound, "no service implements %s", iface)
}

// SetDefault makes service the default for iface in scope: its newest
// version of iface, or exactly version when given. A user default may
// name a system service; a system default only a system service.
func (r *Registry) SetDefault(service, iface string, version *Version, scope Scope) error {
	end, err := r.change(scope)
	if err != nil {
		return err
	}
	defer end()
	var target *ref
	for _, s := range scopesFor(scope) {
		for _, d := range r.st[s].named(service) {
			for _, in := range d.Interfaces {
				if !strings.EqualFold(in.Name, iface) || (version != nil && in.Version != *version) {
					continue
				}
				if target == nil || target.Version.Less(in.Version) {
					target = &ref{Service: d.Name, Version: in.Version, Scope: s}
				}
			}
		}
		if target != nil {
			break
		}
	}
	if target == nil {
		what := iface
		if version != nil {
			what += " " + version.String()
		}
		where := "user or system"
		if scope == SystemScope {
			where = "system"
		}
		return errf(ComponentNotFound, "no %s service %s implements %s", where, service, what)
	}
	st := r.st[scope]
	next := st.edit()
	next.idx = st.idx // the services are the same
	next.Defaults[foldKey(iface)] = *target
	return r.commit(scope, next)
}

// Defaults lists the default rules that lookups in scope follow: in the
// user scope the user's, then the system's, by interface; in the system
// scope the system's. A rule whose implementation is gone is left out
// (Default replaces it on its next lookup).
func (r *Registry) Defaults(scope Scope) ([]DefaultRule, error) {
	if err := checkScope(scope); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.syncSystem()
	var out []DefaultRule
	for _, s := range scopesFor(scope) {
		st := r.st[s]
		if st == nil {
			continue
		}
		var rules []DefaultRule
		for key, def := range st.Defaults {
			impl, ok := r.lookup(def.Scope, def.Service, key, def.Version)
			if !ok {
				continue
			}
			rules = append(rules, DefaultRule{Interface: impl.Interface, Scope: s, Implementation: impl})
		}
		slices.SortFunc(rules, func(a, b DefaultRule) int {
			return strings.Compare(foldKey(a.Interface), foldKey(b.Interface))
		})
		out = append(out, rules...)
	}
	return out, nil
}

// ClearDefault drops the default rule for iface that scope keeps: the
// interface's default goes back to what registration makes it, the
// newest implementation registered in scope (in the user scope, if there
// is none, the system's default).
func (r *Registry) ClearDefault(iface string, scope Scope) error {
	end, err := r.change(scope)
	if err != nil {
		return err
	}
	defer end()
	key := foldKey(iface)
	st := r.st[scope]
	if _, ok := st.Defaults[key]; !ok {
		return errf(ComponentNotFound, "the %s scope has no default for %s", scope, iface)
	}
	next := st.edit()
	next.idx = st.idx // the services are the same
	if best, ok := latest(next, scope, key); ok {
		next.Defaults[key] = best
	} else {
		delete(next.Defaults, key)
	}
	return r.commit(scope, next)
}

// Services lists the registered services of scope (user: the user's
// then the system's), as registered.
func (r *Registry) Services(scope Scope) ([]*Descriptor, error) {
	if err := checkScope(scope); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.syncSystem()
	var out []*Descriptor
	for _, s := range scopesFor(scope) {
		for _, d := range r.st[s].Services {
			c := *d
			c.Interfaces = slices.Clone(d.Interfaces)
			out = append(out, &c)
		}
	}
	return out, nil
}

// Fingerprint names a registration: the descriptor d (a service's first
// location) as registered in scope. A service registered again, or
// another under its name, has another unless it is the same descriptor in
// the same scope.
func Fingerprint(d *Descriptor, scope Scope) string {
	b, _ := json.Marshal(d)
	sum := sha256.Sum256(append([]byte(string(scope)+"\n"), b...))
	return "sha256:" + hex.EncodeToString(sum[:16])
}

// SystemKnown says whether the system scope's file was read as it is (or
// is not there): when it could not be read, the system scope the
// registry shows is not what the file holds.
func (r *Registry) SystemKnown() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.syncSystem()
	return r.sysKnown
}

// Service returns the locations service name is registered at, one
// descriptor each, in the order they were registered, and their scope:
// in the user scope the user's if the user registers the name (a user's
// service hides the system's of the same name), else the system's. A
// name registered nowhere returns none.
func (r *Registry) Service(name string, scope Scope) ([]*Descriptor, Scope, error) {
	if err := checkScope(scope); err != nil {
		return nil, "", err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.syncSystem()
	for _, s := range scopesFor(scope) {
		ds := r.st[s].named(name)
		if len(ds) == 0 {
			continue
		}
		out := make([]*Descriptor, len(ds))
		for i, d := range ds {
			c := *d
			c.Interfaces = slices.Clone(d.Interfaces)
			out[i] = &c
		}
		return out, s, nil
	}
	return nil, "", nil
}
