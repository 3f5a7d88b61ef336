package limit

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
)

func tcp(s string) net.Addr { return net.TCPAddrFromAddrPort(netip.MustParseAddrPort(s)) }

func TestSource(t *testing.T) {
	for _, c := range []struct{ addr, want string }{
		{"192.0.2.7:1", "192.0.2.7/32"},
		{"[::ffff:192.0.2.7]:1", "192.0.2.7/32"},
		{"[2001:db8:1:2:3:4:5:6]:1", "2001:db8:1:2::/64"},
		{"[2001:db8:1:2:ffff::1]:9", "2001:db8:1:2::/64"},
	} {
		if got := SourceOf(tcp(c.addr)).String(); got != c.want {
			t.Errorf("source of %s is %s, want %s", c.addr, got, c.want)
		}
	}
}

// One source at its limit is refused alone; another source is served;
// a release makes room again; the total binds across sources.
func TestPerSource(t *testing.T) {
	p := NewPerSource(2, 3)
	a1, ok1 := p.Take(tcp("[2001:db8::1]:1"))
	_, ok2 := p.Take(tcp("[2001:db8::2]:1")) // same /64
	if !ok1 || !ok2 {
		t.Fatal("the first two of a source were refused")
	}
	if _, ok := p.Take(tcp("[2001:db8::ffff]:1")); ok {
		t.Fatal("a third from the same /64 was let in")
	}
	b, ok := p.Take(tcp("192.0.2.1:1"))
	if !ok {
		t.Fatal("another source was refused while the first was at its limit")
	}
	if _, ok := p.Take(tcp("192.0.2.2:1")); ok {
		t.Fatal("a fourth was let in over the total of 3")
	}
	a1()
	a1() // twice is harmless
	if p.Held() != 2 {
		t.Fatalf("held %d after one release, want 2", p.Held())
	}
	if _, ok := p.Take(tcp("[2001:db8::3]:1")); !ok {
		t.Fatal("refused after a release made room")
	}
	b()
	if p.Refused() != 2 {
		t.Fatalf("%d refusals counted, want 2", p.Refused())
	}
}

// At the total, a newcomer takes the place of the oldest holding of the
// source that holds most; a source that would then hold as much as the
// most is refused instead, and holdings that cannot be evicted stay.
func TestTakeOrEvicts(t *testing.T) {
	p := NewPerSource(3, 4)
	var evicted []string
	take := func(addr, name string, evictable bool) (func(), bool) {
		var ev func()
		if evictable {
			ev = func() { evicted = append(evicted, name) }
		}
		return p.TakeOr(tcp(addr), ev)
	}
	for i := range 3 {
		if _, ok := take("192.0.2.1:1", fmt.Sprint("a", i), true); !ok {
			t.Fatalf("a%d refused under the limits", i)
		}
	}
	if _, ok := take("192.0.2.2:1", "b0", false); !ok {
		t.Fatal("b0 refused under the limits")
	}
	if _, ok := take("192.0.2.3:1", "c0", true); !ok {
		t.Fatal("a newcomer refused at the total: it should take the place of a's oldest")
	}
	if len(evicted) != 1 || evicted[0] != "a0" {
		t.Fatalf("evicted %v, want [a0]", evicted)
	}
	if _, ok := take("192.0.2.3:1", "c1", true); ok {
		t.Fatal("c would hold as much as a: it should be refused, not evict")
	}
	if p.Held() != 4 || p.Evicted() != 1 || p.Refused() != 1 {
		t.Fatalf("held %d, evicted %d, refused %d", p.Held(), p.Evicted(), p.Refused())
	}
}
