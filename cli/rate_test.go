package cli

import (
	"errors"
	"strings"
	"testing"
)

func TestParseRate(t *testing.T) {
	for in, want := range map[string]int64{"": 0, "500": 500, "500k": 500e3, "20M": 20e6, "1G": 1e9} {
		if got, err := parseRate(in); err != nil || got != want {
			t.Errorf("parseRate(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"12x", "M", "-5M", "0", "1.5M", "99999999999999999G"} {
		if _, err := parseRate(bad); err == nil {
			t.Errorf("parseRate(%q) accepted", bad)
		}
	}
}

// Bad TURN flags of tube relay are usage errors (exit 2) naming the flag.
func TestRelayTURNFlagErrors(t *testing.T) {
	for _, o := range []relayOpts{
		{turnListen: "nonsense"},
		{turnListen: "127.0.0.1:0", allowPeers: []string{"10.0.0/33"}},
		{turnListen: "127.0.0.1:0", turnExternal: "x.y"},
		{turnListen: "127.0.0.1:0", turnUsers: []string{"nopassword"}},
		{turnListen: "127.0.0.1:0", turnBandwidth: "12x"},
		{turnListen: "127.0.0.1:0", turnMaxConns: -1},
	} {
		s, err := startTURN(o, nil, nil)
		if s != nil {
			s.Close()
		}
		var ue usageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), "--") && !strings.Contains(err.Error(), "USER:PASSWORD") {
			t.Errorf("%+v: %v, want a usage error naming the flag", o, err)
		}
	}
}
