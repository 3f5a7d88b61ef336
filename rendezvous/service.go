package rendezvous

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
	"golang.org/x/time/rate"

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
	// Limits bound what one account or source can make the service do.
	Limits Limits
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
	auth  *nats.Conn // service user, for logins only
	store *store
	pres  *presence
	m     *Metrics

	acct *accountLimits
	regs *registrations

	wg       sync.WaitGroup // request handlers in flight
	sema     chan struct{}  // bounds request handlers in flight
	authSema chan struct{}  // bounds logins being checked: capacity no request can take

	// logSome bounds the logs that refused requests and logins make
	// (their metrics count them all): a flood of them is no log flood.
	logSome rate.Sometimes
	stopMu  sync.Mutex // orders wg.Add in dispatch before wg.Wait in Run
	stopped bool       // Run is ending: requests still delivered are dropped
}

// maxInFlight bounds concurrently handled requests per relay.
const maxInFlight = 256

// maxPendingMsgs and maxPendingBytes bound the requests (or logins)
// received and not yet taken, per subscription.
const (
	maxPendingMsgs  = 65536
	maxPendingBytes = 64 << 20
)

// NewService opens the state and starts serving on nc (a service user of
// the Tubes account, listed in auth_callout's auth_users) and sys (a
// system-account user), answering logins on auth (another connection of
// the service user, so that no flood of requests delays them; nil: nc).
// It returns once the state is loaded and every subscription is in
// place; Run then serves until ctx ends.
func NewService(ctx context.Context, cfg ServiceConfig, nc, sys, auth *nats.Conn) (*Service, error) {
	if auth == nil {
		auth = nc
	}
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
	cfg.Limits = cfg.Limits.withDefaults()
	s := &Service{
		cfg:      cfg,
		log:      cfg.Logger.With("component", "rendezvous"),
		nc:       nc,
		sys:      sys,
		auth:     auth,
		pres:     newPresence(),
		m:        cfg.Metrics,
		logSome:  rate.Sometimes{First: 10, Interval: time.Second},
		sema:     make(chan struct{}, maxInFlight),
		authSema: make(chan struct{}, MaxLoginsInFlight),
		acct:     newAccountLimits(cfg.Limits),
		regs:     newRegistrations(cfg.Limits),
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
	defer func() {
		cancel() // an early return stops the store too, then waits for it
		runWG.Wait()
	}()
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
		sub.SetPendingLimits(maxPendingMsgs, maxPendingBytes)
		subs = append(subs, sub)
	}
	if err := s.sys.Flush(); err != nil {
		return fmt.Errorf("rendezvous: %w", err)
	}

	type route struct {
		nc             *nats.Conn
		subject, queue string
		handle         nats.MsgHandler
	}
	routes := []route{
		// Logins have a connection and handler capacity of their own, so
		// that however busy the requests keep the others, a login is
		// answered in time.
		{s.auth, server.AuthCalloutSubject, "tube-auth", s.dispatch(s.authSema, s.handleAuth)},
		{s.nc, svcPrefix + "*.*", "tube-svc", s.admitAccount},
		{s.nc, guestPrefix + "*." + opRegister, "tube-svc", s.dispatch(s.sema, s.handleGuest)},
		{s.nc, guestPrefix + "*." + opWhois, "tube-svc", s.dispatch(s.sema, s.handleGuest)},
		{s.nc, adminPrefix + "*", "tube-svc", s.dispatch(s.sema, s.handleAdmin)},
	}
	for _, r := range routes {
		sub, err := r.nc.QueueSubscribe(r.subject, r.queue, r.handle)
		if err != nil {
			return fmt.Errorf("rendezvous: subscribe %s: %w", r.subject, err)
		}
		// What waits to be read is bounded: a flood beyond it is dropped
		// (its senders time out) rather than held in memory.
		sub.SetPendingLimits(maxPendingMsgs, maxPendingBytes)
		subs = append(subs, sub)
	}
	for _, nc := range []*nats.Conn{s.nc, s.auth} {
		if err := nc.Flush(); err != nil {
			return fmt.Errorf("rendezvous: %w", err)
		}
	}
	if err := s.snapshot(ctx); err != nil {
		s.log.Warn("presence snapshot incomplete", "err", err)
	}
	runWG.Add(1)
	go func() {
		defer runWG.Done()
		s.purgeLoop(ctx)
	}()
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

// purgeEvery is how often the leader drops old delete markers from the
// state bucket, and purgeAge how old they must be (a watcher that missed
// a delete for longer has reloaded anyway).
const (
	purgeEvery = time.Hour
	purgeAge   = 10 * time.Minute
)

// purgeLoop drops old delete markers from the state, on the leader.
func (s *Service) purgeLoop(ctx context.Context) {
	t := time.NewTicker(purgeEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !s.pres.leader(s.cfg.Instance) {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, time.Minute)
		if err := s.store.purgeDeletes(pctx, purgeAge); err != nil {
			s.log.Warn("old delete markers not purged", "err", err)
		}
		cancel()
	}
}

// dispatch runs handle on its own goroutine, holding one of sema's
// slots, so that one slow request (a state write) does not hold up the
// others. The handler's context lets it give the slot back while it waits
// on something outside the service (waitOutside).
func (s *Service) dispatch(sema chan struct{}, handle func(context.Context, *nats.Msg)) nats.MsgHandler {
	return func(m *nats.Msg) {
		s.stopMu.Lock()
		if s.stopped {
			s.stopMu.Unlock()
			return
		}
		s.wg.Add(1)
		s.stopMu.Unlock()
		sema <- struct{}{}
		go func() {
			defer func() { <-sema; s.wg.Done() }()
			ctx, cancel := context.WithTimeout(context.WithValue(context.Background(), slotKey{}, &slot{sema}), requestTimeout)
			defer cancel()
			handle(ctx, m)
		}()
	}
}

// admitAccount takes an account's request: over the account's limits it
// is refused at once, before it waits for a handler slot.
func (s *Service) admitAccount(m *nats.Msg) {
	tok := strings.Split(m.Subject, ".") // tube.svc.<me>.<op>
	if len(tok) != 4 {
		return
	}
	me, op := tok[2], tok[3]
	// Replies go only to the caller's own reply subjects, so that a
	// request cannot make the service write into someone else's.
	if !strings.HasPrefix(m.Reply, replyInbox(me)+".") {
		s.logSome.Do(func() { s.log.Warn("request with a foreign reply subject dropped", "account", me, "op", op) })
		return
	}
	done, limit, ban, err := s.acct.begin(me, op)
	if err != nil {
		s.m.request(op, err)
		s.m.refused(limit)
		m.Respond(encodeReply(nil, err))
		if ban {
			s.m.refused("banned")
			s.log.Warn("account shut out: it kept sending past its limits", "account", me, "for", banTime)
			go s.kickAll(me)
		}
		return
	}
	s.dispatch(s.sema, func(ctx context.Context, m *nats.Msg) {
		defer done()
		s.handleAccount(ctx, m, me, op)
	})(m)
}

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
		opRoomInvite:     s.opRoomInvite,
		opInvitations:    s.opInvitations,
		opRoomDecline:    s.opRoomDecline,
		opRoomRemove:     s.opRoomRemove,
		opRoomAdmin:      s.opRoomAdmin,
		opPresence:       s.opPresence,
		opSend:           s.opSend,
		opKeys:           s.opKeys,
		opTURN:           s.opTURN,
	}
}

// requestTimeout bounds the work behind one request.
const requestTimeout = 10 * time.Second

func (s *Service) handleAccount(ctx context.Context, m *nats.Msg, me, op string) {
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
		// The wait is on a NATS server's report, so it holds no handler
		// slot: a flood of hellos naming servers that never answer takes
		// the account's own requests in flight, nobody else's.
		wctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		waitOutside(wctx, func() { s.pres.waitConn(wctx, connID{server: req.Server, cid: req.CID}) })
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
		// Only rooms the caller is in or invited to: a lookup must not
		// tell anyone else that a room exists.
		resp.Rooms[n] = s.visibleTo(n, me)
	}
	return resp, nil
}

func randomID() string {
	b := make([]byte, 12)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}
