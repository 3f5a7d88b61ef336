package registry

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tubes-dev/tubes/internal/testenv"
)

// shortLockWait makes lockScope give up sooner, for the test.
func shortLockWait(t *testing.T, d time.Duration) {
	t.Helper()
	old := lockWait
	lockWait = d
	t.Cleanup(func() { lockWait = old })
}

// A process that holds the system scope's file lock (any user could,
// when the lock file was 0644: flock works on a read-only descriptor)
// gets root's change refused after lockWait, not hung; lookups do not
// wait meanwhile; and root's lock file ends up 0600.
func TestSystemLockHeldElsewhere(t *testing.T) {
	shortLockWait(t, 400*time.Millisecond)
	dir := t.TempDir()
	sys := filepath.Join(dir, "system.json")
	lock := sys + ".lock"
	// As an older daemon left it.
	if err := os.WriteFile(lock, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(lock, 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := Open(Config{SystemFile: sys, CanWriteSystem: func() bool { return true }})
	if err != nil {
		t.Fatal(err)
	}
	mustAdd(t, r, desc("Before", "before", "i.x 1.0"), SystemScope)

	other, err := os.Open(lock) // read only
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := unix.Flock(int(other.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	released := false
	release := func() {
		if !released {
			released = true
			unix.Flock(int(other.Fd()), unix.LOCK_UN)
		}
	}
	defer release() // lets a hung Add end

	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- r.Add(desc("Blocked", "blocked", "i.x 2.0"), SystemScope) }()

	// While the change waits for the lock, lookups answer.
	time.Sleep(50 * time.Millisecond)
	found := make(chan []*Implementation, 1)
	go func() {
		got, _ := r.Find(Filter{Interface: "i.x"}, SystemScope)
		found <- got
	}()
	select {
	case got := <-found:
		if !slices.Equal(names(got), []string{"Before i.x 1.0"}) {
			t.Fatalf("lookup while a change waits for the lock: %q", names(got))
		}
	case <-time.After(lockWait / 2):
		release()
		t.Fatal("a lookup waited for the file lock a change was waiting for")
	}

	select {
	case err := <-done:
		took := time.Since(start)
		if err == nil || !strings.Contains(err.Error(), "the system scope is locked by another process ("+lock+")") {
			t.Fatalf("add while another process holds the lock: %v", err)
		}
		if took < lockWait || took > lockWait+2*time.Second {
			t.Fatalf("add gave up after %v; the bound is %v", took, lockWait)
		}
	case <-time.After(lockWait + 5*time.Second):
		release()
		t.Fatal("add hung on a lock held by another process")
	}
	if got, _ := r.Find(Filter{Interface: "i.x"}, SystemScope); !slices.Equal(names(got), []string{"Before i.x 1.0"}) {
		t.Fatalf("after the refused add: %q", names(got))
	}

	if os.Geteuid() == 0 {
		fi, err := os.Stat(lock)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Fatalf("root's lock file is %v, want 0600", fi.Mode().Perm())
		}
	}
	// A lock file made now is 0600 whoever makes it.
	os.Remove(lock)
	release()
	mustAdd(t, r, desc("After", "after", "i.x 3.0"), SystemScope)
	if fi, err := os.Stat(lock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("a new lock file: %v, %v", fi.Mode(), err)
	}
}

// A lock file that is a symbolic link, not a regular file or (for root)
// not root's is refused, with a clear error, and nothing is written
// through it.
func TestSystemLockFileRefused(t *testing.T) {
	shortLockWait(t, 200*time.Millisecond)
	cases := map[string]func(t *testing.T, lock string) string{
		"symlink": func(t *testing.T, lock string) string {
			target := filepath.Join(filepath.Dir(lock), "elsewhere")
			if err := os.Symlink(target, lock); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if _, err := os.Lstat(target); err == nil {
					t.Errorf("the lock was opened through a symbolic link")
				}
			})
			return "symbolic link"
		},
		"fifo": func(t *testing.T, lock string) string {
			if err := syscall.Mkfifo(lock, 0o600); err != nil {
				t.Fatal(err)
			}
			return "not a regular file"
		},
		"directory": func(t *testing.T, lock string) string {
			if err := os.Mkdir(lock, 0o700); err != nil {
				t.Fatal(err)
			}
			return "lock file"
		},
		"another user's": func(t *testing.T, lock string) string {
			testenv.MustHaveRoot(t) // another user's file
			if err := os.WriteFile(lock, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(lock, 65534, 65534); err != nil {
				t.Fatal(err)
			}
			return "not owned by root"
		},
	}
	for name, make := range cases {
		t.Run(name, func(t *testing.T) {
			sys := filepath.Join(t.TempDir(), "system.json")
			want := make(t, sys+".lock")
			r, err := Open(Config{SystemFile: sys, CanWriteSystem: func() bool { return true }})
			if err != nil {
				t.Fatal(err)
			}
			err = r.Add(desc("S", "s", "i.x 1.0"), SystemScope)
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("add with that lock file: %v; want an error saying %q", err, want)
			}
			if _, err := os.Stat(sys); err == nil {
				t.Fatal("the system file was written without the lock")
			}
		})
	}
}

// A corrupt system file (root's) neither crashes nor stops a user's
// registry: what is valid in it is used, the rest dropped; a file that
// cannot be parsed at all leaves the system scope empty, or as it was,
// until a good one replaces it. A corrupt user file still fails Open.
func TestCorruptSystemFile(t *testing.T) {
	valid := `{"sfw_version":"1.1","name":"Good","ipcaddress":"good","interfaces":[{"name":"i.x","version":"1.0"}]}`
	cases := []struct {
		name, content string
		want          []string // Find(i.x) in the user scope
		def           string   // the user scope's default for i.x
		warns         []string // what Warn is told, in part
	}{
		{"null service", `{"services":[null]}`, nil, "none", []string{"a null service"}},
		{"null beside a valid one", `{"services":[null,` + valid + `,null],"defaults":{"i.x":{"service":"Good","version":"1.0","scope":"system"}}}`,
			[]string{"Good i.x 1.0"}, "Good 1.0 system", []string{"a null service"}},
		{"invalid beside a valid one", `{"services":[
			{"sfw_version":"1.1","name":"NoLocation","interfaces":[{"name":"i.x","version":"2.0"}]},
			{"sfw_version":"1.1","name":"NoInterfaces","ipcaddress":"n"},
			{"sfw_version":"1.1","name":"","ipcaddress":"e","interfaces":[{"name":"i.x","version":"2.0"}]},
			{"sfw_version":"1.1","name":"Twice","ipcaddress":"t","interfaces":[{"name":"i.x","version":"2.0"},{"name":"i.x","version":"2.0"}]},
			{"sfw_version":"9","name":"Future","ipcaddress":"f","interfaces":[{"name":"i.x","version":"2.0"}]},
			` + valid + `,
			{"sfw_version":"1.1","name":"Other","ipcaddress":"GOOD","interfaces":[{"name":"i.x","version":"4.0"}]},
			{"sfw_version":"1.1","name":"good","ipcaddress":"third","interfaces":[{"name":"i.y","version":"1.0"},{"name":"I.X","version":"1.0"}]},
			{"sfw_version":"1.1","name":"GOOD","ipcaddress":"again","interfaces":[{"name":"i.x","version":"3.0"}]}],
			"defaults":{"i.x":{"service":"NoLocation","version":"2.0","scope":"system"}}}`,
			// Other repeats Good's location, and good's third location one
			// of its implementations: both dropped. GOOD at another location
			// is Good's second.
			[]string{"Good i.x 1.0", "GOOD i.x 3.0"}, "none", []string{
				`service "NoLocation" at "": `, `service "NoInterfaces" at "n": `, `service "" at "e": `,
				`service "Twice" at "t": `, `service "Future" at "f": `,
				`service "Other" at "GOOD": the location is registered already (ServiceAlreadyExists)`,
				`service "good" at "third": the service implements I.X 1.0 already (ImplementationAlreadyExists)`,
			}},
		{"a default naming another scope", `{"services":[` + valid + `],"defaults":{
			"i.x":{"service":"Good","version":"1.0","scope":"remote"},
			"i.y":{"service":"Good","version":"1.0","scope":"user"},
			"i.z":null}}`,
			[]string{"Good i.x 1.0"}, "none", nil},
		{"services out of order", `{"services":[
			{"sfw_version":"1.1","name":"Zed","ipcaddress":"z","interfaces":[{"name":"i.x","version":"2.0"},{"name":"i.x","version":"1.0"}]},
			` + valid + `]}`,
			[]string{"Good i.x 1.0", "Zed i.x 1.0", "Zed i.x 2.0"}, "none", nil},
		{"truncated", `{"services":[` + valid[:40], nil, "none", []string{"is corrupt"}},
		{"not an object", `[1,2,3]`, nil, "none", []string{"is corrupt"}},
		{"empty", ``, nil, "none", []string{"is corrupt"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			sys := filepath.Join(dir, "system.json")
			if err := os.WriteFile(sys, []byte(c.content), 0o644); err != nil {
				t.Fatal(err)
			}
			var evs []Event
			var warns []string
			r, err := Open(Config{UserFile: filepath.Join(dir, "user.json"), SystemFile: sys,
				CanWriteSystem: func() bool { return false }, Notify: func(e Event) { evs = append(evs, e) },
				Warn: func(m string) { warns = append(warns, m) }})
			if err != nil {
				t.Fatalf("open with that system file: %v", err)
			}
			// Whatever it left out, it said, naming the file.
			all := strings.Join(warns, "\n")
			for _, w := range c.warns {
				if !strings.Contains(all, w) {
					t.Errorf("warnings %q, want one with %q", warns, w)
				}
			}
			for _, w := range warns {
				if !strings.HasPrefix(w, "registry: "+sys) {
					t.Errorf("warning %q does not name the file", w)
				}
			}
			if len(c.warns) == 0 && len(warns) > 0 {
				t.Errorf("warnings for a file with nothing wrong: %q", warns)
			}
			checkUsable(t, r, c.want, c.def)
			for _, i := range []string{"i.y", "i.z"} {
				if _, err := r.Default(i, UserScope); CodeOf(err) != ComponentNotFound {
					t.Fatalf("default of %s: %v", i, err)
				}
			}
			r.Refresh()
			checkUsable(t, r, c.want, c.def)
			if len(evs) != 0 {
				t.Fatalf("events without a change: %+v", evs)
			}
			// Root's daemon repairs it: the user's registry takes it in.
			root, err := Open(Config{UserFile: filepath.Join(dir, "root.json"), SystemFile: sys, CanWriteSystem: func() bool { return true }})
			if err != nil {
				t.Fatal(err)
			}
			mustAdd(t, root, desc("Fixed", "fixed", "i.x 9.0"), SystemScope)
			got, _ := r.Find(Filter{Interface: "i.x"}, UserScope)
			want := append(slices.Clone(c.want), "Fixed i.x 9.0")
			slices.SortStableFunc(want, func(a, b string) int { return strings.Compare(strings.ToLower(a), strings.ToLower(b)) })
			if !slices.Equal(names(got), want) {
				t.Fatalf("after root's daemon wrote the file again: %q", names(got))
			}
		})
	}
}

// checkUsable looks r up every way, which must not panic.
func checkUsable(t *testing.T, r *Registry, want []string, def string) {
	t.Helper()
	for _, s := range []Scope{UserScope, SystemScope} {
		got, err := r.Find(Filter{Interface: "i.x"}, s)
		if err != nil || !slices.Equal(names(got), want) {
			t.Fatalf("find i.x in the %s scope: %q, %v; want %q", s, names(got), err, want)
		}
		if _, err := r.Find(Filter{}, s); err != nil {
			t.Fatal(err)
		}
		ds, err := r.Services(s)
		if err != nil {
			t.Fatal(err)
		}
		var got2 []string
		for _, d := range ds {
			for _, in := range d.Interfaces {
				got2 = append(got2, d.Name+" "+in.Name+" "+in.Version.String())
			}
		}
		if !slices.Equal(got2, want) {
			t.Fatalf("services of the %s scope: %q; want %q", s, got2, want)
		}
		if got := defaultOf(t, r, "i.x", s); got != def {
			t.Fatalf("default of i.x in the %s scope: %s; want %s", s, got, def)
		}
	}
}

// A system file that turns corrupt after Open leaves the system scope
// as it was; a file too large is refused unread; a corrupt or too large
// user file still fails Open.
func TestSystemFileTurnsCorrupt(t *testing.T) {
	dir := t.TempDir()
	sys := filepath.Join(dir, "system.json")
	root, err := Open(Config{SystemFile: sys, CanWriteSystem: func() bool { return true }})
	if err != nil {
		t.Fatal(err)
	}
	mustAdd(t, root, desc("Good", "good", "i.x 1.0"), SystemScope)
	var evs []Event
	user, err := Open(Config{UserFile: filepath.Join(dir, "user.json"), SystemFile: sys,
		CanWriteSystem: func() bool { return false }, Notify: func(e Event) { evs = append(evs, e) }})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		content string
		want    []string
		def     string
	}{
		// Cannot be parsed: the scope stays as it was.
		{`{"services":[{"name":`, []string{"Good i.x 1.0"}, "Good 1.0 system"},
		{`{"services":{}}`, []string{"Good i.x 1.0"}, "Good 1.0 system"},
		// Parsed, and nothing in it valid.
		{`{"services":[null],"defaults":{"i.x":{"service":"Good","version":"1.0","scope":"system"}}}`, nil, "none"},
		{`{"services":[{}]}`, nil, "none"},
	} {
		if err := os.WriteFile(sys, []byte(c.content), 0o644); err != nil {
			t.Fatal(err)
		}
		user.Refresh()
		checkUsable(t, user, c.want, c.def)
	}
	if len(evs) != 1 || evs[0] != (Event{Type: ServiceRemoved, Service: "Good", Scope: SystemScope}) {
		t.Fatalf("events: %+v", evs)
	}
	// Too large: refused before it is read (the file is sparse).
	if err := os.Truncate(sys, maxScopeFile+1); err != nil {
		t.Fatal(err)
	}
	user.Refresh()
	checkUsable(t, user, nil, "none")
	if _, err := Open(Config{UserFile: filepath.Join(dir, "u2.json"), SystemFile: sys}); err != nil {
		t.Fatalf("open with a system file too large: %v", err)
	}
	if _, err := Open(Config{UserFile: sys}); err == nil || !strings.Contains(err.Error(), "is corrupt: larger than") {
		t.Fatalf("open with a user file too large: %v", err)
	}
	if err := os.WriteFile(sys, []byte(`{"services":[null]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(Config{UserFile: sys}); err != nil {
		t.Fatalf("a user file with a null service: %v", err)
	}
	// A user default naming a scope that is neither is dropped, not
	// looked up.
	if err := os.WriteFile(sys, []byte(`{"defaults":{"i.x":{"service":"Good","version":"1.0","scope":"remote"}}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := Open(Config{UserFile: sys})
	if err != nil {
		t.Fatalf("a user file with a remote default: %v", err)
	}
	if got := defaultOf(t, r, "i.x", UserScope); got != "none" {
		t.Fatalf("a remote default: %s", got)
	}
	if err := os.WriteFile(sys, []byte(`{"services":[`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(Config{UserFile: sys}); err == nil || !strings.Contains(err.Error(), "is corrupt") {
		t.Fatalf("a truncated user file: %v", err)
	}
}

// Two quick rewrites of the system file by another registry, each the
// same size as the one before, are each seen, even when the file system
// reuses the inode number of a version just replaced (ext4 does) and
// its clock does not move between them (the test holds mtime still, as
// a coarse clock would).
func TestSystemScopeSameSizeRewrites(t *testing.T) {
	dir := t.TempDir()
	sys := filepath.Join(dir, "system.json")
	still := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	root, err := Open(Config{SystemFile: sys, CanWriteSystem: func() bool { return true }})
	if err != nil {
		t.Fatal(err)
	}
	setDefault := func(service string) {
		t.Helper()
		if err := root.SetDefault(service, "i.x", nil, SystemScope); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(sys, still, still); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range []string{"A", "B", "C"} {
		mustAdd(t, root, desc(s, strings.ToLower(s), "i.x 1.0"), SystemScope)
	}
	setDefault("A")
	user, err := Open(Config{UserFile: filepath.Join(dir, "user.json"), SystemFile: sys})
	if err != nil {
		t.Fatal(err)
	}
	for round := range 6 {
		if got := defaultOf(t, user, "i.x", SystemScope); got != "A 1.0 system" {
			t.Fatalf("round %d: the user's default before: %s", round, got)
		}
		setDefault("B")
		setDefault("C") // the same size as the version the user last read
		if got := defaultOf(t, user, "i.x", SystemScope); got != "C 1.0 system" {
			t.Fatalf("round %d: after two same-size rewrites the user's default is %s, want C", round, got)
		}
		setDefault("B")
		if got := defaultOf(t, user, "i.x", SystemScope); got != "B 1.0 system" {
			t.Fatalf("round %d: after one more the user's default is %s, want B", round, got)
		}
		setDefault("A")
	}
}

// The system scope's file stays in the format daemons before several
// locations per service read: a list of descriptors, each valid alone,
// in name order and, within a name, in the order they were registered.
// Such a daemon keeps the first descriptor of each name, so it sees each
// service at its first location, with the implementations it saw before
// the service had a second, and nothing it cannot use.
func TestSystemFileForOlderDaemons(t *testing.T) {
	r, _ := newReg(t)
	mustAdd(t, r, desc("Media", "/plugins/video", "org.media.Video 1.0"), SystemScope)
	mustAdd(t, r, desc("Zed", "/zed", "org.zed 1.0"), SystemScope)
	mustAdd(t, r, desc("media", "/plugins/audio", "org.media.Audio 1.0", "org.media.Video 2.0"), SystemScope)
	b, err := os.ReadFile(r.cfg.SystemFile)
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Services []*Descriptor              `json:"services"`
		Defaults map[string]json.RawMessage `json:"defaults"`
	}
	if err := json.Unmarshal(b, &file); err != nil {
		t.Fatal(err)
	}
	var order []string
	firsts := map[string]*Descriptor{}
	for _, d := range file.Services {
		if err := Validate(d); err != nil {
			t.Fatalf("%s at %s is not valid alone: %v", d.Name, d.Location(), err)
		}
		order = append(order, d.Name+" "+d.Location())
		if firsts[strings.ToLower(d.Name)] == nil {
			firsts[strings.ToLower(d.Name)] = d
		}
	}
	if want := []string{"Media /plugins/video", "media /plugins/audio", "Zed /zed"}; !slices.Equal(order, want) {
		t.Fatalf("the file lists %q, want %q", order, want)
	}
	if m := firsts["media"]; m.Location() != "/plugins/video" || len(m.Interfaces) != 1 {
		t.Fatalf("an older daemon would see Media as %+v", m)
	}
	// Every default names the service, interface and version as before.
	for key, raw := range file.Defaults {
		var def struct{ Service, Version, Scope string }
		if err := json.Unmarshal(raw, &def); err != nil || def.Service == "" || def.Version == "" || def.Scope != "system" {
			t.Fatalf("default %s: %s (%v)", key, raw, err)
		}
	}
}

// What another daemon did to the system scope is told as it must have
// been: a location added is ServiceAdded; a service replaced (removed,
// another registered under its name) is ServiceRemoved, then
// ServiceAdded; Remains says the user scope still has the name.
func TestSystemChangesTold(t *testing.T) {
	dir := t.TempDir()
	sys := filepath.Join(dir, "system.json")
	root, _ := Open(Config{SystemFile: sys, CanWriteSystem: func() bool { return true }})
	var evs []Event
	r, _ := Open(Config{UserFile: filepath.Join(dir, "user.json"), SystemFile: sys, CanWriteSystem: func() bool { return false },
		Notify: func(e Event) { evs = append(evs, e) }})
	mustAdd(t, r, desc("shared", "/u", "u.x 1.0"), UserScope)
	evs = nil
	step := func(f func(), want string) {
		t.Helper()
		f()
		r.Refresh()
		if got := fmt.Sprint(evs); got != want {
			t.Fatalf("events %s, want %s", got, want)
		}
		evs = nil
	}
	step(func() {
		mustAdd(t, root, desc("svc", "/a", "i.x 1.0"), SystemScope)
		mustAdd(t, root, desc("shared", "/s", "s.x 1.0"), SystemScope)
	}, "[{ServiceAdded shared system false} {ServiceAdded svc system false}]")
	step(func() { mustAdd(t, root, desc("svc", "/b", "i.x 2.0"), SystemScope) }, "[{ServiceAdded svc system false}]")
	step(func() {
		mustRemove(t, root, "svc", SystemScope)
		mustAdd(t, root, desc("svc", "/a", "i.y 1.0"), SystemScope)
		mustRemove(t, root, "shared", SystemScope)
	}, "[{ServiceRemoved shared system true} {ServiceRemoved svc system false} {ServiceAdded svc system false}]")
}
