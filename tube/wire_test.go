package tube

import (
	"bytes"
	"encoding/json"
	"testing"

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
	if bytes.Contains(body, []byte(secret)) || bytes.Contains(body, []byte("pw")) {
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
		`{"request":"r1","error":"im.telepathy1.Error.PermissionDenied","message":"no"}`,
		`{"tube":"T1"}`,
		`{"op":"accepted","tube":"T1"}`,
		`{"id":"T1","service":"vnc","relay":{"addr":"198.18.0.1:50000","server":"198.18.0.1:3478"}}`,
		`{"id":"p1","ip":"198.18.0.3"}`,
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
