package tube

import (
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
// leaves (or we do, or the room is deleted); a member who leaves loses
// its connections; a member who joins is offered our room tubes.
func (m *Manager) OnRoomEvent(room, member string, joined, deleted bool) {
	var offerTo []*tube
	m.mu.Lock()
	for _, t := range m.tubes {
		if t.room != room {
			continue
		}
		switch {
		case deleted:
			m.endTube(t, tperr.Cancelled, "room "+room+" was deleted")
		case member == m.cfg.Account && !joined:
			m.endTube(t, tperr.Cancelled, "you left room "+room)
		case !t.outgoing && member == t.peer && !joined:
			m.endTube(t, tperr.Cancelled, t.peer+", who offered the tube, left room "+room)
		case t.outgoing && !joined && t.only == member:
			m.endTube(t, tperr.Cancelled, member+", whose request it answered, left room "+room)
		case t.outgoing && !joined:
			delete(t.members, member)
			delete(t.accepted, member)
			m.resetMember(t, member, member+" left room "+room)
		case t.outgoing && joined && member != m.cfg.Account && !t.members[member] && t.only == "":
			t.members[member] = true
			offerTo = append(offerTo, t)
		}
	}
	m.mu.Unlock()
	m.updateNeed()
	if len(offerTo) > 0 {
		go func() {
			ctx, cancel := context.WithTimeout(m.ctx, 10*time.Second)
			defer cancel()
			keys, err := m.keys(ctx, []string{member})
			if err != nil || keys[member] == nil {
				m.log.Info("could not offer room tubes to a new member", "room", room, "member", member, "err", err)
				return
			}
			for _, t := range offerTo {
				if err := m.sendOffer(ctx, t, member, keys[member], ""); err != nil {
					m.log.Info("could not offer a room tube to a new member", "tube", t.id, "member", member, "err", err)
				}
			}
		}()
	}
}
