package relay

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// PeerFilter decides which peer addresses a TURN allocation may reach
// (CreatePermission, ChannelBind, Connect) and accept connections from.
// By default it refuses every address that is not globally routable:
// loopback, unspecified, private (RFC 1918, fc00::/7), shared (RFC 6598),
// link-local (169.254/16 with the 169.254.169.254 metadata service,
// fe80::/10), site-local (fec0::/10), multicast and broadcast,
// documentation and benchmarking ranges (198.18.0.0/15), also when written
// as IPv4-mapped, IPv4-compatible or NAT64 IPv6 addresses; and the whole
// of 6to4 (2002::/16), Teredo (2001::/32) and IPv4-translated
// (::ffff:0:a.b.c.d) addresses. Operators widen it with Allow.
type PeerFilter struct {
	allow []netip.Prefix
	// self are the relay host's own addresses: a peer there would reach
	// services listening on every interface of the relay host (and the
	// relay itself), whatever firewall guards them from outside.
	self map[netip.Addr]bool
}

// DenySelf refuses the given addresses of the relay host too (unless an
// allowed prefix names them).
func (f *PeerFilter) DenySelf(addrs ...netip.Addr) {
	if f.self == nil {
		f.self = map[netip.Addr]bool{}
	}
	for _, a := range addrs {
		if a.IsValid() {
			f.self[normalize(a)] = true
		}
	}
}

// hostAddrs are the addresses of this host's interfaces.
func hostAddrs() []netip.Addr {
	var out []netip.Addr
	ifs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	for _, a := range ifs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			out = append(out, p.Addr())
		}
	}
	return out
}

// NewPeerFilter returns the default filter widened by the allowed
// prefixes (CIDR strings such as "127.0.0.0/8" or single addresses).
func NewPeerFilter(allow []string) (*PeerFilter, error) {
	f := &PeerFilter{}
	for _, a := range allow {
		a = strings.TrimSpace(a)
		p, err := netip.ParsePrefix(a)
		if err != nil {
			ip, err2 := netip.ParseAddr(a)
			if err2 != nil {
				return nil, fmt.Errorf("relay: --allow-peer %q is neither a CIDR prefix nor an address", a)
			}
			p = netip.PrefixFrom(ip, ip.BitLen())
		}
		f.allow = append(f.allow, unmapPrefix(p.Masked()))
	}
	return f, nil
}

func unmapPrefix(p netip.Prefix) netip.Prefix {
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p
}

var (
	nat64     = netip.MustParsePrefix("64:ff9b::/96")
	v4compat  = netip.MustParsePrefix("::/96")
	denyExtra = []netip.Prefix{
		netip.MustParsePrefix("0.0.0.0/8"),       // "this network"
		netip.MustParsePrefix("100.64.0.0/10"),   // shared address space (carrier NAT)
		netip.MustParsePrefix("192.0.0.0/24"),    // IETF protocol assignments
		netip.MustParsePrefix("240.0.0.0/4"),     // reserved, with 255.255.255.255
		netip.MustParsePrefix("64:ff9b:1::/48"),  // local-use NAT64
		netip.MustParsePrefix("100::/64"),        // discard-only
		netip.MustParsePrefix("2001:db8::/32"),   // documentation
		netip.MustParsePrefix("198.51.100.0/24"), // documentation (TEST-NET-2)
		netip.MustParsePrefix("203.0.113.0/24"),  // documentation (TEST-NET-3)
		netip.MustParsePrefix("192.0.2.0/24"),    // documentation (TEST-NET-1)
		netip.MustParsePrefix("198.18.0.0/15"),   // benchmarking (RFC 2544): labs, never the internet
		netip.MustParsePrefix("fec0::/10"),       // site-local (deprecated, RFC 3879; still routed inside sites)
		// Transition prefixes whose addresses embed an IPv4 address a
		// relay on an IPv6 path would reach through a gateway: refused
		// whole, whatever IPv4 address they embed (RFC 3056 6to4, RFC
		// 4380 Teredo, RFC 2765 IPv4-translated).
		netip.MustParsePrefix("2002::/16"),
		netip.MustParsePrefix("2001::/32"),
		netip.MustParsePrefix("::ffff:0:0:0/96"),
	}
)

// normalize returns the IPv4 address an IPv6 form stands for (mapped,
// compatible or NAT64), or the address itself; zones are dropped.
func normalize(ip netip.Addr) netip.Addr {
	ip = ip.WithZone("")
	if ip.Is4In6() {
		return ip.Unmap()
	}
	if ip.Is6() && (nat64.Contains(ip) || (v4compat.Contains(ip) && !ip.IsUnspecified() && !ip.IsLoopback())) {
		b := ip.As16()
		return netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]})
	}
	return ip
}

// Allowed reports whether ip may be a peer, and if not, why.
func (f *PeerFilter) Allowed(ip netip.Addr) (bool, string) {
	if !ip.IsValid() {
		return false, "not an IP address"
	}
	n := normalize(ip)
	for _, p := range f.allow {
		if p.Contains(n) || p.Contains(ip.WithZone("")) {
			return true, ""
		}
	}
	switch {
	case f.self[n]:
		return false, "an address of the relay host itself"
	case n.IsUnspecified():
		return false, "unspecified address"
	case n.IsLoopback():
		return false, "loopback address"
	case n.IsPrivate():
		return false, "private address"
	case n.IsLinkLocalUnicast():
		return false, "link-local address (metadata services live here)"
	case n.IsMulticast(), n.IsLinkLocalMulticast(), n.IsInterfaceLocalMulticast():
		return false, "multicast address"
	}
	for _, p := range denyExtra {
		if p.Contains(n) {
			return false, "reserved address " + p.String()
		}
	}
	return true, ""
}

// AllowedIP is Allowed for a net.IP.
func (f *PeerFilter) AllowedIP(ip net.IP) bool {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return false
	}
	allowed, _ := f.Allowed(a)
	return allowed
}
