package rendezvous

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/tubes-dev/tubes/tperr"
)

// Registration modes.
const (
	RegistrationOpen   = "open"   // anyone may register a free name
	RegistrationClosed = "closed" // only names the operator added (tube relay user add)
)

// ServiceConfig configures an account service.
type ServiceConfig struct {
	Instance     string        // unique id of this relay; generated when empty
	Registration string        // RegistrationOpen (default) or RegistrationClosed
	Account      string        // NATS account that holds Tubes users (default "TUBES")
	Issuer       nkeys.KeyPair // account nkey named as issuer in the server's auth_callout block
	Storage      jetstream.StorageType
	Replicas     int // JetStream replicas of the state bucket
	Servers      int // NATS servers expected to answer a CONNZ snapshot (0: unknown)
	Version      string
	Logger       *slog.Logger
	Metrics      *Metrics // may be nil
	// TURN issues TURN credentials to accounts; nil when the relay has no
	// TURN server.
	TURN TURNIssuer
}

// Service is the account service: it authorizes every NATS connection
// (auth callout), answers accounts' requests, keeps presence and delivers
// messages. Several services may share one NATS cluster; they share state
// through the JetStream bucket and elect a leader among themselves for the
// duties that must happen once.
type Service struct {
	cfg   ServiceConfig
	log   *slog.Logger
	nc    *nats.Conn // service user, in cfg.Account
	sys   *nats.Conn // system account user
	store *store
	pres  *presence
	m     *Metrics

	wg      sync.WaitGroup // request handlers in flight
	sema    chan struct{}  // bounds handlers in flight
	stopMu  sync.Mutex     // orders wg.Add in dispatch before wg.Wait in Run
	stopped bool           // Run is ending: requests still delivered are dropped
}

// maxInFlight bounds concurrently handled requests per relay.
const maxInFlight = 256

// NewService opens the state and starts serving on nc (a service user of
// the Tubes account, listed in auth_callout's auth_users) and sys (a
// system-account user). It returns once the state is loaded and every
// subscription is in place; Run then serves until ctx ends.
func NewService(ctx context.Context, cfg ServiceConfig, nc, sys *nats.Conn) (*Service, error) {
	if cfg.Issuer == nil {
		return nil, errors.New("rendezvous: service needs an issuer key")
	}
	if cfg.Account == "" {
		cfg.Account = "TUBES"
	}
	if cfg.Registration == "" {
		cfg.Registration = RegistrationOpen
	}
	if cfg.Registration != RegistrationOpen && cfg.Registration != RegistrationClosed {
		return nil, fmt.Errorf("rendezvous: registration must be open or closed, not %q", cfg.Registration)
	}
	if cfg.Instance == "" {
		cfg.Instance = randomID()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Service{
		cfg:  cfg,
		log:  cfg.Logger.With("component", "rendezvous"),
		nc:   nc,
		sys:  sys,
		pres: newPresence(),
		m:    cfg.Metrics,
		sema: make(chan struct{}, maxInFlight),
	}
	st, err := openStore(ctx, nc, cfg.Storage, cfg.Replicas, func(err error) { s.log.Warn("state", "err", err) })
	if err != nil {
		return nil, err
	}
	s.store = st
	if s.m != nil {
		s.m.bind(s)
	}
	return s, nil
}

// Instance returns this relay's instance id.
func (s *Service) Instance() string { return s.cfg.Instance }

// Run serves until ctx ends. ready is called once the service answers.
func (s *Service) Run(ctx context.Context, ready func()) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var runErr error
	var runWG sync.WaitGroup
	loaded := make(chan struct{})
	runWG.Add(1)
	go func() {
		defer runWG.Done()
		if err := s.store.run(ctx, loaded); err != nil {
			runErr = err
			cancel()
		}
	}()
	defer runWG.Wait()
	select {
	case <-loaded:
	case <-ctx.Done():
		return runErr
	}

	// Presence: subscribe to connection events first, then take a
	// snapshot, then apply queued events, so nothing falls in between.
	events := make(chan *nats.Msg, 65536)
	var subs []*nats.Subscription
	defer func() {
		for _, sub := range subs {
			sub.Unsubscribe()
		}
	}()
	for _, kind := range []string{"CONNECT", "DISCONNECT"} {
		sub, err := s.sys.ChanSubscribe(fmt.Sprintf("$SYS.ACCOUNT.%s.%s", s.cfg.Account, kind), events)
		if err != nil {
			return fmt.Errorf("rendezvous: subscribe to connection events: %w", err)
		}
		sub.SetPendingLimits(-1, -1)
		subs = append(subs, sub)
	}
	if err := s.sys.Flush(); err != nil {
		return fmt.Errorf("rendezvous: %w", err)
	}

	type route struct {
		subject, queue string
		handle         func(*nats.Msg)
	}
	routes := []route{
		{server.AuthCalloutSubject, "tube-auth", s.handleAuth},
		{svcPrefix + "*.*", "tube-svc", s.handleAccount},
		{guestPrefix + "*." + opRegister, "tube-svc", s.handleGuest},
		{guestPrefix + "*." + opWhois, "tube-svc", s.handleGuest},
		{adminPrefix + "*", "tube-svc", s.handleAdmin},
	}
	for _, r := range routes {
		sub, err := s.nc.QueueSubscribe(r.subject, r.queue, s.dispatch(r.handle))
		if err != nil {
			return fmt.Errorf("rendezvous: subscribe %s: %w", r.subject, err)
		}
		sub.SetPendingLimits(-1, -1)
		subs = append(subs, sub)
	}
	if err := s.nc.Flush(); err != nil {
		return fmt.Errorf("rendezvous: %w", err)
	}
	if err := s.snapshot(ctx); err != nil {
		s.log.Warn("presence snapshot incomplete", "err", err)
	}
	if ready != nil {
		ready()
	}
	s.log.Info("account service ready", "instance", s.cfg.Instance, "registration", s.cfg.Registration)
	defer func() {
		// Subscription callbacks may still be running (unsubscribing does
		// not wait for them): no new handler starts once stopped is set,
		// so the wait cannot race an Add.
		s.stopMu.Lock()
		s.stopped = true
		s.stopMu.Unlock()
		s.wg.Wait()
	}()
	for {
		select {
		case <-ctx.Done():
			return runErr
		case m := <-events:
			s.handleConnEvent(ctx, m)
		}
	}
}

// dispatch runs handle on its own goroutine, bounded by sema, so that one
// slow request (a state write) does not hold up the others.
func (s *Service) dispatch(handle func(*nats.Msg)) nats.MsgHandler {
	return func(m *nats.Msg) {
		s.stopMu.Lock()
		if s.stopped {
			s.stopMu.Unlock()
			return
		}
		s.wg.Add(1)
		s.stopMu.Unlock()
		s.sema <- struct{}{}
		go func() {
			defer func() { <-s.sema; s.wg.Done() }()
			handle(m)
		}()
	}
}

// ---- authorization (NATS auth callout) ----

// handleAuth answers the server's authorization request for a new client
// connection. Every client must sign the server's nonce with an nkey. A
// client that names an account gets that account's permissions if the
// key is the account's; a client that names none is a guest that may only
// register or ask about a name.
func (s *Service) handleAuth(m *nats.Msg) {
	rc, err := jwt.DecodeAuthorizationRequestClaims(string(m.Data))
	if err != nil {
		s.log.Warn("malformed authorization request", "err", err)
		return
	}
	user, authErr := s.authorize(rc)
	resp := jwt.NewAuthorizationResponseClaims(rc.UserNkey)
	resp.Audience = rc.Server.ID
	if authErr != nil {
		resp.Error = authErr.Error()
		s.log.Info("connection refused", "user", rc.ConnectOptions.Username, "host", rc.ClientInformation.Host, "why", authErr)
		s.m.auth("refused")
	} else {
		ujwt, err := user.Encode(s.cfg.Issuer)
		if err != nil {
			s.log.Error("encode user claims", "err", err)
			return
		}
		resp.Jwt = ujwt
		s.m.auth("ok")
	}
	out, err := resp.Encode(s.cfg.Issuer)
	if err != nil {
		s.log.Error("encode authorization response", "err", err)
		return
	}
	m.Respond([]byte(out))
}

func (s *Service) authorize(rc *jwt.AuthorizationRequestClaims) (*jwt.UserClaims, error) {
	co := rc.ConnectOptions
	if co.Nkey == "" || co.SignedNonce == "" {
		return nil, errors.New("no nkey signature")
	}
	pub, err := nkeys.FromPublicKey(co.Nkey)
	if err != nil || !nkeys.IsValidPublicUserKey(co.Nkey) {
		return nil, errors.New("not a user nkey")
	}
	sig, err := base64.RawURLEncoding.DecodeString(co.SignedNonce)
	if err != nil {
		sig, err = base64.StdEncoding.DecodeString(co.SignedNonce)
	}
	if err != nil || rc.ClientInformation.Nonce == "" || pub.Verify([]byte(rc.ClientInformation.Nonce), sig) != nil {
		return nil, errors.New("bad nonce signature")
	}
	uc := jwt.NewUserClaims(rc.UserNkey)
	uc.Audience = s.cfg.Account
	if co.Username == "" {
		uc.Name = "guest:" + co.Nkey
		uc.Pub.Allow.Add(guestSubject(co.Nkey, opRegister), guestSubject(co.Nkey, opWhois))
		uc.Sub.Allow.Add(guestReplyInbox(co.Nkey) + ".>")
		uc.Limits.Subs = 4
		uc.Limits.Payload = 4096
		return uc, nil
	}
	acct, ok := s.store.view.account(co.Username)
	if !ok {
		return nil, fmt.Errorf("no account %q", co.Username)
	}
	if acct.Key != co.Nkey {
		return nil, fmt.Errorf("wrong key for %q", co.Username)
	}
	uc.Name = acct.Name
	permissionsFor(uc, acct.Name)
	return uc, nil
}

// permissionsFor sets an account's permissions: it may publish only
// requests that carry its own name, and subscribe only to its own inbox
// and reply subjects. Only the service publishes into inboxes.
func permissionsFor(uc *jwt.UserClaims, name string) {
	uc.Pub.Allow.Add(svcPrefix + name + ".*")
	uc.Sub.Allow.Add(inboxPrefix+name+".>", replyInbox(name)+".>")
	uc.Limits.Subs = 256
	uc.Limits.Payload = maxPayload
}

// maxPayload bounds one message from an account (a request or a Send).
const maxPayload = 256 << 10

// ---- account requests ----

type handlerFunc func(ctx context.Context, me string, data []byte) (any, error)

func (s *Service) accountHandlers() map[string]handlerFunc {
	return map[string]handlerFunc{
		opHello:          s.opHello,
		opLookup:         s.opLookup,
		opContacts:       s.opContacts,
		opContactRequest: s.opContactRequest,
		opContactApprove: s.opContactApprove,
		opContactRemove:  s.opContactRemove,
		opRooms:          s.opRooms,
		opRoomCreate:     s.opRoomCreate,
		opRoomJoin:       s.opRoomJoin,
		opRoomLeave:      s.opRoomLeave,
		opRoomMembers:    s.opRoomMembers,
		opPresence:       s.opPresence,
		opSend:           s.opSend,
		opKeys:           s.opKeys,
		opTURN:           s.opTURN,
	}
}

// requestTimeout bounds the work behind one request.
const requestTimeout = 10 * time.Second

func (s *Service) handleAccount(m *nats.Msg) {
	tok := strings.Split(m.Subject, ".") // tube.svc.<me>.<op>
	if len(tok) != 4 {
		return
	}
	me, op := tok[2], tok[3]
	// Replies go only to the caller's own reply subjects, so that a
	// request cannot make the service write into someone else's.
	if !strings.HasPrefix(m.Reply, replyInbox(me)+".") {
		s.log.Warn("request with a foreign reply subject dropped", "account", me, "op", op)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	var result any
	var err error
	if _, ok := s.store.view.account(me); !ok {
		err = tperr.New(tperr.AuthenticationFailed, "the account %s no longer exists on this relay", me)
	} else if h, ok := s.accountHandlers()[op]; !ok {
		err = tperr.New(tperr.NotImplemented, "the relay does not know the operation %q", op)
	} else {
		result, err = h(ctx, me, m.Data)
	}
	s.m.request(op, err)
	if err != nil && tperr.Name(err) == "" {
		s.log.Error("request failed", "account", me, "op", op, "err", err)
	}
	m.Respond(encodeReply(result, err))
}

// opHello answers once the NATS server has reported the caller's
// connection, so that by the time an account says it is Connected its
// contacts see it online.
func (s *Service) opHello(ctx context.Context, me string, data []byte) (any, error) {
	var req helloReq
	if err := decodeRequest(data, &req); err != nil {
		return nil, err
	}
	if req.Server != "" {
		wctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		s.pres.waitConn(wctx, connID{server: req.Server, cid: req.CID})
		cancel()
	}
	acct, _ := s.store.view.account(me)
	return Hello{Account: me, Key: acct.Key, Relay: s.cfg.Instance, Version: s.cfg.Version}, nil
}

func (s *Service) opLookup(ctx context.Context, me string, data []byte) (any, error) {
	var req lookupReq
	if err := decodeRequest(data, &req); err != nil {
		return nil, err
	}
	if len(req.Contacts)+len(req.Rooms) > 1024 {
		return nil, tperr.New(tperr.InvalidArgument, "at most 1024 names may be looked up at once")
	}
	resp := lookupResp{Contacts: map[string]bool{}, Rooms: map[string]bool{}}
	for _, n := range req.Contacts {
		_, ok := s.store.view.account(n)
		resp.Contacts[n] = ok
	}
	for _, n := range req.Rooms {
		_, ok := s.store.view.room(n)
		resp.Rooms[n] = ok
	}
	return resp, nil
}

func (s *Service) contactEntry(me string, p pairRecord) Contact {
	other := p.other(me)
	st := p.state(me)
	return Contact{Name: other, State: st, Online: st == ContactMutual && s.pres.online(other)}
}

func (s *Service) opContacts(ctx context.Context, me string, _ []byte) (any, error) {
	pairs := s.store.view.contactsOf(me)
	out := make([]Contact, 0, len(pairs))
	for _, p := range pairs {
		out = append(out, s.contactEntry(me, p))
	}
	sortBy(out, func(c Contact) string { return c.Name })
	return out, nil
}

// contactName validates a request naming another existing account.
func (s *Service) contactName(me string, data []byte) (string, error) {
	var req nameReq
	if err := decodeRequest(data, &req); err != nil {
		return "", err
	}
	name, err := NormalizeName("contact", req.Name)
	if err != nil {
		return "", err
	}
	if name == me {
		return "", tperr.New(tperr.InvalidArgument, "you cannot be your own contact")
	}
	if _, ok := s.store.view.account(name); !ok {
		return "", tperr.New(tperr.DoesNotExist, "there is no account named %s on this relay", name)
	}
	return name, nil
}

func (s *Service) opContactRequest(ctx context.Context, me string, data []byte) (any, error) {
	other, err := s.contactName(me, data)
	if err != nil {
		return nil, err
	}
	before := s.store.view.pair(me, other).state(me)
	p, err := s.store.modifyPair(ctx, me, other, func(p *pairRecord) error { p.set(me, true); return nil })
	if err != nil {
		return nil, err
	}
	s.contactChanged(me, other, before, p)
	return s.contactEntry(me, p), nil
}

func (s *Service) opContactApprove(ctx context.Context, me string, data []byte) (any, error) {
	other, err := s.contactName(me, data)
	if err != nil {
		return nil, err
	}
	before := s.store.view.pair(me, other).state(me)
	p, err := s.store.modifyPair(ctx, me, other, func(p *pairRecord) error {
		switch p.state(me) {
		case ContactPending, ContactMutual:
			p.set(me, true)
			return nil
		}
		return tperr.New(tperr.NotAvailable, "%s has not asked to be your contact; use contact add to ask them", other)
	})
	if err != nil {
		return nil, err
	}
	s.contactChanged(me, other, before, p)
	return s.contactEntry(me, p), nil
}

func (s *Service) opContactRemove(ctx context.Context, me string, data []byte) (any, error) {
	other, err := s.contactName(me, data)
	if err != nil {
		return nil, err
	}
	before := s.store.view.pair(me, other).state(me)
	p, err := s.store.modifyPair(ctx, me, other, func(p *pairRecord) error {
		if p.state(me) == ContactNone {
			return tperr.New(tperr.DoesNotExist, "%s is not in your contact list", other)
		}
		p.AWants, p.BWants = false, false
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.contactChanged(me, other, before, p)
	return s.contactEntry(me, p), nil
}

// contactChanged tells the other side about a changed relation, and both
// sides about each other's presence when they become or stop being
// mutual contacts.
func (s *Service) contactChanged(me, other string, before ContactState, p pairRecord) {
	s.publish(other, KindContacts, ContactEvent{Name: me, State: p.state(other)})
	now := p.state(me)
	if (before == ContactMutual) != (now == ContactMutual) {
		mutual := now == ContactMutual
		s.publish(other, KindPresence, PresenceEvent{Name: me, Online: mutual && s.pres.online(me)})
		s.publish(me, KindPresence, PresenceEvent{Name: other, Online: mutual && s.pres.online(other)})
	}
}

func (s *Service) roomName(data []byte) (string, error) {
	var req roomReq
	if err := decodeRequest(data, &req); err != nil {
		return "", err
	}
	return NormalizeName("room", req.Room)
}

func (s *Service) roomEntry(r roomRecord) Room {
	return Room{Name: r.Name, Owner: r.Owner, Members: len(s.store.view.memberNames(r.Name))}
}

func (s *Service) opRooms(ctx context.Context, me string, _ []byte) (any, error) {
	rs := s.store.view.roomsOfAccount(me)
	out := make([]Room, 0, len(rs))
	for _, r := range rs {
		out = append(out, s.roomEntry(r))
	}
	return out, nil
}

func (s *Service) opRoomCreate(ctx context.Context, me string, data []byte) (any, error) {
	room, err := s.roomName(data)
	if err != nil {
		return nil, err
	}
	r := roomRecord{Name: room, Owner: me, Created: time.Now().UTC()}
	if err := s.store.create(ctx, "room."+room, r); errors.Is(err, errConflict) {
		return nil, tperr.New(tperr.NotAvailable, "a room named %s already exists; join it or pick another name", room)
	} else if err != nil {
		return nil, err
	}
	if err := s.store.put(ctx, "member."+room+"."+me, memberRecord{Joined: r.Created}); err != nil {
		return nil, err
	}
	return s.roomEntry(r), nil
}

func (s *Service) opRoomJoin(ctx context.Context, me string, data []byte) (any, error) {
	room, err := s.roomName(data)
	if err != nil {
		return nil, err
	}
	r, ok := s.store.view.room(room)
	if !ok {
		return nil, tperr.New(tperr.DoesNotExist, "there is no room named %s on this relay", room)
	}
	if !s.store.view.isMember(room, me) {
		if err := s.store.put(ctx, "member."+room+"."+me, memberRecord{Joined: time.Now().UTC()}); err != nil {
			return nil, err
		}
		online := s.pres.online(me)
		for _, m := range s.store.view.memberNames(room) {
			if m == me {
				continue
			}
			s.publish(m, KindRooms, RoomEvent{Room: room, Member: me, Joined: true})
			s.publish(m, KindPresence, PresenceEvent{Name: me, Online: online})
			s.publish(me, KindPresence, PresenceEvent{Name: m, Online: s.pres.online(m)})
		}
	}
	return s.roomEntry(r), nil
}

func (s *Service) opRoomLeave(ctx context.Context, me string, data []byte) (any, error) {
	room, err := s.roomName(data)
	if err != nil {
		return nil, err
	}
	r, ok := s.store.view.room(room)
	if !ok {
		return nil, tperr.New(tperr.DoesNotExist, "there is no room named %s on this relay", room)
	}
	if !s.store.view.isMember(room, me) {
		return nil, tperr.New(tperr.NotAvailable, "you are not a member of room %s", room)
	}
	members := s.store.view.memberNames(room)
	if r.Owner == me {
		// The owner leaving ends the room (and every room tube in it).
		if err := s.deleteRoom(ctx, room, members); err != nil {
			return nil, err
		}
		return s.roomEntry(r), nil
	}
	if err := s.store.delete(ctx, "member."+room+"."+me); err != nil {
		return nil, err
	}
	for _, m := range members {
		if m != me {
			s.publish(m, KindRooms, RoomEvent{Room: room, Member: me, Joined: false})
		}
	}
	return s.roomEntry(r), nil
}

func (s *Service) deleteRoom(ctx context.Context, room string, members []string) error {
	// The room record goes first: without it, leftover member records
	// grant nothing (isMember needs the room), so a crash half-way leaves
	// no one in a room that does not exist.
	if err := s.store.delete(ctx, "room."+room); err != nil {
		return err
	}
	var errs []error
	for _, m := range members {
		errs = append(errs, s.store.delete(ctx, "member."+room+"."+m))
		s.publish(m, KindRooms, RoomEvent{Room: room, Deleted: true})
	}
	return errors.Join(errs...)
}

func (s *Service) opRoomMembers(ctx context.Context, me string, data []byte) (any, error) {
	room, err := s.roomName(data)
	if err != nil {
		return nil, err
	}
	r, ok := s.store.view.room(room)
	if !ok {
		return nil, tperr.New(tperr.DoesNotExist, "there is no room named %s on this relay", room)
	}
	if !s.store.view.isMember(room, me) {
		return nil, tperr.New(tperr.PermissionDenied, "only members of room %s can list its members; join it first", room)
	}
	names := s.store.view.memberNames(room)
	out := make([]Member, 0, len(names))
	for _, n := range names {
		out = append(out, Member{Name: n, Owner: n == r.Owner, Online: s.pres.online(n)})
	}
	return out, nil
}

func (s *Service) opPresence(ctx context.Context, me string, _ []byte) (any, error) {
	peers := s.store.view.peersOf(me)
	out := make([]PresenceEvent, 0, len(peers))
	for _, p := range peers {
		out = append(out, PresenceEvent{Name: p, Online: s.pres.online(p)})
	}
	return out, nil
}

// opKeys returns the public keys of accounts the caller may talk to:
// mutual contacts and fellow members of its rooms. Daemons pin these keys
// on peer links and seal tube parameters to them.
func (s *Service) opTURN(ctx context.Context, me string, data []byte) (any, error) {
	if err := decodeRequest(data, &struct{}{}); err != nil {
		return nil, err
	}
	if s.cfg.TURN == nil {
		return nil, tperr.New(tperr.NotAvailable, "this relay runs no TURN server")
	}
	return s.cfg.TURN(me)
}

func (s *Service) opKeys(ctx context.Context, me string, data []byte) (any, error) {
	var req keysReq
	if err := decodeRequest(data, &req); err != nil {
		return nil, err
	}
	if len(req.Names) > 1024 {
		return nil, tperr.New(tperr.InvalidArgument, "at most 1024 keys may be asked for at once")
	}
	peers := map[string]bool{}
	for _, p := range s.store.view.peersOf(me) {
		peers[p] = true
	}
	out := map[string]string{}
	for _, n := range req.Names {
		if !peers[n] {
			continue
		}
		if a, ok := s.store.view.account(n); ok {
			out[n] = a.Key
		}
	}
	return out, nil
}

// opSend delivers a message to a mutual contact, to the other members of
// a room, or to one member of a room both belong to, only where the roster
// or membership allows.
func (s *Service) opSend(ctx context.Context, me string, data []byte) (any, error) {
	var req sendReq
	if err := decodeRequest(data, &req); err != nil {
		return nil, err
	}
	if req.To == "" && req.Room == "" {
		return nil, tperr.New(tperr.InvalidArgument, "a message goes to a contact (to), a room (room), or a member of a room (both)")
	}
	if req.Kind == "" || len(req.Kind) > 64 {
		return nil, tperr.New(tperr.InvalidArgument, "field \"kind\" must be 1 to 64 characters")
	}
	if req.To != "" && req.Room != "" {
		to, err := NormalizeName("contact", req.To)
		if err != nil {
			return nil, err
		}
		room, err := NormalizeName("room", req.Room)
		if err != nil {
			return nil, err
		}
		if !s.store.view.isMember(room, me) || !s.store.view.isMember(room, to) {
			return nil, tperr.New(tperr.PermissionDenied, "you and %s are not both members of room %s", to, room)
		}
		if !s.pres.online(to) {
			return nil, tperr.New(tperr.Offline, "%s is offline", to)
		}
		s.publish(to, KindMessage, Message{From: me, Room: room, Kind: req.Kind, Body: req.Body})
		s.m.delivered(1)
		return sendResp{Delivered: []string{to}}, nil
	}
	if req.To != "" {
		to, err := NormalizeName("contact", req.To)
		if err != nil {
			return nil, err
		}
		if s.store.view.pair(me, to).state(me) != ContactMutual {
			return nil, tperr.New(tperr.PermissionDenied, "%s is not your contact: you can only send to contacts who approved you", to)
		}
		if !s.pres.online(to) {
			return nil, tperr.New(tperr.Offline, "%s is offline", to)
		}
		s.publish(to, KindMessage, Message{From: me, Kind: req.Kind, Body: req.Body})
		s.m.delivered(1)
		return sendResp{Delivered: []string{to}}, nil
	}
	room, err := NormalizeName("room", req.Room)
	if err != nil {
		return nil, err
	}
	if !s.store.view.isMember(room, me) {
		return nil, tperr.New(tperr.PermissionDenied, "you are not a member of room %s", room)
	}
	delivered := []string{}
	for _, m := range s.store.view.memberNames(room) {
		if m == me || !s.pres.online(m) {
			continue
		}
		s.publish(m, KindMessage, Message{From: me, Room: room, Kind: req.Kind, Body: req.Body})
		delivered = append(delivered, m)
	}
	s.m.delivered(len(delivered))
	return sendResp{Delivered: delivered}, nil
}

// publish delivers v into account's inbox of the given kind.
func (s *Service) publish(account, kind string, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		s.log.Error("encode delivery", "err", err)
		return
	}
	if err := s.nc.Publish(inboxSubject(account, kind), b); err != nil {
		s.log.Warn("deliver", "account", account, "kind", kind, "err", err)
	}
}

// ---- guests: registration ----

func (s *Service) handleGuest(m *nats.Msg) {
	tok := strings.Split(m.Subject, ".") // tube.guest.<nkey>.<op>
	if len(tok) != 4 || !strings.HasPrefix(m.Reply, guestReplyInbox(tok[2])+".") {
		return
	}
	nkey, op := tok[2], tok[3]
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	var result any
	var err error
	switch op {
	case opRegister:
		err = s.register(ctx, nkey, m.Data)
	case opWhois:
		result, err = s.whois(nkey, m.Data)
	}
	s.m.request(op, err)
	m.Respond(encodeReply(result, err))
}

func (s *Service) register(ctx context.Context, nkey string, data []byte) error {
	var req registerReq
	if err := decodeRequest(data, &req); err != nil {
		return err
	}
	name, err := NormalizeName("account", req.Name)
	if err != nil {
		return err
	}
	if acct, ok := s.store.view.account(name); ok {
		if acct.Key == nkey {
			return nil // already ours: registering again is harmless
		}
		return tperr.New(tperr.RegistrationExists, "the name %s is already registered on this relay", name)
	}
	inv, invited := s.store.view.invite(name)
	if s.cfg.Registration == RegistrationClosed || invited {
		if !invited {
			return tperr.New(tperr.PermissionDenied, "registration on this relay is closed; ask its operator for an invitation to %s", name)
		}
		if !inv.matches(req.Invite) {
			return tperr.New(tperr.AuthenticationFailed, "the invitation code for %s is wrong", name)
		}
	}
	rec := accountRecord{Name: name, Key: nkey, Created: time.Now().UTC()}
	if err := s.store.create(ctx, "acct."+name, rec); errors.Is(err, errConflict) {
		return tperr.New(tperr.RegistrationExists, "the name %s is already registered on this relay", name)
	} else if err != nil {
		return err
	}
	if invited {
		if err := s.store.delete(ctx, "invite."+name); err != nil {
			s.log.Warn("invitation not removed", "account", name, "err", err)
		}
	}
	s.log.Info("account registered", "account", name, "key", nkey)
	return nil
}

func (s *Service) whois(nkey string, data []byte) (any, error) {
	var req nameReq
	if err := decodeRequest(data, &req); err != nil {
		return nil, err
	}
	acct, ok := s.store.view.account(req.Name)
	return whoisResp{Exists: ok, KeyMatches: ok && acct.Key == nkey}, nil
}

// ---- operator requests ----

func (s *Service) handleAdmin(m *nats.Msg) {
	op := strings.TrimPrefix(m.Subject, adminPrefix)
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	var result any
	var err error
	switch op {
	case opUserAdd:
		result, err = s.userAdd(ctx, m.Data)
	case opUserList:
		result, err = s.userList()
	case opUserRemove:
		err = s.userRemove(ctx, m.Data)
	default:
		err = tperr.New(tperr.NotImplemented, "the relay does not know the operation %q", op)
	}
	s.m.request(op, err)
	m.Respond(encodeReply(result, err))
}

func (s *Service) userAdd(ctx context.Context, data []byte) (any, error) {
	var req userAddReq
	if err := decodeRequest(data, &req); err != nil {
		return nil, err
	}
	name, err := NormalizeName("account", req.Name)
	if err != nil {
		return nil, err
	}
	if _, ok := s.store.view.account(name); ok {
		return nil, tperr.New(tperr.RegistrationExists, "the name %s is already registered", name)
	}
	if req.Key != "" {
		if !nkeys.IsValidPublicUserKey(req.Key) {
			return nil, tperr.New(tperr.InvalidArgument, "%q is not an account public key (it starts with U)", req.Key)
		}
		rec := accountRecord{Name: name, Key: req.Key, Created: time.Now().UTC()}
		if err := s.store.create(ctx, "acct."+name, rec); errors.Is(err, errConflict) {
			return nil, tperr.New(tperr.RegistrationExists, "the name %s is already registered", name)
		} else if err != nil {
			return nil, err
		}
		return userAddResp{}, nil
	}
	token := randomID() + randomID()
	if err := s.store.put(ctx, "invite."+name, inviteRecord{Name: name, Hash: hashToken(token), Created: time.Now().UTC()}); err != nil {
		return nil, err
	}
	return userAddResp{Invite: token}, nil
}

func (s *Service) userList() (any, error) {
	var out []User
	seen := map[string]bool{}
	for _, a := range s.store.view.accountNames() {
		out = append(out, User{Name: a.Name, Key: a.Key, Created: a.Created.Format(time.RFC3339), Online: s.pres.online(a.Name)})
		seen[a.Name] = true
	}
	for _, n := range s.store.view.inviteNames() {
		if !seen[n] {
			out = append(out, User{Name: n, Invited: true})
		}
	}
	sortBy(out, func(u User) string { return u.Name })
	return out, nil
}

func (s *Service) userRemove(ctx context.Context, data []byte) error {
	var req nameReq
	if err := decodeRequest(data, &req); err != nil {
		return err
	}
	name := req.Name
	_, hasAcct := s.store.view.account(name)
	_, hasInvite := s.store.view.invite(name)
	if !hasAcct && !hasInvite {
		return tperr.New(tperr.DoesNotExist, "there is no account or invitation named %q", name)
	}
	var errs []error
	if hasInvite {
		errs = append(errs, s.store.delete(ctx, "invite."+name))
	}
	if hasAcct {
		// The account goes first so that it can no longer log in; then its
		// relations, then its live connections.
		errs = append(errs, s.store.delete(ctx, "acct."+name))
		for _, p := range s.store.view.contactsOf(name) {
			other := p.other(name)
			key, _, _ := pairKey(name, other)
			errs = append(errs, s.store.delete(ctx, key))
			s.publish(other, KindContacts, ContactEvent{Name: name, State: ContactNone})
			s.publish(other, KindPresence, PresenceEvent{Name: name, Online: false})
		}
		for _, r := range s.store.view.roomsOfAccount(name) {
			members := s.store.view.memberNames(r.Name)
			if r.Owner == name {
				errs = append(errs, s.deleteRoom(ctx, r.Name, members))
				continue
			}
			errs = append(errs, s.store.delete(ctx, "member."+r.Name+"."+name))
			for _, m := range members {
				if m != name {
					s.publish(m, KindRooms, RoomEvent{Room: r.Name, Member: name, Joined: false})
				}
			}
		}
		for _, id := range s.pres.connsOf(name) {
			s.kick(id)
		}
		s.log.Info("account removed", "account", name)
	}
	return errors.Join(errs...)
}

// ---- presence ----

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
	s.connected(ctx, id, ev.Client.User, ev.Client.Name, start)
}

func (s *Service) connected(ctx context.Context, id connID, user, connName string, start time.Time) {
	online, older := s.pres.add(id, user, connName, start)
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
			s.pres.add(connID{server: cz.ID, cid: c.Cid}, c.AuthorizedUser, c.Name, c.Start)
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

func randomID() string {
	b := make([]byte, 12)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}
