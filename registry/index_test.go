package registry

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"sync"
	"testing"
	"unicode"
)

// scan is Find without the index: every implementation checked with the
// filter, as Select does.
func scan(r *Registry, f Filter, scope Scope) ([]*Implementation, error) {
	var out []*Implementation
	for _, s := range scopesFor(scope) {
		got, err := Select(f, r.st[s].Services, s)
		if err != nil {
			return nil, err
		}
		for i := range got {
			out = append(out, &got[i])
		}
	}
	return out, nil
}

// Find, which narrows by its index, returns what checking every
// implementation returns, in the same order, however the registry
// changes.
func TestFindIndexMatchesScan(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	pick := func(xs ...string) string { return xs[rng.IntN(len(xs))] }
	// Names that are equal ignoring case only by Unicode folding: the
	// Kelvin sign is K, the long s is s.
	services := []string{"Alpha", "beta", "Kelvin", "Service", "zeta", "Omega"}
	ifaces := []string{"org.sample.Long", "i.x", "I.X", "i.y", "Org.Kiosk"}
	versions := []Version{{1, 0}, {1, 2}, {2, 0}, {2, 3}, {3, 1}}
	caps := []string{"A", "a", "B", "net"}
	randomFilter := func() (Filter, Scope) {
		f := Filter{
			Service:   pick("", "", "", "Alpha", "ALPHA", "\u212aELVIN", "ſervice", "nosuch"),
			Interface: pick("", "", "org.sample.long", "ORG.ſAMPLE.LONG", "i.x", "I.X", "i.y", "org.\u212aiosk", "none"),
			Version:   pick("", "", "0.0", "1.0", "2.0", "2.3", "3.1"),
			Exact:     rng.IntN(3) == 0,
			Loadable:  rng.IntN(3) == 0,
		}
		switch rng.IntN(6) {
		case 1:
			f.Capabilities = []string{"A"}
		case 2:
			f.Capabilities = []string{"a", "B"}
		case 3:
			f.Capabilities = []string{"net", "A", "net"}
		case 4:
			f.Capabilities = []string{"zz"}
		case 5:
			f.Capabilities = []string{}
		}
		switch rng.IntN(6) {
		case 1:
			f.Properties = map[string]string{"k": "1"}
		case 2:
			f.Properties = map[string]string{"K": "1"}
		case 3:
			f.Properties = map[string]string{"k": "1", "tier": "2"}
		case 4:
			f.Properties = map[string]string{"tier": "x"}
		case 5:
			f.Properties = map[string]string{"k": "zz"}
		}
		return f, []Scope{UserScope, SystemScope}[rng.IntN(2)]
	}
	check := func(r *Registry, n int) {
		t.Helper()
		for range n {
			f, scope := randomFilter()
			got, err := r.Find(f, scope)
			want, werr := scan(r, f, scope)
			if (err == nil) != (werr == nil) || !reflect.DeepEqual(got, want) {
				t.Fatalf("Find(%+v, %s) = %q, %v; checking every implementation: %q, %v", f, scope, names(got), err, names(want), werr)
			}
		}
	}
	r, _ := newReg(t)
	for i := range 60 {
		d := &Descriptor{SFWVersion: "1.1", Name: pick(services...)}
		// A few locations per service: a service comes from several.
		d.IPCAddress = fmt.Sprintf("loc-%s-%d", strings.ToLower(d.Name), rng.IntN(3))
		for range 1 + rng.IntN(4) {
			in := Interface{Name: pick(ifaces...), Version: versions[rng.IntN(len(versions))]}
			for range rng.IntN(3) {
				in.Capabilities = append(in.Capabilities, pick(caps...)) // duplicates too
			}
			for range rng.IntN(3) {
				if in.Properties == nil {
					in.Properties = map[string]string{}
				}
				in.Properties[pick("k", "K", "tier")] = pick("1", "2", "x")
			}
			d.Interfaces = append(d.Interfaces, in)
		}
		scope := []Scope{UserScope, SystemScope}[rng.IntN(2)]
		// A repeated interface or location is refused, and so nothing
		// changes.
		if err := r.Add(d, scope); err != nil && CodeOf(err) != ImplementationAlreadyExists && CodeOf(err) != ServiceAlreadyExists {
			t.Fatalf("add %d: %v", i, err)
		}
		if i%7 == 6 {
			r.Remove(pick(services...), scope)
		}
		check(r, 50)
	}
	check(r, 5000)
}

// Lookups build the index lazily while writes replace the state: under
// -race, neither may race the other.
func TestFindWhileChanging(t *testing.T) {
	r, _ := newReg(t)
	mustAdd(t, r, desc("Base", "base", "i.x 1.0 Cap k=v"), UserScope)
	var wg sync.WaitGroup
	for g := range 2 {
		wg.Go(func() {
			for i := range 50 {
				name := fmt.Sprintf("S%d-%d", g, i)
				if err := r.Add(desc(name, name, "i.x 2.0 Cap k=v"), UserScope); err != nil {
					t.Error(err)
					return
				}
				if i%2 == 0 {
					r.Remove(name, UserScope)
				}
			}
		})
	}
	for range 2 {
		wg.Go(func() {
			for range 200 {
				got, err := r.Find(Filter{Capabilities: []string{"Cap"}, Properties: map[string]string{"k": "v"}}, UserScope)
				if err != nil || len(got) == 0 || got[0].Service != "Base" {
					t.Errorf("find: %q %v", names(got), err)
					return
				}
				r.Default("i.x", UserScope)
			}
		})
	}
	wg.Wait()
	got, _ := r.Find(Filter{Interface: "I.X"}, UserScope)
	if len(got) != 51 {
		t.Fatalf("%d implementations, want 51", len(got))
	}
}

// foldKey(a) == foldKey(b) exactly when strings.EqualFold(a, b).
func TestFoldKey(t *testing.T) {
	for r := rune(0); r <= unicode.MaxRune; r++ {
		k := foldKey(string(r))
		if !strings.EqualFold(k, string(r)) {
			t.Fatalf("foldKey(%q) = %q, not equal ignoring case", r, k)
		}
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			if foldKey(string(f)) != k {
				t.Fatalf("foldKey(%q) = %q but foldKey(%q) = %q", r, k, f, foldKey(string(f)))
			}
		}
	}
	for _, c := range [][2]string{
		{"Org.Example", "oRG.eXAMPLE"}, {"ſervice", "SERVICE"}, {"\u212aey", "key"}, {"ς", "Σ"},
		{"\xff", "\ufffd"}, {"\xff", "\xfe"}, {"ab", "abc"}, {"", ""}, {"ı", "i"}, {"İ", "i"},
	} {
		if got, want := foldKey(c[0]) == foldKey(c[1]), strings.EqualFold(c[0], c[1]); got != want {
			t.Errorf("foldKey(%q) == foldKey(%q) is %v, EqualFold %v", c[0], c[1], got, want)
		}
	}
}

// benchRegistry registers what bench/tubebench's registryRows does:
// 1,000 services of 10 interfaces each (10,000 implementations), half of
// them in the system scope.
var benchRegistry = sync.OnceValues(func() (*Registry, error) {
	r, err := Open(Config{CanWriteSystem: func() bool { return true }})
	if err != nil {
		return nil, err
	}
	for s := range 1000 {
		d := &Descriptor{SFWVersion: "1.1", Name: fmt.Sprintf("Service%04d", s), IPCAddress: fmt.Sprintf("svc-%d", s)}
		for i := range 10 {
			d.Interfaces = append(d.Interfaces, Interface{
				Name:         fmt.Sprintf("org.example.Iface%03d", (s*7+i)%500),
				Version:      Version{Major: 1 + i%3, Minor: s % 10},
				Capabilities: []string{fmt.Sprintf("cap%d", i%4)},
				Properties:   map[string]string{"tier": fmt.Sprint(s % 5)},
			})
		}
		scope := UserScope
		if s%2 == 1 {
			scope = SystemScope
		}
		if err := r.Add(d, scope); err != nil {
			return nil, err
		}
	}
	return r, nil
})

func BenchmarkFind(b *testing.B) {
	r, err := benchRegistry()
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		f    func(i int) Filter
	}{
		{"interface+version", func(i int) Filter {
			return Filter{Interface: fmt.Sprintf("org.example.iface%03d", i%500), Version: "2.3"}
		}},
		{"capability+property", func(i int) Filter {
			return Filter{Capabilities: []string{"cap1"}, Properties: map[string]string{"tier": fmt.Sprint(i % 5)}}
		}},
		{"service", func(i int) Filter { return Filter{Service: fmt.Sprintf("service%04d", i%1000)} }},
		{"loadable", func(i int) Filter { return Filter{Capabilities: []string{"cap1", "cap2"}, Loadable: true} }},
		{"empty", func(i int) Filter { return Filter{} }},
	} {
		b.Run(c.name, func(b *testing.B) {
			i := 0
			for b.Loop() {
				if _, err := r.Find(c.f(i), UserScope); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}

func BenchmarkDefault(b *testing.B) {
	r, err := benchRegistry()
	if err != nil {
		b.Fatal(err)
	}
	i := 0
	for b.Loop() {
		if _, err := r.Default(fmt.Sprintf("org.example.Iface%03d", i%500), UserScope); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkAddRemove registers a service into, and removes it from, a
// registry of 10,000 implementations (in memory: no file to write).
func BenchmarkAddRemove(b *testing.B) {
	r, err := benchRegistry()
	if err != nil {
		b.Fatal(err)
	}
	d := &Descriptor{SFWVersion: "1.1", Name: "Extra", IPCAddress: "extra", Interfaces: []Interface{{Name: "org.example.Iface001", Version: Version{Major: 1}}}}
	for b.Loop() {
		if err := r.Add(d, UserScope); err != nil {
			b.Fatal(err)
		}
		if err := r.Remove("Extra", UserScope); err != nil {
			b.Fatal(err)
		}
	}
}
