package rendezvous

import "testing"

// A relay listening beyond loopback without TLS must say so loudly.
func TestUnencryptedWarningDecision(t *testing.T) {
	for host, want := range map[string]bool{
		"127.0.0.1": false, "::1": false, "localhost": false,
		"0.0.0.0": true, "192.0.2.10": true, "::": true, "relay.example": true,
	} {
		if got := !isLoopback(host); got != want {
			t.Errorf("%s: warn=%v, want %v", host, got, want)
		}
	}
}
