package tube

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/tubes-dev/tubes/peerlink"
	"github.com/tubes-dev/tubes/tperr"
	"github.com/tubes-dev/tubes/turnclient"
)

// The relay path. While an account offers tubes it keeps a TCP allocation
// (RFC 6062) on its TURN server and puts the relayed address in its
// offers. An accepter that cannot reach the offerer directly learns the
// address the offerer's TURN server sees it at (a STUN Binding), asks the
// offerer over the rendezvous to permit it (tube.permit), and connects to
// the relayed address; the offerer binds the connection (ConnectionBind)
// and the two run the same TLS handshake as on a direct link. The relay
// forwards ciphertext only.

// permitTimeout bounds the permission round trip through the rendezvous.
const permitTimeout = 10 * time.Second

// maxRelayedHandshakes bounds relayed connections being bound and
// verified at once.
const maxRelayedHandshakes = 16

// relayFor returns what an offer says about the relay path, allocating
// when needed. With want == relay, no allocation is an error; otherwise
// the tube simply goes without one.
func (m *Manager) relayFor(ctx context.Context, want string) (*relayInfo, error) {
	if want == peerlink.PathDirect {
		return nil, nil
	}
	if m.cfg.TURN == nil {
		if want == peerlink.PathRelay {
			return nil, tperr.New(tperr.NotAvailable, "no TURN server is configured for %s, so the relay path is unavailable (tube daemon --turn, or a relay with a TURN server)", m.cfg.Account)
		}
		return nil, nil
	}
	c, server, err := m.allocation(ctx)
	if err != nil {
		if want == peerlink.PathRelay {
			return nil, tperr.Wrap(err, tperr.NameOr(err, tperr.NetworkError), "cannot get a relay allocation for the relay path%s", tperr.Because(err))
		}
		m.log.Warn("offering without the relay path", "err", err)
		return nil, nil
	}
	return &relayInfo{Addr: c.RelayedAddr().String(), Server: server}, nil
}

// setRelay gives the outgoing tube t a new relay allocation and returns
// whom it is offered to. Callers hold m.mu.
func (m *Manager) setRelay(t *tube, info *relayInfo) []string {
	t.relay = info
	if t.room == "" {
		return []string{t.peer}
	}
	var to []string
	for n := range t.members {
		to = append(to, n)
	}
	return to
}

// allocation returns the account's live TCP allocation, making one if
// there is none.
func (m *Manager) allocation(ctx context.Context) (*turnclient.Client, string, error) {
	m.allocMu.Lock()
	defer m.allocMu.Unlock()
	m.mu.Lock()
	c, server := m.alloc, m.allocServer
	m.mu.Unlock()
	if c != nil {
		select {
		case <-c.Done():
		default:
			return c, server, nil
		}
	}
	cfg, err := m.cfg.TURN(ctx)
	if err != nil {
		return nil, "", err
	}
	cfg.Logger = m.log
	c, err = turnclient.Allocate(ctx, cfg)
	if err != nil {
		return nil, "", err
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		c.Close()
		return nil, "", tperr.New(tperr.Disconnected, "account %s is being removed", m.cfg.Account)
	}
	m.alloc, m.allocServer = c, cfg.Server
	m.mu.Unlock()
	m.log.Info("relay allocation made", "server", cfg.Server, "relayed", c.RelayedAddr().String())
	go m.acceptRelayed(c)
	return c, cfg.Server, nil
}

// acceptRelayed turns every peer connecting to the allocation into a
// peer link (after the same verification as direct ones).
func (m *Manager) acceptRelayed(c *turnclient.Client) {
	defer func() {
		m.mu.Lock()
		lost := m.alloc == c && m.ctx.Err() == nil // not released by us
		if m.alloc == c {
			m.alloc = nil
		}
		m.mu.Unlock()
		if m.ctx.Err() != nil {
			c.Close() // the account is going away
		}
		m.log.Info("relay allocation ended", "relayed", c.RelayedAddr().String(), "why", c.Err())
		if lost {
			go m.reallocate()
		}
	}()
	// Unverified relayed connections cost a data connection and a TLS
	// handshake each: only so many at a time (the server closes an
	// attempt not bound within 30 s).
	sem := make(chan struct{}, maxRelayedHandshakes)
	for {
		a, err := c.NextAttempt(m.ctx)
		if err != nil {
			return
		}
		select {
		case sem <- struct{}{}:
		case <-m.ctx.Done():
			return
		}
		go func() {
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(m.ctx, linkTimeout)
			defer cancel()
			d, err := c.Bind(ctx, a)
			if err != nil {
				m.log.Debug("relayed connection not bound", "peer", a.Peer.String(), "err", err)
				return
			}
			s, peer, err := peerlink.Server(m.ctx, d, m.self, m.verify, func(peer string) peerlink.Handler {
				return &linkHandler{m: m, peer: peer, path: peerlink.PathRelay}
			}, m.log)
			if err != nil {
				m.log.Debug("relayed peer link refused", "from", a.Peer.String(), "err", err)
				return
			}
			m.addLink(peer, &link{s: s, path: peerlink.PathRelay})
		}()
	}
}

// The back-off of reallocate, as the daemon's reconnection to its relay:
// at most reallocEarly between attempts in the first reallocEarlyFor of
// an outage, reallocLate after, jittered.
const (
	reallocEarly    = 5 * time.Second
	reallocEarlyFor = 2 * time.Minute
	reallocLate     = 30 * time.Second
)

// reallocate replaces an allocation that ended under tubes that use it
// (the TURN server restarted, say): it allocates again until it can, at
// once when the account is connected to its relay again (Reconnected),
// else after the back-off above, and re-sends those tubes' offers with
// the new relayed address (accepters take a re-sent offer as an update).
func (m *Manager) reallocate() {
	began := time.Now()
	delay := 500 * time.Millisecond
	for {
		limit := reallocLate
		if time.Since(began) < reallocEarlyFor {
			limit = reallocEarly
		}
		delay = min(delay, limit)
		select {
		case <-m.ctx.Done():
			return
		case <-time.After(delay/2 + rand.N(delay/2+1)):
		case <-m.reconnected:
		}
		delay *= 2
		m.mu.Lock()
		var ts []*tube
		for _, t := range m.tubes {
			if t.outgoing && t.relay != nil {
				ts = append(ts, t)
			}
		}
		m.mu.Unlock()
		if len(ts) == 0 {
			return
		}
		ctx, cancel := context.WithTimeout(m.ctx, linkTimeout)
		c, server, err := m.allocation(ctx)
		if err != nil {
			cancel()
			m.log.Info("relay allocation not made again yet", "err", err)
			continue
		}
		info := &relayInfo{Addr: c.RelayedAddr().String(), Server: server}
		m.mu.Lock()
		for _, t := range ts {
			for _, n := range m.setRelay(t, info) {
				m.owe(n, t.id)
			}
		}
		m.mu.Unlock()
		m.resendAll(ctx)
		cancel()
		m.log.Info("relay allocation made again; offers re-sent", "relayed", info.Addr, "tubes", len(ts))
		m.updateNeed()
		return
	}
}

// owe notes that peer has not been sent the latest offer of tube id (its
// relayed address changed). Callers hold m.mu.
func (m *Manager) owe(peer, id string) {
	if m.owed[peer] == nil {
		m.owed[peer] = map[string]uint64{}
	}
	m.oweSeq++
	m.owed[peer][id] = m.oweSeq
}

// resendAll sends every owed offer it can: to peers that are offline it
// stays owed, and goes when they come online (OnPresence) or we connect
// again (Reconnected).
func (m *Manager) resendAll(ctx context.Context) {
	m.mu.Lock()
	peers := slices.Collect(maps.Keys(m.owed))
	m.mu.Unlock()
	for _, p := range peers {
		m.resend(ctx, p)
	}
}

// resend sends peer the offers it is owed. One resend runs at a time:
// a peer whose presence flaps makes them one after another, each a no-op
// once nothing is owed.
func (m *Manager) resend(ctx context.Context, peer string) {
	m.resendMu.Lock()
	defer m.resendMu.Unlock()
	m.mu.Lock()
	var ts []*tube
	seqs := map[string]uint64{}
	for id, seq := range m.owed[peer] {
		if t := m.tubes[id]; t != nil && t.outgoing {
			ts = append(ts, t)
			seqs[id] = seq
		} else {
			delete(m.owed[peer], id) // the tube ended
		}
	}
	if len(m.owed[peer]) == 0 {
		delete(m.owed, peer)
	}
	m.mu.Unlock()
	if len(ts) == 0 {
		return
	}
	keys, err := m.keys(ctx, []string{peer})
	if err != nil || keys[peer] == nil {
		m.log.Info("tube offers not re-sent yet", "to", peer, "err", err)
		return
	}
	for _, t := range ts {
		if err := m.sendOffer(ctx, t, peer, keys[peer], ""); err != nil {
			m.log.Info("tube offer not re-sent yet", "tube", t.id, "to", peer, "err", err)
			continue
		}
		m.mu.Lock()
		if m.owed[peer][t.id] == seqs[t.id] { // not owed again meanwhile, with a newer address
			delete(m.owed[peer], t.id)
		}
		if len(m.owed[peer]) == 0 {
			delete(m.owed, peer)
		}
		m.mu.Unlock()
	}
}

// OnPresence tells the manager that name came online: the offers it is
// owed go now.
func (m *Manager) OnPresence(name string, online bool) {
	m.mu.Lock()
	owed := online && len(m.owed[name]) > 0
	m.mu.Unlock()
	if !owed {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(m.ctx, linkTimeout)
		defer cancel()
		m.resend(ctx, name)
		m.updateNeed()
	}()
}

// Reconnected tells the manager that its account is connected to its
// relay again: an allocation being made again is tried at once, and the
// offers peers are owed are sent.
func (m *Manager) Reconnected() {
	select {
	case m.reconnected <- struct{}{}:
	default:
	}
	go func() {
		ctx, cancel := context.WithTimeout(m.ctx, linkTimeout)
		defer cancel()
		m.resendAll(ctx)
		m.updateNeed()
	}()
}

// releaseAllocation ends the allocation once no outgoing tube needs it.
// Callers hold m.mu.
func (m *Manager) releaseAllocation() {
	if m.alloc == nil || m.offering > 0 {
		return
	}
	for _, t := range m.tubes {
		if t.outgoing {
			return
		}
	}
	c := m.alloc
	m.alloc = nil
	go c.Close()
}

// relayCandidate is the way to peer through its allocation r.
func (m *Manager) relayCandidate(peer string, r relayRef) peerlink.Candidate {
	return peerlink.Candidate{Path: peerlink.PathRelay, Addr: r.info.Addr, Dial: func(ctx context.Context) (net.Conn, error) {
		me, err := turnclient.Reflexive(ctx, r.info.Server)
		if err != nil {
			return nil, fmt.Errorf("cannot learn our address at the relay: %w", err)
		}
		if err := m.askPermit(ctx, peer, r.room, me.Addr(), r.info.Addr); err != nil {
			return nil, err
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", r.info.Addr)
		if err != nil {
			return nil, err
		}
		conn.(*net.TCPConn).SetNoDelay(true)
		return conn, nil
	}}
}

// askPermit asks peer to permit ip on its allocation, whose relayed
// address we have as relayed, and waits for the answer.
func (m *Manager) askPermit(ctx context.Context, peer, room string, ip netip.Addr, relayed string) error {
	id := newID()
	ch := make(chan permittedMsg, 1)
	key := peer + "|" + id
	m.mu.Lock()
	m.permits[key] = ch
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		delete(m.permits, key)
		m.mu.Unlock()
	}()
	ctx, cancel := context.WithTimeout(ctx, permitTimeout)
	defer cancel()
	if _, err := m.send(ctx, peer, room, kindPermit, mustJSON(permitMsg{ID: id, IP: ip.String(), Relay: relayed})); err != nil {
		return err
	}
	select {
	case p := <-ch:
		if p.Error != "" {
			return tperr.New(p.Error, "%s did not permit us on its relay: %s", peer, p.Message)
		}
		return nil
	case <-ctx.Done():
		return tperr.New(tperr.NetworkError, "%s did not answer our relay permission request", peer)
	}
}

// onPermit answers a peer's permission request for our allocation: only
// an account we offer a tube to may ask.
func (m *Manager) onPermit(from, room string, body []byte) error {
	p, err := decodePermit(body)
	if err != nil {
		return err
	}
	go func() {
		ans := permittedMsg{ID: p.ID}
		m.mu.Lock()
		c := m.alloc
		ok := m.offersTo(from)
		m.mu.Unlock()
		ctx, cancel := context.WithTimeout(m.ctx, permitTimeout)
		defer cancel()
		switch {
		case !ok:
			ans.Error, ans.Message = tperr.PermissionDenied, "no tube is offered to you"
			m.log.Warn("refused a relay permission request", "from", from, "why", ans.Message)
		case c == nil:
			ans.Error, ans.Message = tperr.NotAvailable, "the offerer has no relay allocation"
		case p.Relay != "" && p.Relay != c.RelayedAddr().String():
			// The asker has an address of an allocation that ended: it
			// missed the offer with the new one (sent as it went offline,
			// say), which it is owed and sent now.
			ans.Error, ans.Message = tperr.NotAvailable, "the offerer's relayed address changed; its offer is sent again"
			m.mu.Lock()
			for _, t := range m.tubes {
				if t.outgoing && t.relay != nil && ((t.room == "" && t.peer == from) || (t.room != "" && t.members[from])) {
					m.owe(from, t.id)
				}
			}
			m.mu.Unlock()
			m.log.Info("a peer dialed an old relayed address; offers sent again", "peer", from, "dialed", p.Relay)
			go func() {
				ctx, cancel := context.WithTimeout(m.ctx, linkTimeout)
				defer cancel()
				m.resend(ctx, from)
			}()
		default:
			if err := c.Permit(ctx, netip.MustParseAddr(p.IP)); err != nil {
				// The peer learns that the TURN server refused, not its words.
				ans.Error, ans.Message = tperr.NetworkError, "the offerer's TURN server did not add the permission"
				if turnclient.Code(err) == 403 {
					ans.Error, ans.Message = tperr.PermissionDenied, "the offerer's TURN server does not allow your address"
				}
				m.log.Info("relay permission not added", "for", from, "ip", p.IP, "err", err)
			} else {
				m.log.Debug("relay permission added", "for", from, "ip", p.IP)
			}
		}
		if _, err := m.send(ctx, from, room, kindPermitted, mustJSON(ans)); err != nil {
			m.log.Info("relay permission answer not delivered", "to", from, "err", err)
		}
	}()
	return nil
}

func (m *Manager) onPermitted(from string, body []byte) error {
	p, err := decodePermitted(body)
	if err != nil {
		return err
	}
	m.mu.Lock()
	ch := m.permits[from+"|"+p.ID]
	m.mu.Unlock()
	if ch == nil {
		return fmt.Errorf("an unexpected relay permission answer")
	}
	select {
	case ch <- p:
	default:
	}
	return nil
}

// offersTo reports whether we offer a tube to name (directly or as a
// member of the tube's room). Callers hold m.mu.
func (m *Manager) offersTo(name string) bool {
	for _, t := range m.tubes {
		if t.outgoing && ((t.room == "" && t.peer == name) || (t.room != "" && t.members[name])) {
			return true
		}
	}
	return false
}
