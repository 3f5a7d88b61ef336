package tube

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/peerlink"
	"github.com/tubes-dev/tubes/tperr"
)

// Ending tubes and connections: closes from peers, a room member leaving,
// CloseTube, and how an ended stream maps to a Telepathy error.

func (m *Manager) onClose(from, room string, body []byte) error {
	c, err := decodeClose(body)
	if err != nil {
		return err
	}
	name := c.Error
	if !tperr.IsName(name) {
		name = tperr.Cancelled
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	t := m.tubes[c.ID]
	switch {
	case t == nil:
		return nil // already gone here
	case !t.outgoing && t.peer == from:
		m.endTube(t, name, fmt.Sprintf("%s closed the tube", from)+suffix(c.Message))
	case t.outgoing && (t.room == "" && t.peer == from || t.only != "" && t.only == from):
		m.endTube(t, name, fmt.Sprintf("%s closed the tube", from)+suffix(c.Message))
	case t.outgoing && t.room != "" && t.members[from]:
		delete(t.accepted, from)
		m.resetMember(t, from, fmt.Sprintf("%s closed the tube", from))
	default:
		return fmt.Errorf("%s may not close tube %s", from, c.ID)
	}
	go m.updateNeed()
	return nil
}

func suffix(msg string) string {
	if msg == "" {
		return ""
	}
	return ": " + msg
}

// resetMember ends one room member's connections of an outgoing room
// tube. m.mu is held.
func (m *Manager) resetMember(t *tube, member, why string) {
	for id, c := range t.conns {
		if c.contact == member {
			delete(t.conns, id)
			m.emitClosed(t, c, tperr.Cancelled, why)
			go c.st.Reset(peerlink.CodeCancelled, why)
		}
	}
}

// endTube closes a tube here: its connections end with errName, its
// local socket is removed, TubeClosed is signalled. m.mu is held; the
// caller runs updateNeed after unlocking.
func (m *Manager) endTube(t *tube, errName, msg string) {
	if m.tubes[t.id] != t {
		return
	}
	delete(m.tubes, t.id)
	code := codeOf(errName)
	for id, c := range t.conns {
		delete(t.conns, id)
		m.emitClosed(t, c, errName, msg)
		go c.st.Reset(code, msg)
	}
	if t.local != nil {
		t.local.close()
	}
	m.emit(api.Event{Type: api.EventTubeClosed, TubeID: t.id, Service: t.service, Contact: t.peer, Room: t.room,
		Error: errName, Message: msg})
	if t.outgoing {
		m.releaseAllocation()
	}
	m.log.Info("tube closed", "tube", t.id, "service", t.service, "error", tperr.Short(errName), "message", msg)
}

// codeOf maps a Telepathy error name to the reset code sent to the peer.
func codeOf(errName string) peerlink.Code {
	switch errName {
	case tperr.ConnectionLost:
		return peerlink.CodeLost
	case tperr.ConnectionRefused:
		return peerlink.CodeRefused
	case tperr.PermissionDenied:
		return peerlink.CodeDenied
	}
	return peerlink.CodeCancelled
}

// errOf maps how a stream ended to a ConnectionClosed error.
func errOf(err error) (string, string) {
	var re *peerlink.ResetError
	if err == nil {
		return tperr.Cancelled, "the connection was closed"
	}
	if !errors.As(err, &re) {
		return tperr.ConnectionLost, err.Error()
	}
	switch re.Code {
	case peerlink.CodeLost:
		return tperr.ConnectionLost, re.Message
	case peerlink.CodeRefused:
		return tperr.ConnectionRefused, re.Message
	case peerlink.CodeDenied:
		return tperr.PermissionDenied, re.Message
	}
	return tperr.Cancelled, re.Message
}

// emitClosed signals ConnectionClosed. m.mu is held.
func (m *Manager) emitClosed(t *tube, c *tconn, errName, msg string) {
	m.emit(api.Event{Type: api.EventConnectionClosed, TubeID: t.id, Service: t.service, ConnectionID: u32(c.id),
		Contact: c.contact, Room: t.room, Source: c.source, Error: errName, Message: msg})
}

// connClosed records the end of a connection, once.
func (m *Manager) connClosed(t *tube, id uint32, err error) {
	errName, msg := errOf(err)
	m.mu.Lock()
	defer m.mu.Unlock()
	if c := t.conns[id]; c != nil {
		delete(t.conns, id)
		m.emitClosed(t, c, errName, msg)
	}
}

// CloseTube closes a tube: its connections end with Cancelled on both
// sides and the other side is told.
func (m *Manager) CloseTube(id string) error {
	m.mu.Lock()
	t := m.tubes[id]
	if t == nil {
		m.mu.Unlock()
		return tperr.New(tperr.NotFound, "there is no tube %s (tube tubes lists them)", id)
	}
	m.endTube(t, tperr.Cancelled, "closed by "+m.cfg.Account)
	m.mu.Unlock()
	m.updateNeed()
	body := mustJSON(closeMsg{ID: t.id, Error: tperr.Cancelled})
	to, room := t.peer, t.room
	if t.outgoing && t.room != "" {
		to = "" // every member of the room
	}
	go func() {
		ctx, cancel := context.WithTimeout(m.ctx, 10*time.Second)
		defer cancel()
		if _, err := m.send(ctx, to, room, kindClose, body); err != nil {
			m.log.Info("could not tell the peer a tube closed", "tube", t.id, "err", err)
		}
	}()
	return nil
}
