package rendezvous

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// Rooms stored before invitations existed (no "open", member records
// with no role) read as invite-only rooms that keep their owner and
// members: the upgrade migrates them by reading them.
func TestLegacyRoomRecords(t *testing.T) {
	v := newView()
	for i, r := range []struct{ key, value string }{
		{"room.lab", `{"name":"lab","owner":"alice","created":"2025-06-01T10:00:00Z"}`},
		{"member.lab.alice", `{"joined":"2025-06-01T10:00:00Z"}`},
		{"member.lab.bob", `{"joined":"2025-06-02T10:00:00Z"}`},
	} {
		if err := v.apply(r.key, []byte(r.value), false, uint64(i+1)); err != nil {
			t.Fatal(err)
		}
	}
	room, ok := v.room("lab")
	if !ok || room.Open || room.Owner != "alice" {
		t.Fatalf("legacy room = %+v, %v; want invite-only, owned by alice", room, ok)
	}
	if got := v.memberNames("lab"); len(got) != 2 || got[0] != "alice" || got[1] != "bob" {
		t.Fatalf("legacy members %v", got)
	}
	if v.role("lab", "alice") != RoleOwner || v.role("lab", "bob") != RoleMember || v.role("lab", "carol") != "" {
		t.Fatalf("roles: alice %q, bob %q, carol %q", v.role("lab", "alice"), v.role("lab", "bob"), v.role("lab", "carol"))
	}
	if _, invited := v.invitation("lab", "carol"); invited {
		t.Fatal("carol is invited to a legacy room")
	}
}

// A relay instance is a connection of the service user named
// "tube-relay:<id>": a guest or an account naming its connection so is
// not one (it would have led, being the smallest id, and stopped presence
// fan-out and Name_In_Use for everyone), nor is a nameless instance id.
func TestRelayInstancesAreServiceConnections(t *testing.T) {
	p := newPresence()
	now := time.Now()
	p.add(connID{"S", 1}, serviceUser, relayConnPrefix+"m-real", "127.0.0.1", now)
	p.add(connID{"S", 2}, "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NVRNUM", relayConnPrefix, "127.0.0.1", now) // a guest
	p.add(connID{"S", 3}, "mallory", relayConnPrefix+"a", "127.0.0.1", now)                                              // an account
	p.add(connID{"S", 4}, serviceUser, relayConnPrefix, "127.0.0.1", now)                                                // no instance id
	p.add(connID{"S", 5}, serviceUser, "tube-relay-admin", "127.0.0.1", now)                                             // the operator's tool
	if !p.leader("m-real") || p.relayCount() != 1 {
		t.Fatalf("leader(m-real) = %v with %d relays: an impostor counts as a relay instance", p.leader("m-real"), p.relayCount())
	}
	if !p.online("mallory") || p.online(serviceUser) || p.onlineCount() != 1 {
		t.Fatalf("presence: mallory %v, %s %v, %d online; want mallory alone", p.online("mallory"), serviceUser, p.online(serviceUser), p.onlineCount())
	}
}

// Rooms made and removed leave delete markers in the state bucket; the
// leader's purge drops them, so churn does not grow the state for ever.
func TestPurgeDeletes(t *testing.T) {
	ctx := context.Background()
	srv, err := Start(ctx, Config{Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	st := srv.Service().store
	before, err := st.bytes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 200 {
		key := fmt.Sprintf("room.churn%03d", i)
		if err := st.put(ctx, key, roomRecord{Name: key}); err != nil {
			t.Fatal(err)
		}
		if err := st.delete(ctx, key); err != nil {
			t.Fatal(err)
		}
	}
	grown, _ := st.bytes(ctx)
	if grown <= before {
		t.Fatalf("200 rooms made and removed left %d bytes, %d before: nothing to purge, the test proves nothing", grown, before)
	}
	if err := st.purgeDeletes(ctx, -1); err != nil { // every marker, however new
		t.Fatal(err)
	}
	after, _ := st.bytes(ctx)
	if after > before {
		t.Fatalf("after the purge the state holds %d bytes, %d before the churn", after, before)
	}
}
