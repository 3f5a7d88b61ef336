package rendezvous

import (
	"context"
	"errors"
	"time"

	"github.com/tubes-dev/tubes/tperr"
)

// Rooms (service side): creating, joining, leaving and listing rooms and
// their members.

func (s *Service) roomName(data []byte) (string, error) {
	var req roomReq
	if err := decodeRequest(data, &req); err != nil {
		return "", err
	}
	return NormalizeName("room", req.Room)
}

func (s *Service) roomEntry(r roomRecord) Room {
	return Room{Name: r.Name, Owner: r.Owner, Members: len(s.store.view.memberNames(r.Name))}
}

func (s *Service) opRooms(ctx context.Context, me string, _ []byte) (any, error) {
	rs := s.store.view.roomsOfAccount(me)
	out := make([]Room, 0, len(rs))
	for _, r := range rs {
		out = append(out, s.roomEntry(r))
	}
	return out, nil
}

func (s *Service) opRoomCreate(ctx context.Context, me string, data []byte) (any, error) {
	room, err := s.roomName(data)
	if err != nil {
		return nil, err
	}
	r := roomRecord{Name: room, Owner: me, Created: time.Now().UTC()}
	if err := s.store.create(ctx, "room."+room, r); errors.Is(err, errConflict) {
		return nil, tperr.New(tperr.NotAvailable, "a room named %s already exists; join it or pick another name", room)
	} else if err != nil {
		return nil, err
	}
	if err := s.store.put(ctx, "member."+room+"."+me, memberRecord{Joined: r.Created}); err != nil {
		return nil, err
	}
	return s.roomEntry(r), nil
}

func (s *Service) opRoomJoin(ctx context.Context, me string, data []byte) (any, error) {
	room, err := s.roomName(data)
	if err != nil {
		return nil, err
	}
	r, ok := s.store.view.room(room)
	if !ok {
		return nil, tperr.New(tperr.DoesNotExist, "there is no room named %s on this relay", room)
	}
	if !s.store.view.isMember(room, me) {
		if err := s.store.put(ctx, "member."+room+"."+me, memberRecord{Joined: time.Now().UTC()}); err != nil {
			return nil, err
		}
		online := s.pres.online(me)
		for _, m := range s.store.view.memberNames(room) {
			if m == me {
				continue
			}
			s.publish(m, KindRooms, RoomEvent{Room: room, Member: me, Joined: true})
			s.publish(m, KindPresence, PresenceEvent{Name: me, Online: online})
			s.publish(me, KindPresence, PresenceEvent{Name: m, Online: s.pres.online(m)})
		}
	}
	return s.roomEntry(r), nil
}

func (s *Service) opRoomLeave(ctx context.Context, me string, data []byte) (any, error) {
	room, err := s.roomName(data)
	if err != nil {
		return nil, err
	}
	r, ok := s.store.view.room(room)
	if !ok {
		return nil, tperr.New(tperr.DoesNotExist, "there is no room named %s on this relay", room)
	}
	if !s.store.view.isMember(room, me) {
		return nil, tperr.New(tperr.NotAvailable, "you are not a member of room %s", room)
	}
	members := s.store.view.memberNames(room)
	if r.Owner == me {
		// The owner leaving ends the room (and every room tube in it).
		if err := s.deleteRoom(ctx, room, members); err != nil {
			return nil, err
		}
		return s.roomEntry(r), nil
	}
	if err := s.store.delete(ctx, "member."+room+"."+me); err != nil {
		return nil, err
	}
	for _, m := range members {
		if m != me {
			s.publish(m, KindRooms, RoomEvent{Room: room, Member: me, Joined: false})
		}
	}
	return s.roomEntry(r), nil
}

func (s *Service) deleteRoom(ctx context.Context, room string, members []string) error {
	// The room record goes first: without it, leftover member records
	// grant nothing (isMember needs the room), so a crash half-way leaves
	// no one in a room that does not exist.
	if err := s.store.delete(ctx, "room."+room); err != nil {
		return err
	}
	var errs []error
	for _, m := range members {
		errs = append(errs, s.store.delete(ctx, "member."+room+"."+m))
		s.publish(m, KindRooms, RoomEvent{Room: room, Deleted: true})
	}
	return errors.Join(errs...)
}

func (s *Service) opRoomMembers(ctx context.Context, me string, data []byte) (any, error) {
	room, err := s.roomName(data)
	if err != nil {
		return nil, err
	}
	r, ok := s.store.view.room(room)
	if !ok {
		return nil, tperr.New(tperr.DoesNotExist, "there is no room named %s on this relay", room)
	}
	if !s.store.view.isMember(room, me) {
		return nil, tperr.New(tperr.PermissionDenied, "only members of room %s can list its members; join it first", room)
	}
	names := s.store.view.memberNames(room)
	out := make([]Member, 0, len(names))
	for _, n := range names {
		out = append(out, Member{Name: n, Owner: n == r.Owner, Online: s.pres.online(n)})
	}
	return out, nil
}
