package tube

import (
	"context"
	"fmt"
	"net"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/peerlink"
	"github.com/tubes-dev/tubes/tperr"
)

// Accepting (the accepter's side): incoming offers, handlers accepting
// them, Accept and the local socket that hands connections to the peer link.

func (m *Manager) onOffer(from, room string, body []byte) error {
	o, err := decodeOffer(body)
	if err != nil {
		return err
	}
	params, err := openParams(o.Params, m.cfg.Key, o.ID, from, m.cfg.Account)
	if err != nil {
		return fmt.Errorf("the parameters of tube %s could not be opened: %w", o.ID, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	if old := m.tubes[o.ID]; old != nil {
		if !old.outgoing && old.peer == from {
			old.addrs, old.relay = o.Addrs, o.Relay // a re-sent offer (e.g. after a room rejoin) refreshes the addresses
			return nil
		}
		return fmt.Errorf("tube id %s is already in use", o.ID)
	}
	t := &tube{id: o.ID, service: o.Service, peer: from, room: room, state: LocalPending,
		wantPath: o.Path, params: params, addrs: o.Addrs, relay: o.Relay, conns: map[uint32]*tconn{}}
	m.tubes[t.id] = t
	m.emit(api.Event{Type: api.EventNewTube, TubeID: t.id, Service: t.service, Contact: from, Room: room,
		Direction: "incoming", State: StateName(t.state), StateCode: u32(t.state)})
	m.log.Info("tube offered to us", "tube", t.id, "service", t.service, "from", from, "room", room)
	go func() {
		m.updateNeed()
		if room != "" {
			m.checkOfferer(t)
		}
	}()
	if o.Request != "" {
		// A direct request may be answered through a room both are in:
		// the offerer granted it as a member of that room, and the tube
		// is the room's.
		if p := m.opens[o.Request]; p != nil && p.contact == from && (p.room == room || p.room == "") {
			delete(m.opens, o.Request)
			go func() {
				v, err := m.accept(m.ctx, t.id, p.req, "")
				p.ch <- openResult{v, err}
			}()
		}
		return nil
	}
	if h := m.handlerFor(t); h != nil {
		go m.autoAccept(t.id, h)
	}
	return nil
}

func (m *Manager) autoAccept(id string, h *handler) {
	if _, err := m.accept(m.ctx, id, h.req.AcceptRequest, h.client); err != nil {
		m.log.Warn("a handler could not accept a tube", "tube", id, "handler", h.id, "err", err)
	}
}

// Accept accepts an incoming tube: it makes the local socket, reaches
// the offerer over a peer link, and returns the tube with its Address.
func (m *Manager) Accept(ctx context.Context, id string, req api.AcceptRequest) (api.Tube, error) {
	return m.accept(ctx, id, req, "")
}

func (m *Manager) accept(ctx context.Context, id string, req api.AcceptRequest, handlerClient string) (api.Tube, error) {
	m.mu.Lock()
	t := m.tubes[id]
	switch {
	case t == nil:
		m.mu.Unlock()
		return api.Tube{}, tperr.New(tperr.NotFound, "there is no tube %s (tube tubes lists them)", id)
	case t.outgoing:
		m.mu.Unlock()
		return api.Tube{}, tperr.New(tperr.InvalidArgument, "tube %s is one you offered; the contact accepts it", id)
	case t.state != LocalPending || t.accepting:
		m.mu.Unlock()
		return api.Tube{}, tperr.New(tperr.NotAvailable, "tube %s is already accepted", id)
	}
	t.accepting = true
	m.mu.Unlock()
	ls, err := listenLocal(req, m.cfg.UID, m.cfg.SocketDir)
	var l *link
	if err == nil {
		l, err = m.ensureLink(ctx, t.peer, wantPath(t.wantPath))
		if err == nil {
			// A link dialed just now told the offerer already; one that
			// existed has not.
			if serr := l.s.SendCtrl(mustJSON(ctrlMsg{Op: ctrlAccepted, Tube: id})); serr != nil {
				err = tperr.Wrap(serr, tperr.ConnectionLost, "the link to %s broke", t.peer)
			}
		}
		if err != nil {
			ls.close()
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	t.accepting = false
	if err != nil {
		return api.Tube{}, err
	}
	if m.tubes[id] != t {
		ls.close()
		return api.Tube{}, tperr.New(tperr.Cancelled, "tube %s was closed while being accepted", id)
	}
	t.local, t.path, t.handler = ls, l.path, handlerClient
	m.setState(t, Open)
	go ls.serve(m.log, func(c net.Conn) { m.openLocal(t, c) }, func(err error) {
		m.log.Warn("accept failed; trying again", "listener", "tube-local", "tube", t.id, "err", err)
		if m.cfg.AcceptError != nil {
			m.cfg.AcceptError("tube-local", err)
		}
	})
	m.log.Info("accepted a tube", "tube", id, "service", t.service, "from", t.peer, "address", ls.addr, "access", ls.access, "path", l.path)
	return t.view(m.cfg.Account), nil
}

// openLocal carries one local connection of an accepted tube.
func (m *Manager) openLocal(t *tube, c net.Conn) {
	l, err := m.ensureLink(m.ctx, t.peer, wantPath(t.wantPath))
	var st *peerlink.Stream
	if err == nil {
		st, err = l.s.OpenStream(mustJSON(streamMeta{Tube: t.id}))
	}
	m.mu.Lock()
	if m.tubes[t.id] != t {
		m.mu.Unlock()
		if st != nil {
			st.Reset(peerlink.CodeCancelled, "the tube closed")
		}
		abort(c)
		return
	}
	t.nextConn++
	tc := &tconn{id: t.nextConn, st: st, contact: t.peer}
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok { // Unix peers are unnamed
		tc.source = a.String()
	}
	m.emit(api.Event{Type: api.EventNewLocalConnection, TubeID: t.id, Service: t.service, ConnectionID: u32(tc.id),
		Contact: t.peer, Room: t.room, Source: tc.source})
	if err != nil {
		m.emitClosed(t, tc, tperr.ConnectionFailed, err.Error())
		m.mu.Unlock()
		abort(c)
		return
	}
	t.conns[tc.id] = tc
	t.path = l.path
	m.mu.Unlock()
	// Splice, not run here: this goroutine's stack grew while accepting, and
	// an idle connection would keep it.
	st.Splice(c, func(err error) { m.connClosed(t, tc.id, err) })
}
