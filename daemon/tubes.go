package daemon

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/identity"
	"github.com/tubes-dev/tubes/peerlink"
	"github.com/tubes-dev/tubes/relay"
	"github.com/tubes-dev/tubes/rendezvous"
	"github.com/tubes-dev/tubes/tperr"
	"github.com/tubes-dev/tubes/tube"
	"github.com/tubes-dev/tubes/turnclient"
)

// signaller gives an account's tube manager the rendezvous, through
// whatever connection the account has at the moment.
type signaller struct{ a *account }

func (s signaller) Send(ctx context.Context, to, room, kind string, body []byte) ([]string, error) {
	c, err := s.a.conn()
	if err != nil {
		return nil, err
	}
	return c.Send(ctx, to, room, kind, body)
}

// Keys gives the keys the relay gives for names that match what is
// pinned for them (pinning those seen for the first time). Only names
// asked for are taken from the relay's answer: it cannot plant pins for
// names nobody asked about. A name whose key is not its pinned one is left
// out, and reported (ContactKeyChanged); asked alone, it is the error.
func (s signaller) Keys(ctx context.Context, names []string) (map[string]string, error) {
	c, err := s.a.conn()
	if err != nil {
		return nil, err
	}
	raw, err := c.Keys(ctx, names)
	if err != nil {
		return nil, err
	}
	given := make(map[string]identity.PublicKey, len(names))
	for _, name := range names {
		k, ok := raw[name]
		if !ok || rendezvous.ValidName("account", name) != nil {
			continue
		}
		key, err := identity.ParsePublicKey(k)
		if err != nil {
			s.a.log.Warn("the relay gave a malformed key", "contact", name)
			continue
		}
		given[name] = key
	}
	refused := s.a.pins.checkAll(given)
	out := make(map[string]string, len(given))
	for name, key := range given {
		if err := refused[name]; err != nil {
			if len(names) == 1 {
				return nil, err
			}
			continue
		}
		out[name] = key.String()
	}
	return out, nil
}

func (s signaller) RoomJoins(ctx context.Context, room string) (map[string]time.Time, error) {
	c, err := s.a.conn()
	if err != nil {
		return nil, err
	}
	ms, err := c.RoomMembers(ctx, room)
	if err != nil {
		return nil, err
	}
	out := make(map[string]time.Time, len(ms))
	for _, m := range ms {
		out[m.Name] = m.Joined
	}
	return out, nil
}

func (s signaller) RoomMembers(ctx context.Context, room string) ([]string, error) {
	joins, err := s.RoomJoins(ctx, room)
	if err != nil {
		return nil, err
	}
	return slices.Sorted(maps.Keys(joins)), nil
}

// turnTTL is the lifetime of the REST credentials a daemon makes itself
// for an external TURN server.
const turnTTL = 12 * time.Hour

// turnConfig says which TURN server the account's relay allocation uses:
// the daemon's --turn server, else the one the account's relay runs, with
// credentials it issues.
func (a *account) turnConfig(ctx context.Context) (turnclient.Config, error) {
	if t := a.d.cfg.TURN; t != nil {
		cfg := turnclient.Config{Server: t.Addr, Username: t.User, Password: t.Password}
		if t.Secret != "" {
			cfg.Username, cfg.Password = relay.RESTCredentials(t.Secret, a.name, turnTTL, time.Now())
		}
		return cfg, nil
	}
	c, err := a.conn()
	if err != nil {
		return turnclient.Config{}, err
	}
	cred, err := c.TURN(ctx)
	if err != nil {
		return turnclient.Config{}, err
	}
	return turnclient.Config{Server: cred.Addr, Username: cred.Username, Password: cred.Password}, nil
}

// tubesClient is the client id under which the tubes subsystem holds its
// own interest in room and contact notifications.
const tubesClient = "daemon:tubes"

func (a *account) newTubes() error {
	dir := a.d.cfg.SocketDir
	if dir == "" {
		dir = filepath.Join(a.d.cfg.StateDir, "sockets")
	}
	dir = filepath.Join(dir, a.name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	m, err := tube.New(tube.Config{
		Account:    a.name,
		Key:        a.key,
		Signaller:  signaller{a},
		Emit:       func(ev api.Event) { a.d.bus.Publish(ev) },
		Logger:     a.d.cfg.Logger,
		PeerListen: a.d.cfg.PeerListen,
		SocketDir:  dir,
		UID:        os.Getuid(),
		Generate: func(ctx context.Context, client string, req tube.ParamsRequest) (map[string]api.Value, error) {
			return a.d.generate(ctx, a.name, client, req)
		},
		TURN: a.turnConfig,
		Published: func(service, impl, from string) (api.Export, bool) {
			return a.d.publishedExport(a.name, service, impl, from)
		},
		AcceptError:         func(listener string, _ error) { a.d.metrics.acceptError(listener) },
		LinkLimits:          peerlink.Limits{Streams: a.d.cfg.Limits.LinkStreams, Handshake: a.d.cfg.Limits.LinkHandshake, Stall: a.d.cfg.Limits.LinkStall},
		HandshakesPerSource: a.d.cfg.Limits.HandshakesPerSource,
		PinnedKey: func(name string) (identity.PublicKey, bool) {
			cur, ok := a.pins.get(name)
			if !ok {
				return nil, false
			}
			k, err := identity.ParsePublicKey(cur.Key)
			return k, err == nil
		},
		Connect: a.d.connectActivated,
		Need: func(rooms, contacts, presence bool) {
			for tok, on := range map[string]bool{api.InterestRooms: rooms, api.InterestContactList: contacts, api.InterestPresence: presence} {
				if on {
					a.addInterest(tubesClient, []string{tok})
				} else {
					a.removeInterest(tubesClient, []string{tok})
				}
			}
		},
	})
	if err != nil {
		return err
	}
	a.tubes = m
	return nil
}

// tubeMessage routes rendezvous deliveries that belong to tubes; it
// reports whether it took the message.
func (a *account) tubeMessage(kind string, m rendezvous.Message) bool {
	if !tube.IsTubeKind(m.Kind) || kind != rendezvous.KindMessage {
		return false
	}
	a.tubes.OnMessage(m.From, m.Room, m.Kind, m.Body)
	return true
}

func (d *Daemon) managers() []*tube.Manager {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []*tube.Manager
	for _, n := range d.order {
		if a := d.accounts[n]; a != nil && a.tubes != nil {
			out = append(out, a.tubes)
		}
	}
	return out
}

func (d *Daemon) tubesOf(name string) (*tube.Manager, error) {
	a, err := d.account(name)
	if err != nil {
		return nil, err
	}
	return a.tubes, nil
}

// findTube returns the manager holding tube id.
func (d *Daemon) findTube(id string) (*tube.Manager, api.Tube, error) {
	for _, m := range d.managers() {
		if t, ok := m.Tube(id); ok {
			return m, t, nil
		}
	}
	return nil, api.Tube{}, tperr.New(tperr.NotFound, "there is no tube %s (tube tubes lists them)", id)
}

// Export exports a local service for an account; client is the calling
// local-API client ("" if none).
func (d *Daemon) Export(name, client string, e api.Export) (api.Export, error) {
	m, err := d.tubesOf(name)
	if err != nil {
		return api.Export{}, err
	}
	if !durable(e) {
		return m.Export(client, e)
	}
	var x api.Export
	err = d.changeExport(name, e.Service, func() error {
		var err error
		x, err = m.Export(client, e)
		return err
	})
	return x, err
}

// generate asks a client for an offer's parameters: a ParametersRequested
// event names the request, and the client answers with AnswerParams.
func (d *Daemon) generate(ctx context.Context, account, client string, req tube.ParamsRequest) (map[string]api.Value, error) {
	id := randomID()
	ch := make(chan api.ParamsAnswer, 1)
	d.mu.Lock()
	d.paramReqs[id] = paramReq{client: client, ch: ch}
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		delete(d.paramReqs, id)
		d.mu.Unlock()
	}()
	d.bus.Publish(api.Event{Type: api.EventParametersRequested, Account: account, Request: id, Handler: client,
		TubeID: req.Tube, Service: req.Service, Contact: req.Contact, Room: req.Room})
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	select {
	case a := <-ch:
		if a.Error != "" {
			return nil, tperr.New(tperr.NotAvailable, "the parameters generator of %s refused: %s", req.Service, a.Error)
		}
		return a.Parameters, nil
	case <-ctx.Done():
		return nil, tperr.New(tperr.Timeout, "the parameters generator of %s did not answer", req.Service)
	}
}

type paramReq struct {
	client string
	ch     chan api.ParamsAnswer
}

// AnswerParams delivers a generator's answer; only the client asked may
// answer.
func (d *Daemon) AnswerParams(client, id string, a api.ParamsAnswer) error {
	d.mu.Lock()
	r, ok := d.paramReqs[id]
	if ok && r.client == client {
		delete(d.paramReqs, id)
	}
	d.mu.Unlock()
	if !ok {
		return tperr.New(tperr.NotFound, "there is no pending parameters request %s (it may have timed out)", id)
	}
	if r.client != client {
		return tperr.New(tperr.PermissionDenied, "parameters request %s was made to another client", id)
	}
	r.ch <- a
	return nil
}

func randomID() string {
	b := make([]byte, 12)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// Unexport removes an export.
func (d *Daemon) Unexport(name, service string) error {
	m, err := d.tubesOf(name)
	if err != nil {
		return err
	}
	return d.changeExport(name, service, func() error { return m.Unexport(service) })
}

// Exports lists every account's exports.
func (d *Daemon) Exports() []api.Export {
	out := []api.Export{}
	for _, m := range d.managers() {
		out = append(out, m.Exports()...)
	}
	return out
}

// Offer offers a tube.
func (d *Daemon) Offer(ctx context.Context, name string, req api.OfferRequest) (api.Tube, error) {
	m, err := d.tubesOf(name)
	if err != nil {
		return api.Tube{}, err
	}
	return m.Offer(ctx, req)
}

// Tubes lists every account's tubes.
func (d *Daemon) Tubes() []api.Tube {
	out := []api.Tube{}
	for _, m := range d.managers() {
		out = append(out, m.Tubes()...)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Tube returns one tube.
func (d *Daemon) Tube(id string) (api.Tube, error) {
	_, t, err := d.findTube(id)
	return t, err
}

// Accept accepts an incoming tube.
func (d *Daemon) Accept(ctx context.Context, id string, req api.AcceptRequest) (api.Tube, error) {
	m, _, err := d.findTube(id)
	if err != nil {
		return api.Tube{}, err
	}
	return m.Accept(ctx, id, req)
}

// CloseTube closes a tube.
func (d *Daemon) CloseTube(id string) error {
	m, _, err := d.findTube(id)
	if err != nil {
		return err
	}
	return m.CloseTube(id)
}

// Connections lists every live tube connection.
func (d *Daemon) Connections() []api.Connection {
	out := []api.Connection{}
	for _, m := range d.managers() {
		out = append(out, m.Connections()...)
	}
	return out
}

// Whois maps a source address of a connection to an exported service to
// the contact it comes from.
func (d *Daemon) Whois(source string) (api.Whois, error) {
	for _, m := range d.managers() {
		if w, ok := m.Whois(source); ok {
			return w, nil
		}
	}
	return api.Whois{}, tperr.New(tperr.NotFound, "no tube connection has the source address %s", source)
}

// AddHandler registers a handler for a local-API client.
func (d *Daemon) AddHandler(name, client string, req api.HandleRequest) (string, error) {
	m, err := d.tubesOf(name)
	if err != nil {
		return "", err
	}
	return m.AddHandler(client, req)
}

// Open asks a contact for a reverse tube and accepts it.
func (d *Daemon) Open(ctx context.Context, name string, req api.OpenRequest) (api.Tube, error) {
	if err := normalizeNames(&req.Contact, &req.Room); err != nil {
		return api.Tube{}, err
	}
	m, err := d.tubesOf(name)
	if err != nil {
		return api.Tube{}, err
	}
	err = d.resolveOpen(ctx, name, &req)
	var t api.Tube
	if err == nil {
		t, err = m.Open(ctx, req)
	}
	if err != nil && req.Room == "" && tperr.Has(err, tperr.PermissionDenied) && strings.Contains(err.Error(), "not your contact") {
		return t, tperr.New(tperr.PermissionDenied, "%s is not your contact; for a service %s publishes to a room you share, name the room (tube open --room ROOM)", req.Contact, req.Contact)
	}
	return t, err
}
