package rendezvous

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/tubes-dev/tubes/tperr"
)

// FuzzDecodeReply: replies come from the relay, which a daemon does not
// have to trust to be well-formed.
func FuzzDecodeReply(f *testing.F) {
	f.Add([]byte(`{"result":{"account":"alice","key":"U"}}`))
	f.Add([]byte(`{"error":{"name":"im.telepathy1.Error.Offline","message":"bob is offline"}}`))
	f.Add([]byte(`{"error":{"name":"evil","message":"x"}}`))
	f.Add([]byte(`{"result":[{"name":"bob","state":"contact","online":true}]}`))
	f.Add([]byte(`{`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var h Hello
		err := decodeReply(data, &h)
		if err != nil && tperr.Name(err) != "" && !strings.HasPrefix(tperr.Name(err), tperr.Prefix) {
			t.Fatalf("error name outside the Telepathy namespace: %q", tperr.Name(err))
		}
		var cs []Contact
		decodeReply(data, &cs)
	})
}

// FuzzDecodeRequest: requests come from accounts; a bad one is an
// InvalidArgument error, never a panic or a half-filled success.
func FuzzDecodeRequest(f *testing.F) {
	f.Add([]byte(`{"to":"bob","kind":"x","body":"aGk="}`))
	f.Add([]byte(`{"room":"lab","kind":"x"}`))
	f.Add([]byte(`{"name":5}`))
	f.Add([]byte(`{"contacts":["a","b"],"rooms":["r"]}`))
	f.Add([]byte(``))
	f.Add([]byte(`{"to":"bob","extra":1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, v := range []any{&sendReq{}, &nameReq{}, &lookupReq{}, &registerReq{}, &helloReq{}, &userAddReq{}, &roomReq{}, &roomMemberReq{}} {
			if err := decodeRequest(data, v); err != nil && !tperr.Has(err, tperr.InvalidArgument) {
				t.Fatalf("decode error %v is not InvalidArgument", err)
			}
		}
	})
}

// FuzzViewApply: records of the state bucket; a malformed one is dropped
// and reported, and the view stays consistent.
func FuzzViewApply(f *testing.F) {
	f.Add("acct.alice", []byte(`{"name":"alice","key":"UABC"}`), false)
	f.Add("pair.alice.bob", []byte(`{"a_wants":true,"b_wants":true}`), false)
	f.Add("pair.alice.bob", []byte(`{"a_wants":"yes"}`), false)
	f.Add("room.lab", []byte(`{"name":"lab","owner":"alice"}`), false)
	f.Add("member.lab.bob", []byte(`{}`), false)
	f.Add("member.lab.bob", []byte(nil), true)
	f.Add("member.lab.bob", []byte(`{"joined":"2026-01-02T03:04:05Z","admin":true}`), false)
	f.Add("member.lab.bob", []byte(`{"admin":"yes"}`), false)
	f.Add("invitation.lab.bob", []byte(`{"by":"alice","created":"2026-01-02T03:04:05Z"}`), false)
	f.Add("invitation.lab.bob", []byte(`[`), false)
	f.Add("room.lab", []byte(`{"name":"lab","owner":"alice","open":true}`), false)
	f.Add("a.b.c.d", []byte(`x`), false)
	f.Fuzz(func(t *testing.T, key string, value []byte, deleted bool) {
		v := newView()
		v.apply("acct.alice", []byte(`{"name":"alice"}`), false, 1)
		v.apply("pair.alice.bob", []byte(`{"a_wants":true,"b_wants":true}`), false, 2)
		v.apply(key, value, deleted, 3)
		// The indexes agree with the records.
		for other := range v.contacts["alice"] {
			k, _, _ := pairKey("alice", other)
			if _, ok := v.pairs[k]; !ok {
				t.Fatalf("contact index names %s without a pair record", other)
			}
		}
		v.peersOf("alice")
		v.roomsOfAccount("bob")
		v.invitationsOf("bob")
		// A role is given only to a member of the room's own ID; the
		// member index agrees with the records; an invitation index entry
		// has its record.
		for room, ms := range v.members {
			for n := range ms {
				if !v.roomsOf[n][room] {
					t.Fatalf("%s has a member record in %s the index lacks", n, room)
				}
				if role := v.role(room, n); role != "" && !v.isMember(room, n) {
					t.Fatalf("%s has role %s in %s without being a member", n, role, room)
				}
			}
		}
		for n, rooms := range v.invitesOf {
			for room := range rooms {
				if _, ok := v.invited[room][n]; !ok {
					t.Fatalf("invitation index names %s in %s without a record", n, room)
				}
			}
		}
		if v.rev != 3 {
			t.Fatalf("revision %d", v.rev)
		}
	})
}

// FuzzControl: control messages from the relay.
func FuzzControl(f *testing.F) {
	b, _ := json.Marshal(controlMsg{Type: "replaced", Server: "S", CID: 7})
	f.Add(b)
	f.Add([]byte(`{"type":"replaced","cid":-1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var m controlMsg
		json.Unmarshal(data, &m)
	})
}
