// Package tube is the stream tubes of one account: exports, offers to
// contacts and rooms, accepting with a local socket and its access
// control, connection monitoring, reverse tubes and handlers. It is the
// Telepathy StreamTube channel type, rebuilt over end-to-end encrypted
// peer links.
//
// # Flow
//
//	offerer (alice)                      rendezvous                 accepter (bob)
//	Export(vnc → 127.0.0.1:5900)
//	Offer(vnc, to bob) ── tube.offer {id, service, addrs, params sealed to bob} ──▶ NewTube (Local_Pending)
//	  Not_Offered → Remote_Pending                                      Accept: local socket,
//	                ◀════════ peer link (TLS 1.3, keys pinned) ═════════ dial alice's addrs
//	  Open        ◀──────────────── ctrl "accepted" ────────────────────  → Open, Address
//	  NewRemoteConnection ◀── OPEN stream {tube} + data ──────────────── app connects: NewLocalConnection
//	  (dial 127.0.0.1:5900, optional PROXY v2 header, splice)
//
// Tube offers, closes and reverse-tube requests travel through the
// rendezvous (kinds tube.*); tube data only over peer links. Every stream
// is checked on arrival: its peer must be the tube's contact, or a member
// of its room, who accepted it; anything else is reset and logged before
// a byte reaches the service.
//
// # Files
//
//	manager.go   the Manager, its state, message dispatch, queries, Close
//	export.go    exports and their parameters (offerer)
//	offer.go     offers to contacts and rooms (offerer)
//	serve.go     streams arriving for an export (offerer)
//	accept.go    incoming offers, Accept, the local socket's connections (accepter)
//	close.go     tubes and connections ending, and their errors
//	reverse.go   handlers, Open and reverse-tube requests
//	rooms.go     roster and room membership changes
//	links.go     peer links: listening, dialing, one link per peer
//	relaypath.go the relay path: TURN allocation and permissions
//	local.go     the accepter's local sockets and their access control
//	params.go    sealed offer parameters
//	wire.go      the tube.* messages and their decoders
package tube

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/identity"
	"github.com/tubes-dev/tubes/internal/limit"
	"github.com/tubes-dev/tubes/peerlink"
	"github.com/tubes-dev/tubes/tperr"
	"github.com/tubes-dev/tubes/turnclient"
)

// Tube states (Telepathy's Tube_Channel_State).
const (
	LocalPending  uint32 = 0
	RemotePending uint32 = 1
	Open          uint32 = 2
	NotOffered    uint32 = 3
)

var stateNames = [...]string{"Local_Pending", "Remote_Pending", "Open", "Not_Offered"}

// StateName returns the Telepathy name of a tube state.
func StateName(s uint32) string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("State(%d)", s)
}

// Signaller is the account's rendezvous connection, as tubes use it.
type Signaller interface {
	// Send delivers a message to a contact (to), all other members of a
	// room (room), or one member of a room (both); it returns who got it.
	Send(ctx context.Context, to, room, kind string, body []byte) ([]string, error)
	// Keys returns the public keys ("U…") of accounts we may talk to.
	Keys(ctx context.Context, names []string) (map[string]string, error)
	// RoomMembers lists a room's members.
	RoomMembers(ctx context.Context, room string) ([]string, error)
	// RoomJoins gives each member of a room the time it joined, as the
	// relay has it: a member who left and came back has a new one.
	RoomJoins(ctx context.Context, room string) (map[string]time.Time, error)
}

// Config configures a Manager.
type Config struct {
	Account    string
	Key        *identity.Key
	Signaller  Signaller
	Emit       func(api.Event) // tube events; Account is filled in
	Logger     *slog.Logger
	PeerListen string // where peer links are accepted (default ":0")
	SocketDir  string // parent of the private directories of "auto" Unix sockets
	UID        int    // the daemon's uid: the default of credentials controls
	// Generate asks a local-API client for an offer's parameters (exports
	// with ParamsGenerator).
	Generate func(ctx context.Context, client string, req ParamsRequest) (map[string]api.Value, error)
	// Need says whether tubes need room, contact-list and presence
	// notifications.
	Need func(rooms, contacts, presence bool)
	// TURN gives the TURN server and credentials for the account's relay
	// allocation; nil means tubes go direct only.
	TURN func(ctx context.Context) (turnclient.Config, error)
	// Connect, when the export's Unix socket is one it serves itself,
	// connects to the service there itself (a service started on demand:
	// the error then means it did not take the connection) and gives
	// done, called when the connection ends.
	Connect func(e api.Export) (conn net.Conn, done func(), ok bool, err error)
	// Published gives the export of a service the account publishes
	// (service framework) when a reverse-tube request names one that is
	// not exported; its Allow and AllowRooms say who it is published to.
	// impl is the implementation the requester chose ("INTERFACE@M.m",
	// or "" for the service as a whole): of a service registered at
	// several locations, the export serves the one implementing it. from
	// is the contact asking: the daemon also checks it holds the
	// capabilities the service requires.
	Published func(service, impl, from string) (api.Export, bool)
	// PinnedKey gives the key pinned for an account, if there is one:
	// incoming messages are checked against it. Without it (or before a
	// key is pinned) the key comes from Signaller.Keys.
	PinnedKey func(name string) (identity.PublicKey, bool)
	// AcceptError counts an accept error the peer-link or a local
	// socket's listener rode out (optional).
	AcceptError func(listener string, err error)
	// LinkLimits bound what a contact's link can make this side hold
	// (streams, handshake time); zero values are peerlink's defaults.
	LinkLimits peerlink.Limits
	// HandshakesPerSource is the most peer-link handshakes one source
	// (an IPv4 address, an IPv6 /64) may have in progress on the
	// peer-link listener, and HandshakesTotal for all sources (defaults
	// DefaultHandshakesPerSource, DefaultHandshakesTotal).
	HandshakesPerSource, HandshakesTotal int
}

// Defaults of Config's limits.
const (
	DefaultHandshakesPerSource = 8
	DefaultHandshakesTotal     = 128
	// LinksPerPeer is the most links one contact's daemon may have with
	// this one at once: the current one, and replaced ones still
	// carrying connections (the oldest of those is closed beyond it).
	LinksPerPeer = 4
)

// Manager holds one account's exports, tubes and peer links.
type Manager struct {
	cfg    Config
	log    *slog.Logger
	self   *peerlink.Identity
	ctx    context.Context
	cancel context.CancelFunc

	needMu sync.Mutex // serialises Need calls
	need   [3]bool    // last rooms, contacts, presence given to Need

	handshakes *limit.PerSource // peer-link handshakes in progress, by source

	mu       sync.Mutex // guards the fields below
	ln       net.Listener
	exports  map[string]*export
	tubes    map[string]*tube
	links    map[string]*link
	others   map[string][]*link // by link key, oldest first: links beside the current one (replaced, or opened by the peer) still running
	dialing  map[string]*dialCall
	handlers map[string]*handler
	opens    map[string]*pendingOpen
	closed   bool
	seq      uint64 // tubes created

	allocMu     sync.Mutex         // one allocation at a time
	offering    int                // offers being made (they may use the allocation; guarded by mu)
	alloc       *turnclient.Client // while we offer tubes (guarded by mu)
	allocServer string
	permits     map[string]chan permittedMsg // relay permission requests awaiting answers
	reconnected chan struct{}                // the account is connected again (Reconnected)
	owed        map[string]map[string]uint64 // peer → tubes whose latest offer it has not been sent, when owed (guarded by mu)
	oweSeq      uint64                       // counts owe calls (guarded by mu)
	resendMu    sync.Mutex                   // one resend at a time

	forged  atomic.Uint64 // messages dropped: not signed by their sender's pinned key, or played again
	seen    seenSet       // signatures of messages taken within the replay window
	started time.Time     // messages signed well before are replays (seen is new)
}

// Forged counts the tube messages dropped because they were not signed
// by their sender's pinned key.
func (m *Manager) Forged() uint64 { return m.forged.Load() }

// LinkStats are the counts behind the peer-link limits.
type LinkStats struct {
	ReceiveHeld       int64  // bytes contacts sent that local sockets have not taken
	StreamsRefused    uint64 // streams over the per-link cap
	StreamsStalled    uint64 // streams reset for not being read on a full link
	Handshakes        int    // peer-link handshakes in progress
	HandshakesRefused uint64 // connections over the per-source or total handshake cap
	Links             int    // links open, replaced ones included
}

// LinkStats returns the manager's peer-link counts.
func (m *Manager) LinkStats() LinkStats {
	m.mu.Lock()
	n := len(m.links)
	for _, r := range m.others {
		n += len(r)
	}
	m.mu.Unlock()
	return LinkStats{
		ReceiveHeld: m.self.HeldBytes(), StreamsRefused: m.self.RefusedStreams(), StreamsStalled: m.self.StalledStreams(),
		Handshakes: m.handshakes.Held(), HandshakesRefused: m.handshakes.Refused(), Links: n,
	}
}

// tube is one tube, either direction.
type tube struct {
	id, service string
	peer        string // p2p contact, or the offerer of an incoming room tube
	room        string
	outgoing    bool
	state       uint32
	path        string // path of the link that carried it last
	wantPath    string // the offerer's path choice
	params      map[string]api.Value

	// outgoing
	exp          *export
	members      map[string]bool      // room tubes: members it was offered to, still in the room
	laterMembers bool                 // room tubes: offered to members who join later too
	joined       map[string]time.Time // room tubes: when each member it was offered to had joined (the relay's clock)
	seq          uint64               // order of creation
	only         string               // a room tube answering one member's request: offered to them alone
	accepted     map[string]bool      // who accepted it

	// incoming
	addrs     []string     // the offerer's direct addresses
	relay     *relayInfo   // the offerer's relay allocation
	local     *localSocket // once accepted
	accepting bool
	handler   string // client whose handler accepted it

	nextConn uint32
	conns    map[uint32]*tconn
}

// tconn is one connection carried by a tube.
type tconn struct {
	id      uint32
	st      *peerlink.Stream
	source  string
	contact string
}

// New returns a manager; Start begins accepting peer links.
func New(cfg Config) (*Manager, error) {
	if cfg.Key == nil || cfg.Signaller == nil || cfg.Emit == nil {
		return nil, errors.New("tube: Config needs Key, Signaller and Emit")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Need == nil {
		cfg.Need = func(bool, bool, bool) {}
	}
	if cfg.HandshakesPerSource == 0 {
		cfg.HandshakesPerSource = DefaultHandshakesPerSource
	}
	if cfg.HandshakesTotal == 0 {
		cfg.HandshakesTotal = DefaultHandshakesTotal
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Manager{
		started: time.Now(),
		cfg:     cfg, log: cfg.Logger.With("account", cfg.Account),
		self:       &peerlink.Identity{Name: cfg.Account, Key: cfg.Key, Limits: cfg.LinkLimits},
		handshakes: limit.NewPerSource(cfg.HandshakesPerSource, cfg.HandshakesTotal),
		ctx:        ctx, cancel: cancel,
		exports: map[string]*export{}, tubes: map[string]*tube{}, links: map[string]*link{}, others: map[string][]*link{},
		dialing: map[string]*dialCall{}, handlers: map[string]*handler{}, opens: map[string]*pendingOpen{},
		permits: map[string]chan permittedMsg{}, reconnected: make(chan struct{}, 1), owed: map[string]map[string]uint64{},
	}, nil
}

// newID returns a random id (96 bits, base64url) that does not start
// with '-' or '_', so that a command line never takes it for a flag.
func newID() string {
	b := make([]byte, 12)
	for {
		rand.Read(b)
		if id := base64.RawURLEncoding.EncodeToString(b); id[0] != '-' && id[0] != '_' {
			return id
		}
	}
}

// emit publishes an event of this account. Callers hold m.mu, so events
// of one tube are in order.
func (m *Manager) emit(ev api.Event) {
	ev.Account = m.cfg.Account
	m.cfg.Emit(ev)
}

func u32(v uint32) *uint32 { return &v }

func (t *tube) view(account string) api.Tube {
	v := api.Tube{ID: t.id, Account: account, Service: t.service, State: StateName(t.state), StateCode: t.state,
		Peer: t.peer, Room: t.room, Direction: "incoming", Path: t.path}
	if t.outgoing {
		v.Direction = "outgoing"
		if t.room != "" {
			v.Peer = ""
		}
	} else {
		v.Parameters = t.params
	}
	if t.local != nil {
		v.Address, v.Access = t.local.addr, t.local.access
	}
	return v
}

// setState changes a tube's state and signals it. m.mu is held.
func (m *Manager) setState(t *tube, s uint32) {
	t.state = s
	ev := api.Event{Type: api.EventTubeStateChanged, TubeID: t.id, Service: t.service, State: StateName(s), StateCode: u32(s),
		Path: t.path, Handler: t.handler, Contact: t.peer, Room: t.room}
	if t.local != nil {
		ev.Address = t.local.addr
	}
	m.emit(ev)
}

// updateNeed tells the account which notifications tubes need: room
// membership for room tubes, the contact list for p2p tubes.
func (m *Manager) updateNeed() {
	m.needMu.Lock()
	defer m.needMu.Unlock()
	var need [3]bool
	m.mu.Lock()
	for _, t := range m.tubes {
		if t.room != "" {
			need[0] = true
		} else {
			need[1] = true
		}
	}
	for peer, ids := range m.owed { // what ended, or went to someone no longer a contact, is owed no more
		for id := range ids {
			if t := m.tubes[id]; t == nil || t.room == "" && t.peer != peer {
				delete(ids, id)
			}
		}
		if len(ids) == 0 {
			delete(m.owed, peer)
		}
	}
	need[2] = len(m.owed) > 0 // to send what they are owed when they come online
	m.mu.Unlock()
	if need != m.need {
		m.need = need
		m.cfg.Need(need[0], need[1], need[2])
	}
}

// ---- incoming messages

// OnMessage handles a tube.* delivery from the rendezvous. It does not
// block: network work runs in its own goroutines.
func (m *Manager) OnMessage(from, room, kind string, data []byte) {
	body, err := m.openSigned(from, room, kind, data)
	if err != nil {
		m.forged.Add(1)
		m.log.Warn("dropped a tube message", "from", from, "room", room, "kind", clip(kind), "err", err)
		return
	}
	switch kind {
	case kindOffer:
		err = m.onOffer(from, room, body)
	case kindClose:
		err = m.onClose(from, room, body)
	case kindRequest:
		err = m.onRequest(from, room, body)
	case kindRefuse:
		err = m.onRefuse(from, body)
	case kindPermit:
		err = m.onPermit(from, room, body)
	case kindPermitted:
		err = m.onPermitted(from, body)
	default:
		err = fmt.Errorf("unknown kind %q", clip(kind))
	}
	if err != nil {
		m.log.Warn("ignored a tube message", "from", from, "kind", clip(kind), "err", err)
	}
}

// ---- queries

// Tube returns one tube.
func (m *Manager) Tube(id string) (api.Tube, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t := m.tubes[id]
	if t == nil {
		return api.Tube{}, false
	}
	return t.view(m.cfg.Account), true
}

// Tubes lists the tubes.
func (m *Manager) Tubes() []api.Tube {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]api.Tube, 0, len(m.tubes))
	for _, t := range m.tubes {
		out = append(out, t.view(m.cfg.Account))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Connections lists the live tube connections.
func (m *Manager) Connections() []api.Connection {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []api.Connection
	for _, t := range m.tubes {
		for _, c := range t.conns {
			out = append(out, api.Connection{Tube: t.id, ID: c.id, Source: c.source, Contact: c.contact, Account: m.cfg.Account, Room: t.room})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Tube != out[j].Tube {
			return out[i].Tube < out[j].Tube
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// Whois maps the source address of the daemon's connection to an
// exported service to the contact it carries.
func (m *Manager) Whois(source string) (api.Whois, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, t := range m.tubes {
		if !t.outgoing {
			continue
		}
		for _, c := range t.conns {
			if c.source == source {
				return api.Whois{
					Connection: api.Connection{Tube: t.id, ID: c.id, Source: c.source, Contact: c.contact, Account: m.cfg.Account, Room: t.room},
					Tube:       t.view(m.cfg.Account),
				}, true
			}
		}
	}
	return api.Whois{}, false
}

// ---- life cycle

// Close ends every tube and link of the account.
func (m *Manager) Close() {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return
	}
	m.closed = true
	if m.ln != nil {
		m.ln.Close()
	}
	for _, t := range m.tubes {
		m.endTube(t, tperr.Cancelled, "account "+m.cfg.Account+" stopped")
	}
	var links []*link
	for _, l := range m.links {
		links = append(links, l)
	}
	for _, r := range m.others {
		links = append(links, r...)
	}
	m.links, m.others = map[string]*link{}, map[string][]*link{}
	m.mu.Unlock()
	for _, l := range links {
		l.s.Close(peerlink.CodeLost)
	}
	m.cancel()
	m.updateNeed()
}
