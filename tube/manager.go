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
package tube

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/identity"
	"github.com/tubes-dev/tubes/peerlink"
	"github.com/tubes-dev/tubes/proxyproto"
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
	// Need says whether tubes need room and contact-list notifications.
	Need func(rooms, contacts bool)
	// TURN gives the TURN server and credentials for the account's relay
	// allocation; nil means tubes go direct only.
	TURN func(ctx context.Context) (turnclient.Config, error)
	// Connect, when it knows service, connects to it itself (a service
	// started on demand: the error then means it did not take the
	// connection) and gives done, called when the connection ends.
	Connect func(service string) (conn net.Conn, done func(), ok bool, err error)
	// Published gives the export of a service the account publishes
	// (service framework) when a reverse-tube request names one that is
	// not exported; its Allow and AllowRooms say who it is published to.
	// from is the contact asking: the daemon also checks it holds the
	// capabilities the service requires.
	Published func(service, from string) (api.Export, bool)
}

// Manager holds one account's exports, tubes and peer links.
type Manager struct {
	cfg    Config
	log    *slog.Logger
	self   *peerlink.Identity
	ctx    context.Context
	cancel context.CancelFunc

	needMu sync.Mutex // serialises Need calls
	need   [2]bool    // last rooms, contacts given to Need

	mu       sync.Mutex // guards the fields below
	ln       net.Listener
	exports  map[string]*export
	tubes    map[string]*tube
	links    map[string]*link
	dialing  map[string]*dialCall
	handlers map[string]*handler
	opens    map[string]*pendingOpen
	closed   bool

	allocMu     sync.Mutex         // one allocation at a time
	offering    int                // offers being made (they may use the allocation; guarded by mu)
	alloc       *turnclient.Client // while we offer tubes (guarded by mu)
	allocServer string
	permits     map[string]chan permittedMsg // relay permission requests awaiting answers
}

// export is a service exported for tubes.
type export struct {
	api.Export
	client string // the generator's local-API client, for ParamsGenerator
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
	exp      *export
	members  map[string]bool // room tubes: members it was offered to, still in the room
	only     string          // a room tube answering one member's request: offered to them alone
	accepted map[string]bool // who accepted it

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

// New returns a manager; Start begins accepting peer links.
func New(cfg Config) (*Manager, error) {
	if cfg.Key == nil || cfg.Signaller == nil || cfg.Emit == nil {
		return nil, errors.New("tube: Config needs Key, Signaller and Emit")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Need == nil {
		cfg.Need = func(bool, bool) {}
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Manager{
		cfg: cfg, log: cfg.Logger.With("account", cfg.Account),
		self: &peerlink.Identity{Name: cfg.Account, Key: cfg.Key},
		ctx:  ctx, cancel: cancel,
		exports: map[string]*export{}, tubes: map[string]*tube{}, links: map[string]*link{},
		dialing: map[string]*dialCall{}, handlers: map[string]*handler{}, opens: map[string]*pendingOpen{},
		permits: map[string]chan permittedMsg{},
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
	var need [2]bool
	m.mu.Lock()
	for _, t := range m.tubes {
		if t.room != "" {
			need[0] = true
		} else {
			need[1] = true
		}
	}
	m.mu.Unlock()
	if need != m.need {
		m.need = need
		m.cfg.Need(need[0], need[1])
	}
}

// checkOfferer ends an incoming room tube whose offerer has left the
// room already: room events reach us only once updateNeed subscribed to
// them, so a leave just before that would go unseen. The relay's view of
// membership may lag its events a little: look again after a while.
func (m *Manager) checkOfferer(t *tube) {
	for _, wait := range []time.Duration{0, 500 * time.Millisecond, 2 * time.Second} {
		select {
		case <-m.ctx.Done():
			return
		case <-time.After(wait):
		}
		m.mu.Lock()
		gone := m.tubes[t.id] != t
		m.mu.Unlock()
		if gone {
			return
		}
		ctx, cancel := context.WithTimeout(m.ctx, 10*time.Second)
		members, err := m.cfg.Signaller.RoomMembers(ctx, t.room)
		cancel()
		if err != nil || slices.Contains(members, t.peer) {
			continue
		}
		m.mu.Lock()
		m.endTube(t, tperr.Cancelled, t.peer+", who offered the tube, left room "+t.room)
		m.mu.Unlock()
		m.updateNeed()
		return
	}
}

// ---- exports

// Export exports a local service; client is the calling local-API client
// ("" if none), which owns a generator export.
func (m *Manager) Export(client string, e api.Export) (api.Export, error) {
	x, err := m.newExport(client, e)
	if err != nil {
		return api.Export{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return api.Export{}, tperr.New(tperr.Disconnected, "account %s is being removed", m.cfg.Account)
	}
	m.exports[e.Service] = x
	m.log.Info("exported", "service", e.Service, "tcp", e.TCP, "unix", e.Unix)
	return x.Export, nil
}

// newExport checks e and makes the export, without registering it.
func (m *Manager) newExport(client string, e api.Export) (*export, error) {
	if err := checkService(e.Service); err != nil {
		return nil, err
	}
	if err := checkExportAddr(&e); err != nil {
		return nil, err
	}
	if err := checkParams(e.Parameters); err != nil {
		return nil, err
	}
	sources := 0
	for _, on := range []bool{len(e.Parameters) > 0, e.ParamsExec != "", e.ParamsGenerator} {
		if on {
			sources++
		}
	}
	if sources > 1 {
		return nil, tperr.New(tperr.InvalidArgument, "an export takes fixed parameters, params_exec or a params_generator, only one of them")
	}
	if e.ParamsGenerator && client == "" {
		return nil, tperr.New(tperr.InvalidArgument, "a parameters generator is a local-API client: open /v1/events and send its client_id in the %s header", api.ClientHeader)
	}
	for _, n := range e.Allow {
		if n == "" || n == m.cfg.Account {
			return nil, tperr.New(tperr.InvalidArgument, "allow %q is not a contact name", n)
		}
	}
	e.Account = m.cfg.Account
	x := &export{Export: e}
	if e.ParamsGenerator {
		x.client = client
	}
	return x, nil
}

// Unexport removes an export; tubes already offered keep working.
func (m *Manager) Unexport(service string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.exports[service] == nil {
		return tperr.New(tperr.NotFound, "%s has no export %q (tube exports lists them)", m.cfg.Account, service)
	}
	delete(m.exports, service)
	return nil
}

// Exports lists the exports, by service name.
func (m *Manager) Exports() []api.Export {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]api.Export, 0, len(m.exports))
	for _, e := range m.exports {
		out = append(out, e.Export)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Service < out[j].Service })
	return out
}

// params makes an offer's parameters from its export.
func (m *Manager) params(ctx context.Context, e *export, req ParamsRequest) (map[string]api.Value, error) {
	switch {
	case e.ParamsGenerator:
		if m.cfg.Generate == nil {
			return nil, tperr.New(tperr.NotImplemented, "this daemon has no parameters generators")
		}
		p, err := m.cfg.Generate(ctx, e.client, req)
		if err != nil {
			return nil, err
		}
		return p, checkParams(p)
	case e.ParamsExec != "":
		return execParams(ctx, e.ParamsExec, m.cfg.Account, req)
	}
	return e.Parameters, nil
}

// ---- offering

// Offer offers an exported service to a contact or a room.
func (m *Manager) Offer(ctx context.Context, req api.OfferRequest) (api.Tube, error) {
	return m.offer(ctx, req, "", nil)
}

// offer offers a tube to req's service: e, or the export of that name.
// request is the reverse-tube request it answers, if any.
func (m *Manager) offer(ctx context.Context, req api.OfferRequest, request string, e *export) (api.Tube, error) {
	if err := checkService(req.Service); err != nil {
		return api.Tube{}, err
	}
	if err := checkPath(req.Path); err != nil {
		return api.Tube{}, err
	}
	// A request that came through a room is answered with a tube in that
	// room offered to the requester alone.
	only := ""
	if request != "" && req.To != "" && req.Room != "" {
		only = req.To
	} else if (req.To == "") == (req.Room == "") {
		return api.Tube{}, tperr.New(tperr.InvalidArgument, "a tube is offered to a contact (to) or a room (room), exactly one")
	}
	if req.To == m.cfg.Account {
		return api.Tube{}, tperr.New(tperr.InvalidArgument, "you cannot offer a tube to yourself")
	}
	if e == nil {
		m.mu.Lock()
		e = m.exports[req.Service]
		m.mu.Unlock()
	}
	if e == nil {
		return api.Tube{}, tperr.New(tperr.NotAvailable, "%s has not exported %q; run tube export %s first", m.cfg.Account, req.Service, req.Service)
	}
	sig := m.cfg.Signaller
	var recipients []string
	if req.Room == "" {
		recipients = []string{req.To}
	} else {
		members, err := sig.RoomMembers(ctx, req.Room)
		if err != nil {
			return api.Tube{}, err
		}
		if !slices.Contains(members, m.cfg.Account) {
			return api.Tube{}, tperr.New(tperr.PermissionDenied, "you are not a member of room %s", req.Room)
		}
		for _, n := range members {
			if n != m.cfg.Account && (only == "" || n == only) {
				recipients = append(recipients, n)
			}
		}
		if only != "" && len(recipients) == 0 {
			return api.Tube{}, tperr.New(tperr.PermissionDenied, "%s is not a member of room %s", only, req.Room)
		}
	}
	keys, err := m.keys(ctx, recipients)
	if err != nil {
		return api.Tube{}, err
	}
	if req.Room == "" && keys[req.To] == nil {
		return api.Tube{}, tperr.New(tperr.PermissionDenied, "%s is not your contact: tubes are offered to contacts who approved you (tube contact add %s)", req.To, req.To)
	}
	m.mu.Lock()
	m.offering++
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		m.offering--
		m.releaseAllocation() // if the offer failed and nothing else needs it
		m.mu.Unlock()
	}()
	relay, err := m.relayFor(ctx, wantPath(req.Path))
	if err != nil {
		return api.Tube{}, err
	}
	id := newID()
	params, err := m.params(ctx, e, ParamsRequest{Tube: id, Service: req.Service, Contact: req.To, Room: req.Room})
	if err != nil {
		return api.Tube{}, err
	}
	peer := req.To
	if req.Room != "" {
		peer = ""
	}
	t := &tube{id: id, service: req.Service, peer: peer, room: req.Room, only: only, outgoing: true, state: NotOffered,
		wantPath: req.Path, relay: relay, params: params, exp: e, members: map[string]bool{}, accepted: map[string]bool{}, conns: map[uint32]*tconn{}}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return api.Tube{}, tperr.New(tperr.Disconnected, "account %s is being removed", m.cfg.Account)
	}
	m.tubes[id] = t
	m.emit(api.Event{Type: api.EventNewTube, TubeID: id, Service: t.service, Contact: t.peer, Room: t.room,
		Direction: "outgoing", State: StateName(t.state), StateCode: u32(t.state)})
	m.mu.Unlock()
	m.updateNeed()

	if req.Room == "" {
		if err := m.sendOffer(ctx, t, req.To, keys[req.To], request); err != nil {
			m.mu.Lock()
			m.endTube(t, tperr.NameOr(err, tperr.NotAvailable), err.Error())
			m.mu.Unlock()
			m.updateNeed()
			return api.Tube{}, err
		}
		m.mu.Lock()
		m.setState(t, RemotePending)
	} else {
		for _, n := range recipients {
			if k := keys[n]; k != nil {
				if err := m.sendOffer(ctx, t, n, k, request); err != nil {
					m.log.Info("room tube not offered to a member", "room", t.room, "member", n, "err", err)
				}
			}
		}
		m.mu.Lock()
		for _, n := range recipients {
			t.members[n] = true
		}
		m.setState(t, Open)
	}
	v := t.view(m.cfg.Account)
	m.mu.Unlock()
	m.log.Info("offered a tube", "tube", id, "service", t.service, "to", t.peer, "room", t.room)
	if only != "" {
		// Room events are followed from now on (updateNeed); a requester
		// who left before that is looked for once more.
		go m.checkRequester(t)
	}
	return v, nil
}

// checkRequester ends t, a room tube answering only's request, if only is
// no longer a member of its room.
func (m *Manager) checkRequester(t *tube) {
	ctx, cancel := context.WithTimeout(m.ctx, 10*time.Second)
	defer cancel()
	members, err := m.cfg.Signaller.RoomMembers(ctx, t.room)
	if err != nil || slices.Contains(members, t.only) {
		return
	}
	m.mu.Lock()
	if m.tubes[t.id] == t {
		m.endTube(t, tperr.Cancelled, t.only+", whose request it answered, is not in room "+t.room)
	}
	m.mu.Unlock()
	m.updateNeed()
}

// keys fetches and parses the public keys of names; names the rendezvous
// does not give (not a contact or co-member) are absent.
func (m *Manager) keys(ctx context.Context, names []string) (map[string]identity.PublicKey, error) {
	out := map[string]identity.PublicKey{}
	if len(names) == 0 {
		return out, nil
	}
	raw, err := m.cfg.Signaller.Keys(ctx, names)
	if err != nil {
		return nil, err
	}
	for n, s := range raw {
		k, err := identity.ParsePublicKey(s)
		if err != nil {
			return nil, tperr.New(tperr.EncryptionError, "the rendezvous gave a malformed key for %s", n)
		}
		out[n] = k
	}
	return out, nil
}

// sendOffer sends the offer of t to one recipient, with the parameters
// sealed to that recipient's key.
func (m *Manager) sendOffer(ctx context.Context, t *tube, to string, key identity.PublicKey, request string) error {
	sealed, err := sealParams(t.params, key, t.id, m.cfg.Account, to)
	if err != nil {
		return tperr.Wrap(err, tperr.EncryptionError, "cannot seal the parameters of tube %s for %s", t.id, to)
	}
	m.mu.Lock()
	relay := t.relay // reallocate replaces it under m.mu
	m.mu.Unlock()
	msg := offerMsg{ID: t.id, Service: t.service, Addrs: m.peerAddrs(), Path: t.wantPath, Relay: relay, Params: sealed, Request: request}
	room := t.room
	_, err = m.cfg.Signaller.Send(ctx, to, room, kindOffer, mustJSON(msg))
	return err
}

// ---- incoming messages

// OnMessage handles a tube.* delivery from the rendezvous. It does not
// block: network work runs in its own goroutines.
func (m *Manager) OnMessage(from, room, kind string, body []byte) {
	var err error
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
		if p := m.opens[o.Request]; p != nil && p.contact == from && p.room == room {
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
		if _, err := m.cfg.Signaller.Send(ctx, to, room, kindClose, body); err != nil {
			m.log.Info("could not tell the peer a tube closed", "tube", t.id, "err", err)
		}
	}()
	return nil
}

// ---- accepting

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
	go ls.serve(m.log, func(c net.Conn) { m.openLocal(t, c) })
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

// ---- serving streams (offering side)

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
		if svc, d, ok, err = m.cfg.Connect(t.service); ok && err == nil {
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

// ---- handlers and reverse tubes

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
	if _, err := m.cfg.Signaller.Send(ctx, req.Contact, req.Room, kindRequest, mustJSON(requestMsg{Request: rid, Service: req.Service})); err != nil {
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
			m.cfg.Signaller.Send(ctx, from, room, kindRefuse, mustJSON(refuseMsg{Request: r.Request, Error: name, Message: msg}))
		}
		m.mu.Lock()
		e := m.exports[r.Service]
		m.mu.Unlock()
		if e == nil && m.cfg.Published != nil {
			// A published service is exported for this requester and
			// this offer only (the tube keeps the export; the export list
			// never has it), as it is published to them now.
			if pe, ok := m.cfg.Published(r.Service, from); ok {
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
		if e == nil || !m.mayRequest(ctx, e, from, room) {
			refuse(tperr.PermissionDenied, fmt.Sprintf("%s has not exported %s for %s%s", m.cfg.Account, r.Service, from, where), "")
			return
		}
		if _, err := m.offer(ctx, api.OfferRequest{Service: r.Service, To: from, Room: room}, r.Request, e); err != nil {
			// The requester learns that it failed, not why: the reason
			// may name local things (a parameters command's output).
			refuse(tperr.NameOr(err, tperr.NotAvailable), fmt.Sprintf("%s could not offer %s%s", m.cfg.Account, r.Service, where), err.Error())
		}
	}()
	return nil
}

// mayRequest reports whether from may ask for e: as a contact, when named
// in Allow or a member of one of AllowRooms (as we are); through a room
// (via, from a member who may not be a contact), when via is one of
// AllowRooms.
func (m *Manager) mayRequest(ctx context.Context, e *export, from, via string) bool {
	if via == "" && slices.Contains(e.Allow, from) {
		return true
	}
	for _, room := range e.AllowRooms {
		if via != "" && room != via {
			continue
		}
		members, err := m.cfg.Signaller.RoomMembers(ctx, room)
		if err == nil && slices.Contains(members, from) && slices.Contains(members, m.cfg.Account) {
			return true
		}
	}
	return false
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

// ---- roster and rooms

// OnContactRemoved ends the p2p tubes with a contact who is no longer
// mutual.
func (m *Manager) OnContactRemoved(name string) {
	m.mu.Lock()
	for _, t := range m.tubes {
		if t.room == "" && t.peer == name {
			m.endTube(t, tperr.PermissionDenied, name+" is no longer a contact")
		}
	}
	m.mu.Unlock()
	m.updateNeed()
}

// OnRoomEvent follows room membership: a room tube ends when its offerer
// leaves (or we do, or the room is deleted); a member who leaves loses
// its connections; a member who joins is offered our room tubes.
func (m *Manager) OnRoomEvent(room, member string, joined, deleted bool) {
	var offerTo []*tube
	m.mu.Lock()
	for _, t := range m.tubes {
		if t.room != room {
			continue
		}
		switch {
		case deleted:
			m.endTube(t, tperr.Cancelled, "room "+room+" was deleted")
		case member == m.cfg.Account && !joined:
			m.endTube(t, tperr.Cancelled, "you left room "+room)
		case !t.outgoing && member == t.peer && !joined:
			m.endTube(t, tperr.Cancelled, t.peer+", who offered the tube, left room "+room)
		case t.outgoing && !joined && t.only == member:
			m.endTube(t, tperr.Cancelled, member+", whose request it answered, left room "+room)
		case t.outgoing && !joined:
			delete(t.members, member)
			delete(t.accepted, member)
			m.resetMember(t, member, member+" left room "+room)
		case t.outgoing && joined && member != m.cfg.Account && !t.members[member] && t.only == "":
			t.members[member] = true
			offerTo = append(offerTo, t)
		}
	}
	m.mu.Unlock()
	m.updateNeed()
	if len(offerTo) > 0 {
		go func() {
			ctx, cancel := context.WithTimeout(m.ctx, 10*time.Second)
			defer cancel()
			keys, err := m.keys(ctx, []string{member})
			if err != nil || keys[member] == nil {
				m.log.Info("could not offer room tubes to a new member", "room", room, "member", member, "err", err)
				return
			}
			for _, t := range offerTo {
				if err := m.sendOffer(ctx, t, member, keys[member], ""); err != nil {
					m.log.Info("could not offer a room tube to a new member", "tube", t.id, "member", member, "err", err)
				}
			}
		}()
	}
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
	links := m.links
	m.links = map[string]*link{}
	m.mu.Unlock()
	for _, l := range links {
		l.s.Close(peerlink.CodeLost)
	}
	m.cancel()
	m.updateNeed()
}
