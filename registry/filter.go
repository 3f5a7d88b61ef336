package registry

import (
	"fmt"
	"strings"
)

// Filter selects interface implementations, as Qt's QServiceFilter does.
// Every criterion set must hold; the empty filter matches everything.
type Filter struct {
	// Service and Interface names match exactly, ignoring case.
	Service   string `json:"service,omitempty"`
	Interface string `json:"interface,omitempty"`
	// Version ("M.m") is checked only with an Interface: at least that
	// version (same major, minor at least; or a higher major), or exactly
	// it with Exact.
	Version string `json:"version,omitempty"`
	Exact   bool   `json:"exact,omitempty"`
	// Capabilities: by default the interface must have all of them
	// (MatchMinimum); with Loadable, the interface may need only these
	// (MatchLoadable: an empty list then finds only implementations that
	// need none).
	Capabilities []string `json:"capabilities,omitempty"`
	Loadable     bool     `json:"loadable,omitempty"`
	// Properties must all be present with equal values (case matters).
	Properties map[string]string `json:"properties,omitempty"`
}

// matcher is a checked filter.
type matcher struct {
	f       Filter
	version *Version
}

// compile checks the filter; an invalid version is an error (Qt ignores
// it silently).
func (f Filter) compile() (*matcher, error) {
	m := &matcher{f: f}
	if f.Version != "" {
		v, err := ParseVersion(f.Version)
		if err != nil {
			return nil, &Error{Code: InvalidFilter, Msg: fmt.Sprintf("filter version %q is not major.minor", clip(f.Version))}
		}
		m.version = &v
	}
	return m, nil
}

func (m *matcher) match(service string, in Interface) bool {
	f := m.f
	if f.Service != "" && !strings.EqualFold(f.Service, service) {
		return false
	}
	if f.Interface != "" && !strings.EqualFold(f.Interface, in.Name) {
		return false
	}
	if !f.Loadable && !subset(f.Capabilities, in.Capabilities) {
		return false
	}
	for k, v := range f.Properties {
		if got, ok := in.Properties[k]; !ok || got != v {
			return false
		}
	}
	return m.matchRest(in.Version, in.Capabilities)
}

// matchRest checks the criteria a registry's index leaves to the filter
// (see index.candidates): the version, and MatchLoadable capabilities.
func (m *matcher) matchRest(version Version, caps []string) bool {
	f := m.f
	if v := m.version; v != nil && f.Interface != "" {
		if f.Exact {
			if version != *v {
				return false
			}
		} else if version.Less(*v) {
			return false
		}
	}
	return !f.Loadable || subset(caps, f.Capabilities)
}

// matchesAll reports whether the filter matches every implementation:
// it names no criterion (a version counts only with an interface).
func (m *matcher) matchesAll() bool {
	f := m.f
	return f.Service == "" && f.Interface == "" && len(f.Capabilities) == 0 && !f.Loadable && len(f.Properties) == 0
}

// subset reports whether every element of a is in b.
func subset(a, b []string) bool {
	for _, x := range a {
		found := false
		for _, y := range b {
			if x == y {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// Select applies f to descriptors that are not in a registry (a contact's
// published services), in their order, reporting scope on each result.
func Select(f Filter, ds []*Descriptor, scope Scope) ([]Implementation, error) {
	m, err := f.compile()
	if err != nil {
		return nil, err
	}
	var out []Implementation
	for _, d := range ds {
		for _, in := range d.Interfaces {
			if m.match(d.Name, in) {
				out = append(out, implOf(d, in, scope))
			}
		}
	}
	return out, nil
}
