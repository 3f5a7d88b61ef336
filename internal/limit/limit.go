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
	held  map[netip.Prefix][]*holding // oldest first
	count int

	refused atomic.Uint64
	evicted atomic.Uint64
}

// holding is one thing a source holds; evict, when set, takes it away
// (closes the connection).
type holding struct {
	src   netip.Prefix
	evict func()
	gone  bool // released or evicted: counted no more
}

// NewPerSource allows per for each source and total for all; a limit of
// 0 or less is no limit.
func NewPerSource(per, total int) *PerSource {
	return &PerSource{per: per, total: total, held: map[netip.Prefix][]*holding{}}
}

// Take takes one for the source of addr. When the source, or everyone,
// is at the limit it returns false and counts a refusal; otherwise
// release gives it back (calling it more than once is harmless).
func (p *PerSource) Take(addr net.Addr) (release func(), ok bool) {
	return p.TakeOr(addr, nil)
}

// TakeOr is Take for something that can be taken away again: evict
// (called at most once, without locks held) closes it. When everyone
// together is at the limit, a source holding fewer than the source that
// holds most is not refused: that source's oldest evictable one is
// evicted for it. So sources at their own limit cannot fill the total
// and shut out a newcomer.
func (p *PerSource) TakeOr(addr net.Addr, evict func()) (release func(), ok bool) {
	src := SourceOf(addr)
	p.mu.Lock()
	if p.per > 0 && len(p.held[src]) >= p.per {
		p.mu.Unlock()
		p.refused.Add(1)
		return nil, false
	}
	var victim *holding
	if p.total > 0 && p.count >= p.total {
		victim = p.victimLocked(src)
		if victim == nil {
			p.mu.Unlock()
			p.refused.Add(1)
			return nil, false
		}
		p.dropLocked(victim)
	}
	h := &holding{src: src, evict: evict}
	p.held[src] = append(p.held[src], h)
	p.count++
	p.mu.Unlock()
	if victim != nil {
		p.evicted.Add(1)
		victim.evict()
	}
	return func() {
		p.mu.Lock()
		p.dropLocked(h)
		p.mu.Unlock()
	}, true
}

// victimLocked is the oldest evictable holding of the source that holds
// the most, if that is more than src would hold with one more.
func (p *PerSource) victimLocked(src netip.Prefix) *holding {
	var victim *holding
	most := len(p.held[src]) + 1
	for s, hs := range p.held {
		if len(hs) <= most || s == src {
			continue
		}
		for _, h := range hs {
			if h.evict != nil {
				victim, most = h, len(hs)
				break
			}
		}
	}
	return victim
}

// dropLocked stops counting h (once).
func (p *PerSource) dropLocked(h *holding) {
	if h.gone {
		return
	}
	h.gone = true
	hs := p.held[h.src]
	for i, x := range hs {
		if x == h {
			hs = append(hs[:i], hs[i+1:]...)
			break
		}
	}
	if len(hs) == 0 {
		delete(p.held, h.src)
	} else {
		p.held[h.src] = hs
	}
	p.count--
}

// Evicted counts the holdings taken away for newcomers so far.
func (p *PerSource) Evicted() uint64 { return p.evicted.Load() }

// Held is how many are held now, by all sources.
func (p *PerSource) Held() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.count
}

// Refused counts the refusals so far.
func (p *PerSource) Refused() uint64 { return p.refused.Load() }
