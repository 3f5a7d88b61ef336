package tube

import (
	"fmt"
	"net"
	"time"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/peerlink"
	"github.com/tubes-dev/tubes/proxyproto"
	"github.com/tubes-dev/tubes/tperr"
)

// Serving streams (the offerer's side): streams arriving on peer links,
// checked and connected to the exported service.

// onStream handles a stream a peer opened: a connection to one of our
// tubes. It runs on the link's reader, so it only checks and hands off.
func (m *Manager) onStream(peer, path string, st *peerlink.Stream, meta []byte) {
	md, err := decodeMeta(meta)
	if err != nil {
		m.log.Warn("refused a tube connection", "from", peer, "why", err)
		st.Reset(peerlink.CodeDenied, "malformed stream header")
		return
	}
	m.mu.Lock()
	t := m.tubes[md.Tube]
	why := ""
	switch {
	case t == nil:
		why = "no such tube"
	case !t.outgoing:
		why = "the tube is not one we offered"
	case t.room == "" && t.peer != peer:
		why = "the tube was offered to " + t.peer
	case t.room != "" && !t.members[peer]:
		why = "not a member of room " + t.room
	case !t.accepted[peer]:
		why = "the tube was not accepted by " + peer
	}
	if why != "" {
		m.mu.Unlock()
		m.log.Warn("refused a tube connection", "from", peer, "tube", md.Tube, "why", why)
		st.Reset(peerlink.CodeDenied, fmt.Sprintf("%s refused the connection to tube %s", m.cfg.Account, md.Tube))
		return
	}
	t.path = path
	if t.state != Open {
		m.setState(t, Open)
	}
	t.nextConn++
	c := &tconn{id: t.nextConn, st: st, contact: peer}
	t.conns[c.id] = c
	e := t.exp
	m.mu.Unlock()
	go m.connectService(t, c, e)
}

// connectService connects a tube connection to the exported service.
func (m *Manager) connectService(t *tube, c *tconn, e *export) {
	var svc net.Conn
	var err error
	done := func() {}
	if m.cfg.Connect != nil {
		var ok bool
		var d func()
		if svc, d, ok, err = m.cfg.Connect(e.Export); ok && err == nil {
			done = d
		}
		if !ok {
			svc, err = dialService(m.ctx, e)
		}
	} else {
		svc, err = dialService(m.ctx, e)
	}
	if err == nil && e.ProxyProtocol {
		err = m.writeProxyHeader(svc, t, c)
		if err != nil {
			svc.Close()
		}
	}
	if err != nil {
		m.log.Info("exported service not reachable", "tube", t.id, "service", t.service, "err", err)
		msg := fmt.Sprintf("%s's service %s is not reachable", m.cfg.Account, t.service)
		c.st.Reset(peerlink.CodeRefused, msg)
		m.mu.Lock()
		if t.conns[c.id] == c {
			delete(t.conns, c.id)
			m.emitClosed(t, c, tperr.ConnectionRefused, msg+" ("+tperr.Reason(err)+")")
		}
		m.mu.Unlock()
		return
	}
	m.mu.Lock()
	if t.conns[c.id] != c { // the tube or connection ended meanwhile
		m.mu.Unlock()
		abort(svc)
		done()
		return
	}
	if a, ok := svc.LocalAddr().(*net.TCPAddr); ok {
		c.source = a.String()
	}
	m.emit(api.Event{Type: api.EventNewRemoteConnection, TubeID: t.id, Service: t.service, ConnectionID: u32(c.id),
		Contact: c.contact, Room: t.room, Source: c.source})
	m.mu.Unlock()
	c.st.Splice(svc, func(err error) { done(); m.connClosed(t, c.id, err) })
}

// writeProxyHeader sends a PROXY protocol v2 header naming the contact,
// account, room and tube.
func (m *Manager) writeProxyHeader(svc net.Conn, t *tube, c *tconn) error {
	h := &proxyproto.Header{Command: proxyproto.Proxy}
	switch a := svc.LocalAddr().(type) {
	case *net.TCPAddr:
		h.Source, h.Dest = a, svc.RemoteAddr()
	default:
		h.Source, h.Dest = &net.UnixAddr{Name: "", Net: "unix"}, &net.UnixAddr{Name: t.exp.Unix, Net: "unix"}
	}
	h.TLVs = []proxyproto.TLV{
		{Type: proxyproto.TypeContact, Value: []byte(c.contact)},
		{Type: proxyproto.TypeAccount, Value: []byte(m.cfg.Account)},
		{Type: proxyproto.TypeTube, Value: []byte(t.id)},
	}
	if t.room != "" {
		h.TLVs = append(h.TLVs, proxyproto.TLV{Type: proxyproto.TypeRoom, Value: []byte(t.room)})
	}
	svc.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, err := h.WriteTo(svc)
	svc.SetWriteDeadline(time.Time{})
	return err
}

// onAccepted records that peer accepted one of our tubes.
func (m *Manager) onAccepted(peer, path, id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t := m.tubes[id]
	if t == nil || !t.outgoing || (t.room == "" && t.peer != peer) || (t.room != "" && !t.members[peer]) {
		m.log.Warn("ignored an acceptance", "from", peer, "tube", id)
		return
	}
	t.accepted[peer] = true
	t.path = path
	if t.state == RemotePending {
		m.setState(t, Open)
	}
}
