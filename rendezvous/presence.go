package rendezvous

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// connID names one NATS client connection in a cluster.
type connID struct {
	server string
	cid    uint64
}

// presence is derived from live connections, as the NATS servers report
// them (connect and disconnect events, and a CONNZ snapshot at start). An
// account is online while it has at least one connection; nothing an
// account says about itself counts.
type presence struct {
	mu     sync.Mutex                      // guards the fields below
	conns  map[connID]string               // account connections → account
	hosts  map[connID]netip.Addr           // account connections → the address the NATS server saw
	byName map[string]map[connID]time.Time // account → its connections and their start
	relays map[connID]string               // service connections → relay instance id
	notify chan struct{}                   // closed and replaced whenever a connection is added
}

func newPresence() *presence {
	return &presence{
		conns:  map[connID]string{},
		hosts:  map[connID]netip.Addr{},
		byName: map[string]map[connID]time.Time{},
		relays: map[connID]string{},
		notify: make(chan struct{}),
	}
}

// relayConnPrefix starts the NATS connection name of every relay's service
// connection; the rest is the relay's instance id. The name alone proves
// nothing (any client names its connection): a relay instance is a
// connection of the service user, which holds the service's password
// (the NATS server checks it itself: the service user is in auth_users,
// past the auth callout), named so.
const relayConnPrefix = "tube-relay:"

// authConnPrefix names a relay's connection for logins (the auth
// callout), which is not a relay instance of its own.
const authConnPrefix = "tube-relay-auth:"

// isServiceUser reports whether user is one of the relay's own NATS
// users, which no account or guest can log in as.
func isServiceUser(user string) bool { return user == serviceUser || user == systemUser }

// add records a connection (host: the client address the NATS server
// saw). It returns whether the account just came online, and its other
// (older) connections.
func (p *presence) add(id connID, user, connName, host string, start time.Time) (cameOnline bool, older []connID) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if isServiceUser(user) {
		if inst, ok := strings.CutPrefix(connName, relayConnPrefix); ok && inst != "" {
			p.relays[id] = inst
		}
		return false, nil // the relay's own connections have no presence
	}
	if ValidName("account", user) != nil {
		return false, nil // guests have no presence
	}
	if _, dup := p.conns[id]; dup {
		return false, nil
	}
	m := p.byName[user]
	if m == nil {
		m = map[connID]time.Time{}
		p.byName[user] = m
	}
	cameOnline = len(m) == 0
	for other, t := range m {
		if !t.After(start) {
			older = append(older, other)
		}
	}
	m[id] = start
	p.conns[id] = user
	if ip, err := netip.ParseAddr(host); err == nil {
		p.hosts[id] = ip.Unmap()
	}
	close(p.notify)
	p.notify = make(chan struct{})
	return cameOnline, older
}

// remove forgets a connection. It returns the account and whether it just
// went offline.
func (p *presence) remove(id connID) (user string, wentOffline bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.relays[id]; ok {
		delete(p.relays, id)
		return "", false
	}
	user, ok := p.conns[id]
	if !ok {
		return "", false
	}
	delete(p.conns, id)
	delete(p.hosts, id)
	m := p.byName[user]
	delete(m, id)
	if len(m) == 0 {
		delete(p.byName, user)
		return user, true
	}
	return user, false
}

// connectedFrom reports whether one of name's connections comes from ip.
func (p *presence) connectedFrom(name string, ip netip.Addr) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for id := range p.byName[name] {
		if p.hosts[id] == ip {
			return true
		}
	}
	return false
}

func (p *presence) online(name string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.byName[name]) > 0
}

// waitConn waits until the server has reported the connection id.
func (p *presence) waitConn(ctx context.Context, id connID) bool {
	for {
		p.mu.Lock()
		_, ok := p.conns[id]
		ch := p.notify
		p.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return false
		}
	}
}

func (p *presence) has(id connID) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.conns[id]
	return ok
}

func (p *presence) connsOf(name string) []connID {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]connID, 0, len(p.byName[name]))
	for id := range p.byName[name] {
		out = append(out, id)
	}
	return out
}

func (p *presence) onlineCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.byName)
}

// leader reports whether instance is the relay that carries out duties
// that must happen once per cluster (presence fan-out, replacing
// connections): the live relay with the smallest instance id. Before any
// relay is known, everyone assumes it leads; duplicates are harmless.
func (p *presence) leader(instance string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	ids := make([]string, 0, len(p.relays))
	for _, inst := range p.relays {
		ids = append(ids, inst)
	}
	if len(ids) == 0 {
		return true
	}
	return slices.Min(ids) == instance
}

func (p *presence) relayCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.relays)
}

func (s *Service) handleConnEvent(ctx context.Context, m *nats.Msg) {
	var ev struct {
		Type   string            `json:"type"`
		Server server.ServerInfo `json:"server"`
		Client server.ClientInfo `json:"client"`
	}
	if err := json.Unmarshal(m.Data, &ev); err != nil {
		s.log.Warn("malformed connection event", "err", err)
		return
	}
	id := connID{server: ev.Server.ID, cid: ev.Client.ID}
	if strings.HasSuffix(m.Subject, ".DISCONNECT") {
		user, offline := s.pres.remove(id)
		if offline && s.pres.leader(s.cfg.Instance) {
			s.announce(user, false)
		}
		return
	}
	start := time.Now()
	if ev.Client.Start != nil {
		start = *ev.Client.Start
	}
	s.connected(ctx, id, ev.Client.User, ev.Client.Name, ev.Client.Host, start)
}

func (s *Service) connected(ctx context.Context, id connID, user, connName, host string, start time.Time) {
	online, older := s.pres.add(id, user, connName, host, start)
	if !s.pres.leader(s.cfg.Instance) {
		return
	}
	// Name_In_Use policy: the newest connection to an account wins; older
	// ones are told they were replaced (ConnectionReplaced) and closed.
	// The old connection closes itself when told; it is kicked only if it
	// is still there after replaceGrace.
	for _, old := range older {
		s.log.Info("connection replaced", "account", user, "server", old.server, "cid", old.cid)
		s.publish(user, KindControl, controlMsg{Type: "replaced", Server: old.server, CID: old.cid})
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			t := time.NewTimer(replaceGrace)
			defer t.Stop()
			select {
			case <-t.C:
				if s.pres.has(old) {
					s.kick(old)
				}
			case <-ctx.Done():
			}
		}()
	}
	if online {
		s.announce(user, true)
	}
}

// replaceGrace is how long a replaced connection has to close itself.
const replaceGrace = 2 * time.Second

// announce tells the online peers of name that it came or went.
func (s *Service) announce(name string, online bool) {
	for _, peer := range s.store.view.peersOf(name) {
		if s.pres.online(peer) {
			s.publish(peer, KindPresence, PresenceEvent{Name: name, Online: online})
		}
	}
}

// kickAll closes every connection of account name.
func (s *Service) kickAll(name string) {
	s.pres.mu.Lock()
	var ids []connID
	for id := range s.pres.byName[name] {
		ids = append(ids, id)
	}
	s.pres.mu.Unlock()
	for _, id := range ids {
		s.kick(id)
	}
}

// kick closes a client connection through its server's system service.
func (s *Service) kick(id connID) {
	b, _ := json.Marshal(server.KickClientReq{CID: id.cid})
	if _, err := s.sys.Request(fmt.Sprintf("$SYS.REQ.SERVER.%s.KICK", id.server), b, 2*time.Second); err != nil {
		s.log.Debug("kick", "server", id.server, "cid", id.cid, "err", err)
	}
}

// snapshot loads the connections that exist already (relays joining a
// running cluster). It asks every server for its connections in the Tubes
// account, page by page.
func (s *Service) snapshot(ctx context.Context) error {
	const page = 2000
	type connzResp struct {
		Server server.ServerInfo `json:"server"`
		Data   *server.Connz     `json:"data"`
	}
	opts := func(offset int) []byte {
		b, _ := json.Marshal(map[string]any{"acc": s.cfg.Account, "auth": true, "offset": offset, "limit": page})
		return b
	}
	inbox := s.sys.NewRespInbox()
	replies := make(chan *nats.Msg, 64)
	sub, err := s.sys.ChanSubscribe(inbox, replies)
	if err != nil {
		return err
	}
	defer sub.Unsubscribe()
	if err := s.sys.PublishRequest("$SYS.REQ.SERVER.PING.CONNZ", inbox, opts(0)); err != nil {
		return err
	}
	apply := func(cz *server.Connz) {
		for _, c := range cz.Conns {
			s.pres.add(connID{server: cz.ID, cid: c.Cid}, c.AuthorizedUser, c.Name, c.IP, c.Start)
		}
	}
	var errs []error
	answered := 0
	timer := time.NewTimer(2 * time.Second)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
			if s.cfg.Servers > 0 && answered < s.cfg.Servers {
				errs = append(errs, fmt.Errorf("rendezvous: %d of %d servers answered the connection snapshot", answered, s.cfg.Servers))
			}
			return errors.Join(errs...)
		case m := <-replies:
			var r connzResp
			if err := json.Unmarshal(m.Data, &r); err != nil || r.Data == nil {
				errs = append(errs, fmt.Errorf("rendezvous: bad CONNZ reply: %v", err))
				continue
			}
			apply(r.Data)
			for off := page; off < r.Data.Total; off += page {
				rep, err := s.sys.Request(fmt.Sprintf("$SYS.REQ.SERVER.%s.CONNZ", r.Data.ID), opts(off), 5*time.Second)
				if err != nil {
					errs = append(errs, err)
					break
				}
				var more connzResp
				if err := json.Unmarshal(rep.Data, &more); err != nil || more.Data == nil {
					errs = append(errs, fmt.Errorf("rendezvous: bad CONNZ reply: %v", err))
					break
				}
				apply(more.Data)
			}
			answered++
			if s.cfg.Servers > 0 && answered >= s.cfg.Servers {
				return errors.Join(errs...)
			}
			if s.cfg.Servers == 0 {
				// Unknown cluster size: wait for stragglers briefly.
				timer.Reset(300 * time.Millisecond)
			}
		}
	}
}
