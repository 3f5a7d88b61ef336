package tube

import (
	"context"
	"maps"
	"slices"
	"time"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/identity"
	"github.com/tubes-dev/tubes/tperr"
)

// Offering (the offerer's side): Offer to a contact or a room, the keys
// that parameters are sealed to, and the offer message.

// Offer offers an exported service to a contact or a room.
func (m *Manager) Offer(ctx context.Context, req api.OfferRequest) (api.Tube, error) {
	return m.offer(ctx, req, "", nil)
}

// offer offers a tube to req's service: e, or the export of that name.
// request is the reverse-tube request it answers, if any.
func (m *Manager) offer(ctx context.Context, req api.OfferRequest, request string, e *export) (api.Tube, error) {
	if err := checkService(req.Service); err != nil {
		return api.Tube{}, err
	}
	if err := checkPath(req.Path); err != nil {
		return api.Tube{}, err
	}
	// A request that came through a room is answered with a tube in that
	// room offered to the requester alone.
	only := ""
	if request != "" && req.To != "" && req.Room != "" {
		only = req.To
	} else if (req.To == "") == (req.Room == "") {
		return api.Tube{}, tperr.New(tperr.InvalidArgument, "a tube is offered to a contact (to) or a room (room), exactly one")
	}
	if req.To == m.cfg.Account {
		return api.Tube{}, tperr.New(tperr.InvalidArgument, "you cannot offer a tube to yourself")
	}
	if e == nil {
		m.mu.Lock()
		e = m.exports[req.Service]
		m.mu.Unlock()
	}
	if e == nil {
		return api.Tube{}, tperr.New(tperr.NotAvailable, "%s has not exported %q; run tube export %s first", m.cfg.Account, req.Service, req.Service)
	}
	sig := m.cfg.Signaller
	var recipients []string
	var joinedAt map[string]time.Time
	if req.Room == "" {
		recipients = []string{req.To}
	} else {
		joins, err := sig.RoomJoins(ctx, req.Room)
		if err != nil {
			return api.Tube{}, err
		}
		joinedAt = joins
		members := slices.Sorted(maps.Keys(joins))
		if !slices.Contains(members, m.cfg.Account) {
			return api.Tube{}, tperr.New(tperr.PermissionDenied, "you are not a member of room %s", req.Room)
		}
		for _, n := range members {
			if n != m.cfg.Account && (only == "" || n == only) {
				recipients = append(recipients, n)
			}
		}
		if only != "" && len(recipients) == 0 {
			return api.Tube{}, tperr.New(tperr.PermissionDenied, "%s is not a member of room %s", only, req.Room)
		}
	}
	keys, err := m.keys(ctx, recipients)
	if err != nil {
		return api.Tube{}, err
	}
	if req.Room == "" && keys[req.To] == nil {
		return api.Tube{}, tperr.New(tperr.PermissionDenied, "%s is not your contact: tubes are offered to contacts who approved you (tube contact add %s)", req.To, req.To)
	}
	m.mu.Lock()
	m.offering++
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		m.offering--
		m.releaseAllocation() // if the offer failed and nothing else needs it
		m.mu.Unlock()
	}()
	relay, err := m.relayFor(ctx, wantPath(req.Path))
	if err != nil {
		return api.Tube{}, err
	}
	id := newID()
	params, err := m.params(ctx, e, ParamsRequest{Tube: id, Service: req.Service, Contact: req.To, Room: req.Room})
	if err != nil {
		return api.Tube{}, err
	}
	peer := req.To
	if req.Room != "" {
		peer = ""
	}
	t := &tube{id: id, service: req.Service, peer: peer, room: req.Room, only: only, outgoing: true, state: NotOffered,
		wantPath: req.Path, relay: relay, params: params, exp: e, members: map[string]bool{}, accepted: map[string]bool{}, conns: map[uint32]*tconn{},
		laterMembers: req.Room != "" && req.LaterMembers, joined: joinedAt}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return api.Tube{}, tperr.New(tperr.Disconnected, "account %s is being removed", m.cfg.Account)
	}
	m.seq++
	t.seq = m.seq
	m.tubes[id] = t
	m.emit(api.Event{Type: api.EventNewTube, TubeID: id, Service: t.service, Contact: t.peer, Room: t.room,
		Direction: "outgoing", State: StateName(t.state), StateCode: u32(t.state)})
	m.mu.Unlock()
	m.updateNeed()

	if req.Room == "" {
		if err := m.sendOffer(ctx, t, req.To, keys[req.To], request); err != nil {
			m.mu.Lock()
			m.endTube(t, tperr.NameOr(err, tperr.NotAvailable), err.Error())
			m.mu.Unlock()
			m.updateNeed()
			return api.Tube{}, err
		}
		m.mu.Lock()
		if len(t.accepted) > 0 {
			m.setState(t, Open) // accepted already, over an open peer link
		} else {
			m.setState(t, RemotePending)
		}
	} else {
		// Members are marked before their offers go out: an acceptance
		// can come back over an open peer link before the next send.
		m.mu.Lock()
		for _, n := range recipients {
			if keys[n] != nil {
				t.members[n] = true
			}
		}
		m.mu.Unlock()
		for _, n := range recipients {
			if k := keys[n]; k != nil {
				if err := m.sendOffer(ctx, t, n, k, request); err != nil {
					m.log.Info("room tube not offered to a member", "room", t.room, "member", n, "err", err)
					m.mu.Lock()
					delete(t.members, n)
					m.mu.Unlock()
				}
			}
		}
		m.mu.Lock()
		m.setState(t, Open)
	}
	v := t.view(m.cfg.Account)
	m.mu.Unlock()
	m.log.Info("offered a tube", "tube", id, "service", t.service, "to", t.peer, "room", t.room)
	if only != "" {
		// Room events are followed from now on (updateNeed); a requester
		// who left before that is looked for once more.
		go m.checkRequester(t)
	}
	return v, nil
}

// keys fetches and parses the public keys of names; names the rendezvous
// does not give (not a contact or co-member) are absent.
func (m *Manager) keys(ctx context.Context, names []string) (map[string]identity.PublicKey, error) {
	out := map[string]identity.PublicKey{}
	if len(names) == 0 {
		return out, nil
	}
	raw, err := m.cfg.Signaller.Keys(ctx, names)
	if err != nil {
		return nil, err
	}
	for n, s := range raw {
		k, err := identity.ParsePublicKey(s)
		if err != nil {
			return nil, tperr.New(tperr.EncryptionError, "the rendezvous gave a malformed key for %s", n)
		}
		out[n] = k
	}
	return out, nil
}

// sendOffer sends the offer of t to one recipient, with the parameters
// sealed to that recipient's key.
func (m *Manager) sendOffer(ctx context.Context, t *tube, to string, key identity.PublicKey, request string) error {
	return m.sendOfferWith(ctx, t, to, key, request, t.params)
}

// sendOfferWith sends the offer of t to one recipient with params.
func (m *Manager) sendOfferWith(ctx context.Context, t *tube, to string, key identity.PublicKey, request string, params map[string]api.Value) error {
	sealed, err := sealParams(params, key, t.id, m.cfg.Account, to)
	if err != nil {
		return tperr.Wrap(err, tperr.EncryptionError, "cannot seal the parameters of tube %s for %s", t.id, to)
	}
	m.mu.Lock()
	relay := t.relay // reallocate replaces it under m.mu
	m.mu.Unlock()
	msg := offerMsg{ID: t.id, Service: t.service, Addrs: m.peerAddrs(), Path: t.wantPath, Relay: relay, Params: sealed, Request: request}
	room := t.room
	_, err = m.send(ctx, to, room, kindOffer, mustJSON(msg))
	return err
}
