package registry

import (
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// index holds a scope's implementations, as Find returns them and in
// result order (services in their order, each one's interfaces in
// theirs), and, for each criterion a filter can name, the positions in
// all of the implementations that meet it, in the same order. Find
// intersects the lists a filter names rather than check all 10,000
// implementations of a large registry, and copies its results out of
// all; matcher.matchRest checks what the lists do not say.
type index struct {
	all       []Implementation
	byService map[string][]int32            // foldKey of the service name
	byIface   map[string][]int32            // foldKey of the interface name
	byCap     map[string][]int32            // capability; case matters
	noCaps    []int32                       // implementations that need no capability
	byProp    map[string]map[string][]int32 // custom property key, then value
}

// index returns st's index, built on first use; scope is st's.
// Registry.mu guards it: a state is otherwise never changed once current.
func (st *state) index(scope Scope) *index {
	if st.idx != nil {
		return st.idx
	}
	ix := &index{
		byService: map[string][]int32{},
		byIface:   map[string][]int32{},
		byCap:     map[string][]int32{},
		byProp:    map[string]map[string][]int32{},
	}
	for _, d := range st.Services {
		service := foldKey(d.Name)
		for _, in := range d.Interfaces {
			p := int32(len(ix.all))
			ix.all = append(ix.all, implOf(d, in, scope))
			ix.byService[service] = append(ix.byService[service], p)
			iface := foldKey(in.Name)
			ix.byIface[iface] = append(ix.byIface[iface], p)
			if len(in.Capabilities) == 0 {
				ix.noCaps = append(ix.noCaps, p)
			}
			for j, c := range in.Capabilities {
				if !slices.Contains(in.Capabilities[:j], c) {
					ix.byCap[c] = append(ix.byCap[c], p)
				}
			}
			for k, v := range in.Properties {
				values := ix.byProp[k]
				if values == nil {
					values = map[string][]int32{}
					ix.byProp[k] = values
				}
				values[v] = append(values[v], p)
			}
		}
	}
	st.idx = ix
	return ix
}

// candidates returns, in order, the positions in ix.all of the
// implementations that meet every indexed criterion of f: the service
// and interface names, MatchMinimum capabilities, MatchLoadable with no
// capability, and custom properties; matcher.matchRest checks the
// others. It returns false when f names no indexed criterion (the empty
// filter, MatchLoadable with capabilities): then all are candidates.
// The list returned is one of the index's, read only, or the
// intersection of several, made in *buf (which it may grow).
func (ix *index) candidates(f Filter, buf *[]int32) ([]int32, bool) {
	var lists [][]int32
	if f.Service != "" {
		lists = append(lists, ix.byService[foldKey(f.Service)])
	}
	if f.Interface != "" {
		lists = append(lists, ix.byIface[foldKey(f.Interface)])
	}
	if !f.Loadable {
		for _, c := range f.Capabilities {
			lists = append(lists, ix.byCap[c])
		}
	} else if len(f.Capabilities) == 0 {
		lists = append(lists, ix.noCaps)
	}
	for k, v := range f.Properties {
		lists = append(lists, ix.byProp[k][v])
	}
	switch len(lists) {
	case 0:
		return nil, false
	case 1:
		return lists[0], true
	}
	// Intersect, shortest list first.
	slices.SortFunc(lists, func(a, b []int32) int { return len(a) - len(b) })
	if len(lists[0]) == 0 {
		return nil, true
	}
	ps := append((*buf)[:0], lists[0]...)
	*buf = ps
	for _, l := range lists[1:] {
		ps = intersect(ps, l)
	}
	return ps, true
}

// intersect keeps the positions of a that b holds too, in place; both
// are in ascending order.
func intersect(a, b []int32) []int32 {
	n, j := 0, 0
	for _, p := range a {
		for j < len(b) && b[j] < p {
			j++
		}
		if j == len(b) {
			break
		}
		if b[j] == p {
			a[n] = p
			n++
		}
	}
	return a[:n]
}

// foldKey maps s to a key two strings share exactly when strings.EqualFold
// holds for them: each rune becomes the least rune of its case-folding
// orbit (unicode.SimpleFold), an ASCII letter its lower case.
// strings.ToLower would not do: "ſ" (U+017F) is EqualFold to "s" but its
// own lower case.
func foldKey(s string) string {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			var b strings.Builder
			b.Grow(len(s))
			for _, r := range s {
				b.WriteRune(foldRune(r))
			}
			return b.String()
		}
	}
	return strings.ToLower(s)
}

func foldRune(r rune) rune {
	least := r
	for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
		least = min(least, f)
	}
	if 'A' <= least && least <= 'Z' {
		least += 'a' - 'A'
	}
	return least
}

// FoldName is the form in which names that differ only in case are one:
// two service names are the same service when their FoldName is.
func FoldName(s string) string { return foldKey(s) }
