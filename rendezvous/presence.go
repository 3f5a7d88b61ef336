package rendezvous

import (
	"context"
	"slices"
	"strings"
	"sync"
	"time"
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
	byName map[string]map[connID]time.Time // account → its connections and their start
	relays map[connID]string               // service connections → relay instance id
	notify chan struct{}                   // closed and replaced whenever a connection is added
}

func newPresence() *presence {
	return &presence{
		conns:  map[connID]string{},
		byName: map[string]map[connID]time.Time{},
		relays: map[connID]string{},
		notify: make(chan struct{}),
	}
}

// relayConnPrefix starts the NATS connection name of every relay's service
// connection; the rest is the relay's instance id.
const relayConnPrefix = "tube-relay:"

// add records a connection. It returns whether the account just came
// online, and its other (older) connections.
func (p *presence) add(id connID, user, connName string, start time.Time) (cameOnline bool, older []connID) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if inst, ok := strings.CutPrefix(connName, relayConnPrefix); ok {
		p.relays[id] = inst
		return false, nil
	}
	if ValidName("account", user) != nil {
		return false, nil // guests and service users have no presence
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
	m := p.byName[user]
	delete(m, id)
	if len(m) == 0 {
		delete(p.byName, user)
		return user, true
	}
	return user, false
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
