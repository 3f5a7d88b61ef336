package rendezvous

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/tubes-dev/tubes/tperr"
)

// Rooms (service side): creating, inviting, joining, declining, leaving,
// removing, roles, and listing rooms and their members.
//
// Rooms are invite-only unless created open: the owner and admins invite
// their contacts, and only an invitee (or anyone, in an open room) joins.
// A room's name is global, so create's name clash is the one thing a
// non-member learns about a room; every other request about a room the
// caller neither belongs to nor is invited to gets noRoom, the same
// answer whether the room exists or not.

// noRoom is the one answer to a request about a room the caller may not
// see: it does not say whether the room exists.
func noRoom(room string) error {
	return tperr.New(tperr.PermissionDenied, "room %s does not exist or you are not in it", room)
}

func (s *Service) roomName(data []byte) (string, error) {
	var req roomReq
	if err := decodeRequest(data, &req); err != nil {
		return "", err
	}
	return NormalizeName("room", req.Room)
}

// roomMember decodes a request naming a room and an account.
func (s *Service) roomMember(data []byte) (roomMemberReq, error) {
	var req roomMemberReq
	if err := decodeRequest(data, &req); err != nil {
		return req, err
	}
	var err error
	if req.Room, err = NormalizeName("room", req.Room); err != nil {
		return req, err
	}
	req.Name, err = NormalizeName("account", req.Name)
	return req, err
}

func (s *Service) roomEntry(r roomRecord, me string) Room {
	return Room{Name: r.Name, Owner: r.Owner, Members: len(s.store.view.memberNames(r.Name)), Open: r.Open, Role: s.store.view.role(r.Name, me)}
}

// visibleTo reports whether me may learn of room: a member, or invited.
func (s *Service) visibleTo(room, me string) bool {
	if s.store.view.isMember(room, me) {
		return true
	}
	_, ok := s.store.view.invitation(room, me)
	return ok
}

func (s *Service) opRooms(ctx context.Context, me string, _ []byte) (any, error) {
	rs := s.store.view.roomsOfAccount(me)
	out := make([]Room, 0, len(rs))
	for _, r := range rs {
		out = append(out, s.roomEntry(r, me))
	}
	return out, nil
}

func (s *Service) opRoomCreate(ctx context.Context, me string, data []byte) (any, error) {
	var req roomReq
	if err := decodeRequest(data, &req); err != nil {
		return nil, err
	}
	room, err := NormalizeName("room", req.Room)
	if err != nil {
		return nil, err
	}
	if _, exists := s.store.view.room(room); !exists {
		// Invitations left over from an earlier room of this name (its
		// deletion stopped half-way) must not let anyone into this one.
		for _, n := range s.store.view.inviteesOf(room) {
			if err := s.store.delete(ctx, "invitation."+room+"."+n); err != nil {
				return nil, err
			}
		}
	}
	if n := s.store.view.ownedBy(me); n >= s.cfg.Limits.Rooms {
		s.m.refused("rooms")
		return nil, tperr.New(tperr.PermissionDenied, "you own %d rooms, the most this relay allows; remove one first", n)
	}
	acct, _ := s.store.view.account(me)
	r := roomRecord{Name: room, Owner: me, Created: time.Now().UTC(), Open: req.Open, ID: randomID(), OwnerKey: acct.Key}
	if err := s.store.create(ctx, "room."+room, r); errors.Is(err, errConflict) {
		return nil, tperr.New(tperr.NotAvailable, "a room named %s already exists; pick another name", room)
	} else if err != nil {
		return nil, err
	}
	if err := s.store.put(ctx, "member."+room+"."+me, memberRecord{Joined: r.Created, Room: r.ID, Key: acct.Key}); err != nil {
		return nil, err
	}
	return s.roomEntry(r, me), nil
}

// opRoomInvite: the owner or an admin invites one of their mutual
// contacts, who is told (RoomInvited) and may then join.
func (s *Service) opRoomInvite(ctx context.Context, me string, data []byte) (any, error) {
	req, err := s.roomMember(data)
	if err != nil {
		return nil, err
	}
	role := s.store.view.role(req.Room, me)
	switch {
	case role == "":
		return nil, noRoom(req.Room)
	case role == RoleMember:
		return nil, tperr.New(tperr.PermissionDenied, "only the owner and admins of room %s can invite", req.Room)
	case s.store.view.pair(me, req.Name).state(me) != ContactMutual:
		return nil, tperr.New(tperr.PermissionDenied, "%s is not a contact of yours; you can invite only your contacts", req.Name)
	case s.store.view.isMember(req.Room, req.Name):
		return nil, tperr.New(tperr.AlreadyConnected, "%s is a member of room %s already", req.Name, req.Room)
	}
	if !s.store.view.hasInvitationRecord(req.Room, req.Name) {
		n := 0
		for _, invitees := range s.store.view.invitationsBy(me) {
			n += len(invitees)
		}
		if n >= s.cfg.Limits.Invitations {
			s.m.refused("invitations")
			return nil, tperr.New(tperr.PermissionDenied, "you have %d invitations waiting for an answer, the most this relay allows; withdraw some first", n)
		}
	}
	r, _ := s.store.view.room(req.Room)
	invitee, _ := s.store.view.account(req.Name)
	inv := invitationRecord{By: me, Created: time.Now().UTC(), Room: r.ID, Key: invitee.Key}
	if err := s.store.put(ctx, "invitation."+req.Room+"."+req.Name, inv); err != nil {
		return nil, err
	}
	s.publish(req.Name, KindRooms, RoomEvent{Room: req.Room, Change: RoomInvited, By: me})
	return Invitation{Room: req.Room, By: me, Created: inv.Created}, nil
}

func (s *Service) opInvitations(ctx context.Context, me string, _ []byte) (any, error) {
	out := s.store.view.invitationsOf(me)
	if out == nil {
		out = []Invitation{}
	}
	return out, nil
}

// opRoomJoin: a member already, an invitee (whose invitation it takes),
// or anyone for an open room. An invitation counts while its inviter is
// still the room's owner or an admin, and is taken with compare-and-set:
// a join and the invitation's withdrawal cannot both succeed.
func (s *Service) opRoomJoin(ctx context.Context, me string, data []byte) (any, error) {
	room, err := s.roomName(data)
	if err != nil {
		return nil, err
	}
	r, ok := s.store.view.room(room)
	if !ok {
		return nil, noRoom(room)
	}
	if s.store.view.isMember(room, me) {
		// An invitation that raced the join must not outlive it (it
		// would let a removed member straight back in).
		s.dropInvitation(ctx, room, me)
		return s.roomEntry(r, me), nil
	}
	if _, invited := s.store.view.invitation(room, me); invited {
		// (invitation only counts while its inviter may invite.)
		if err := s.takeInvitation(ctx, room, me, r.ID); err != nil {
			return nil, err
		}
	} else if !r.Open {
		return nil, noRoom(room)
	}
	acct, _ := s.store.view.account(me)
	if err := s.store.put(ctx, "member."+room+"."+me, memberRecord{Joined: time.Now().UTC(), Room: r.ID, Key: acct.Key}); err != nil {
		return nil, err
	}
	online := s.pres.online(me)
	for _, m := range s.store.view.memberNames(room) {
		if m == me {
			continue
		}
		s.publish(m, KindRooms, RoomEvent{Room: room, Member: me, Joined: true, Change: RoomJoined})
		s.publish(m, KindPresence, PresenceEvent{Name: me, Online: online})
		s.publish(me, KindPresence, PresenceEvent{Name: m, Online: s.pres.online(m)})
	}
	return s.roomEntry(r, me), nil
}

// dropInvitation deletes any invitation of name to room, leftover or not.
func (s *Service) dropInvitation(ctx context.Context, room, name string) {
	if !s.store.view.hasInvitationRecord(room, name) {
		return // nothing to delete: no write
	}
	if err := s.store.delete(ctx, "invitation."+room+"."+name); err != nil {
		s.log.Warn("invitation not deleted", "room", room, "name", name, "err", err)
	}
}

// dropInvitationsBy deletes the invitations name made to room: they end
// with its right to invite.
func (s *Service) dropInvitationsBy(ctx context.Context, room, name string) {
	for _, n := range s.store.view.invitationsBy(name)[room] {
		s.dropInvitation(ctx, room, n)
	}
}

// takeInvitation deletes name's invitation to the room whose ID is id, if
// it is still there as read: noRoom when it is gone or another request
// took or changed it first.
func (s *Service) takeInvitation(ctx context.Context, room, name, id string) error {
	key := "invitation." + room + "." + name
	rev, raw, err := s.store.revision(ctx, key)
	if err != nil {
		return err
	}
	var inv invitationRecord
	if rev == 0 || json.Unmarshal(raw, &inv) != nil || inv.Room != id {
		return noRoom(room)
	}
	if err := s.store.deleteIf(ctx, key, rev); errors.Is(err, errConflict) {
		return noRoom(room)
	} else if err != nil {
		return err
	}
	return nil
}

// opRoomDecline: an invitee turns the invitation down; the inviter is
// told.
func (s *Service) opRoomDecline(ctx context.Context, me string, data []byte) (any, error) {
	room, err := s.roomName(data)
	if err != nil {
		return nil, err
	}
	inv, ok := s.store.view.invitation(room, me)
	if !ok {
		return nil, noRoom(room)
	}
	if err := s.store.delete(ctx, "invitation."+room+"."+me); err != nil {
		return nil, err
	}
	if s.store.view.isMember(room, inv.By) {
		s.publish(inv.By, KindRooms, RoomEvent{Room: room, Member: me, Change: RoomDeclined})
	}
	return nil, nil
}

func (s *Service) opRoomLeave(ctx context.Context, me string, data []byte) (any, error) {
	room, err := s.roomName(data)
	if err != nil {
		return nil, err
	}
	r, ok := s.store.view.room(room)
	if !ok || !s.store.view.isMember(room, me) {
		return nil, noRoom(room)
	}
	members := s.store.view.memberNames(room)
	if s.store.view.role(room, me) == RoleOwner {
		// The owner leaving ends the room (and every room tube in it).
		if err := s.deleteRoom(ctx, room, members); err != nil {
			return nil, err
		}
		return s.roomEntry(r, me), nil
	}
	if err := s.store.delete(ctx, "member."+room+"."+me); err != nil {
		return nil, err
	}
	s.dropInvitation(ctx, room, me)
	s.dropInvitationsBy(ctx, room, me)
	// Everyone, the leaver too: each daemon of the leaver's ends its room
	// tubes, whichever of them asked.
	for _, m := range members {
		s.publish(m, KindRooms, RoomEvent{Room: room, Member: me, Joined: false, Change: RoomLeft})
	}
	return s.roomEntry(r, me), nil
}

// opRoomRemove: the owner removes any member; an admin removes a plain
// member. Everyone in the room, the removed member too, is told, and
// their daemons end the member's room tubes. The member record is
// deleted with compare-and-set, so a role change racing the removal
// cannot bring the member back.
func (s *Service) opRoomRemove(ctx context.Context, me string, data []byte) (any, error) {
	req, err := s.roomMember(data)
	if err != nil {
		return nil, err
	}
	for range 8 {
		r, _ := s.store.view.room(req.Room)
		mine := s.store.view.role(req.Room, me)
		theirs := s.store.view.role(req.Room, req.Name)
		switch {
		case mine == "":
			return nil, noRoom(req.Room)
		case mine == RoleMember:
			return nil, tperr.New(tperr.PermissionDenied, "only the owner and admins of room %s can remove members", req.Room)
		case req.Name == me:
			return nil, tperr.New(tperr.InvalidArgument, "you cannot remove yourself from room %s; leave it (tube room leave)", req.Room)
		case theirs == "":
			if _, ok := s.store.view.invitation(req.Room, req.Name); ok {
				// Withdrawing an invitation is a removal before the join;
				// if the join takes it first, remove the member instead.
				if err := s.takeInvitation(ctx, req.Room, req.Name, r.ID); err == nil {
					return nil, nil
				}
				// Taken meanwhile: by a join, most likely, that may not
				// have written its member record yet. Say so rather than
				// "not a member".
				if s.store.view.isMember(req.Room, req.Name) {
					continue
				}
				return nil, tperr.New(tperr.ServiceBusy, "%s's invitation to room %s was taken meanwhile (a join?); look at the members and remove them again", req.Name, req.Room)
			}
			return nil, tperr.New(tperr.InvalidHandle, "%s is not a member of room %s", req.Name, req.Room)
		case theirs == RoleOwner:
			return nil, tperr.New(tperr.PermissionDenied, "the owner of room %s cannot be removed", req.Room)
		case theirs == RoleAdmin && mine != RoleOwner:
			return nil, tperr.New(tperr.PermissionDenied, "only the owner of room %s can remove an admin", req.Room)
		}
		members := s.store.view.memberNames(req.Room)
		key := "member." + req.Room + "." + req.Name
		rev, _, err := s.store.revision(ctx, key)
		if err != nil {
			return nil, err
		}
		if rev == 0 {
			continue // gone meanwhile: look again
		}
		if err := s.store.deleteIf(ctx, key, rev); errors.Is(err, errConflict) {
			continue // changed meanwhile (a role): decide again
		} else if err != nil {
			return nil, err
		}
		s.dropInvitation(ctx, req.Room, req.Name)
		s.dropInvitationsBy(ctx, req.Room, req.Name)
		for _, m := range members {
			s.publish(m, KindRooms, RoomEvent{Room: req.Room, Member: req.Name, Joined: false, Change: RoomRemoved, By: me})
		}
		return nil, nil
	}
	return nil, tperr.New(tperr.ServiceBusy, "room %s changed while %s was being removed; try again", req.Room, req.Name)
}

// opRoomAdmin: the owner makes a member an admin, or (Revoke) a plain
// member again.
func (s *Service) opRoomAdmin(ctx context.Context, me string, data []byte) (any, error) {
	req, err := s.roomMember(data)
	if err != nil {
		return nil, err
	}
	mine := s.store.view.role(req.Room, me)
	theirs := s.store.view.role(req.Room, req.Name)
	switch {
	case mine == "":
		return nil, noRoom(req.Room)
	case mine != RoleOwner:
		return nil, tperr.New(tperr.PermissionDenied, "only the owner of room %s can name admins", req.Room)
	case theirs == RoleOwner:
		return nil, tperr.New(tperr.InvalidArgument, "you own room %s: the owner is not an admin", req.Room)
	case theirs == "":
		return nil, tperr.New(tperr.InvalidHandle, "%s is not a member of room %s", req.Name, req.Room)
	}
	role := RoleAdmin
	if req.Revoke {
		role = RoleMember
	}
	if theirs != role {
		// Compare-and-set on the member record: a removal (or leave)
		// that came first makes this fail rather than bring them back.
		key := "member." + req.Room + "." + req.Name
		rev, raw, err := s.store.revision(ctx, key)
		if err != nil {
			return nil, err
		}
		var rec memberRecord
		if r, _ := s.store.view.room(req.Room); rev == 0 || json.Unmarshal(raw, &rec) != nil || rec.Room != r.ID {
			return nil, tperr.New(tperr.InvalidHandle, "%s is not a member of room %s", req.Name, req.Room)
		}
		rec.Admin = !req.Revoke
		if err := s.store.update(ctx, key, rec, rev); errors.Is(err, errConflict) {
			return nil, tperr.New(tperr.ServiceBusy, "%s's membership of room %s changed meanwhile; try again", req.Name, req.Room)
		} else if err != nil {
			return nil, err
		}
		if req.Revoke {
			s.dropInvitationsBy(ctx, req.Room, req.Name)
		}
		for _, m := range s.store.view.memberNames(req.Room) {
			s.publish(m, KindRooms, RoomEvent{Room: req.Room, Member: req.Name, Joined: true, Change: RoomRole, Role: role, By: me})
		}
	}
	return s.memberEntry(req.Room, req.Name), nil
}

func (s *Service) deleteRoom(ctx context.Context, room string, members []string) error {
	// The room record goes first: without it, leftover member and
	// invitation records grant nothing (isMember and invitation need the
	// room), so a crash half-way leaves no one in a room that does not
	// exist; a room created later under the name drops leftover
	// invitations.
	if err := s.store.delete(ctx, "room."+room); err != nil {
		return err
	}
	var errs []error
	for _, m := range members {
		errs = append(errs, s.store.delete(ctx, "member."+room+"."+m))
		s.publish(m, KindRooms, RoomEvent{Room: room, Deleted: true, Change: RoomDeleted})
	}
	for _, n := range s.store.view.inviteesOf(room) {
		errs = append(errs, s.store.delete(ctx, "invitation."+room+"."+n))
	}
	return errors.Join(errs...)
}

func (s *Service) memberEntry(room, name string) Member {
	role := s.store.view.role(room, name)
	return Member{Name: name, Owner: role == RoleOwner, Admin: role == RoleAdmin, Online: s.pres.online(name), Joined: s.store.view.joined(room, name)}
}

func (s *Service) opRoomMembers(ctx context.Context, me string, data []byte) (any, error) {
	room, err := s.roomName(data)
	if err != nil {
		return nil, err
	}
	if !s.store.view.isMember(room, me) {
		return nil, noRoom(room)
	}
	names := s.store.view.memberNames(room)
	out := make([]Member, 0, len(names))
	for _, n := range names {
		out = append(out, s.memberEntry(room, n))
	}
	return out, nil
}
