package tube

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/identity"
)

// sentOffers is a Signaller that keeps the offers it is given.
type sentOffers struct {
	mu     sync.Mutex
	offers []offerMsg
}

func (s *sentOffers) Send(_ context.Context, to, room, kind string, body []byte) ([]string, error) {
	var env signedMsg
	var o offerMsg
	if err := json.Unmarshal(body, &env); err != nil {
		return nil, err
	}
	if err := json.Unmarshal(env.Body, &o); err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.offers = append(s.offers, o)
	s.mu.Unlock()
	return []string{to}, nil
}
func (*sentOffers) Keys(context.Context, []string) (map[string]string, error)       { return nil, nil }
func (*sentOffers) RoomMembers(context.Context, string) ([]string, error)           { return nil, nil }
func (*sentOffers) RoomJoins(context.Context, string) (map[string]time.Time, error) { return nil, nil }

// An offer re-sent while the relay allocation is being replaced (reallocate
// after the TURN server dropped it) reads the tube's relay under the
// manager's lock: run under -race, this test failed when sendOffer read
// t.relay bare. Each offer carries one whole allocation, old or new.
func TestOfferWhileReallocating(t *testing.T) {
	key, err := identity.Generate()
	if err != nil {
		t.Fatal(err)
	}
	sig := &sentOffers{}
	m, err := New(Config{Account: "alice", Key: key, Signaller: sig, Emit: func(api.Event) {}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	old := &relayInfo{Addr: "198.18.0.1:50000", Server: "198.18.0.1:3478"}
	renewed := &relayInfo{Addr: "198.18.0.1:50001", Server: "198.18.0.1:3478"}
	tb := &tube{id: newID(), service: "echo", peer: "bob", outgoing: true, relay: old}
	var wg sync.WaitGroup
	wg.Go(func() {
		for range 100 {
			m.mu.Lock()
			to := m.setRelay(tb, renewed)
			m.mu.Unlock()
			if len(to) != 1 || to[0] != "bob" {
				t.Errorf("setRelay offers to %q, want bob", to)
				return
			}
		}
	})
	wg.Go(func() {
		for range 100 {
			if err := m.sendOffer(context.Background(), tb, "bob", key.Public(), ""); err != nil {
				t.Error(err)
				return
			}
		}
	})
	wg.Wait()
	if len(sig.offers) != 100 {
		t.Fatalf("%d offers sent, want 100", len(sig.offers))
	}
	for _, o := range sig.offers {
		if o.Relay == nil || (*o.Relay != *old && *o.Relay != *renewed) {
			t.Fatalf("an offer carried relay %+v, want the old or the new allocation", o.Relay)
		}
	}
}
