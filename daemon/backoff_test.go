package daemon

import (
	"testing"
	"time"
)

// The reconnection back-off in an outage: jittered waits (each in the
// upper half of its back-off), at most EarlyBackoff for the first
// EarlyOutage, then growing to MaxBackoff; a success starts it over.
func TestReconnectBackoff(t *testing.T) {
	cfg := Config{MinBackoff: 500 * time.Millisecond, MaxBackoff: 30 * time.Second,
		EarlyBackoff: DefaultEarlyBackoff, EarlyOutage: DefaultEarlyOutage}
	b := reconnectBackoff{cfg: &cfg}
	b.reset()
	now := time.Unix(1e9, 0)
	start := now
	var early, late time.Duration
	prev := time.Duration(0)
	for now.Sub(start) < 10*time.Minute {
		w := b.next(now)
		if w <= 0 {
			t.Fatalf("a wait of %s", w)
		}
		if now.Sub(start) < cfg.EarlyOutage {
			early = max(early, w)
		} else {
			late = max(late, w)
		}
		prev = w
		now = now.Add(w)
	}
	if early > cfg.EarlyBackoff {
		t.Errorf("waited %s in the outage's first %s, over the cap of %s", early, cfg.EarlyOutage, cfg.EarlyBackoff)
	}
	if early < cfg.EarlyBackoff/2 {
		t.Errorf("the longest early wait is %s: the back-off never grew to the cap", early)
	}
	if late > cfg.MaxBackoff || late <= cfg.EarlyBackoff {
		t.Errorf("the longest late wait is %s; want over %s, at most %s", late, cfg.EarlyBackoff, cfg.MaxBackoff)
	}
	// Jitter: waits at the cap differ.
	seen := map[time.Duration]bool{}
	for range 20 {
		seen[b.next(now)] = true
	}
	if len(seen) < 2 {
		t.Errorf("20 waits at the cap were all %v: no jitter", prev)
	}
	b.reset()
	if w := b.next(now); w > cfg.MinBackoff {
		t.Errorf("the first wait after a success is %s, over MinBackoff", w)
	}
}
