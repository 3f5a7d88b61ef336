package rendezvous

import (
	"context"
	"encoding/json"
	"net/netip"

	"github.com/tubes-dev/tubes/tperr"
)

// Delivery (service side): presence and key lookups, TURN credentials,
// and messages between contacts and room members.

func (s *Service) opPresence(ctx context.Context, me string, _ []byte) (any, error) {
	peers := s.store.view.peersOf(me)
	out := make([]PresenceEvent, 0, len(peers))
	for _, p := range peers {
		out = append(out, PresenceEvent{Name: p, Online: s.pres.online(p)})
	}
	return out, nil
}

// opKeys returns the public keys of accounts the caller may talk to:
// mutual contacts and fellow members of its rooms. Daemons pin these keys
// on peer links and seal tube parameters to them.
func (s *Service) opTURN(ctx context.Context, me string, data []byte) (any, error) {
	if err := decodeRequest(data, &struct{}{}); err != nil {
		return nil, err
	}
	if s.cfg.TURN == nil {
		return nil, tperr.New(tperr.NotAvailable, "this relay runs no TURN server")
	}
	return s.cfg.TURN(me)
}

// peerConnectedFrom reports whether one of account's contacts or room
// co-members is connected from ip.
func (s *Service) peerConnectedFrom(account string, ip netip.Addr) bool {
	for _, p := range s.store.view.peersOf(account) {
		if s.pres.connectedFrom(p, ip) {
			return true
		}
	}
	return false
}

func (s *Service) opKeys(ctx context.Context, me string, data []byte) (any, error) {
	var req keysReq
	if err := decodeRequest(data, &req); err != nil {
		return nil, err
	}
	if len(req.Names) > 1024 {
		return nil, tperr.New(tperr.InvalidArgument, "at most 1024 keys may be asked for at once")
	}
	peers := map[string]bool{}
	for _, p := range s.store.view.peersOf(me) {
		peers[p] = true
	}
	out := map[string]string{}
	for _, n := range req.Names {
		if !peers[n] {
			continue
		}
		if a, ok := s.store.view.account(n); ok {
			out[n] = a.Key
		}
	}
	return out, nil
}

// opSend delivers a message to a mutual contact, to the other members of
// a room, or to one member of a room both belong to, only where the roster
// or membership allows.
func (s *Service) opSend(ctx context.Context, me string, data []byte) (any, error) {
	var req sendReq
	if err := decodeRequest(data, &req); err != nil {
		return nil, err
	}
	if req.To == "" && req.Room == "" {
		return nil, tperr.New(tperr.InvalidArgument, "a message goes to a contact (to), a room (room), or a member of a room (both)")
	}
	if req.Kind == "" || len(req.Kind) > 64 {
		return nil, tperr.New(tperr.InvalidArgument, "field \"kind\" must be 1 to 64 characters")
	}
	if req.To != "" && req.Room != "" {
		to, err := NormalizeName("contact", req.To)
		if err != nil {
			return nil, err
		}
		room, err := NormalizeName("room", req.Room)
		if err != nil {
			return nil, err
		}
		if !s.store.view.isMember(room, me) {
			return nil, noRoom(room)
		}
		if !s.store.view.isMember(room, to) {
			return nil, tperr.New(tperr.PermissionDenied, "%s is not a member of room %s", to, room)
		}
		if !s.pres.online(to) {
			return nil, tperr.New(tperr.Offline, "%s is offline", to)
		}
		s.publish(to, KindMessage, Message{From: me, Room: room, Kind: req.Kind, Body: req.Body})
		s.m.delivered(1)
		return sendResp{Delivered: []string{to}}, nil
	}
	if req.To != "" {
		to, err := NormalizeName("contact", req.To)
		if err != nil {
			return nil, err
		}
		if s.store.view.pair(me, to).state(me) != ContactMutual {
			return nil, tperr.New(tperr.PermissionDenied, "%s is not your contact: you can only send to contacts who approved you", to)
		}
		if !s.pres.online(to) {
			return nil, tperr.New(tperr.Offline, "%s is offline", to)
		}
		s.publish(to, KindMessage, Message{From: me, Kind: req.Kind, Body: req.Body})
		s.m.delivered(1)
		return sendResp{Delivered: []string{to}}, nil
	}
	room, err := NormalizeName("room", req.Room)
	if err != nil {
		return nil, err
	}
	if !s.store.view.isMember(room, me) {
		return nil, noRoom(room)
	}
	delivered := []string{}
	for _, m := range s.store.view.memberNames(room) {
		if m == me || !s.pres.online(m) {
			continue
		}
		s.publish(m, KindMessage, Message{From: me, Room: room, Kind: req.Kind, Body: req.Body})
		delivered = append(delivered, m)
	}
	s.m.delivered(len(delivered))
	return sendResp{Delivered: delivered}, nil
}

// publish delivers v into account's inbox of the given kind.
func (s *Service) publish(account, kind string, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		s.log.Error("encode delivery", "err", err)
		return
	}
	if err := s.nc.Publish(inboxSubject(account, kind), b); err != nil {
		s.log.Warn("deliver", "account", account, "kind", kind, "err", err)
	}
}
