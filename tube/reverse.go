package tube

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/tperr"
)

// Handlers and reverse tubes: handlers that accept matching offers, Open
// (asking a contact for a tube to a service it exports or publishes), and
// the requests and refusals that carry it.

type handler struct {
	id, client string
	req        api.HandleRequest
}

type pendingOpen struct {
	contact string
	room    string // asked through this room
	req     api.AcceptRequest
	ch      chan openResult
}

type openResult struct {
	t   api.Tube
	err error
}

// AddHandler accepts matching offers automatically for client until it
// goes away (DropClient); offers already waiting are accepted too.
func (m *Manager) AddHandler(client string, req api.HandleRequest) (string, error) {
	if err := checkService(req.Service); err != nil {
		return "", err
	}
	if err := checkAcceptRequest(req.AcceptRequest); err != nil {
		return "", err
	}
	h := &handler{id: newID(), client: client, req: req}
	m.mu.Lock()
	m.handlers[h.id] = h
	var waiting []string
	for _, t := range m.tubes {
		if !t.outgoing && t.state == LocalPending && !t.accepting && matches(h, t) {
			waiting = append(waiting, t.id)
		}
	}
	m.mu.Unlock()
	for _, id := range waiting {
		go m.autoAccept(id, h)
	}
	return h.id, nil
}

// checkAcceptRequest rejects what listenLocal would, without listening.
func checkAcceptRequest(r api.AcceptRequest) error {
	if err := checkAccess(r.Access); err != nil {
		return err
	}
	if r.Unix == "" && (r.Access == AccessCredentials || r.Access == AccessCredentialsByte) {
		return tperr.New(tperr.NotImplemented, "access %s needs a Unix socket", r.Access)
	}
	if r.Unix != "" && r.Access == AccessPort {
		return tperr.New(tperr.NotImplemented, "access port needs a TCP socket")
	}
	if r.Unix != "" && r.Unix != "auto" {
		return tperr.New(tperr.InvalidArgument, "a handler accepts many tubes, so its Unix sockets must be \"auto\"")
	}
	if r.Listen != "" {
		if ap, err := netip.ParseAddrPort(r.Listen); err != nil || ap.Port() != 0 {
			return tperr.New(tperr.InvalidArgument, "a handler accepts many tubes, so its listen address must have port 0")
		}
	}
	return nil
}

func matches(h *handler, t *tube) bool {
	return h.req.Service == t.service && (h.req.From == "" || h.req.From == t.peer) && h.req.Room == t.room
}

// handlerFor returns the first handler matching t. m.mu is held.
func (m *Manager) handlerFor(t *tube) *handler {
	var best *handler
	for _, h := range m.handlers {
		if matches(h, t) && (best == nil || h.id < best.id) {
			best = h
		}
	}
	return best
}

// DropClient removes what a local-API client owned: its handlers and its
// generator exports.
func (m *Manager) DropClient(client string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for id, h := range m.handlers {
		if h.client == client {
			delete(m.handlers, id)
		}
	}
	for svc, e := range m.exports {
		if e.client == client {
			delete(m.exports, svc)
		}
	}
}

// openTimeout bounds how long Open waits for the contact's answer.
const openTimeout = 20 * time.Second

// Open asks a contact for a tube to a service it exported for us (a
// reverse tube) and accepts it as req says.
func (m *Manager) Open(ctx context.Context, req api.OpenRequest) (api.Tube, error) {
	if err := checkService(req.Service); err != nil {
		return api.Tube{}, err
	}
	if err := checkAccess(req.Access); err != nil {
		return api.Tube{}, err
	}
	p := &pendingOpen{contact: req.Contact, room: req.Room, req: req.AcceptRequest, ch: make(chan openResult, 1)}
	rid := newID()
	m.mu.Lock()
	m.opens[rid] = p
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		delete(m.opens, rid)
		m.mu.Unlock()
	}()
	if err := checkImplementation(req.Implementation); err != nil {
		return api.Tube{}, err
	}
	msg := requestMsg{Request: rid, Service: req.Service, Implementation: req.Implementation}
	if _, err := m.send(ctx, req.Contact, req.Room, kindRequest, mustJSON(msg)); err != nil {
		return api.Tube{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, openTimeout)
	defer cancel()
	select {
	case r := <-p.ch:
		return r.t, r.err
	case <-ctx.Done():
		return api.Tube{}, tperr.New(tperr.Timeout, "%s did not answer the request for %s within %s", req.Contact, req.Service, openTimeout)
	}
}

// checkAccess rejects an unknown access control name.
func checkAccess(access string) error {
	switch access {
	case "", AccessLocalhost, AccessPort, AccessCredentials, AccessCredentialsByte:
		return nil
	}
	return tperr.New(tperr.InvalidArgument, "access %q is not one of localhost, port, credentials, credentials-byte", access)
}

// onRequest answers a reverse-tube request: an offer if the export lets
// the requester in, else a refusal.
func (m *Manager) onRequest(from, room string, body []byte) error {
	r, err := decodeRequest(body)
	if err != nil {
		return err
	}
	go func() {
		ctx, cancel := context.WithTimeout(m.ctx, openTimeout)
		defer cancel()
		refuse := func(name, msg, detail string) {
			m.log.Info("refused a tube request", "from", from, "room", room, "service", r.Service, "why", msg, "detail", detail)
			m.send(ctx, from, room, kindRefuse, mustJSON(refuseMsg{Request: r.Request, Error: name, Message: msg}))
		}
		m.mu.Lock()
		e := m.exports[r.Service]
		m.mu.Unlock()
		if e == nil && m.cfg.Published != nil {
			// A published service is exported for this requester and
			// this offer only (the tube keeps the export; the export list
			// never has it), as it is published to them now.
			if pe, ok := m.cfg.Published(r.Service, r.Implementation, from); ok {
				x, err := m.newExport("", pe)
				if err != nil {
					m.log.Warn("published service not exported", "service", r.Service, "err", err)
				}
				e = x
			}
		}
		where := ""
		if room != "" {
			where = " in room " + room
		}
		ok, via := false, room
		if e != nil {
			ok, via = m.mayRequest(ctx, e, from, room)
		}
		if !ok {
			refuse(tperr.PermissionDenied, fmt.Sprintf("%s has not exported %s for %s%s", m.cfg.Account, r.Service, from, where), "")
			return
		}
		// A tube granted through a room is that room's (answering this
		// member alone), even when asked for directly: it ends when
		// either leaves the room or is removed from it.
		if _, err := m.offer(ctx, api.OfferRequest{Service: r.Service, To: from, Room: via}, r.Request, e); err != nil {
			// The requester learns that it failed, not why: the reason
			// may name local things (a parameters command's output).
			refuse(tperr.NameOr(err, tperr.NotAvailable), fmt.Sprintf("%s could not offer %s%s", m.cfg.Account, r.Service, where), err.Error())
		}
	}()
	return nil
}

// mayRequest reports whether from may ask for e, and through which room
// it may: as a contact, when named in Allow (no room) or a member of one
// of AllowRooms (as we are: that room); through a room (via, from a
// member who may not be a contact), when via is one of AllowRooms.
func (m *Manager) mayRequest(ctx context.Context, e *export, from, via string) (bool, string) {
	if via == "" && slices.Contains(e.Allow, from) {
		return true, ""
	}
	for _, room := range e.AllowRooms {
		if via != "" && room != via {
			continue
		}
		members, err := m.cfg.Signaller.RoomMembers(ctx, room)
		if err == nil && slices.Contains(members, from) && slices.Contains(members, m.cfg.Account) {
			return true, room
		}
	}
	return false, ""
}

func (m *Manager) onRefuse(from string, body []byte) error {
	r, err := decodeRefuse(body)
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.opens[r.Request]
	if p == nil || p.contact != from {
		return fmt.Errorf("no request %s to %s is waiting", r.Request, from)
	}
	delete(m.opens, r.Request)
	name := r.Error
	if !tperr.IsName(name) {
		name = tperr.PermissionDenied
	}
	msg := r.Message
	if msg == "" {
		msg = from + " refused the request"
	}
	p.ch <- openResult{err: tperr.New(name, "%s", msg)}
	return nil
}
