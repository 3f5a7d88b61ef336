package cli

import "testing"

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
