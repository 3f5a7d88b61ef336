package main

import (
	"fmt"
	"slices"
	"time"

	"github.com/tubes-dev/tubes/registry"
)

// registryRows measures filter lookups over 10,000 registered interface
// implementations (1,000 services of 10 interfaces each, half in the
// system scope), the way `tube services find` and default lookups run.
func (b *bench) registryRows() error {
	r, err := registry.Open(registry.Config{CanWriteSystem: func() bool { return true }})
	if err != nil {
		return err
	}
	for s := range 1000 {
		d := &registry.Descriptor{SFWVersion: "1.1", Name: fmt.Sprintf("Service%04d", s), IPCAddress: fmt.Sprintf("svc-%d", s)}
		for i := range 10 {
			d.Interfaces = append(d.Interfaces, registry.Interface{
				Name:         fmt.Sprintf("org.example.Iface%03d", (s*7+i)%500),
				Version:      registry.Version{Major: 1 + i%3, Minor: s % 10},
				Capabilities: []string{fmt.Sprintf("cap%d", i%4)},
				Properties:   map[string]string{"tier": fmt.Sprint(s % 5)},
			})
		}
		scope := registry.UserScope
		if s%2 == 1 {
			scope = registry.SystemScope
		}
		if err := r.Add(d, scope); err != nil {
			return err
		}
	}
	measure := func(f func(i int) error) (time.Duration, time.Duration, error) {
		n := max(*tries, 200)
		ds := make([]time.Duration, n)
		for i := range n {
			t0 := time.Now()
			if err := f(i); err != nil {
				return 0, 0, err
			}
			ds[i] = time.Since(t0)
		}
		slices.Sort(ds)
		return ds[n/2], ds[n*99/100], nil
	}
	b.rows = append(b.rows, "", "| service registry, 10,000 interface implementations | p50 | p99 |", "| --- | --- | --- |")
	for _, c := range []struct {
		name string
		f    func(i int) error
	}{
		{"find by interface and minimum version (user + system scope)", func(i int) error {
			_, err := r.Find(registry.Filter{Interface: fmt.Sprintf("org.example.iface%03d", i%500), Version: "2.3"}, registry.UserScope)
			return err
		}},
		{"find by capability and property (MatchMinimum)", func(i int) error {
			_, err := r.Find(registry.Filter{Capabilities: []string{"cap1"}, Properties: map[string]string{"tier": fmt.Sprint(i % 5)}}, registry.UserScope)
			return err
		}},
		{"default implementation of an interface", func(i int) error {
			_, err := r.Default(fmt.Sprintf("org.example.Iface%03d", i%500), registry.UserScope)
			return err
		}},
	} {
		p50, p99, err := measure(c.f)
		if err != nil {
			return fmt.Errorf("registry %s: %w", c.name, err)
		}
		b.rows = append(b.rows, fmt.Sprintf("| %s | %s | %s |", c.name, ms(p50), ms(p99)))
	}
	return nil
}
