package registry

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
)

// desc builds a descriptor: ifaces are "name M.m [cap,cap] [k=v;k=v]".
func desc(name, location string, ifaces ...string) *Descriptor {
	d := &Descriptor{SFWVersion: "1.1", Name: name, IPCAddress: location}
	for _, s := range ifaces {
		f := strings.Fields(s)
		v, err := parseVersion(descVersion, f[1])
		if err != nil {
			panic(err)
		}
		in := Interface{Name: f[0], Version: v}
		for _, x := range f[2:] {
			if strings.Contains(x, "=") {
				in.Properties = map[string]string{}
				for _, kv := range strings.Split(x, ";") {
					k, v, _ := strings.Cut(kv, "=")
					in.Properties[k] = v
				}
			} else if x != "-" {
				in.Capabilities = strings.Split(x, ",")
			}
		}
		d.Interfaces = append(d.Interfaces, in)
	}
	return d
}

func newReg(t *testing.T) (*Registry, *[]Event) {
	t.Helper()
	var evs []Event
	dir := t.TempDir()
	r, err := Open(Config{UserFile: filepath.Join(dir, "user.json"), SystemFile: filepath.Join(dir, "system.json"),
		CanWriteSystem: func() bool { return true }, Notify: func(e Event) { evs = append(evs, e) }})
	if err != nil {
		t.Fatal(err)
	}
	return r, &evs
}

func mustAdd(t *testing.T, r *Registry, d *Descriptor, s Scope) {
	t.Helper()
	if err := r.Add(d, s); err != nil {
		t.Fatalf("add %s: %v", d.Name, err)
	}
}

func mustSetDefault(t *testing.T, r *Registry, service, iface string, v *Version, s Scope) {
	t.Helper()
	if err := r.SetDefault(service, iface, v, s); err != nil {
		t.Fatalf("set %s as the default %s: %v", service, iface, err)
	}
}

func mustRemove(t *testing.T, r *Registry, service string, s Scope) {
	t.Helper()
	if err := r.Remove(service, s); err != nil {
		t.Fatalf("remove %s: %v", service, err)
	}
}

// names lists "service iface M.m" of implementations.
func names(impls []*Implementation) []string {
	var out []string
	for _, i := range impls {
		out = append(out, fmt.Sprintf("%s %s %s", i.Service, i.Interface, i.Version))
	}
	return out
}

// Each filter rule, with a case that matches and one that must not.
func TestFilterRules(t *testing.T) {
	r, _ := newReg(t)
	mustAdd(t, r, desc("Editor", "editor", "org.example.Edit 2.1 Net,Files lang=go", "org.example.View 1.0"), UserScope)
	mustAdd(t, r, desc("OldEditor", "old", "org.example.Edit 1.9 -", "org.example.Edit 2.0 Files"), UserScope)
	for _, c := range []struct {
		name string
		f    Filter
		want []string
	}{
		{"empty matches all", Filter{}, []string{"Editor org.example.Edit 2.1", "Editor org.example.View 1.0", "OldEditor org.example.Edit 1.9", "OldEditor org.example.Edit 2.0"}},
		{"service name, any case", Filter{Service: "editor"}, []string{"Editor org.example.Edit 2.1", "Editor org.example.View 1.0"}},
		{"service name, no wildcard", Filter{Service: "Edit*"}, nil},
		{"interface name, any case", Filter{Interface: "ORG.EXAMPLE.VIEW"}, []string{"Editor org.example.View 1.0"}},
		{"interface name must be whole", Filter{Interface: "org.example"}, nil},
		{"minimum version: same major, higher minor", Filter{Interface: "org.example.Edit", Version: "2.0"}, []string{"Editor org.example.Edit 2.1", "OldEditor org.example.Edit 2.0"}},
		{"minimum version: higher major", Filter{Interface: "org.example.Edit", Version: "1.10"}, []string{"Editor org.example.Edit 2.1", "OldEditor org.example.Edit 2.0"}},
		{"minimum version: too new", Filter{Interface: "org.example.Edit", Version: "2.2"}, nil},
		{"exact version", Filter{Interface: "org.example.Edit", Version: "2.0", Exact: true}, []string{"OldEditor org.example.Edit 2.0"}},
		{"exact version: none", Filter{Interface: "org.example.Edit", Version: "2.5", Exact: true}, nil},
		{"version ignored without interface", Filter{Service: "OldEditor", Version: "9.9"}, []string{"OldEditor org.example.Edit 1.9", "OldEditor org.example.Edit 2.0"}},
		{"MatchMinimum: filter caps within the interface's", Filter{Capabilities: []string{"Files"}}, []string{"Editor org.example.Edit 2.1", "OldEditor org.example.Edit 2.0"}},
		{"MatchMinimum: a cap nobody has", Filter{Capabilities: []string{"Files", "Admin"}}, nil},
		{"MatchMinimum: case matters", Filter{Capabilities: []string{"files"}}, nil},
		{"MatchLoadable: interface caps within the filter's", Filter{Capabilities: []string{"Files"}, Loadable: true}, []string{"Editor org.example.View 1.0", "OldEditor org.example.Edit 1.9", "OldEditor org.example.Edit 2.0"}},
		{"MatchLoadable: empty finds only needless", Filter{Loadable: true}, []string{"Editor org.example.View 1.0", "OldEditor org.example.Edit 1.9"}},
		{"MatchLoadable: all caps", Filter{Capabilities: []string{"Net", "Files"}, Loadable: true}, []string{"Editor org.example.Edit 2.1", "Editor org.example.View 1.0", "OldEditor org.example.Edit 1.9", "OldEditor org.example.Edit 2.0"}},
		{"property equal", Filter{Properties: map[string]string{"lang": "go"}}, []string{"Editor org.example.Edit 2.1"}},
		{"property value case matters", Filter{Properties: map[string]string{"lang": "Go"}}, nil},
		{"property missing", Filter{Properties: map[string]string{"os": "linux"}}, nil},
		{"all criteria AND", Filter{Service: "Editor", Interface: "org.example.Edit", Version: "2.1", Capabilities: []string{"Net"}, Properties: map[string]string{"lang": "go"}}, []string{"Editor org.example.Edit 2.1"}},
		{"AND: one fails", Filter{Service: "Editor", Interface: "org.example.View", Capabilities: []string{"Net"}}, nil},
	} {
		got, err := r.Find(c.f, UserScope)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if !slices.Equal(names(got), c.want) {
			t.Errorf("%s: got %q, want %q", c.name, names(got), c.want)
		}
	}
	for _, bad := range []string{"1", "1.", "a.b", "01.0", "1.01", "-1.0", "1.0.0", " 1.0"} {
		if _, err := r.Find(Filter{Interface: "org.example.Edit", Version: bad}, UserScope); CodeOf(err) != InvalidFilter {
			t.Errorf("filter version %q: %v, want InvalidFilter", bad, err)
		}
	}
	if got, err := r.Find(Filter{Interface: "org.example.Edit", Version: "0.0"}, UserScope); err != nil || len(got) != 3 {
		t.Errorf("filter version 0.0 is valid: %q %v", names(got), err)
	}
}

// User scope lists user results first, then system; system scope only
// system; system-scope watchers never see user events.
func TestScopes(t *testing.T) {
	r, evs := newReg(t)
	mustAdd(t, r, desc("Sys", "sys", "org.example.Edit 1.0"), SystemScope)
	mustAdd(t, r, desc("Usr", "usr", "org.example.Edit 1.0"), UserScope)
	got, _ := r.Find(Filter{}, UserScope)
	if !slices.Equal(names(got), []string{"Usr org.example.Edit 1.0", "Sys org.example.Edit 1.0"}) || got[0].Scope != UserScope || got[1].Scope != SystemScope {
		t.Fatalf("user scope: %q", names(got))
	}
	got, _ = r.Find(Filter{}, SystemScope)
	if !slices.Equal(names(got), []string{"Sys org.example.Edit 1.0"}) {
		t.Fatalf("system scope: %q", names(got))
	}
	want := []Event{{Type: ServiceAdded, Service: "Sys", Scope: SystemScope}, {Type: ServiceAdded, Service: "Usr", Scope: UserScope}}
	if !slices.Equal(*evs, want) {
		t.Fatalf("events %+v", *evs)
	}
	mustRemove(t, r, "Usr", UserScope)
	if (*evs)[2] != (Event{Type: ServiceRemoved, Service: "Usr", Scope: UserScope}) {
		t.Fatalf("events %+v", *evs)
	}
	// The system scope is root's.
	dir := t.TempDir()
	r2, _ := Open(Config{SystemFile: filepath.Join(dir, "s.json"), CanWriteSystem: func() bool { return false }})
	if err := r2.Add(desc("X", "x", "a.b 1.0"), SystemScope); CodeOf(err) != PermissionDenied {
		t.Fatalf("non-root system add: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "s.json")); !os.IsNotExist(err) {
		t.Fatal("a refused add wrote the system file")
	}
}

func TestAddRefusals(t *testing.T) {
	r, _ := newReg(t)
	mustAdd(t, r, desc("A", "loc-a", "a.b 1.0"), UserScope)
	for name, c := range map[string]struct {
		d    *Descriptor
		code string
	}{
		// Qt refuses a location registered already, whoever has it.
		"location of another service": {desc("B", "LOC-A", "x.y 1.0"), ServiceAlreadyExists},
		"same service, same location": {desc("A", "loc-a", "x.y 1.0"), ServiceAlreadyExists},
		// and an implementation the service has at any location.
		"same service+interface+version, another location": {desc("a", "loc-b", "A.B 1.0"), ImplementationAlreadyExists},
	} {
		if err := r.Add(c.d, UserScope); CodeOf(err) != c.code {
			t.Errorf("%s: %v, want %s", name, err, c.code)
		}
	}
	got, _ := r.Find(Filter{}, UserScope)
	if !slices.Equal(names(got), []string{"A a.b 1.0"}) {
		t.Fatalf("after the refusals: %q", names(got))
	}
	if err := r.Remove("nobody", UserScope); CodeOf(err) != ComponentNotFound {
		t.Fatalf("remove unknown: %v", err)
	}
}

// One service from several locations (Qt's plugins of one service): each
// adds its implementations, every query and default rule sees them all,
// and removing the service by name removes them all.
func TestServiceFromSeveralLocations(t *testing.T) {
	r, evs := newReg(t)
	mustAdd(t, r, desc("Media", "/plugins/audio", "org.media.Play 1.0", "org.media.Audio 2.0"), UserScope)
	mustAdd(t, r, desc("Other", "/plugins/other", "org.media.Play 3.0"), UserScope)
	mustAdd(t, r, desc("MEDIA", "/plugins/video", "org.media.Play 2.0", "org.media.Video 1.0"), UserScope)
	if got := fmt.Sprint(*evs); got != "[{ServiceAdded Media user false} {ServiceAdded Other user false} {ServiceAdded MEDIA user false}]" {
		t.Fatalf("events %s", got)
	}
	at := func(impls []*Implementation) []string {
		var out []string
		for _, i := range impls {
			out = append(out, i.Service+" "+i.Interface+" "+i.Version.String()+" "+i.IPCAddress)
		}
		return out
	}
	got, _ := r.Find(Filter{Service: "media"}, UserScope)
	if want := []string{
		"Media org.media.Audio 2.0 /plugins/audio", "Media org.media.Play 1.0 /plugins/audio",
		"MEDIA org.media.Play 2.0 /plugins/video", "MEDIA org.media.Video 1.0 /plugins/video",
	}; !slices.Equal(at(got), want) {
		t.Fatalf("find service media:\n%q\nwant\n%q", at(got), want)
	}
	got, _ = r.Find(Filter{Interface: "org.media.Play", Version: "2.0"}, UserScope)
	if want := []string{"MEDIA org.media.Play 2.0 /plugins/video", "Other org.media.Play 3.0 /plugins/other"}; !slices.Equal(at(got), want) {
		t.Fatalf("find Play 2.0: %q", at(got))
	}
	// The first registrant keeps Play; Video's default is the second
	// location's, which brought it.
	if got := defaultOf(t, r, "org.media.Play", UserScope); got != "Media 1.0 user" {
		t.Fatalf("Play's default: %s", got)
	}
	if impl, err := r.Default("org.media.Video", UserScope); err != nil || impl.IPCAddress != "/plugins/video" {
		t.Fatalf("Video's default: %+v, %v", impl, err)
	}
	// setInterfaceDefault picks the service's newest version at any of
	// its locations, or exactly the one given.
	mustSetDefault(t, r, "media", "org.media.Play", nil, UserScope)
	if impl, err := r.Default("org.media.Play", UserScope); err != nil || impl.Version != (Version{2, 0}) || impl.IPCAddress != "/plugins/video" {
		t.Fatalf("Play's default after setting it: %+v, %v", impl, err)
	}
	v := Version{1, 0}
	mustSetDefault(t, r, "media", "org.media.Play", &v, UserScope)
	if impl, _ := r.Default("org.media.Play", UserScope); impl.IPCAddress != "/plugins/audio" {
		t.Fatalf("Play 1.0's default: %+v", impl)
	}
	ds, scope, err := r.Service("media", UserScope)
	if err != nil || scope != UserScope || len(ds) != 2 || ds[0].IPCAddress != "/plugins/audio" || ds[1].IPCAddress != "/plugins/video" {
		t.Fatalf("Service(media): %+v %s %v", ds, scope, err)
	}
	// Kept as registered, in order, across a restart.
	r2, err := Open(r.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if ds2, _, _ := r2.Service("Media", UserScope); !reflect.DeepEqual(ds2, ds) {
		t.Fatalf("after reopening: %+v", ds2)
	}
	list, _ := r2.Services(UserScope)
	var locs []string
	for _, d := range list {
		locs = append(locs, d.Name+" "+d.Location())
	}
	if want := []string{"Media /plugins/audio", "MEDIA /plugins/video", "Other /plugins/other"}; !slices.Equal(locs, want) {
		t.Fatalf("services %q", locs)
	}
	// Removing it by name removes every location; Play's default goes
	// to what remains, Video's and Audio's go.
	*evs = nil
	mustRemove(t, r2, "media", UserScope)
	if got, _ := r2.Find(Filter{}, UserScope); !slices.Equal(names(got), []string{"Other org.media.Play 3.0"}) {
		t.Fatalf("after removing media: %q", names(got))
	}
	if got := defaultOf(t, r2, "org.media.Play", UserScope); got != "Other 3.0 user" {
		t.Fatalf("Play's default after the removal: %s", got)
	}
	for _, i := range []string{"org.media.Video", "org.media.Audio"} {
		if got := defaultOf(t, r2, i, UserScope); got != "none" {
			t.Fatalf("%s's default after the removal: %s", i, got)
		}
	}
	if ds, _, _ := r2.Service("media", UserScope); len(ds) != 0 {
		t.Fatalf("media still has %d locations", len(ds))
	}
	// Its locations are free again.
	mustAdd(t, r2, desc("Fresh", "/plugins/video", "org.media.Video 1.0"), UserScope)
}

func defaultOf(t *testing.T, r *Registry, iface string, s Scope) string {
	t.Helper()
	impl, err := r.Default(iface, s)
	if err != nil {
		return "none"
	}
	return fmt.Sprintf("%s %s %s", impl.Service, impl.Version, impl.Scope)
}

func TestDefaults(t *testing.T) {
	t.Run("first registrant wins, with its highest version", func(t *testing.T) {
		r, _ := newReg(t)
		mustAdd(t, r, desc("First", "f", "i.x 1.2", "i.x 1.5", "i.x 1.3"), UserScope)
		mustAdd(t, r, desc("Second", "s", "i.x 3.0"), UserScope)
		if got := defaultOf(t, r, "I.X", UserScope); got != "First 1.5 user" {
			t.Fatalf("default %s", got)
		}
	})
	t.Run("setInterfaceDefault picks the newest, or exactly the version given", func(t *testing.T) {
		r, _ := newReg(t)
		mustAdd(t, r, desc("First", "f", "i.x 1.0"), UserScope)
		mustAdd(t, r, desc("Second", "s", "i.x 2.0", "i.x 2.4"), UserScope)
		mustSetDefault(t, r, "second", "i.x", nil, UserScope)
		if got := defaultOf(t, r, "i.x", UserScope); got != "Second 2.4 user" {
			t.Fatalf("default %s", got)
		}
		v := Version{2, 0}
		mustSetDefault(t, r, "Second", "i.x", &v, UserScope)
		if got := defaultOf(t, r, "i.x", UserScope); got != "Second 2.0 user" {
			t.Fatalf("default %s", got)
		}
		v = Version{9, 9}
		if err := r.SetDefault("Second", "i.x", &v, UserScope); CodeOf(err) != ComponentNotFound {
			t.Fatalf("a version the service lacks: %v", err)
		}
		if err := r.SetDefault("Nobody", "i.x", nil, UserScope); CodeOf(err) != ComponentNotFound {
			t.Fatalf("an unknown service: %v", err)
		}
	})
	t.Run("a user default may name a system service; a system default not a user one", func(t *testing.T) {
		r, _ := newReg(t)
		mustAdd(t, r, desc("Usr", "u", "i.x 1.0"), UserScope)
		mustAdd(t, r, desc("Sys", "s", "i.x 1.0"), SystemScope)
		mustSetDefault(t, r, "Sys", "i.x", nil, UserScope)
		if got := defaultOf(t, r, "i.x", UserScope); got != "Sys 1.0 system" {
			t.Fatalf("user default %s", got)
		}
		if err := r.SetDefault("Usr", "i.x", nil, SystemScope); CodeOf(err) != ComponentNotFound {
			t.Fatalf("system default to a user service: %v", err)
		}
	})
	t.Run("in the user scope a user default wins over the system's; the system scope ignores it", func(t *testing.T) {
		r, _ := newReg(t)
		// The system's is older and of a higher version: only the scope
		// rule makes the user's win.
		mustAdd(t, r, desc("Sys", "s", "i.x 2.0"), SystemScope)
		mustAdd(t, r, desc("Usr", "u", "i.x 1.0"), UserScope)
		if got := defaultOf(t, r, "i.x", UserScope); got != "Usr 1.0 user" {
			t.Fatalf("user scope default %s", got)
		}
		if got := defaultOf(t, r, "i.x", SystemScope); got != "Sys 2.0 system" {
			t.Fatalf("system scope default %s", got)
		}
	})
	t.Run("user scope falls back to the system default", func(t *testing.T) {
		r, _ := newReg(t)
		mustAdd(t, r, desc("Sys", "s", "i.x 1.0"), SystemScope)
		if got := defaultOf(t, r, "i.x", UserScope); got != "Sys 1.0 system" {
			t.Fatalf("default %s", got)
		}
		if got := defaultOf(t, r, "i.y", UserScope); got != "none" {
			t.Fatalf("unknown interface default %s", got)
		}
	})
	t.Run("a user default to a vanished system implementation gives way to the latest user one", func(t *testing.T) {
		r, _ := newReg(t)
		mustAdd(t, r, desc("Sys", "s", "i.x 3.0"), SystemScope)
		mustAdd(t, r, desc("UsrOld", "u1", "i.x 1.0"), UserScope)
		mustAdd(t, r, desc("UsrNew", "u2", "i.x 1.7"), UserScope)
		mustSetDefault(t, r, "Sys", "i.x", nil, UserScope)
		mustRemove(t, r, "Sys", SystemScope)
		if got := defaultOf(t, r, "i.x", UserScope); got != "UsrNew 1.7 user" {
			t.Fatalf("default %s", got)
		}
	})
	t.Run("a user default to a vanished system implementation, no user one left: the system default", func(t *testing.T) {
		r, _ := newReg(t)
		// The system default is SysOld, the latest system one SysTop.
		mustAdd(t, r, desc("SysOld", "s1", "i.x 1.0"), SystemScope)
		mustAdd(t, r, desc("SysNew", "s2", "i.x 2.0"), SystemScope)
		mustAdd(t, r, desc("SysTop", "s3", "i.x 3.0"), SystemScope)
		mustSetDefault(t, r, "SysNew", "i.x", nil, UserScope)
		mustRemove(t, r, "SysNew", SystemScope)
		if got := defaultOf(t, r, "i.x", UserScope); got != "SysOld 1.0 system" {
			t.Fatalf("default %s", got)
		}
		// The dangling user default is gone for good: the system
		// implementation coming back does not revive it.
		mustAdd(t, r, desc("SysNew", "s2", "i.x 2.0"), SystemScope)
		if got := defaultOf(t, r, "i.x", UserScope); got != "SysOld 1.0 system" {
			t.Fatalf("after the system implementation came back: %s", got)
		}
	})
	t.Run("removing a service that is not the default leaves the default", func(t *testing.T) {
		r, _ := newReg(t)
		mustAdd(t, r, desc("Dflt", "d", "i.x 1.0"), UserScope)
		mustAdd(t, r, desc("High", "h", "i.x 5.0"), UserScope)
		mustAdd(t, r, desc("Other", "o", "i.x 3.0", "i.y 1.0"), UserScope)
		// Recomputing would give High 5.0.
		mustRemove(t, r, "Other", UserScope)
		if got := defaultOf(t, r, "i.x", UserScope); got != "Dflt 1.0 user" {
			t.Fatalf("after removing another service: %s", got)
		}
		if got := defaultOf(t, r, "i.y", UserScope); got != "none" {
			t.Fatalf("the removed service's own interface: %s", got)
		}
		// A user default naming a system service is not the user
		// service of the same name.
		mustAdd(t, r, desc("Twin", "ts", "i.x 2.0"), SystemScope)
		mustAdd(t, r, desc("Twin", "tu", "i.x 4.0"), UserScope)
		mustSetDefault(t, r, "Twin", "i.x", &Version{2, 0}, UserScope)
		mustRemove(t, r, "Twin", UserScope)
		if got := defaultOf(t, r, "i.x", UserScope); got != "Twin 2.0 system" {
			t.Fatalf("after removing the user twin: %s", got)
		}
	})
	t.Run("removal falls back to the highest remaining version, ties by name", func(t *testing.T) {
		r, _ := newReg(t)
		mustAdd(t, r, desc("Dflt", "d", "i.x 5.0"), UserScope)
		mustAdd(t, r, desc("Zed", "z", "i.x 2.3"), UserScope)
		mustAdd(t, r, desc("Abe", "a", "i.x 2.3"), UserScope)
		mustAdd(t, r, desc("Low", "l", "i.x 2.10"), UserScope)
		mustRemove(t, r, "Dflt", UserScope)
		if got := defaultOf(t, r, "i.x", UserScope); got != "Low 2.10 user" {
			t.Fatalf("after removal: %s", got)
		}
		r.Remove("Low", UserScope)
		if got := defaultOf(t, r, "i.x", UserScope); got != "Abe 2.3 user" {
			t.Fatalf("tie: %s", got)
		}
		r.Remove("Abe", UserScope)
		r.Remove("Zed", UserScope)
		if got := defaultOf(t, r, "i.x", UserScope); got != "none" {
			t.Fatalf("none left: %s", got)
		}
	})
}

// The registry survives a restart; a corrupt file is reported, not
// silently emptied.
func TestDurable(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{UserFile: filepath.Join(dir, "user.json"), SystemFile: filepath.Join(dir, "system.json"), CanWriteSystem: func() bool { return true }}
	r, _ := Open(cfg)
	mustAdd(t, r, desc("A", "a", "i.x 1.0", "i.y 2.0 Cap k=v"), UserScope)
	mustAdd(t, r, desc("B", "b", "i.x 1.5"), UserScope)
	r.SetDefault("B", "i.x", nil, UserScope)
	r2, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := r2.Find(Filter{Capabilities: []string{"Cap"}, Properties: map[string]string{"k": "v"}}, UserScope)
	if !slices.Equal(names(got), []string{"A i.y 2.0"}) {
		t.Fatalf("after a restart: %q", names(got))
	}
	if d := defaultOf(t, r2, "i.x", UserScope); d != "B 1.5 user" {
		t.Fatalf("default after a restart: %s", d)
	}
	os.WriteFile(cfg.UserFile, []byte("{not json"), 0o644)
	if _, err := Open(cfg); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("corrupt file: %v", err)
	}
}

// A change that cannot be saved changes nothing in memory either: no
// service, default or event that a restart would lose.
func TestFailedSaveChangesNothing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	var evs []Event
	r, err := Open(Config{UserFile: filepath.Join(dir, "user.json"), CanWriteSystem: func() bool { return true },
		Notify: func(e Event) { evs = append(evs, e) }})
	if err != nil {
		t.Fatal(err)
	}
	mustAdd(t, r, desc("A", "a", "i.x 1.0 Cap k=v"), UserScope)
	mustAdd(t, r, desc("B", "b", "i.x 2.0 Cap k=v"), UserScope)
	find := func() []string {
		got, err := r.Find(Filter{Capabilities: []string{"Cap"}, Properties: map[string]string{"k": "v"}}, UserScope)
		if err != nil {
			t.Fatal(err)
		}
		return names(got)
	}
	before := find()
	// The state directory turns into a file: every save fails.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := r.Add(desc("C", "c", "i.x 3.0 Cap k=v"), UserScope); err == nil {
		t.Fatal("add saved nowhere succeeded")
	}
	if err := r.Add(desc("A", "a", "i.x 1.5 Cap k=v"), UserScope); err == nil {
		t.Fatal("upgrade saved nowhere succeeded")
	}
	if err := r.Remove("A", UserScope); err == nil {
		t.Fatal("remove saved nowhere succeeded")
	}
	if err := r.SetDefault("B", "i.x", nil, UserScope); err == nil {
		t.Fatal("set default saved nowhere succeeded")
	}
	if got := find(); !slices.Equal(got, before) {
		t.Fatalf("after failed writes: %q, want %q", got, before)
	}
	if got := defaultOf(t, r, "i.x", UserScope); got != "A 1.0 user" {
		t.Fatalf("default after failed writes: %s", got)
	}
	if len(evs) != 2 {
		t.Fatalf("events %+v", evs)
	}
}

// The registry keeps its own copy of a descriptor: the caller may reuse
// it.
func TestAddCopies(t *testing.T) {
	r, _ := newReg(t)
	d := desc("A", "a", "i.x 1.0 Net k=v")
	mustAdd(t, r, d, UserScope)
	d.Interfaces[0].Name = "i.z"
	d.Interfaces[0].Capabilities[0] = "Other"
	d.Interfaces[0].Properties["k"] = "changed"
	got, _ := r.Find(Filter{Interface: "i.x", Capabilities: []string{"Net"}, Properties: map[string]string{"k": "v"}}, UserScope)
	if !slices.Equal(names(got), []string{"A i.x 1.0"}) || got[0].Capabilities[0] != "Net" || got[0].Properties["k"] != "v" {
		t.Fatalf("after the caller changed its descriptor: %+v", got)
	}
}

// The system scope's file may live in a directory that does not exist
// yet (/var/lib/tube on a fresh machine).
func TestSaveMakesDirectory(t *testing.T) {
	file := filepath.Join(t.TempDir(), "var", "lib", "tube", "services.json")
	r, err := Open(Config{SystemFile: file, CanWriteSystem: func() bool { return true }})
	if err != nil {
		t.Fatal(err)
	}
	mustAdd(t, r, desc("Sys", "s", "i.x 1.0"), SystemScope)
	if _, err := os.Stat(file); err != nil {
		t.Fatal(err)
	}
}

// The system scope is one file that root's daemon writes and every
// user's daemon reads: a change made through one registry is seen by
// another at its next lookup, with its events (Refresh gives them
// without a lookup), and a user's own changes do not depend on it.
func TestSystemScopeShared(t *testing.T) {
	dir := t.TempDir()
	sys := filepath.Join(dir, "system.json")
	open := func(user string, evs *[]Event, root bool) *Registry {
		r, err := Open(Config{UserFile: filepath.Join(dir, user), SystemFile: sys,
			CanWriteSystem: func() bool { return root }, Notify: func(e Event) { *evs = append(*evs, e) }})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	var rootEvs, userEvs []Event
	root, user := open("root.json", &rootEvs, true), open("user.json", &userEvs, false)
	mustAdd(t, user, desc("Mine", "m", "i.x 1.0"), UserScope)
	userEvs = nil

	mustAdd(t, root, desc("Sys", "s", "i.x 2.0"), SystemScope)
	got, err := user.Find(Filter{Interface: "i.x"}, UserScope)
	if err != nil || !slices.Equal(names(got), []string{"Mine i.x 1.0", "Sys i.x 2.0"}) {
		t.Fatalf("the user's lookup after root added Sys: %q, %v", names(got), err)
	}
	if len(userEvs) != 1 || userEvs[0] != (Event{Type: ServiceAdded, Service: "Sys", Scope: SystemScope}) {
		t.Fatalf("the user's events: %+v", userEvs)
	}
	userEvs = nil
	user.Refresh() // nothing changed since
	if len(userEvs) != 0 {
		t.Fatalf("events without a change: %+v", userEvs)
	}

	if err := root.Remove("Sys", SystemScope); err != nil {
		t.Fatal(err)
	}
	user.Refresh()
	if len(userEvs) != 1 || userEvs[0] != (Event{Type: ServiceRemoved, Service: "Sys", Scope: SystemScope}) {
		t.Fatalf("the user's events after root removed Sys: %+v", userEvs)
	}
	if got, _ := user.Find(Filter{Interface: "i.x"}, UserScope); !slices.Equal(names(got), []string{"Mine i.x 1.0"}) {
		t.Fatalf("the user's lookup after the removal: %q", names(got))
	}
	// root's registry takes in what another root daemon wrote before
	// changing the file itself: nothing is lost.
	other := open("other.json", new([]Event), true)
	mustAdd(t, other, desc("Other", "o", "i.y 1.0"), SystemScope)
	mustAdd(t, root, desc("Third", "t", "i.z 1.0"), SystemScope)
	if ds, _ := user.Services(SystemScope); len(ds) != 2 {
		t.Fatalf("the system scope after two root registries wrote it: %d services", len(ds))
	}
	if len(rootEvs) == 0 || rootEvs[len(rootEvs)-2] != (Event{Type: ServiceAdded, Service: "Other", Scope: SystemScope}) {
		t.Fatalf("root's events: %+v", rootEvs)
	}
}

// Several root daemons changing the system scope at once each start from
// what the one before wrote (a file lock orders them): every change
// lands.
func TestSystemScopeConcurrentWriters(t *testing.T) {
	dir := t.TempDir()
	sys := filepath.Join(dir, "system.json")
	const writers, each = 4, 10
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for w := range writers {
		r, err := Open(Config{SystemFile: sys, CanWriteSystem: func() bool { return true }})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				name := fmt.Sprintf("W%dS%d", w, i)
				if err := r.Add(desc(name, strings.ToLower(name), "i.x 1.0"), SystemScope); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	r, err := Open(Config{SystemFile: sys})
	if err != nil {
		t.Fatal(err)
	}
	if ds, _ := r.Services(SystemScope); len(ds) != writers*each {
		t.Fatalf("%d services in the system scope after %d writers added %d each", len(ds), writers, each)
	}
}

// Defaults lists each scope's rules, a user rule naming a system service
// marked by its implementation's scope, and ClearDefault sends an
// interface's default back to the newest implementation of the scope (or,
// in the user scope with none, to the system's).
func TestDefaultsListAndClear(t *testing.T) {
	r, _ := newReg(t)
	mustAdd(t, r, desc("Old", "o", "i.x 1.0", "i.y 1.0"), UserScope)
	mustAdd(t, r, desc("New", "n", "i.x 2.0"), UserScope)
	mustAdd(t, r, desc("Sys", "s", "i.x 3.0", "i.z 1.0"), SystemScope)
	mustSetDefault(t, r, "Sys", "i.x", nil, UserScope) // across scopes
	rules := func(s Scope) (out []string) {
		t.Helper()
		ds, err := r.Defaults(s)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			out = append(out, fmt.Sprintf("%s %s: %s %s %s", d.Scope, d.Interface, d.Implementation.Service, d.Implementation.Version, d.Implementation.Scope))
		}
		return out
	}
	want := []string{"user i.x: Sys 3.0 system", "user i.y: Old 1.0 user", "system i.x: Sys 3.0 system", "system i.z: Sys 1.0 system"}
	if got := rules(UserScope); !slices.Equal(got, want) {
		t.Fatalf("user-scope defaults:\n%q\nwant\n%q", got, want)
	}
	if got := rules(SystemScope); !slices.Equal(got, want[2:]) {
		t.Fatalf("system-scope defaults: %q", got)
	}
	if err := r.ClearDefault("I.X", UserScope); err != nil {
		t.Fatal(err)
	}
	if got := defaultOf(t, r, "i.x", UserScope); got != "New 2.0 user" {
		t.Fatalf("after clearing, the user default is %s, want the newest user implementation", got)
	}
	if err := r.ClearDefault("i.z", UserScope); CodeOf(err) != ComponentNotFound {
		t.Fatalf("clearing a rule the scope does not keep: %v", err)
	}
	mustRemove(t, r, "Old", UserScope)
	mustSetDefault(t, r, "Sys", "i.x", nil, UserScope)
	mustRemove(t, r, "New", UserScope)
	mustAdd(t, r, desc("Other", "t", "i.w 1.0"), UserScope)
	if err := r.ClearDefault("i.x", UserScope); err != nil {
		t.Fatal(err)
	}
	if got := defaultOf(t, r, "i.x", UserScope); got != "Sys 3.0 system" {
		t.Fatalf("with no user implementation left the default is %s, want the system's", got)
	}
}

// Service names are one service however their case is written, by the
// same folding everywhere (ſ is s, K is k): registering, finding,
// defaults and removing agree on what is one service.
func TestNamesFoldAsOne(t *testing.T) {
	r, _ := newReg(t)
	mustAdd(t, r, desc("svc", "/a", "i.x 1.0"), UserScope)
	if err := r.Add(desc("ſvc", "/b", "i.x 1.0"), UserScope); CodeOf(err) != ImplementationAlreadyExists {
		t.Fatalf("ſvc with svc's implementation: %v", err)
	}
	mustAdd(t, r, desc("ſvc", "/b", "i.x 2.0"), UserScope)
	mustAdd(t, r, desc("SVC", "/c", "I.X 3.0"), UserScope)
	if ds, _, _ := r.Service("svc", UserScope); len(ds) != 3 {
		t.Fatalf("svc has %d locations, want 3", len(ds))
	}
	if got, _ := r.Find(Filter{Service: "ſvc"}, UserScope); len(got) != 3 {
		t.Fatalf("find ſvc: %q", names(got))
	}
	v := Version{2, 0}
	mustSetDefault(t, r, "SVC", "i.x", &v, UserScope)
	if got := defaultOf(t, r, "i.x", UserScope); got != "ſvc 2.0 user" {
		t.Fatalf("default %s", got)
	}
	mustRemove(t, r, "svc", UserScope)
	if got, _ := r.Find(Filter{}, UserScope); len(got) != 0 {
		t.Fatalf("left after removing svc: %q", names(got))
	}
	if err := r.Remove("ſvc", UserScope); CodeOf(err) != ComponentNotFound {
		t.Fatalf("remove ſvc after svc: %v", err)
	}
}

// A fingerprint names one registration: the same descriptor in the same
// scope, and nothing else — not a location in another case, not an
// ipcaddress with a filepath's text, not other interfaces at the same
// location, not the other scope.
func TestFingerprint(t *testing.T) {
	base := desc("Svc", "/x/S.sock", "i.x 1.0")
	same := desc("Svc", "/x/S.sock", "i.x 1.0")
	if Fingerprint(base, UserScope) != Fingerprint(same, UserScope) {
		t.Fatal("the same registration has two fingerprints")
	}
	asFile := desc("Svc", "", "i.x 1.0")
	asFile.FilePath = "/x/S.sock"
	for name, d := range map[string]*Descriptor{
		"location in another case": desc("Svc", "/x/s.sock", "i.x 1.0"),
		"a filepath's text":        asFile,
		"other interfaces":         desc("Svc", "/x/S.sock", "i.y 1.0"),
	} {
		if Fingerprint(d, UserScope) == Fingerprint(base, UserScope) {
			t.Errorf("%s: same fingerprint", name)
		}
	}
	if Fingerprint(base, SystemScope) == Fingerprint(base, UserScope) {
		t.Error("the other scope: same fingerprint")
	}
}
