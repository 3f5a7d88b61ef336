package tube

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/tubes-dev/tubes/identity"
	"github.com/tubes-dev/tubes/peerlink"
	"github.com/tubes-dev/tubes/tperr"
)

// link is a peer link with one contact: one per pair of accounts,
// whichever side dialed it.
type link struct {
	s    *peerlink.Session
	path string
}

func (l *link) alive() bool {
	select {
	case <-l.s.Done():
		return false
	default:
		return true
	}
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
	for {
		raw, err := ln.Accept()
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			return
		}
		go func() {
			s, peer, err := peerlink.Server(m.ctx, raw, m.self, m.verify, func(peer string) peerlink.Handler {
				return &linkHandler{m: m, peer: peer, path: peerlink.PathDirect}
			}, m.log)
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

// addLink makes l the link new streams to peer use, and forgets it when
// it ends.
func (m *Manager) addLink(peer string, l *link) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		l.s.Close(peerlink.CodeLost)
		return
	}
	m.links[peer] = l
	m.mu.Unlock()
	go func() {
		<-l.s.Done()
		m.mu.Lock()
		if m.links[peer] == l {
			delete(m.links, peer)
		}
		m.mu.Unlock()
		m.log.Debug("peer link ended", "peer", peer, "err", l.s.Err())
	}()
}

// ensureLink returns a live link to peer, dialing the addresses of the
// peer's tubes if there is none. Concurrent callers share one dial.
func (m *Manager) ensureLink(ctx context.Context, peer string) (*link, error) {
	m.mu.Lock()
	if l := m.links[peer]; l != nil && l.alive() {
		m.mu.Unlock()
		return l, nil
	}
	c := m.dialing[peer]
	if c == nil {
		c = &dialCall{done: make(chan struct{})}
		m.dialing[peer] = c
		var addrs []string
		var accepted []string
		for _, t := range m.tubes {
			if !t.outgoing && t.peer == peer {
				addrs = appendNew(addrs, t.addrs...)
				if t.state == Open || t.accepting {
					accepted = append(accepted, t.id)
				}
			}
		}
		m.mu.Unlock()
		go m.dial(c, peer, addrs, accepted)
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

// dial establishes a link to peer over its direct addresses, and tells it
// which of its tubes we accepted.
func (m *Manager) dial(c *dialCall, peer string, addrs, accepted []string) {
	defer func() {
		m.mu.Lock()
		delete(m.dialing, peer)
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
	key := keys[peer]
	if key == nil {
		c.err = tperr.New(tperr.PermissionDenied, "%s is neither a contact nor a room co-member any more", peer)
		return
	}
	var cands []peerlink.Candidate
	for _, a := range addrs {
		cands = append(cands, peerlink.Candidate{Path: peerlink.PathDirect, Addr: a})
	}
	if len(cands) == 0 {
		c.err = tperr.New(tperr.ConnectionFailed, "%s gave no address to reach it", peer)
		return
	}
	s, cand, err := peerlink.Race(ctx, cands, func(ctx context.Context, raw net.Conn) (*peerlink.Session, error) {
		return peerlink.Client(ctx, raw, m.self, peer, key, &linkHandler{m: m, peer: peer, path: peerlink.PathDirect}, m.log)
	})
	if err != nil {
		c.err = tperr.Wrap(err, tperr.ConnectionFailed, "could not reach %s: %v", peer, err)
		return
	}
	l := &link{s: s, path: cand.Path}
	for _, id := range accepted {
		if err := s.SendCtrl(mustJSON(ctrlMsg{Op: ctrlAccepted, Tube: id})); err != nil {
			c.err = tperr.Wrap(err, tperr.ConnectionLost, "the link to %s broke at once", peer)
			return
		}
	}
	m.log.Info("peer link up", "peer", peer, "path", cand.Path, "addr", cand.Addr)
	m.addLink(peer, l)
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
