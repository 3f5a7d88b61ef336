// Package limit counts what strangers hold: connections that have not yet
// proved who they are, by source. A source is an IPv4 address or an IPv6
// /64 (what one household or one virtual machine gets), so one attacker
// with many addresses of one prefix is still one source.
package limit

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
)

// Source is the key of an address: its /32 (IPv4, IPv4-mapped IPv6
// included) or its /64 (IPv6).
func Source(a netip.Addr) netip.Prefix {
	a = a.Unmap()
	bits := 64
	if a.Is4() {
		bits = 32
	}
	p, _ := a.Prefix(bits)
	return p
}

// SourceOf is Source of a network address; addresses without an IP
// (Unix sockets) are all one source.
func SourceOf(addr net.Addr) netip.Prefix {
	var ip net.IP
	switch a := addr.(type) {
	case *net.TCPAddr:
		ip = a.IP
	case *net.UDPAddr:
		ip = a.IP
	default:
		if ap, err := netip.ParseAddrPort(addr.String()); err == nil {
			return Source(ap.Addr())
		}
		return netip.Prefix{}
	}
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Prefix{}
	}
	return Source(a)
}

// PerSource bounds how many of something each source, and all sources
// together, hold at once. Its zero value is not usable: see NewPerSource.
type PerSource struct {
	per, total int

	mu    sync.Mutex
	held  map[netip.Prefix]int
	count int

	refused atomic.Uint64
}

// NewPerSource allows per for each source and total for all; a limit of
// 0 or less is no limit.
func NewPerSource(per, total int) *PerSource {
	return &PerSource{per: per, total: total, held: map[netip.Prefix]int{}}
}

// Take takes one for the source of addr. When the source, or everyone,
// is at the limit it returns false and counts a refusal; otherwise
// release gives it back (calling it more than once is harmless).
func (p *PerSource) Take(addr net.Addr) (release func(), ok bool) {
	src := SourceOf(addr)
	p.mu.Lock()
	if (p.per > 0 && p.held[src] >= p.per) || (p.total > 0 && p.count >= p.total) {
		p.mu.Unlock()
		p.refused.Add(1)
		return nil, false
	}
	p.held[src]++
	p.count++
	p.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			p.mu.Lock()
			if p.held[src]--; p.held[src] <= 0 {
				delete(p.held, src)
			}
			p.count--
			p.mu.Unlock()
		})
	}, true
}

// Held is how many are held now, by all sources.
func (p *PerSource) Held() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.count
}

// Refused counts the refusals so far.
func (p *PerSource) Refused() uint64 { return p.refused.Load() }
