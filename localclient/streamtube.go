package localclient

import (
	"context"
	"errors"
	"sort"
	"sync"

	"github.com/tubes-dev/tubes/api"
)

// RemoteContact says where a connection to an exported service comes
// from: telepathy-qt's StreamTubeServer::RemoteContact.
type RemoteContact struct {
	Account      string
	Contact      string
	Room         string
	Tube         string
	ConnectionID uint32
}

// ParamsRequest describes one offer a parameters generator is asked for.
type ParamsRequest struct {
	Tube, Service, Contact, Room string
}

// ParamsGenerator returns the parameters of one offer (different ones per
// offer, e.g. a fresh session password). An error refuses the offer.
type ParamsGenerator func(ParamsRequest) (map[string]api.Value, error)

// StreamTubeServer exports a local service over tubes and tells which
// contact each connection comes from: the Go analogue of telepathy-qt's
// StreamTubeServer, with Unix sockets as well as TCP.
type StreamTubeServer struct {
	c       *Client
	account string
	events  chan api.Event
	stop    func()

	mu       sync.Mutex // guards the fields below
	services map[string]bool
	gens     map[string]ParamsGenerator
	tubes    map[string]api.Tube
	conns    map[string]RemoteContact // source address → contact
	closed   bool
}

// NewStreamTubeServer returns a server for one account ("" for the
// daemon's only account). Its events arrive on Events until Close.
func (c *Client) NewStreamTubeServer(ctx context.Context, account string) (*StreamTubeServer, error) {
	s := &StreamTubeServer{c: c, account: account, events: make(chan api.Event, 1024),
		services: map[string]bool{}, gens: map[string]ParamsGenerator{}, tubes: map[string]api.Tube{}, conns: map[string]RemoteContact{}}
	_, stop, err := c.listen(ctx, s.onEvent)
	if err != nil {
		return nil, err
	}
	s.stop = stop
	return s, nil
}

// ExportTCP exports a TCP service with fixed parameters, sent with every
// offer until the next export. Parameters are set together with the
// socket, so they never leak to another service.
func (s *StreamTubeServer) ExportTCP(ctx context.Context, service, addr string, params map[string]api.Value) error {
	return s.export(ctx, api.Export{Service: service, TCP: addr, Parameters: params}, nil)
}

// ExportUnix exports a Unix socket service (telepathy-qt never could).
func (s *StreamTubeServer) ExportUnix(ctx context.Context, service, path string, params map[string]api.Value) error {
	return s.export(ctx, api.Export{Service: service, Unix: path, Parameters: params}, nil)
}

// ExportTCPGenerator exports a TCP service whose parameters gen makes per
// offer.
func (s *StreamTubeServer) ExportTCPGenerator(ctx context.Context, service, addr string, gen ParamsGenerator) error {
	return s.export(ctx, api.Export{Service: service, TCP: addr, ParamsGenerator: true}, gen)
}

// ExportUnixGenerator is ExportTCPGenerator for a Unix socket.
func (s *StreamTubeServer) ExportUnixGenerator(ctx context.Context, service, path string, gen ParamsGenerator) error {
	return s.export(ctx, api.Export{Service: service, Unix: path, ParamsGenerator: true}, gen)
}

func (s *StreamTubeServer) export(ctx context.Context, e api.Export, gen ParamsGenerator) error {
	if gen != nil {
		s.mu.Lock()
		s.gens[e.Service] = gen
		s.mu.Unlock()
	}
	if _, err := s.c.Export(ctx, s.account, e); err != nil {
		return err
	}
	s.mu.Lock()
	s.services[e.Service] = true
	s.mu.Unlock()
	return nil
}

// Offer offers an exported service to a contact (to) or a room.
func (s *StreamTubeServer) Offer(ctx context.Context, service, to, room string) (api.Tube, error) {
	t, err := s.c.Offer(ctx, s.account, api.OfferRequest{Service: service, To: to, Room: room})
	if err == nil {
		s.mu.Lock()
		s.tubes[t.ID] = t
		s.mu.Unlock()
	}
	return t, err
}

// Events delivers the server's events: NewTube (tube requested),
// TubeChannelStateChanged, NewRemoteConnection (source address and
// contact), ConnectionClosed, TubeClosed.
func (s *StreamTubeServer) Events() <-chan api.Event { return s.events }

// Tubes returns the tubes this server offered that are still open.
func (s *StreamTubeServer) Tubes() []api.Tube {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]api.Tube, 0, len(s.tubes))
	for _, t := range s.tubes {
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// TCPConnections maps the source address of each live connection to the
// exported service to the contact it comes from.
func (s *StreamTubeServer) TCPConnections() map[string]RemoteContact {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]RemoteContact, len(s.conns))
	for k, v := range s.conns {
		out[k] = v
	}
	return out
}

// Close stops the server: its exports are removed (open tubes stay until
// closed).
func (s *StreamTubeServer) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	services := s.services
	s.mu.Unlock()
	s.stop()
	var errs []error
	for svc := range services {
		errs = append(errs, s.c.Unexport(context.Background(), s.account, svc))
	}
	return errors.Join(errs...)
}

func (s *StreamTubeServer) onEvent(ev api.Event) {
	if s.account != "" && ev.Account != s.account {
		return
	}
	s.mu.Lock()
	if ev.Type == api.EventParametersRequested {
		gen := s.gens[ev.Service]
		s.mu.Unlock()
		if gen != nil {
			go s.answer(ev, gen)
		}
		return
	}
	t, mine := s.tubes[ev.TubeID]
	if ev.Type == api.EventNewTube && ev.Direction == "outgoing" && s.services[ev.Service] {
		mine = true
		t = api.Tube{ID: ev.TubeID, Account: ev.Account, Service: ev.Service, Peer: ev.Contact, Room: ev.Room, Direction: ev.Direction, State: ev.State}
		s.tubes[ev.TubeID] = t
	}
	if !mine {
		s.mu.Unlock()
		return
	}
	switch ev.Type {
	case api.EventTubeStateChanged:
		t.State, t.StateCode = ev.State, *ev.StateCode
		s.tubes[t.ID] = t
	case api.EventTubeClosed:
		delete(s.tubes, t.ID)
	case api.EventNewRemoteConnection:
		s.conns[ev.Source] = RemoteContact{Account: ev.Account, Contact: ev.Contact, Room: ev.Room, Tube: ev.TubeID, ConnectionID: *ev.ConnectionID}
	case api.EventConnectionClosed:
		for src, rc := range s.conns {
			if rc.Tube == ev.TubeID && rc.ConnectionID == *ev.ConnectionID {
				delete(s.conns, src)
			}
		}
	}
	s.mu.Unlock()
	select {
	case s.events <- ev:
	default: // a reader that fell 1024 events behind loses events, not the daemon
	}
}

func (s *StreamTubeServer) answer(ev api.Event, gen ParamsGenerator) {
	p, err := gen(ParamsRequest{Tube: ev.TubeID, Service: ev.Service, Contact: ev.Contact, Room: ev.Room})
	a := api.ParamsAnswer{Parameters: p}
	if err != nil {
		a = api.ParamsAnswer{Error: err.Error()}
	}
	s.c.AnswerParams(context.Background(), ev.Request, a)
}

// StreamTubeClient accepts tubes offered to an account for given
// services, automatically, as local sockets: the Go analogue of
// telepathy-qt's StreamTubeClient.
type StreamTubeClient struct {
	c       *Client
	account string
	session string
	events  chan api.Event
	stop    func()

	mu    sync.Mutex
	tubes map[string]api.Tube
	conns map[string]map[uint32]bool
}

// StreamTubeClientOptions say which tubes a client handles and how it
// accepts them.
type StreamTubeClientOptions struct {
	Services []string // services handled (p2p tubes, or room tubes with Room)
	From     string   // only tubes from this contact
	Room     string   // only tubes offered in this room
	Accept   api.AcceptRequest
}

// NewStreamTubeClient registers handlers for opts.Services; matching
// offers are accepted without approval while the client is open.
func (c *Client) NewStreamTubeClient(ctx context.Context, account string, opts StreamTubeClientOptions) (*StreamTubeClient, error) {
	cl := &StreamTubeClient{c: c, account: account, events: make(chan api.Event, 1024),
		tubes: map[string]api.Tube{}, conns: map[string]map[uint32]bool{}}
	session, stop, err := c.listen(ctx, cl.onEvent)
	if err != nil {
		return nil, err
	}
	cl.session, cl.stop = session, stop
	for _, svc := range opts.Services {
		if _, err := c.Handle(ctx, account, api.HandleRequest{Service: svc, From: opts.From, Room: opts.Room, AcceptRequest: opts.Accept}); err != nil {
			stop()
			return nil, err
		}
	}
	return cl, nil
}

// Events delivers the client's events: TubeChannelStateChanged with the
// local Address when a tube is accepted, NewLocalConnection,
// ConnectionClosed, TubeClosed.
func (cl *StreamTubeClient) Events() <-chan api.Event { return cl.events }

// Tubes returns the tubes this client accepted that are still open.
func (cl *StreamTubeClient) Tubes() []api.Tube {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	out := make([]api.Tube, 0, len(cl.tubes))
	for _, t := range cl.tubes {
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Connections returns the ids of a tube's live local connections.
func (cl *StreamTubeClient) Connections(tube string) []uint32 {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	var out []uint32
	for id := range cl.conns[tube] {
		out = append(out, id)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// Close stops handling; tubes accepted so far stay open until closed.
func (cl *StreamTubeClient) Close() error {
	cl.stop()
	return nil
}

func (cl *StreamTubeClient) onEvent(ev api.Event) {
	cl.mu.Lock()
	_, mine := cl.tubes[ev.TubeID]
	if ev.Type == api.EventTubeStateChanged && ev.Handler == cl.session && ev.Address != "" {
		mine = true
		cl.tubes[ev.TubeID] = api.Tube{ID: ev.TubeID, Account: ev.Account, State: ev.State, Address: ev.Address, Path: ev.Path, Direction: "incoming"}
		cl.conns[ev.TubeID] = map[uint32]bool{}
	}
	if !mine {
		cl.mu.Unlock()
		return
	}
	switch ev.Type {
	case api.EventTubeClosed:
		delete(cl.tubes, ev.TubeID)
		delete(cl.conns, ev.TubeID)
	case api.EventNewLocalConnection:
		cl.conns[ev.TubeID][*ev.ConnectionID] = true
	case api.EventConnectionClosed:
		delete(cl.conns[ev.TubeID], *ev.ConnectionID)
	}
	cl.mu.Unlock()
	select {
	case cl.events <- ev:
	default:
	}
}
