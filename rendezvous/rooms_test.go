package rendezvous_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/tubes-dev/tubes/internal/tubetest"
	"github.com/tubes-dev/tubes/rendezvous"
	"github.com/tubes-dev/tubes/tperr"
)

// roomEvent waits for a room event on a's inbox.
func roomEvent(t *testing.T, a *account, match func(rendezvous.RoomEvent) bool) rendezvous.RoomEvent {
	t.Helper()
	var e rendezvous.RoomEvent
	json.Unmarshal(a.in.wait(t, rendezvous.KindRooms, func(b []byte) bool {
		var x rendezvous.RoomEvent
		return json.Unmarshal(b, &x) == nil && match(x)
	}), &e)
	return e
}

// sameRefusal fails unless err is PermissionDenied with the sentence a
// missing room gets, the room's name aside: a non-member learns nothing.
func sameRefusal(t *testing.T, what string, forbidden, missing error, room, noRoom string) {
	t.Helper()
	if !tperr.Has(forbidden, tperr.PermissionDenied) || !tperr.Has(missing, tperr.PermissionDenied) {
		t.Fatalf("%s: %v / %v, want PermissionDenied for both", what, forbidden, missing)
	}
	f := strings.ReplaceAll(tperr.Message(forbidden), room, "ROOM")
	m := strings.ReplaceAll(tperr.Message(missing), noRoom, "ROOM")
	if f != m {
		t.Fatalf("%s: a room that exists answers %q, a missing one %q: the answer tells them apart", what, f, m)
	}
}

// Invite-only rooms, through the account service's wire protocol (real
// NATS, each account its own connection and key): who may invite, join,
// decline, remove and name admins, and what a stranger learns (nothing).
func TestRoomMembershipControl(t *testing.T) {
	s := startRelay(t, rendezvous.Config{})
	ctx := context.Background()
	alice, bob, carol, mallory := register(t, s, "alice"), register(t, s, "bob"), register(t, s, "carol"), register(t, s, "mallory")
	befriend(t, alice, bob)
	befriend(t, bob, carol)
	befriend(t, alice, carol)
	if r, err := alice.c.RoomCreate(ctx, "lab", false); err != nil || r.Open {
		t.Fatalf("create: %+v, %v; want an invite-only room", r, err)
	}

	// A stranger: every request about lab answers as for a room that does
	// not exist, and a lookup finds neither.
	_, errF := mallory.c.RoomJoin(ctx, "lab")
	_, errM := mallory.c.RoomJoin(ctx, "nosuch")
	sameRefusal(t, "join uninvited", errF, errM, "lab", "nosuch")
	sameRefusal(t, "leave", mallory.c.RoomLeave(ctx, "lab"), mallory.c.RoomLeave(ctx, "nosuch"), "lab", "nosuch")
	_, errF = mallory.c.RoomMembers(ctx, "lab")
	_, errM = mallory.c.RoomMembers(ctx, "nosuch")
	sameRefusal(t, "members", errF, errM, "lab", "nosuch")
	sameRefusal(t, "decline", mallory.c.RoomDecline(ctx, "lab"), mallory.c.RoomDecline(ctx, "nosuch"), "lab", "nosuch")
	_, errF = mallory.c.RoomInvite(ctx, "lab", "alice")
	_, errM = mallory.c.RoomInvite(ctx, "nosuch", "alice")
	sameRefusal(t, "invite", errF, errM, "lab", "nosuch")
	sameRefusal(t, "remove", mallory.c.RoomRemove(ctx, "lab", "bob"), mallory.c.RoomRemove(ctx, "nosuch", "bob"), "lab", "nosuch")
	_, errF = mallory.c.RoomAdmin(ctx, "lab", "bob", false)
	_, errM = mallory.c.RoomAdmin(ctx, "nosuch", "bob", false)
	sameRefusal(t, "admin", errF, errM, "lab", "nosuch")
	_, errF = mallory.c.Send(ctx, "", "lab", "x", nil)
	_, errM = mallory.c.Send(ctx, "", "nosuch", "x", nil)
	sameRefusal(t, "send", errF, errM, "lab", "nosuch")
	if _, rooms, err := mallory.c.Exists(ctx, nil, []string{"lab", "nosuch"}); err != nil || rooms["lab"] || rooms["nosuch"] {
		t.Fatalf("lookup by a stranger: %v, %v; want neither room found", rooms, err)
	}

	// Only contacts are invited; the invitee is told and may look the room
	// up; the invitation is bob's, not anyone else's.
	if _, err := alice.c.RoomInvite(ctx, "lab", "mallory"); !tperr.Has(err, tperr.PermissionDenied) {
		t.Fatalf("inviting a stranger: %v, want PermissionDenied", err)
	}
	if inv, err := alice.c.RoomInvite(ctx, "lab", "bob"); err != nil || inv.By != "alice" {
		t.Fatalf("invite bob: %+v, %v", inv, err)
	}
	if e := roomEvent(t, bob, func(e rendezvous.RoomEvent) bool { return e.Change == rendezvous.RoomInvited }); e.Room != "lab" || e.By != "alice" {
		t.Fatalf("bob's invitation event %+v", e)
	}
	if invs, err := bob.c.Invitations(ctx); err != nil || len(invs) != 1 || invs[0].Room != "lab" || invs[0].By != "alice" {
		t.Fatalf("bob's invitations: %+v, %v", invs, err)
	}
	if _, rooms, err := bob.c.Exists(ctx, nil, []string{"lab"}); err != nil || !rooms["lab"] {
		t.Fatalf("lookup by the invitee: %v, %v; want lab found", rooms, err)
	}
	_, errF = mallory.c.RoomJoin(ctx, "lab")
	sameRefusal(t, "join on bob's invitation", errF, errM, "lab", "nosuch")
	// Invited is not a member: nothing sent to the room reaches bob yet.
	if got, err := alice.c.Send(ctx, "", "lab", "x", []byte("members only")); len(got) != 0 {
		t.Fatalf("a room message before bob joined reached %v (%v)", got, err)
	}
	if _, err := bob.c.RoomMembers(ctx, "lab"); !tperr.Has(err, tperr.PermissionDenied) {
		t.Fatalf("the invitee lists the members before joining: %v", err)
	}

	// bob joins (his invitation is used up); a plain member may not
	// invite; the owner names him admin, and then he may.
	if r, err := bob.c.RoomJoin(ctx, "lab"); err != nil || r.Role != rendezvous.RoleMember {
		t.Fatalf("bob joins: %+v, %v", r, err)
	}
	roomEvent(t, alice, func(e rendezvous.RoomEvent) bool { return e.Change == rendezvous.RoomJoined && e.Member == "bob" })
	if invs, _ := bob.c.Invitations(ctx); len(invs) != 0 {
		t.Fatalf("bob's invitation outlived his join: %+v", invs)
	}
	if _, err := bob.c.RoomInvite(ctx, "lab", "carol"); !tperr.Has(err, tperr.PermissionDenied) {
		t.Fatalf("a plain member invites: %v, want PermissionDenied", err)
	}
	if _, err := bob.c.RoomAdmin(ctx, "lab", "bob", false); !tperr.Has(err, tperr.PermissionDenied) {
		t.Fatalf("a member makes himself admin: %v, want PermissionDenied", err)
	}
	if m, err := alice.c.RoomAdmin(ctx, "lab", "bob", false); err != nil || !m.Admin {
		t.Fatalf("alice names bob admin: %+v, %v", m, err)
	}
	roomEvent(t, bob, func(e rendezvous.RoomEvent) bool {
		return e.Change == rendezvous.RoomRole && e.Member == "bob" && e.Role == rendezvous.RoleAdmin
	})
	if _, err := bob.c.RoomInvite(ctx, "lab", "carol"); err != nil {
		t.Fatalf("the admin invites carol: %v", err)
	}
	if _, err := carol.c.RoomJoin(ctx, "lab"); err != nil {
		t.Fatal(err)
	}

	// An admin may not remove the owner, nor name admins; he removes a
	// plain member, who is told, and is then a stranger to the room.
	if err := bob.c.RoomRemove(ctx, "lab", "alice"); !tperr.Has(err, tperr.PermissionDenied) {
		t.Fatalf("an admin removes the owner: %v, want PermissionDenied", err)
	}
	if _, err := bob.c.RoomAdmin(ctx, "lab", "carol", false); !tperr.Has(err, tperr.PermissionDenied) {
		t.Fatalf("an admin names an admin: %v, want PermissionDenied", err)
	}
	if err := bob.c.RoomRemove(ctx, "lab", "carol"); err != nil {
		t.Fatalf("the admin removes carol: %v", err)
	}
	if e := roomEvent(t, carol, func(e rendezvous.RoomEvent) bool { return e.Change == rendezvous.RoomRemoved }); e.Member != "carol" || e.By != "bob" || e.Joined {
		t.Fatalf("carol's removal event %+v", e)
	}
	roomEvent(t, alice, func(e rendezvous.RoomEvent) bool { return e.Change == rendezvous.RoomRemoved && e.Member == "carol" })
	_, errF = carol.c.RoomMembers(ctx, "lab")
	sameRefusal(t, "members after removal", errF, errM, "lab", "nosuch")
	_, errF = carol.c.RoomJoin(ctx, "lab")
	sameRefusal(t, "join again after removal", errF, errM, "lab", "nosuch")
	if rs, err := carol.c.Rooms(ctx); err != nil || len(rs) != 0 {
		t.Fatalf("carol's rooms after removal: %+v, %v", rs, err)
	}

	// Declining: the inviter is told; the invitation is gone.
	if _, err := alice.c.RoomInvite(ctx, "lab", "carol"); err != nil {
		t.Fatal(err)
	}
	if err := carol.c.RoomDecline(ctx, "lab"); err != nil {
		t.Fatal(err)
	}
	roomEvent(t, alice, func(e rendezvous.RoomEvent) bool { return e.Change == rendezvous.RoomDeclined && e.Member == "carol" })
	_, errF = carol.c.RoomJoin(ctx, "lab")
	sameRefusal(t, "join after declining", errF, errM, "lab", "nosuch")

	// The owner takes bob's admin role back; the members keep working.
	if m, err := alice.c.RoomAdmin(ctx, "lab", "bob", true); err != nil || m.Admin {
		t.Fatalf("revoke: %+v, %v", m, err)
	}
	if ms, err := bob.c.RoomMembers(ctx, "lab"); err != nil || len(ms) != 2 || ms[1].Admin {
		t.Fatalf("members: %+v, %v; want alice and bob, no admin", ms, err)
	}
	if got, err := bob.c.Send(ctx, "", "lab", "hello", []byte("still here")); err != nil || len(got) != 1 || got[0] != "alice" {
		t.Fatalf("a member's room message reached %v, %v", got, err)
	}
}

// plant writes a record into the relay's state with the service's own
// credentials: what a join racing a room's deletion, or a deletion that
// stopped half-way, leaves behind.
func plant(t *testing.T, dir, key string, v any) {
	t.Helper()
	b, _ := json.Marshal(v)
	if _, err := tubetest.RelayState(t, dir).Put(context.Background(), key, b); err != nil {
		t.Fatal(err)
	}
}

// Member and invitation records left from an earlier room of a name (the
// attack: create an open room, join it from a second account while the
// first leaves, so the join's record outlives the room) grant nothing in a
// room created later under that name: the victim's new invite-only room
// has no hidden member, and its messages reach no one else.
func TestLeftoverRecordsGrantNothing(t *testing.T) {
	dir := t.TempDir()
	s := startRelay(t, rendezvous.Config{DataDir: dir})
	ctx := context.Background()
	bob, evf, evg := register(t, s, "bob"), register(t, s, "evf"), register(t, s, "evg")
	now := time.Now().UTC()
	plant(t, dir, "member.team.evf", map[string]any{"joined": now})                    // as written before room ids
	plant(t, dir, "member.team.evg", map[string]any{"joined": now, "room": "earlier"}) // of an earlier room
	plant(t, dir, "invitation.team.evg", map[string]any{"by": "bob", "created": now, "room": "earlier"})
	if _, err := bob.c.RoomCreate(ctx, "team", false); err != nil {
		t.Fatal(err)
	}
	if ms, err := bob.c.RoomMembers(ctx, "team"); err != nil || len(ms) != 1 || ms[0].Name != "bob" {
		t.Fatalf("members of bob's new room: %+v, %v; want bob alone", ms, err)
	}
	for _, a := range []*account{evf, evg} {
		if _, err := a.c.RoomMembers(ctx, "team"); !tperr.Has(err, tperr.PermissionDenied) {
			t.Fatalf("%s listing the members of bob's new room: %v, want PermissionDenied", a.name, err)
		}
		if rs, _ := a.c.Rooms(ctx); len(rs) != 0 {
			t.Fatalf("%s's rooms: %+v", a.name, rs)
		}
	}
	if _, err := evg.c.RoomJoin(ctx, "team"); !tperr.Has(err, tperr.PermissionDenied) {
		t.Fatalf("joining on an earlier room's invitation: %v, want PermissionDenied", err)
	}
	if got, err := bob.c.Send(ctx, "", "team", "x", []byte("for members")); len(got) != 0 {
		t.Fatalf("bob's room message reached %v (%v)", got, err)
	}
}

// An invitation is good while its inviter may invite: an admin's
// invitations end with the admin role. And an account removed by the
// operator leaves no invitation for a later account of its name.
func TestInvitationsEnd(t *testing.T) {
	dir := t.TempDir()
	s := startRelay(t, rendezvous.Config{DataDir: dir})
	ctx := context.Background()
	alice, bob, carol, dave := register(t, s, "alice"), register(t, s, "bob"), register(t, s, "carol"), register(t, s, "dave")
	befriend(t, alice, bob)
	befriend(t, bob, carol)
	befriend(t, alice, dave)
	alice.c.RoomCreate(ctx, "lab", false)
	alice.c.RoomInvite(ctx, "lab", "bob")
	if _, err := bob.c.RoomJoin(ctx, "lab"); err != nil {
		t.Fatal(err)
	}
	alice.c.RoomAdmin(ctx, "lab", "bob", false)
	if _, err := bob.c.RoomInvite(ctx, "lab", "carol"); err != nil {
		t.Fatal(err)
	}
	alice.c.RoomAdmin(ctx, "lab", "bob", true)
	if invs, _ := carol.c.Invitations(ctx); len(invs) != 0 {
		t.Fatalf("carol still lists a former admin's invitation: %+v", invs)
	}
	if _, rooms, _ := carol.c.Exists(ctx, nil, []string{"lab"}); rooms["lab"] {
		t.Fatal("a former admin's invitee still finds the room")
	}
	alice.c.RoomAdmin(ctx, "lab", "bob", false) // admin again: the old invitation stays gone
	if _, err := carol.c.RoomJoin(ctx, "lab"); !tperr.Has(err, tperr.PermissionDenied) {
		t.Fatalf("joining on a former admin's invitation: %v, want PermissionDenied", err)
	}

	// An invitation that outlived its invitee's join (a re-invitation
	// racing the join, here written directly) does not survive a removal.
	e, err := tubetest.RelayState(t, dir).Get(ctx, "room.lab")
	if err != nil {
		t.Fatal(err)
	}
	var room struct{ ID string }
	json.Unmarshal(e.Value(), &room)
	plant(t, dir, "invitation.lab.bob", map[string]any{"by": "alice", "created": time.Now().UTC(), "room": room.ID, "key": bob.key.Public().String()})
	if err := alice.c.RoomRemove(ctx, "lab", "bob"); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.c.RoomJoin(ctx, "lab"); !tperr.Has(err, tperr.PermissionDenied) {
		t.Fatalf("a removed member joins again on an invitation from before: %v, want PermissionDenied", err)
	}

	if _, err := alice.c.RoomInvite(ctx, "lab", "dave"); err != nil {
		t.Fatal(err)
	}
	if err := dialAdmin(t, dir).UserRemove(ctx, "dave"); err != nil {
		t.Fatal(err)
	}
	// And if the operator's removal stopped half-way (the relay died after
	// deleting the account record), a later account of the name is still
	// nobody in the rooms the first one was in.
	befriend(t, alice, carol)
	alice.c.RoomInvite(ctx, "lab", "carol")
	if _, err := carol.c.RoomJoin(ctx, "lab"); err != nil {
		t.Fatal(err)
	}
	if err := tubetest.RelayState(t, dir).Delete(ctx, "acct.carol"); err != nil {
		t.Fatal(err)
	}
	carol2 := register(t, s, "carol")
	if rs, err := carol2.c.Rooms(ctx); err != nil || len(rs) != 0 {
		t.Fatalf("the new carol inherits rooms: %+v (%v)", rs, err)
	}
	if _, err := carol2.c.RoomMembers(ctx, "lab"); !tperr.Has(err, tperr.PermissionDenied) {
		t.Fatalf("the new carol lists lab's members: %v", err)
	}
	if ms, _ := alice.c.RoomMembers(ctx, "lab"); len(ms) != 1 {
		t.Fatalf("lab's members after carol's account changed hands: %+v; want alice alone", ms)
	}

	dave2 := register(t, s, "dave")
	if invs, err := dave2.c.Invitations(ctx); err != nil || len(invs) != 0 {
		t.Fatalf("the new dave inherits %+v (%v)", invs, err)
	}
	if _, err := dave2.c.RoomJoin(ctx, "lab"); !tperr.Has(err, tperr.PermissionDenied) {
		t.Fatalf("the new dave joins on the old one's invitation: %v, want PermissionDenied", err)
	}
}
