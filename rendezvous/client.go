package rendezvous

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tubes-dev/tubes/connection"
	"github.com/tubes-dev/tubes/identity"
	"github.com/tubes-dev/tubes/tperr"
)

// pingInterval is how often a client pings its relay.
const pingInterval = 5 * time.Second

// DialConfig says how an account connects to its relay.
type DialConfig struct {
	Server  string // HOST:PORT, nats://HOST:PORT or tls://HOST:PORT
	Account string
	Key     *identity.Key
	RootCAs *x509.CertPool // trusted for TLS relays; nil uses the system's
	Timeout time.Duration  // connect timeout; default 5s
	// LocalAddr is the IP address to connect from (default: the
	// system's choice).
	LocalAddr string
	Logger    *slog.Logger
	// OnMessage receives inbox deliveries: kind is one of the Kind…
	// constants. Calls for one kind are sequential.
	OnMessage func(kind string, data []byte)
}

// Client is one account's live connection to the rendezvous. It does not
// reconnect: when the connection ends, Done is closed and Err says why;
// the daemon decides whether and when to dial again.
type Client struct {
	cfg  DialConfig
	nc   *nats.Conn
	log  *slog.Logger
	done chan struct{}
	once sync.Once // closes done

	mu       sync.Mutex // guards the fields below
	err      *ConnError
	closing  bool
	watching map[string]*nats.Subscription
}

// ConnError is why a connection attempt failed or a connection ended, in
// Telepathy's terms: the reason for StatusChanged and the error name and
// details for ConnectionError.
type ConnError struct {
	Reason  connection.Reason
	Name    string         // im.telepathy1.Error.…
	Message string         // one sentence for users
	Details map[string]any // debug-message, server-message, TLS details
	// Refused is set on a refused login when the relay, asked as a guest,
	// confirmed it: no such account, or another key. NATS reports a login
	// check that timed out (an overloaded relay) as the same refusal, and
	// then Refused stays false.
	Refused bool
	Err     error
}

func (e *ConnError) Error() string { return e.Message }
func (e *ConnError) Unwrap() error { return e.Err }

func serverURL(s string) string {
	if strings.Contains(s, "://") {
		return s
	}
	return "nats://" + s
}

// recordingDialer keeps the last dial error, which nats.Connect replaces
// with a bare ErrNoServers, so the user learns "connection refused" rather
// than "no servers".
type recordingDialer struct {
	net.Dialer
	mu      sync.Mutex
	err     error
	conn    net.Conn // the last dialed, for abort
	aborted bool
}

func (d *recordingDialer) Dial(network, address string) (net.Conn, error) {
	c, err := d.Dialer.Dial(network, address)
	d.mu.Lock()
	defer d.mu.Unlock()
	if err != nil {
		d.err = err
		return nil, err
	}
	if d.aborted {
		c.Close()
		return nil, errors.New("rendezvous: the connection was given up")
	}
	d.conn = c
	return c, nil
}

// abort closes what the dialer dialed and refuses further dials: a
// connection given up (its context ended) stops at once rather than log
// in after its caller has gone.
func (d *recordingDialer) abort() {
	if d == nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.aborted = true
	if d.conn != nil {
		d.conn.Close()
	}
}

// cause returns the dial error behind err, if any.
func (d *recordingDialer) cause(err error) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if errors.Is(err, nats.ErrNoServers) && d.err != nil {
		return d.err
	}
	return err
}

func (cfg *DialConfig) options(user, inbox string, dialer *recordingDialer) ([]nats.Option, error) {
	kp, err := cfg.Key.NKey()
	if err != nil {
		return nil, err
	}
	pub, _ := kp.PublicKey()
	timeout := cfg.Timeout
	if timeout == 0 {
		timeout = 5 * time.Second
	}
	dialer.Timeout = timeout
	if cfg.LocalAddr != "" {
		ip := net.ParseIP(cfg.LocalAddr)
		if ip == nil {
			return nil, fmt.Errorf("rendezvous: local address %q is not an IP address", cfg.LocalAddr)
		}
		dialer.LocalAddr = &net.TCPAddr{IP: ip}
	}
	opts := []nats.Option{
		nats.SetCustomDialer(dialer),
		nats.Nkey(pub, kp.Sign),
		nats.CustomInboxPrefix(inbox),
		nats.NoReconnect(),
		nats.Timeout(timeout),
		// A ping every 5 s: a connection that fell silent (a NAT
		// mapping lost, the relay gone without a FIN) is found dead by
		// the ping's write within 5 s when the far end resets it, else
		// after three unanswered (15 s).
		nats.PingInterval(pingInterval),
		nats.MaxPingsOutstanding(2),
		nats.Name("tube-daemon"),
	}
	if user != "" {
		opts = append(opts, nats.UserInfo(user, ""))
	}
	if cfg.RootCAs != nil {
		opts = append(opts, nats.Secure(&tls.Config{RootCAs: cfg.RootCAs, MinVersion: tls.VersionTLS12}))
	}
	return opts, nil
}

// Dial connects an existing account.
func Dial(ctx context.Context, cfg DialConfig) (*Client, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	c := &Client{cfg: cfg, log: cfg.Logger, done: make(chan struct{}), watching: map[string]*nats.Subscription{}}
	dialer := &recordingDialer{}
	opts, err := cfg.options(cfg.Account, replyInbox(cfg.Account), dialer)
	if err != nil {
		return nil, err
	}
	opts = append(opts,
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { c.lost(err) }),
		nats.ClosedHandler(func(*nats.Conn) { c.finish() }),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			c.log.Warn("relay reported an error", "err", err)
		}),
	)
	nc, err := connectCtx(ctx, serverURL(cfg.Server), opts, dialer)
	if err != nil {
		ce := classify(dialer.cause(err), cfg.Server)
		if ce.Reason == connection.AuthenticationFailed {
			ce = diagnoseAuth(ctx, cfg, ce)
		}
		return nil, ce
	}
	c.nc = nc
	for _, kind := range []string{KindControl, KindMessage} {
		if _, err := c.subscribe(kind); err != nil {
			nc.Close()
			return nil, classify(err, cfg.Server)
		}
	}
	if err := nc.FlushTimeout(5 * time.Second); err != nil {
		nc.Close()
		return nil, classify(err, cfg.Server)
	}
	return c, nil
}

// connectCtx runs nats.Connect, giving up when ctx ends (and then
// closing what dialer, if any, dialed for it).
func connectCtx(ctx context.Context, url string, opts []nats.Option, dialer *recordingDialer) (*nats.Conn, error) {
	type result struct {
		nc  *nats.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		nc, err := nats.Connect(url, opts...)
		ch <- result{nc, err}
	}()
	select {
	case r := <-ch:
		return r.nc, r.err
	case <-ctx.Done():
		dialer.abort()
		go func() {
			if r := <-ch; r.nc != nil {
				r.nc.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

func (c *Client) subscribe(kind string) (*nats.Subscription, error) {
	sub, err := c.nc.Subscribe(inboxSubject(c.cfg.Account, kind), func(m *nats.Msg) {
		if kind == KindControl {
			c.control(m.Data)
			return
		}
		if c.cfg.OnMessage != nil {
			c.cfg.OnMessage(kind, m.Data)
		}
	})
	if err != nil {
		return nil, err
	}
	sub.SetPendingLimits(65536, 64<<20)
	return sub, nil
}

func (c *Client) control(data []byte) {
	var msg controlMsg
	if err := json.Unmarshal(data, &msg); err != nil {
		c.log.Warn("malformed control message from relay", "err", err)
		return
	}
	if msg.Type != "replaced" || msg.Server != c.nc.ConnectedServerId() {
		return
	}
	if id, err := c.nc.GetClientID(); err != nil || id != msg.CID {
		return
	}
	c.end(&ConnError{
		Reason:  connection.NameInUse,
		Name:    tperr.ConnectionReplaced,
		Message: fmt.Sprintf("another connection to %s took over (the newest connection to an account wins)", c.cfg.Account),
		Details: map[string]any{"server-message": "replaced by a newer connection to the same account"},
	})
	go c.nc.Close()
}

// lost records why the connection ended, unless a reason is known already.
func (c *Client) lost(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return
	}
	if c.closing {
		c.err = &ConnError{Reason: connection.Requested, Name: tperr.Cancelled, Message: "disconnected as requested"}
		return
	}
	msg := "the connection to the relay was lost"
	debug := "connection closed by the relay"
	if err != nil {
		debug = err.Error()
	}
	c.err = &ConnError{Reason: connection.NetworkError, Name: tperr.ConnectionLost, Message: msg,
		Details: map[string]any{"debug-message": debug}, Err: err}
}

// finish marks the connection ended.
func (c *Client) finish() {
	c.lost(nil)
	c.once.Do(func() { close(c.done) })
}

func (c *Client) end(e *ConnError) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		c.err = e
	}
}

// Done is closed when the connection has ended.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err says why the connection ended; nil while it is up.
func (c *Client) Err() *ConnError {
	select {
	case <-c.done:
	default:
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close ends the connection at the user's request.
func (c *Client) Close() {
	c.mu.Lock()
	c.closing = true
	c.mu.Unlock()
	c.nc.Close()
	c.finish()
}

// Watch turns delivery of an inbox kind (presence, contacts, rooms) on or
// off. Off means the NATS server stops sending it to us at all.
func (c *Client) Watch(kind string, on bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	sub := c.watching[kind]
	switch {
	case on && sub == nil:
		sub, err := c.subscribe(kind)
		if err != nil {
			return err
		}
		c.watching[kind] = sub
		return c.nc.Flush()
	case !on && sub != nil:
		delete(c.watching, kind)
		return sub.Unsubscribe()
	}
	return nil
}

// Watching reports whether kind is delivered (for tests and status).
func (c *Client) Watching(kind string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.watching[kind] != nil
}

// ServerAddr is the address of the relay server we are connected to.
func (c *Client) ServerAddr() string { return c.nc.ConnectedAddr() }

// call sends a request to the account service and decodes its answer.
// A request refused for being over the account's rate or requests in
// flight (ServiceBusy) is sent again after a pause that grows, until ctx
// ends: a burst of ours (a room tube offered to every member) is spread
// out rather than lost.
func (c *Client) call(ctx context.Context, op string, req, resp any) error {
	pause := 50 * time.Millisecond
	for {
		err := request(ctx, c.nc, svcSubject(c.cfg.Account, op), req, resp)
		if tperr.Name(err) != tperr.ServiceBusy {
			return err
		}
		t := time.NewTimer(pause/2 + rand.N(pause))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return err
		}
		pause = min(2*pause, time.Second)
	}
}

// call makes a request of the account service and decodes its answer
// into a T.
func call[T any](ctx context.Context, c *Client, op string, req any) (T, error) {
	var out T
	err := c.call(ctx, op, req, &out)
	return out, err
}

// requestAs makes a request and decodes its answer into a T.
func requestAs[T any](ctx context.Context, nc *nats.Conn, subject string, req any) (T, error) {
	var out T
	err := request(ctx, nc, subject, req, &out)
	return out, err
}

func request(ctx context.Context, nc *nats.Conn, subject string, req, resp any) error {
	var body []byte
	if req != nil {
		var err error
		if body, err = json.Marshal(req); err != nil {
			return err
		}
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, requestTimeout+2*time.Second)
		defer cancel()
	}
	m, err := nc.RequestWithContext(ctx, subject, body)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return tperr.Wrap(err, tperr.ServiceBusy, "the relay's account service is not running")
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout):
		return tperr.Wrap(err, tperr.Timeout, "the relay did not answer in time")
	case errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, nats.ErrConnectionDraining):
		return tperr.Wrap(err, tperr.Disconnected, "not connected to the relay")
	case err != nil:
		return tperr.Wrap(err, tperr.NetworkError, "the request to the relay failed")
	}
	return decodeReply(m.Data, resp)
}

// Hello asks the relay who we are. It returns once the relay has seen
// this connection, so contacts see us online from then on.
func (c *Client) Hello(ctx context.Context) (Hello, error) {
	var h Hello
	cid, _ := c.nc.GetClientID()
	err := c.call(ctx, opHello, helloReq{Server: c.nc.ConnectedServerId(), CID: cid}, &h)
	return h, err
}

// Exists reports which of the names are registered accounts and which are
// existing rooms.
func (c *Client) Exists(ctx context.Context, contacts, rooms []string) (accounts, roomsFound map[string]bool, err error) {
	var r lookupResp
	err = c.call(ctx, opLookup, lookupReq{Contacts: contacts, Rooms: rooms}, &r)
	return r.Contacts, r.Rooms, err
}

// Contacts lists the contact list with each relation's state.
func (c *Client) Contacts(ctx context.Context) ([]Contact, error) {
	return call[[]Contact](ctx, c, opContacts, nil)
}

// ContactRequest asks name to be a contact (or approves their request).
func (c *Client) ContactRequest(ctx context.Context, name string) (Contact, error) {
	return call[Contact](ctx, c, opContactRequest, nameReq{Name: name})
}

// ContactApprove approves name's request.
func (c *Client) ContactApprove(ctx context.Context, name string) (Contact, error) {
	return call[Contact](ctx, c, opContactApprove, nameReq{Name: name})
}

// ContactRemove removes a contact, cancels a request or refuses one.
func (c *Client) ContactRemove(ctx context.Context, name string) error {
	return c.call(ctx, opContactRemove, nameReq{Name: name}, nil)
}

// Rooms lists the rooms we belong to.
func (c *Client) Rooms(ctx context.Context) ([]Room, error) {
	return call[[]Room](ctx, c, opRooms, nil)
}

// RoomCreate creates a room we own: invite-only, or open to anyone.
func (c *Client) RoomCreate(ctx context.Context, room string, open bool) (Room, error) {
	return call[Room](ctx, c, opRoomCreate, roomReq{Room: room, Open: open})
}

// RoomInvite invites a contact of ours to a room we own or administer.
func (c *Client) RoomInvite(ctx context.Context, room, contact string) (Invitation, error) {
	return call[Invitation](ctx, c, opRoomInvite, roomMemberReq{Room: room, Name: contact})
}

// Invitations lists the rooms we are invited to.
func (c *Client) Invitations(ctx context.Context) ([]Invitation, error) {
	return call[[]Invitation](ctx, c, opInvitations, nil)
}

// RoomDecline turns down an invitation.
func (c *Client) RoomDecline(ctx context.Context, room string) error {
	return c.call(ctx, opRoomDecline, roomReq{Room: room}, nil)
}

// RoomRemove removes a member from a room we own (any member) or
// administer (a plain member), or withdraws an invitation.
func (c *Client) RoomRemove(ctx context.Context, room, member string) error {
	return c.call(ctx, opRoomRemove, roomMemberReq{Room: room, Name: member}, nil)
}

// RoomAdmin makes a member of a room we own an admin, or (revoke) a plain
// member again.
func (c *Client) RoomAdmin(ctx context.Context, room, member string, revoke bool) (Member, error) {
	return call[Member](ctx, c, opRoomAdmin, roomMemberReq{Room: room, Name: member, Revoke: revoke})
}

// RoomJoin joins a room we are invited to, or an open room.
func (c *Client) RoomJoin(ctx context.Context, room string) (Room, error) {
	return call[Room](ctx, c, opRoomJoin, roomReq{Room: room})
}

// RoomLeave leaves a room; the owner leaving deletes it.
func (c *Client) RoomLeave(ctx context.Context, room string) error {
	return c.call(ctx, opRoomLeave, roomReq{Room: room}, nil)
}

// RoomMembers lists a room's members (members only).
func (c *Client) RoomMembers(ctx context.Context, room string) ([]Member, error) {
	return call[[]Member](ctx, c, opRoomMembers, roomReq{Room: room})
}

// Presence returns the presence of every contact and room co-member.
func (c *Client) Presence(ctx context.Context) ([]PresenceEvent, error) {
	return call[[]PresenceEvent](ctx, c, opPresence, nil)
}

// Send delivers a message to a mutual contact (to), to the online members
// of a room (room), or to one member of a room both belong to (both), and
// returns who it reached.
func (c *Client) Send(ctx context.Context, to, room, kind string, body []byte) ([]string, error) {
	var out sendResp
	err := c.call(ctx, opSend, sendReq{To: to, Room: room, Kind: kind, Body: body}, &out)
	return out.Delivered, err
}

// Keys returns the public keys (U…) of those names that are mutual
// contacts or room co-members; others are left out.
func (c *Client) Keys(ctx context.Context, names []string) (map[string]string, error) {
	out, err := call[map[string]string](ctx, c, opKeys, keysReq{Names: names})
	if out == nil {
		out = map[string]string{}
	}
	return out, err
}

// TURN asks the relay for a credential for its TURN server; it fails with
// NotAvailable when the relay runs none.
func (c *Client) TURN(ctx context.Context) (TURNCredential, error) {
	return call[TURNCredential](ctx, c, opTURN, struct{}{})
}
