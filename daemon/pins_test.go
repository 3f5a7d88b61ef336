package daemon_test

import (
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/identity"
	"github.com/tubes-dev/tubes/internal/node"
	"github.com/tubes-dev/tubes/internal/tubetest"
	"github.com/tubes-dev/tubes/rendezvous"
	"github.com/tubes-dev/tubes/tperr"
)

// swapKey rewrites an account's record in the relay's state with the
// relay's own service credentials, as a dishonest operator would, and
// returns the key it put there.
func swapKey(t *testing.T, dataDir, name string) identity.PublicKey {
	t.Helper()
	evil, err := identity.Generate()
	if err != nil {
		t.Fatal(err)
	}
	rec, _ := json.Marshal(map[string]any{"name": name, "key": evil.Public().String(), "created": time.Now().UTC()})
	if _, err := tubetest.RelayState(t, dataDir).Put(ctx, "acct."+name, rec); err != nil {
		t.Fatal(err)
	}
	return evil.Public()
}

// Keys are pinned on first sight (existing contacts when the account
// connects); a relay operator who swaps a contact's key is refused
// (nothing offered, sealed or linked to it), the change is an event and
// a status line, and only verifying the new key's safety number trusts
// it. A mismatch is Cert.FingerprintMismatch.
func TestPinnedKeys(t *testing.T) {
	dir := t.TempDir()
	relay := tubetest.Relay(t, rendezvous.Config{DataDir: dir})
	alice, bob := tubetest.StartDaemon(t, ""), tubetest.StartDaemon(t, "")
	alice.Register(t, "alice", relay)
	b := bob.Register(t, "bob", relay)
	tubetest.Befriend(t, alice, "alice", bob, "bob")

	// Connecting pins the existing contact, unverified.
	if _, err := alice.C.Disconnect(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	if a, err := alice.C.ConnectWait(ctx, "alice"); err != nil || a.Status != "Connected" {
		t.Fatalf("reconnect: %+v %v", a, err)
	}
	c, err := alice.C.Contact(ctx, "alice", "bob")
	if err != nil || c.Pinned == nil || c.Pinned.Verified || c.Pinned.SafetyNumber != b.SafetyNumber || c.Pinned.Key != b.Key {
		t.Fatalf("bob as alice sees him after connecting: %+v %v; want his key pinned, unverified", c, err)
	}
	if _, err := alice.C.VerifyContact(ctx, "alice", "bob", "12345 12345 12345 12345 12345 12345 12345 12345"); !tperr.Has(err, tperr.CertFingerprintMismatch) {
		t.Fatalf("verifying a wrong number: %v, want Cert.FingerprintMismatch", err)
	}
	if c, err := alice.C.VerifyContact(ctx, "alice", "bob", strings.ReplaceAll(b.SafetyNumber, " ", "")); err != nil || !c.Pinned.Verified {
		t.Fatalf("verifying bob's number: %+v %v", c, err)
	}

	// The operator swaps bob's key.
	ev := tubetest.Record(t, alice.C, "alice")
	evil := swapKey(t, dir, "bob")
	// A write of the service's own waits until its view has the swap.
	if _, err := alice.C.CreateRoom(ctx, "alice", "sync"); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.C.Export(ctx, "alice", api.Export{Service: "echo", TCP: "127.0.0.1:1",
		Parameters: map[string]api.Value{"password": {Type: api.TypeString, Value: "s3cret"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.C.Offer(ctx, "alice", api.OfferRequest{Service: "echo", To: "bob"}); !tperr.Has(err, tperr.CertUntrusted) || !strings.Contains(err.Error(), "tube contact verify bob") {
		t.Fatalf("offering to bob with his key swapped: %v, want Cert.Untrusted saying how to verify", err)
	}
	kc := ev.MustWait("ContactKeyChanged", func(e api.Event) bool { return e.Type == api.EventContactKeyChanged })
	if kc.Contact != "bob" || kc.OldFingerprint != b.SafetyNumber || kc.NewFingerprint != evil.SafetyNumber() {
		t.Fatalf("key change event %+v", kc)
	}
	st, err := alice.C.Status(ctx)
	if err != nil || len(st.KeyChanges) != 1 || st.KeyChanges[0].Contact != "bob" || st.KeyChanges[0].ChangedTo != evil.SafetyNumber() {
		t.Fatalf("status key changes: %+v %v", st.KeyChanges, err)
	}
	if c, _ := alice.C.Contact(ctx, "alice", "bob"); c.Pinned == nil || c.Pinned.Key != b.Key || c.Pinned.ChangedTo != evil.SafetyNumber() {
		t.Fatalf("bob after the swap: %+v; want the old key pinned and the change shown", c.Pinned)
	}
	// Verifying the old number keeps the old key and dismisses the change
	// (the relay may have gone back); while the relay still gives the new
	// key it is refused again, and only its number, verified, trusts it.
	if c, err := alice.C.VerifyContact(ctx, "alice", "bob", b.SafetyNumber); err != nil || c.Pinned.Key != b.Key || c.Pinned.ChangedTo != "" {
		t.Fatalf("verifying the old number while a change waits: %+v %v; want the old key kept, the change dismissed", c.Pinned, err)
	}
	if _, err := alice.C.Offer(ctx, "alice", api.OfferRequest{Service: "echo", To: "bob"}); !tperr.Has(err, tperr.CertUntrusted) {
		t.Fatalf("offering after dismissing the change, the relay still lying: %v, want Cert.Untrusted", err)
	}
	if _, err := alice.C.VerifyContact(ctx, "alice", "bob", "12345 12345 12345 12345 12345 12345 12345 12345"); !tperr.Has(err, tperr.CertFingerprintMismatch) {
		t.Fatalf("verifying a wrong number while a change waits: %v, want Cert.FingerprintMismatch", err)
	}
	if c, err := alice.C.VerifyContact(ctx, "alice", "bob", evil.SafetyNumber()); err != nil || c.Pinned.Key != evil.String() || !c.Pinned.Verified {
		t.Fatalf("verifying the new key: %+v %v", c, err)
	}
	if st, _ := alice.C.Status(ctx); len(st.KeyChanges) != 0 {
		t.Fatalf("key changes after verifying: %+v", st.KeyChanges)
	}
}

// The relay side (anyone with the relay's credentials) injecting a tube
// offer "from alice" into bob's inbox, unsigned or signed with another
// key, gets nothing: bob's daemon drops it and counts it; alice's real
// offers still arrive.
func TestForgedOfferDropped(t *testing.T) {
	dir := t.TempDir()
	relay := tubetest.Relay(t, rendezvous.Config{DataDir: dir})
	reg := prometheus.NewRegistry()
	alice := tubetest.StartDaemon(t, "")
	bob := tubetest.StartDaemonConfig(t, node.DaemonConfig{Registerer: reg})
	alice.Register(t, "alice", relay)
	bob.Register(t, "bob", relay)
	tubetest.Befriend(t, alice, "alice", bob, "bob")
	bobEv := tubetest.Record(t, bob.C, "bob")

	nc := tubetest.RelayConn(t, dir)
	evil, _ := identity.Generate()
	offer := []byte(`{"id":"FORGEDFORGEDFORG","service":"vnc","addrs":["127.0.0.1:1"]}`)
	sig := evil.Sign(append([]byte("tubes-signed-message-v1\x00tube.offer\x00alice\x00bob\x00\x00"), offer...))
	for _, body := range [][]byte{
		offer, // unsigned, as before signing
		[]byte(`{"body":` + string(offer) + `,"sig":"` + base64.StdEncoding.EncodeToString(sig) + `"}`), // signed by another key
	} {
		m, _ := json.Marshal(rendezvous.Message{From: "alice", Kind: "tube.offer", Body: body})
		if err := nc.Publish("tube.inbox.bob.msg", m); err != nil {
			t.Fatal(err)
		}
	}
	// A catalog entry "from alice", unsigned.
	m, _ := json.Marshal(rendezvous.Message{From: "alice", Kind: "svc.published", Body: []byte(`{"service":{"name":"Phish"}}`)})
	nc.Publish("tube.inbox.bob.msg", m)
	nc.Flush()

	// alice's real offer comes after all three on bob's inbox; the relay
	// keeps a copy of it.
	captured := make(chan *nats.Msg, 16)
	sub, err := nc.ChanSubscribe("tube.inbox.bob.msg", captured)
	if err != nil {
		t.Fatal(err)
	}
	nc.Flush()
	if _, err := alice.C.Export(ctx, "alice", api.Export{Service: "vnc", TCP: "127.0.0.1:1"}); err != nil {
		t.Fatal(err)
	}
	real, err := alice.C.Offer(ctx, "alice", api.OfferRequest{Service: "vnc", To: "bob"})
	if err != nil {
		t.Fatal(err)
	}
	bobEv.MustWait("alice's real offer", func(e api.Event) bool { return e.Type == api.EventNewTube && e.TubeID == real.ID })
	if _, ok := bobEv.Wait(func(e api.Event) bool { return e.Type == api.EventNewTube && e.TubeID == "FORGEDFORGEDFORG" }, 0); ok {
		t.Fatal("bob's daemon took the forged offer")
	}
	if got := counterValue(t, reg, "tubes_daemon_forged_messages_total"); got != 3 {
		t.Fatalf("forged messages counted: %v, want 3", got)
	}
	// The relay plays the offer again after the tube closed: dropped.
	// (Its copy comes on a connection of its own, maybe after bob's.)
	var offerMsg *nats.Msg
	for offerMsg == nil {
		select {
		case m := <-captured:
			if strings.Contains(string(m.Data), `"kind":"tube.offer"`) {
				offerMsg = m
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the relay saw no offer to copy")
		}
	}
	sub.Unsubscribe()
	if err := alice.C.CloseTube(ctx, real.ID); err != nil {
		t.Fatal(err)
	}
	bobEv.MustWait("the tube closes at bob", func(e api.Event) bool { return e.Type == api.EventTubeClosed && e.TubeID == real.ID })
	nc.Publish("tube.inbox.bob.msg", offerMsg.Data)
	nc.Flush()
	next, err := alice.C.Offer(ctx, "alice", api.OfferRequest{Service: "vnc", To: "bob"})
	if err != nil {
		t.Fatal(err)
	}
	bobEv.MustWait("alice's next offer", func(e api.Event) bool { return e.Type == api.EventNewTube && e.TubeID == next.ID })
	if n := countNewTube(bobEv.All(), real.ID); n != 1 {
		t.Fatalf("bob was offered tube %s %d times: the replay was taken", real.ID, n)
	}
	if got := counterValue(t, reg, "tubes_daemon_forged_messages_total"); got != 4 {
		t.Fatalf("forged or replayed messages counted: %v, want 4", got)
	}
}

func countNewTube(evs []api.Event, id string) int {
	n := 0
	for _, e := range evs {
		if e.Type == api.EventNewTube && e.TubeID == id {
			n++
		}
	}
	return n
}

func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}
