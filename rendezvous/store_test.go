package rendezvous

import "testing"

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
