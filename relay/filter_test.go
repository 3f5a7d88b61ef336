package relay_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/tubes-dev/tubes/relay"
)

func TestPeerFilterDefault(t *testing.T) {
	f, err := relay.NewPeerFilter(nil)
	if err != nil {
		t.Fatal(err)
	}
	refused := []string{
		"127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
		"::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::7f00:1", "fe80::1", "fe80::1%lo",
		"fc00::1", "0.0.0.0", "::", "224.0.0.1", "ff02::1", "100.64.0.1", "255.255.255.255",
		"::ffff:169.254.169.254", "::127.0.0.1", "::ffff:0.0.0.0",
		"198.18.0.1", "198.19.255.254", "fec0::1", "feff::1", "2002:0808:0808::1", "2002:7f00:1::1",
		"2001:0:4136:e378:8000:63bf:3fff:fdd2", "::ffff:0:7f00:1", "::ffff:0:808:808",
	}
	for _, s := range refused {
		if ok, why := f.Allowed(netip.MustParseAddr(s)); ok {
			t.Errorf("%s allowed by default", s)
		} else if why == "" {
			t.Errorf("%s refused without a reason", s)
		}
	}
	for _, s := range []string{"198.20.0.1", "8.8.8.8", "2001:4860::1", "2001:1::1", "::ffff:8.8.8.8", "64:ff9b::808:808"} {
		if ok, why := f.Allowed(netip.MustParseAddr(s)); !ok {
			t.Errorf("%s refused by default: %s", s, why)
		}
	}
	if ok, _ := f.Allowed(netip.Addr{}); ok {
		t.Error("the zero Addr allowed")
	}
}

func TestPeerFilterAllow(t *testing.T) {
	f, err := relay.NewPeerFilter([]string{"127.0.0.0/8"})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"127.0.0.1", "127.1.2.3", "::ffff:127.0.0.1", "64:ff9b::7f00:1"} {
		if ok, why := f.Allowed(netip.MustParseAddr(s)); !ok {
			t.Errorf("%s refused with 127.0.0.0/8 allowed: %s", s, why)
		}
	}
	for _, s := range []string{"10.0.0.1", "::ffff:10.0.0.1", "::1", "169.254.169.254", "0.0.0.0"} {
		if ok, _ := f.Allowed(netip.MustParseAddr(s)); ok {
			t.Errorf("%s allowed with only 127.0.0.0/8 allowed", s)
		}
	}

	// Mapped prefixes and single addresses are accepted too.
	f, err = relay.NewPeerFilter([]string{"::ffff:10.0.0.0/104", " 192.168.1.7 ", "::1"})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"10.9.8.7", "::ffff:10.9.8.7", "192.168.1.7", "::1"} {
		if ok, why := f.Allowed(netip.MustParseAddr(s)); !ok {
			t.Errorf("%s refused: %s", s, why)
		}
	}
	for _, s := range []string{"172.16.0.1", "192.168.1.8", "127.0.0.1"} {
		if ok, _ := f.Allowed(netip.MustParseAddr(s)); ok {
			t.Errorf("%s allowed", s)
		}
	}

	for _, bad := range []string{"", "127.0.0.0/33", "localhost", "10.0.0.0/8,"} {
		if _, err := relay.NewPeerFilter([]string{bad}); err == nil {
			t.Errorf("--allow-peer %q accepted", bad)
		}
	}
}

// The relay host's own addresses are refused (a peer there would reach
// the host's services from inside), unless an operator allows them.
func TestFilterDeniesSelf(t *testing.T) {
	f, _ := relay.NewPeerFilter(nil)
	f.DenySelf(netip.MustParseAddr("9.9.9.9"))
	for _, s := range []string{"9.9.9.9", "::ffff:9.9.9.9"} {
		if ok, why := f.Allowed(netip.MustParseAddr(s)); ok || !strings.Contains(why, "relay host") {
			t.Errorf("%s: allowed=%v (%s)", s, ok, why)
		}
	}
	if ok, _ := f.Allowed(netip.MustParseAddr("9.9.9.10")); !ok {
		t.Error("another public address refused")
	}
	g, _ := relay.NewPeerFilter([]string{"9.9.9.9/32"})
	g.DenySelf(netip.MustParseAddr("9.9.9.9"))
	if ok, _ := g.Allowed(netip.MustParseAddr("9.9.9.9")); !ok {
		t.Error("--allow-peer does not override the self rule")
	}
}
