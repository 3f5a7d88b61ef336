package tube

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/identity"
	"github.com/tubes-dev/tubes/relay"
	"github.com/tubes-dev/tubes/tperr"
	"github.com/tubes-dev/tubes/turnclient"
)

// sentMsg is one message a recording signaller was given.
type sentMsg struct {
	to, kind string
	body     []byte // the tube message in the signed envelope
}

// recordingSignaller records what is sent and knows bob's key.
type recordingSignaller struct {
	mu   sync.Mutex
	sent []sentMsg
	bob  string
	news chan struct{}
}

func (s *recordingSignaller) Send(_ context.Context, to, _, kind string, env []byte) ([]string, error) {
	var e signedMsg
	json.Unmarshal(env, &e)
	s.mu.Lock()
	s.sent = append(s.sent, sentMsg{to, kind, e.Body})
	s.mu.Unlock()
	select {
	case s.news <- struct{}{}:
	default:
	}
	return []string{to}, nil
}
func (s *recordingSignaller) Keys(context.Context, []string) (map[string]string, error) {
	return map[string]string{"bob": s.bob}, nil
}
func (*recordingSignaller) RoomMembers(context.Context, string) ([]string, error) { return nil, nil }
func (*recordingSignaller) RoomJoins(context.Context, string) (map[string]time.Time, error) {
	return nil, nil
}

// count says how many times kind was sent to to.
func (s *recordingSignaller) count(to, kind string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, m := range s.sent {
		if m.to == to && m.kind == kind {
			n++
		}
	}
	return n
}

// last is the last kind sent to to.
func (s *recordingSignaller) last(to, kind string) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := len(s.sent) - 1; i >= 0; i-- {
		if m := s.sent[i]; m.to == to && m.kind == kind {
			return m.body
		}
	}
	return nil
}

// waitSent waits until kind has been sent to to, n times in all.
func (s *recordingSignaller) waitSent(t *testing.T, to, kind string, n int) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		got := s.count(to, kind)
		if got >= n {
			return
		}
		select {
		case <-s.news:
		case <-deadline:
			t.Fatalf("%s sent to %s %d times, want %d", kind, to, got, n)
		}
	}
}

// A peer asking for a permission to dial a relayed address the
// offerer's allocation no longer has (it missed the offer with the new
// one) is refused at once and sent its offers again; one asking for the
// address there is is permitted, and sent nothing more.
func TestStaleRelayedAddressAsksAgain(t *testing.T) {
	ts, err := relay.Start(relay.Config{Listen: "127.0.0.1:0", Secret: "s", AllowPeers: []string{"127.0.0.0/8"}})
	if err != nil {
		t.Fatal(err)
	}
	defer ts.Close()
	alice, _ := identity.Generate()
	bob, _ := identity.Generate()
	sig := &recordingSignaller{bob: bob.Public().String(), news: make(chan struct{}, 1)}
	m, err := New(Config{Account: "alice", Key: alice, Signaller: sig, Emit: func(api.Event) {}, PeerListen: "127.0.0.1:0",
		TURN: func(context.Context) (turnclient.Config, error) {
			u, p := relay.RESTCredentials("s", "alice", time.Hour, time.Now())
			return turnclient.Config{Server: ts.Addr(), Username: u, Password: p}, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := m.Export("", api.Export{Service: "echo", TCP: "127.0.0.1:7"}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Offer(ctx, api.OfferRequest{Service: "echo", To: "bob", Path: "relay"}); err != nil {
		t.Fatal(err)
	}
	sig.waitSent(t, "bob", kindOffer, 1)
	m.mu.Lock()
	current := m.alloc.RelayedAddr().String()
	m.mu.Unlock()

	ask := func(relayed string) permittedMsg {
		t.Helper()
		n := sig.count("bob", kindPermitted)
		if err := m.onPermit("bob", "", mustJSON(permitMsg{ID: "p1", IP: "127.0.0.1", Relay: relayed})); err != nil {
			t.Fatal(err)
		}
		sig.waitSent(t, "bob", kindPermitted, n+1)
		p, err := decodePermitted(sig.last("bob", kindPermitted))
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	offers := sig.count("bob", kindOffer)
	if p := ask("127.0.0.1:1"); p.Error != tperr.NotAvailable {
		t.Fatalf("a permission for an old relayed address: %+v", p)
	}
	sig.waitSent(t, "bob", kindOffer, offers+1)
	o, err := decodeOffer(sig.last("bob", kindOffer))
	if err != nil || o.Relay == nil || o.Relay.Addr != current {
		t.Fatalf("the offer sent again: %+v %v, want the relayed address %s", o, err, current)
	}
	offers++
	if p := ask(current); p.Error != "" {
		t.Fatalf("a permission for the relayed address there is: %+v", p)
	}
	if p := ask(""); p.Error != "" { // an older peer's, which names none
		t.Fatalf("a permission naming no relayed address: %+v", p)
	}
	if n := sig.count("bob", kindOffer); n != offers {
		t.Fatalf("%d offers sent, want %d", n, offers)
	}
}
