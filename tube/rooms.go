package tube

import (
	"cmp"
	"context"
	"slices"
	"time"

	"github.com/tubes-dev/tubes/tperr"
)

// Roster and rooms: contacts removed and room members leaving or joining,
// and the checks that an offerer or a requester is still in the room.

// checkOfferer ends an incoming room tube whose offerer has left the
// room already: room events reach us only once updateNeed subscribed to
// them, so a leave just before that would go unseen. The relay's view of
// membership may lag its events a little: look again after a while.
func (m *Manager) checkOfferer(t *tube) {
	for _, wait := range []time.Duration{0, 500 * time.Millisecond, 2 * time.Second} {
		select {
		case <-m.ctx.Done():
			return
		case <-time.After(wait):
		}
		m.mu.Lock()
		gone := m.tubes[t.id] != t
		m.mu.Unlock()
		if gone {
			return
		}
		ctx, cancel := context.WithTimeout(m.ctx, 10*time.Second)
		members, err := m.cfg.Signaller.RoomMembers(ctx, t.room)
		cancel()
		if err != nil || slices.Contains(members, t.peer) {
			continue
		}
		m.mu.Lock()
		m.endTube(t, tperr.Cancelled, t.peer+", who offered the tube, left room "+t.room)
		m.mu.Unlock()
		m.updateNeed()
		return
	}
}

// checkRequester ends t, a room tube answering only's request, if only is
// no longer a member of its room.
func (m *Manager) checkRequester(t *tube) {
	ctx, cancel := context.WithTimeout(m.ctx, 10*time.Second)
	defer cancel()
	members, err := m.cfg.Signaller.RoomMembers(ctx, t.room)
	if err != nil || slices.Contains(members, t.only) {
		return
	}
	m.mu.Lock()
	if m.tubes[t.id] == t {
		m.endTube(t, tperr.Cancelled, t.only+", whose request it answered, is not in room "+t.room)
	}
	m.mu.Unlock()
	m.updateNeed()
}

// OnContactRemoved ends the p2p tubes with a contact who is no longer
// mutual.
func (m *Manager) OnContactRemoved(name string) {
	m.mu.Lock()
	for _, t := range m.tubes {
		if t.room == "" && t.peer == name {
			m.endTube(t, tperr.PermissionDenied, name+" is no longer a contact")
		}
	}
	m.mu.Unlock()
	m.updateNeed()
}

// OnRoomEvent follows room membership: a room tube ends when its offerer
// leaves or is removed (or we do, or the room is deleted); a member who
// leaves or is removed loses its connections and whatever it reached
// through the room; a member who joins is offered the room tubes offered
// to later members (OfferRequest.LaterMembers), and no other.
func (m *Manager) OnRoomEvent(room, member string, joined, deleted, removed bool) {
	gone := " left room "
	if removed {
		gone = " was removed from room "
	}
	var offerTo []*tube
	m.mu.Lock()
	for _, t := range m.tubes {
		if t.room != room {
			continue
		}
		switch {
		case deleted:
			m.endTube(t, tperr.Cancelled, "room "+room+" was deleted")
		case member == m.cfg.Account && !joined && removed:
			m.endTube(t, tperr.Cancelled, "you were removed from room "+room)
		case member == m.cfg.Account && !joined:
			m.endTube(t, tperr.Cancelled, "you left room "+room)
		case !t.outgoing && member == t.peer && !joined:
			m.endTube(t, tperr.Cancelled, t.peer+", who offered the tube,"+gone+room)
		case t.outgoing && !joined && t.only == member:
			m.endTube(t, tperr.Cancelled, member+", whose request it answered,"+gone+room)
		case t.outgoing && !joined:
			delete(t.members, member)
			delete(t.accepted, member)
			m.resetMember(t, member, member+gone+room)
		case t.outgoing && joined && t.laterMembers && member != m.cfg.Account && !t.members[member] && t.only == "":
			t.members[member] = true
			offerTo = append(offerTo, t)
		}
	}
	m.mu.Unlock()
	m.updateNeed()
	if len(offerTo) > 0 {
		go m.offerToLaterMember(room, member, offerTo)
	}
}

// offerToLaterMember offers room tubes to a member who joined after they
// were offered, each with parameters sealed to them: fresh ones where
// the export generates them (a generator or --params-exec).
func (m *Manager) offerToLaterMember(room, member string, ts []*tube) {
	ctx, cancel := context.WithTimeout(m.ctx, 10*time.Second)
	defer cancel()
	keys, err := m.keys(ctx, []string{member})
	if err != nil || keys[member] == nil {
		m.log.Info("could not offer room tubes to a new member", "room", room, "member", member, "err", err)
		return
	}
	joins, err := m.cfg.Signaller.RoomJoins(ctx, room)
	if err != nil {
		m.log.Info("could not offer room tubes to a new member", "room", room, "member", member, "err", err)
		return
	}
	m.mu.Lock()
	for _, t := range ts {
		if t.joined == nil {
			t.joined = map[string]time.Time{}
		}
		t.joined[member] = joins[member]
	}
	m.mu.Unlock()
	// In the order they were offered, as the room's members got them.
	slices.SortFunc(ts, func(a, b *tube) int { return cmp.Compare(a.seq, b.seq) })
	for _, t := range ts {
		params := t.params
		if t.exp != nil && (t.exp.ParamsGenerator || t.exp.ParamsExec != "") {
			params, err = m.params(ctx, t.exp, ParamsRequest{Tube: t.id, Service: t.service, Contact: member, Room: room})
			if err != nil {
				m.log.Info("no parameters for a new member; room tube not offered to them", "tube", t.id, "member", member, "err", err)
				m.mu.Lock()
				delete(t.members, member)
				m.mu.Unlock()
				continue
			}
		}
		if err := m.sendOfferWith(ctx, t, member, keys[member], "", params); err != nil {
			m.log.Info("could not offer a room tube to a new member", "tube", t.id, "member", member, "err", err)
		}
	}
}

// Resync checks the room tubes against their rooms' members as the relay
// has them now. Room events are not delivered while the account is
// offline, so a removal, leave or deletion that happened meanwhile would
// go unseen: the daemon calls Resync each time the account connects,
// once it follows room events again.
func (m *Manager) Resync(ctx context.Context) {
	m.mu.Lock()
	rooms := map[string]bool{}
	for _, t := range m.tubes {
		if t.room != "" {
			rooms[t.room] = true
		}
	}
	m.mu.Unlock()
	for room := range rooms {
		joins, err := m.cfg.Signaller.RoomJoins(ctx, room)
		if tperr.Has(err, tperr.PermissionDenied) {
			m.endRoom(room, "you are no longer in room "+room)
			continue
		}
		if err != nil {
			m.log.Info("room tubes not checked against the room", "room", room, "err", err)
			continue
		}
		in := map[string]bool{}
		for n := range joins {
			in[n] = true
		}
		if !in[m.cfg.Account] {
			m.endRoom(room, "you are no longer in room "+room)
			continue
		}
		gone := map[string]bool{}
		m.mu.Lock()
		for _, t := range m.tubes {
			if t.room != room {
				continue
			}
			for n := range t.members {
				// Gone, or gone and back (a new join time): a member who
				// was removed and came back gets only what is offered now.
				if at, known := t.joined[n]; !in[n] || known && !at.Equal(joins[n]) {
					gone[n] = true
				}
			}
			for _, n := range []string{t.only, t.peer} {
				if n != "" && !in[n] {
					gone[n] = true
				}
			}
		}
		m.mu.Unlock()
		for n := range gone {
			m.OnRoomEvent(room, n, false, false, false)
		}
		// Joins missed: members the later-members tubes were not offered
		// to get them now (OnRoomEvent offers only those).
		joined := map[string]bool{}
		m.mu.Lock()
		for _, t := range m.tubes {
			if t.room != room || !t.outgoing || !t.laterMembers || t.only != "" {
				continue
			}
			for n := range joins {
				if n != m.cfg.Account && !t.members[n] {
					joined[n] = true
				}
			}
		}
		m.mu.Unlock()
		for n := range joined {
			m.OnRoomEvent(room, n, true, false, false)
		}
	}
}

// endRoom ends every tube of a room.
func (m *Manager) endRoom(room, why string) {
	m.mu.Lock()
	for _, t := range m.tubes {
		if t.room == room {
			m.endTube(t, tperr.Cancelled, why)
		}
	}
	m.mu.Unlock()
	m.updateNeed()
}
