package tube

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/tubes-dev/tubes/identity"
	"github.com/tubes-dev/tubes/internal/serve"
	"github.com/tubes-dev/tubes/peerlink"
	"github.com/tubes-dev/tubes/tperr"
)

// link is a peer link with one contact: one per pair of accounts,
// whichever side dialed it.
type link struct {
	s    *peerlink.Session
	path string
	// dialed links are ours to re-establish when they die (we accepted
	// the peer's tubes); want is the path they were dialed for.
	dialed bool
	want   string
}

// dialCall is one link establishment others may wait on.
type dialCall struct {
	done chan struct{}
	l    *link
	err  error
}

// linkTimeout bounds establishing a link (every candidate, TLS included).
const linkTimeout = 15 * time.Second

// Start listens for peer links.
func (m *Manager) Start(ctx context.Context) error {
	addr := m.cfg.PeerListen
	if addr == "" {
		addr = ":0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("tube: peer-link listener: %w", err)
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		ln.Close()
		return nil
	}
	m.ln = ln
	m.mu.Unlock()
	m.log.Info("accepting peer links", "addr", ln.Addr().String())
	go m.acceptLinks(ln)
	return nil
}

func (m *Manager) acceptLinks(ln net.Listener) {
	ln = m.resilient(ln, "peer-link")
	for {
		raw, err := ln.Accept()
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			return
		}
		// Until its handshake proves an account, a connection is a
		// stranger's: one source gets a few at a time, and one over
		// that is reset at once, leaving the others' alone.
		release, ok := m.handshakes.TakeOr(raw.RemoteAddr(), func() { abort(raw) })
		if !ok {
			if tc, isTCP := raw.(*net.TCPConn); isTCP {
				tc.SetLinger(0)
			}
			raw.Close()
			continue
		}
		go func() {
			s, peer, err := peerlink.Server(m.ctx, raw, m.self, m.verify, func(peer string) peerlink.Handler {
				return &linkHandler{m: m, peer: peer, path: peerlink.PathDirect}
			}, m.log)
			release()
			if err != nil {
				m.log.Debug("peer link refused", "from", raw.RemoteAddr().String(), "err", err)
				return
			}
			m.addLink(peer, &link{s: s, path: peerlink.PathDirect})
		}()
	}
}

// verify lets in an account whose key is the one the rendezvous gives us
// for it (it gives keys only of contacts and room co-members).
func (m *Manager) verify(ctx context.Context, name string, key identity.PublicKey) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	keys, err := m.keys(ctx, []string{name})
	if err != nil {
		return err
	}
	want := keys[name]
	if want == nil {
		return fmt.Errorf("%s is neither a contact nor a room co-member of %s", name, m.cfg.Account)
	}
	if !want.Equal(key) {
		return fmt.Errorf("%w: %s presented %s, the rendezvous knows %s", peerlink.ErrKeyMismatch, name, key.Fingerprint(), want.Fingerprint())
	}
	return nil
}

// addLink makes l the link new streams to peer use (under key: the
// peer, or peer|path for a link dialed for one path), and forgets it when
// it ends.
//
// Which link to use is the dialer's choice. A link we dialed retires the
// one it replaces: that takes no new connections and closes once those
// it carries end. A link the peer opened leaves the others be: the peer
// retires its own replaced links and closes the losers of its dial race,
// and until it does we may still use them. Either way a contact holds at
// most LinksPerPeer links under one key: beyond that the oldest is
// closed, connections and all.
func (m *Manager) addLink(key string, l *link) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		l.s.Close(peerlink.CodeLost)
		return
	}
	var retire, evict []*link
	if old := m.links[key]; old != nil && old != l {
		if l.dialed {
			retire = append(retire, old)
		}
		r := append(m.others[key], old)
		for len(r) > LinksPerPeer-1 {
			evict = append(evict, r[0])
			r = r[1:]
		}
		m.others[key] = r
	}
	m.links[key] = l
	m.mu.Unlock()
	for _, old := range retire {
		old.s.Retire()
	}
	for _, old := range evict {
		m.log.Info("peer link closed: the contact opened too many", "peer", key, "limit", LinksPerPeer)
		old.s.Close(peerlink.CodeCancelled)
	}
	go func() {
		<-l.s.Done()
		m.mu.Lock()
		current := m.links[key] == l
		r := slices.DeleteFunc(m.others[key], func(x *link) bool { return x == l })
		if current {
			// The newest of the others takes its place.
			delete(m.links, key)
			if n := len(r); n > 0 {
				m.links[key], r = r[n-1], r[:n-1]
			}
		}
		if len(r) == 0 {
			delete(m.others, key)
		} else {
			m.others[key] = r
		}
		usable := m.usableLink(key, "") != nil
		closed := m.closed
		m.mu.Unlock()
		m.log.Info("peer link ended", "peer", key, "path", l.path, "err", l.s.Err())
		if l.dialed && current && !usable && !closed {
			peer, _, _ := strings.Cut(key, "|")
			go m.relink(peer, l.want)
		}
	}()
}

// relink re-establishes a link that died while we have open tubes from
// its peer, so the next connection does not wait for it (the
// connections it carried were reported lost already).
func (m *Manager) relink(peer, want string) {
	delay := 200 * time.Millisecond
	for range 6 {
		select {
		case <-m.ctx.Done():
			return
		case <-time.After(delay):
		}
		delay *= 2
		if !m.acceptedFrom(peer) {
			return
		}
		ctx, cancel := context.WithTimeout(m.ctx, linkTimeout)
		l, err := m.ensureLink(ctx, peer, want)
		cancel()
		if err == nil {
			m.log.Info("peer link re-established", "peer", peer, "path", l.path)
			return
		}
		m.log.Info("peer link not re-established yet", "peer", peer, "err", err)
	}
}

// acceptedFrom reports whether an open tube of peer's was accepted here.
func (m *Manager) acceptedFrom(peer string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, t := range m.tubes {
		if !t.outgoing && t.peer == peer && t.state == Open {
			return true
		}
	}
	return false
}

// linkKey names the link to peer for a path choice ("" = any path).
func linkKey(peer, want string) string {
	if want == "" {
		return peer
	}
	return peer + "|" + want
}

// wantOf is the path choice a link key was made with.
func wantOf(key string) string {
	if _, p, ok := strings.Cut(key, "|"); ok {
		return p
	}
	return ""
}

// wantPath normalises a tube's path choice: "" for any path.
func wantPath(p string) string {
	if p == "auto" {
		return ""
	}
	return p
}

// liveLink returns a live link to peer on the wanted path, if any.
// Callers hold m.mu.
func (m *Manager) liveLink(peer, want string) *link {
	for _, key := range []string{linkKey(peer, want), peer, linkKey(peer, peerlink.PathDirect), linkKey(peer, peerlink.PathRelay)} {
		if l := m.usableLink(key, want); l != nil {
			return l
		}
	}
	return nil
}

// usableLink returns the link under key that new streams on the wanted
// path ("" = any) may use: the current one, else the newest of the
// others. Callers hold m.mu.
func (m *Manager) usableLink(key, want string) *link {
	ok := func(l *link) bool { return l != nil && l.s.Usable() && (want == "" || l.path == want) }
	if l := m.links[key]; ok(l) {
		return l
	}
	r := m.others[key]
	for i := len(r) - 1; i >= 0; i-- {
		if ok(r[i]) {
			return r[i]
		}
	}
	return nil
}

// relayRef is a relay candidate of a peer: its allocation, and the room
// to reach it through (for a co-member who is not a contact).
type relayRef struct {
	info relayInfo
	room string
}

// ensureLink returns a live link to peer on the wanted path ("" = any),
// dialing the addresses of the peer's tubes if there is none. Concurrent
// callers share one dial.
func (m *Manager) ensureLink(ctx context.Context, peer, want string) (*link, error) {
	key := linkKey(peer, want)
	m.mu.Lock()
	if l := m.liveLink(peer, want); l != nil {
		m.mu.Unlock()
		return l, nil
	}
	c := m.dialing[key]
	if c == nil {
		c = &dialCall{done: make(chan struct{})}
		m.dialing[key] = c
		var addrs, accepted []string
		var relays []relayRef
		for _, t := range m.tubes {
			if t.outgoing || t.peer != peer {
				continue
			}
			addrs = appendNew(addrs, t.addrs...)
			if t.relay != nil && !slices.ContainsFunc(relays, func(r relayRef) bool { return r.info == *t.relay }) {
				relays = append(relays, relayRef{info: *t.relay, room: t.room})
			}
			if t.state == Open || t.accepting {
				accepted = append(accepted, t.id)
			}
		}
		m.mu.Unlock()
		var cands []peerlink.Candidate
		if want != peerlink.PathRelay {
			for _, a := range addrs {
				cands = append(cands, peerlink.Candidate{Path: peerlink.PathDirect, Addr: a})
			}
		}
		if want != peerlink.PathDirect {
			for _, r := range relays {
				cands = append(cands, m.relayCandidate(peer, r))
			}
		}
		go m.dial(c, key, peer, cands, accepted)
	} else {
		m.mu.Unlock()
	}
	select {
	case <-c.done:
		return c.l, c.err
	case <-ctx.Done():
		return nil, tperr.New(tperr.Cancelled, "gave up waiting for the link to %s", peer)
	}
}

// dial establishes a link to peer over the first candidate that works,
// and tells it which of its tubes we accepted.
func (m *Manager) dial(c *dialCall, key, peer string, cands []peerlink.Candidate, accepted []string) {
	defer func() {
		m.mu.Lock()
		delete(m.dialing, key)
		m.mu.Unlock()
		close(c.done)
	}()
	ctx, cancel := context.WithTimeout(m.ctx, linkTimeout)
	defer cancel()
	keys, err := m.keys(ctx, []string{peer})
	if err != nil {
		c.err = err
		return
	}
	pk := keys[peer]
	if pk == nil {
		c.err = tperr.New(tperr.PermissionDenied, "%s is neither a contact nor a room co-member any more", peer)
		return
	}
	if len(cands) == 0 {
		c.err = tperr.New(tperr.ConnectionFailed, "%s gave no address to reach it on the path asked for", peer)
		return
	}
	s, cand, err := peerlink.Race(ctx, cands, func(ctx context.Context, cand peerlink.Candidate, raw net.Conn) (*peerlink.Session, error) {
		return peerlink.Client(ctx, raw, m.self, peer, pk, &linkHandler{m: m, peer: peer, path: cand.Path}, m.log)
	})
	if err != nil {
		c.err = tperr.Wrap(err, tperr.ConnectionFailed, "could not reach %s on any of its addresses", peer)
		return
	}
	l := &link{s: s, path: cand.Path, dialed: true, want: wantOf(key)}
	for _, id := range accepted {
		if err := s.SendCtrl(mustJSON(ctrlMsg{Op: ctrlAccepted, Tube: id})); err != nil {
			c.err = tperr.Wrap(err, tperr.ConnectionLost, "the link to %s broke at once", peer)
			return
		}
	}
	m.log.Info("peer link up", "peer", peer, "path", cand.Path, "addr", cand.Addr)
	m.addLink(key, l)
	c.l = l
}

func appendNew(list []string, items ...string) []string {
	for _, it := range items {
		if !slices.Contains(list, it) {
			list = append(list, it)
		}
	}
	return list
}

// peerAddrs are the direct addresses peers may dial for links to us: the
// listener's own address, or every interface address when it listens on
// all of them (link-local ones left out: they need a zone).
func (m *Manager) peerAddrs() []string {
	m.mu.Lock()
	ln := m.ln
	m.mu.Unlock()
	if ln == nil {
		return nil
	}
	ap, err := netip.ParseAddrPort(ln.Addr().String())
	if err != nil {
		return nil
	}
	if !ap.Addr().IsUnspecified() {
		return []string{ap.String()}
	}
	ifs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var global, loop []string
	for _, a := range ifs {
		pfx, err := netip.ParsePrefix(a.String())
		if err != nil {
			continue
		}
		ip := pfx.Addr().Unmap()
		if ip.IsLinkLocalUnicast() || ip.IsMulticast() {
			continue
		}
		s := netip.AddrPortFrom(ip, ap.Port()).String()
		if ip.IsLoopback() {
			loop = append(loop, s)
		} else {
			global = append(global, s)
		}
		if len(global)+len(loop) >= maxAddrs {
			break
		}
	}
	return append(global, loop...)
}

// linkHandler receives what a peer sends on a link besides stream data.
type linkHandler struct {
	m    *Manager
	peer string
	path string
}

func (h *linkHandler) Open(st *peerlink.Stream, meta []byte) { h.m.onStream(h.peer, h.path, st, meta) }

func (h *linkHandler) Ctrl(msg []byte) {
	c, err := decodeCtrl(msg)
	if err != nil {
		h.m.log.Warn("ignored a link message", "from", h.peer, "err", err)
		return
	}
	h.m.onAccepted(h.peer, h.path, c.Tube)
}

// resilient keeps an accept loop alive through transient errors (out of
// descriptors: a burst of idle connects used to end it for good).
func (m *Manager) resilient(ln net.Listener, name string) net.Listener {
	return serve.Resilient{Listener: ln, OnError: func(err error) {
		m.log.Warn("accept failed; trying again", "listener", name, "err", err)
		if m.cfg.AcceptError != nil {
			m.cfg.AcceptError(name, err)
		}
	}}
}
