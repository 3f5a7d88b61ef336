package tube

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/identity"
)

// The offer the relay carries holds the parameters only sealed to the
// recipient: the secret is not in its bytes, only the recipient's key
// opens it, and only for that tube, offerer and recipient.
func TestOfferSealsParameters(t *testing.T) {
	bob, _ := identity.Generate()
	carol, _ := identity.Generate()
	secret := "password-Zx81"
	p := map[string]api.Value{"pw": {Type: api.TypeString, Value: secret}}
	sealed, err := sealParams(p, bob.Public(), "T1", "alice", "bob")
	if err != nil {
		t.Fatal(err)
	}
	body := mustJSON(offerMsg{ID: "T1", Service: "vnc", Params: sealed})
	// Neither the secret nor the parameter's name, in the message or in
	// the sealed bytes (as JSON would have them: base64 of random bytes
	// may well spell "pw").
	if bytes.Contains(body, []byte(secret)) || bytes.Contains(sealed, []byte(secret)) || bytes.Contains(sealed, []byte(`"pw"`)) ||
		bytes.Contains(bytes.Replace(body, mustJSON(sealed), nil, 1), []byte("pw")) {
		t.Fatalf("the offer carries the parameters in clear: %s", body)
	}
	o, err := decodeOffer(body)
	if err != nil {
		t.Fatal(err)
	}
	got, err := openParams(o.Params, bob, "T1", "alice", "bob")
	if err != nil || got["pw"].Value != secret {
		t.Fatalf("bob opens: %v %v", got, err)
	}
	for name, try := range map[string]func() error{
		"another key":       func() error { _, err := openParams(o.Params, carol, "T1", "alice", "bob"); return err },
		"another tube":      func() error { _, err := openParams(o.Params, bob, "T2", "alice", "bob"); return err },
		"another offerer":   func() error { _, err := openParams(o.Params, bob, "T1", "mallory", "bob"); return err },
		"another recipient": func() error { _, err := openParams(o.Params, bob, "T1", "alice", "carol"); return err },
	} {
		if try() == nil {
			t.Errorf("sealed parameters open with %s", name)
		}
	}
}

func TestDecodeRejects(t *testing.T) {
	for name, body := range map[string]string{
		"not json":       `{`,
		"empty id":       `{"id":"","service":"vnc"}`,
		"bad id":         `{"id":"a/b","service":"vnc"}`,
		"bad service":    `{"id":"T","service":"vnc server"}`,
		"dns address":    `{"id":"T","service":"vnc","addrs":["example.com:80"]}`,
		"bad path":       `{"id":"T","service":"vnc","path":"carrier-pigeon"}`,
		"bad request id": `{"id":"T","service":"vnc","request":"x y"}`,
	} {
		if _, err := decodeOffer([]byte(body)); err == nil {
			t.Errorf("offer %s accepted", name)
		}
	}
	for _, impl := range []string{"org.media.Play", "org.media.Play@", "org.media.Play@2", "@2.0", "a b@1.0", "x@1.0.1", "x@-1.0", "x@1.0@2.0"} {
		if _, err := decodeRequest([]byte(`{"request":"r1","service":"Media","implementation":"` + impl + `"}`)); err == nil {
			t.Errorf("request for implementation %q accepted", impl)
		}
	}
	if r, err := decodeRequest([]byte(`{"request":"r1","service":"Media","implementation":"org.media.Play@2.0"}`)); err != nil || r.Implementation != "org.media.Play@2.0" {
		t.Errorf("request for an implementation: %+v %v", r, err)
	}
	if _, err := decodeCtrl([]byte(`{"op":"explode","tube":"T"}`)); err == nil {
		t.Error("unknown link message accepted")
	}
	if _, err := decodeMeta([]byte(`{"tube":""}`)); err == nil {
		t.Error("stream header without a tube accepted")
	}
	c, err := decodeClose([]byte(`{"id":"T","message":"bye\u001b[2J"}`))
	if err != nil || c.Message != "bye[2J" {
		t.Errorf("close message not cleaned of control characters: %q %v", c.Message, err)
	}
}

// FuzzDecode feeds every wire decoder of the package: none may panic,
// and whatever one accepts must survive a round trip.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{"id":"T1","service":"vnc","addrs":["127.0.0.1:7000","[::1]:7000"],"path":"direct","params":"AAEC","request":"r1"}`,
		`{"id":"T1","error":"im.telepathy1.Error.Cancelled","message":"closed"}`,
		`{"request":"r1","service":"desktop"}`,
		`{"request":"r1","service":"Media","implementation":"org.media.Play@2.0"}`,
		`{"request":"r1","error":"im.telepathy1.Error.PermissionDenied","message":"no"}`,
		`{"tube":"T1"}`,
		`{"op":"accepted","tube":"T1"}`,
		`{"id":"T1","service":"vnc","relay":{"addr":"198.18.0.1:50000","server":"198.18.0.1:3478"}}`,
		`{"id":"p1","ip":"198.18.0.3"}`,
		`{"id":"p1","ip":"198.18.0.3","relay":"198.18.0.1:50000"}`,
		`{"id":"p1","error":"im.telepathy1.Error.PermissionDenied","message":"no tube is offered to you"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if o, err := decodeOffer(b); err == nil {
			if _, err := decodeOffer(mustJSON(o)); err != nil {
				t.Fatalf("offer round trip: %v", err)
			}
		}
		if c, err := decodeClose(b); err == nil {
			if _, err := decodeClose(mustJSON(c)); err != nil {
				t.Fatalf("close round trip: %v", err)
			}
		}
		if p, err := decodePermit(b); err == nil {
			if _, err := decodePermit(mustJSON(p)); err != nil {
				t.Fatalf("permit round trip: %v", err)
			}
		}
		decodePermitted(b)
		decodeRequest(b)
		decodeRefuse(b)
		decodeMeta(b)
		decodeCtrl(b)
		var p map[string]api.Value
		if json.Unmarshal(b, &p) == nil && checkParams(p) == nil {
			var q map[string]api.Value
			if err := json.Unmarshal(mustJSON(p), &q); err != nil || checkParams(q) != nil {
				t.Fatalf("parameters round trip: %v", err)
			}
		}
	})
}

// A signed envelope decodes to what was signed, whatever the bytes; a
// tampered one, one with both forms, or one from the wrong sender does
// not.
func TestSignedEnvelope(t *testing.T) {
	alice, _ := identity.Generate()
	sig := &sentRaw{}
	m, err := New(Config{Account: "alice", Key: alice, Signaller: sig, Emit: func(api.Event) {}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	bob, _ := identity.Generate()
	rx, err := New(Config{Account: "bob", Key: bob, Signaller: sig, Emit: func(api.Event) {},
		PinnedKey: func(name string) (identity.PublicKey, bool) { return alice.Public(), name == "alice" }})
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	for _, body := range [][]byte{[]byte("not json \x00\xff"), nil, []byte(`{"a":1}`)} {
		if _, err := m.SendSigned(context.Background(), "bob", "", "app.x", body); err != nil {
			t.Fatal(err)
		}
		got, err := rx.OpenSigned("alice", "", "app.x", sig.last)
		if err != nil || string(got) != string(body) {
			t.Fatalf("%q came out as %q, %v", body, got, err)
		}
		if _, err := rx.OpenSigned("alice", "", "app.x", sig.last); err == nil {
			t.Fatalf("%q taken twice", body)
		}
	}
	m.SendSigned(context.Background(), "bob", "", "app.x", []byte("hi"))
	for name, data := range map[string][]byte{
		"tampered":    bytes.Replace(sig.last, []byte(`"data":"aGk="`), []byte(`"data":"aG8="`), 1),
		"both forms":  bytes.Replace(sig.last, []byte(`"data":`), []byte(`"body":{},"data":`), 1),
		"other kind":  sig.last,
		"not a frame": []byte("{"),
	} {
		kind := "app.x"
		if name == "other kind" {
			kind = "app.y"
		}
		if _, err := rx.OpenSigned("alice", "", kind, data); err == nil {
			t.Errorf("%s: taken", name)
		}
	}
	if _, err := rx.OpenSigned("mallory", "", "app.x", sig.last); err == nil {
		t.Error("taken from a sender with no key")
	}
}

// sentRaw is a Signaller that keeps the last body sent.
type sentRaw struct{ last []byte }

func (s *sentRaw) Send(_ context.Context, _, _, _ string, body []byte) ([]string, error) {
	s.last = body
	return nil, nil
}
func (*sentRaw) Keys(context.Context, []string) (map[string]string, error)       { return nil, nil }
func (*sentRaw) RoomMembers(context.Context, string) ([]string, error)           { return nil, nil }
func (*sentRaw) RoomJoins(context.Context, string) (map[string]time.Time, error) { return nil, nil }

// FuzzSignedEnvelope: envelopes come through the relay; any bytes are
// refused or opened, never a panic, and only a real signature opens one.
func FuzzSignedEnvelope(f *testing.F) {
	alice, _ := identity.FromSeed(make([]byte, 32))
	sig := &sentRaw{}
	tx, _ := New(Config{Account: "alice", Key: alice, Signaller: sig, Emit: func(api.Event) {}})
	tx.SendSigned(context.Background(), "bob", "", "app.x", []byte("hello"))
	f.Add(sig.last)
	tx.send(context.Background(), "bob", "", kindOffer, []byte(`{"id":"T1","service":"vnc"}`))
	f.Add(sig.last)
	f.Add([]byte(`{"body":{},"data":"aGk=","ts":1,"sig":"AAAA"}`))
	f.Add([]byte(`{"ts":-9223372036854775808,"sig":"AA=="}`))
	f.Add([]byte(`[]`))
	bob, _ := identity.Generate()
	rx, _ := New(Config{Account: "bob", Key: bob, Signaller: sig, Emit: func(api.Event) {},
		PinnedKey: func(name string) (identity.PublicKey, bool) { return alice.Public(), name == "alice" }})
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := rx.OpenSigned("alice", "", "app.x", data)
		if err == nil && string(got) != "hello" {
			t.Fatalf("an envelope opened to %q, which alice never signed", got)
		}
	})
}

// Replays the seen set cannot catch: a message signed before this daemon
// started (its memory of taken messages went with the restart) is
// refused; and one sender's flood forgets only that sender's messages.
func TestReplayAcrossRestartAndFlood(t *testing.T) {
	alice, _ := identity.Generate()
	mallory, _ := identity.Generate()
	bob, _ := identity.Generate()
	keys := map[string]identity.PublicKey{"alice": alice.Public(), "mallory": mallory.Public()}
	rx, err := New(Config{Account: "bob", Key: bob, Signaller: &sentRaw{}, Emit: func(api.Event) {},
		PinnedKey: func(name string) (identity.PublicKey, bool) { k, ok := keys[name]; return k, ok }})
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	envelope := func(k *identity.Key, from string, ts time.Time, data string) []byte {
		e := signedMsg{Data: []byte(data), TS: ts.UnixMilli()}
		e.Sig = k.Sign(signedInput("app.x", from, "bob", "", e.TS, e.Data))
		b, _ := json.Marshal(e)
		return b
	}
	// Signed five minutes ago, inside the window, before bob's daemon began.
	if _, err := rx.OpenSigned("alice", "", "app.x", envelope(alice, "alice", time.Now().Add(-5*time.Minute), "old")); err == nil {
		t.Fatal("a message from before the daemon started was taken")
	}
	first := envelope(alice, "alice", time.Now(), "hi")
	if _, err := rx.OpenSigned("alice", "", "app.x", first); err != nil {
		t.Fatal(err)
	}
	for i := range maxSeenPerSender + 10 {
		if _, err := rx.OpenSigned("mallory", "", "app.x", envelope(mallory, "mallory", time.Now(), fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := rx.OpenSigned("alice", "", "app.x", first); err == nil {
		t.Fatal("after mallory's flood, alice's message was taken a second time")
	}
}
