// Package turnclient is a TURN client for TCP allocations (RFC 6062): it
// allocates a relayed TCP address on a TURN server, adds permissions,
// connects to peers through the relay (Connect + ConnectionBind), and
// accepts the peers that connect to the relayed address
// (ConnectionAttempt + ConnectionBind), with one data connection per peer
// connection. It works against the relay of `tube relay` and against
// coturn.
//
// It is written on pion/stun rather than on pion/turn's client, whose TCP
// side has rough edges this package avoids by construction: connection
// attempts are queued without blocking the control connection's reader
// (pion's bounded channel blocks it when nobody accepts); data connections
// dial the server's own address family (pion's AcceptTCP dials "tcp4");
// Close closes every data connection (pion's leaves them open); and the
// ConnectionBind answer is read exactly, so early peer data is never
// consumed or lost.
package turnclient

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/pion/stun/v4"

	"github.com/tubes-dev/tubes/internal/stunframe"
)

// Config configures a client.
type Config struct {
	// Server is the TURN server's HOST:PORT (TCP).
	Server string
	// Username and Password are long-term credentials (static or TURN
	// REST ones).
	Username, Password string
	// Lifetime asked for the allocation (default 600 s); the client
	// refreshes it before it ends.
	Lifetime time.Duration
	// Dialer dials the control and data connections (default net.Dialer).
	Dialer *net.Dialer
	Logger *slog.Logger
}

// Error is an error response from the TURN server.
type Error struct {
	Method string
	Code   int
	Reason string
}

func (e *Error) Error() string {
	return fmt.Sprintf("turn: %s refused: %d %s", e.Method, e.Code, e.Reason)
}

// Code returns the TURN error code in err, or 0.
func Code(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

// ErrClosed is returned once the client is closed or its control
// connection is gone.
var ErrClosed = errors.New("turn: the allocation is closed")

// maxQueued bounds connection attempts waiting for Accept; the server
// closes an attempt nobody binds within 30 s anyway.
const maxQueued = 256

// Attempt is a peer connecting to the relayed address, announced by the
// server (ConnectionAttempt) and waiting to be bound.
type Attempt struct {
	ID   uint32
	Peer netip.AddrPort
	at   time.Time
}

// Client holds one TCP allocation on a TURN server.
type Client struct {
	cfg     Config
	log     *slog.Logger
	ctrl    net.Conn
	relayed netip.AddrPort
	mapped  netip.AddrPort

	wmu sync.Mutex // serialises writes on ctrl

	mu       sync.Mutex
	realm    string
	nonce    string
	txs      map[[stun.TransactionIDSize]byte]chan *stun.Message
	attempts []Attempt
	notify   chan struct{}            // signalled when attempts grows
	perms    map[netip.Addr]time.Time // permitted IP → when last asked for
	data     map[*Conn]struct{}
	closed   bool
	err      error
	done     chan struct{}
	lifetime time.Duration
}

// Allocate connects to the server and allocates a relayed TCP address.
func Allocate(ctx context.Context, cfg Config) (*Client, error) {
	if cfg.Lifetime == 0 {
		cfg.Lifetime = 600 * time.Second
	}
	if cfg.Dialer == nil {
		cfg.Dialer = &net.Dialer{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ctrl, err := cfg.Dialer.DialContext(ctx, "tcp", cfg.Server)
	if err != nil {
		return nil, fmt.Errorf("turn: cannot reach the TURN server: %w", err)
	}
	c := &Client{
		cfg: cfg, log: cfg.Logger, ctrl: ctrl,
		txs:    map[[stun.TransactionIDSize]byte]chan *stun.Message{},
		notify: make(chan struct{}, 1),
		perms:  map[netip.Addr]time.Time{},
		data:   map[*Conn]struct{}{},
		done:   make(chan struct{}),
	}
	go c.readLoop()
	res, err := c.request(ctx, stun.MethodAllocate,
		stun.RawAttribute{Type: stun.AttrRequestedTransport, Value: []byte{6, 0, 0, 0}},
		lifetimeAttr(cfg.Lifetime))
	if err != nil {
		c.shut(err)
		return nil, err
	}
	var ra, ma stun.XORMappedAddress
	if err := ra.GetFromAs(res, stun.AttrXORRelayedAddress); err != nil {
		c.shut(err)
		return nil, fmt.Errorf("turn: Allocate answer has no relayed address: %w", err)
	}
	c.relayed = addrPort(ra.IP, ra.Port)
	if ma.GetFrom(res) == nil {
		c.mapped = addrPort(ma.IP, ma.Port)
	}
	c.lifetime = lifetimeOf(res, cfg.Lifetime)
	go c.keepAlive()
	c.log.Debug("TURN allocation", "server", cfg.Server, "relayed", c.relayed.String(), "mapped", c.mapped.String(), "lifetime", c.lifetime)
	return c, nil
}

// RelayedAddr is the allocation's relayed transport address: peers
// connect to it.
func (c *Client) RelayedAddr() netip.AddrPort { return c.relayed }

// MappedAddr is this client's address as the server sees it.
func (c *Client) MappedAddr() netip.AddrPort { return c.mapped }

// Done is closed when the allocation ends (Close, expiry, or a lost
// control connection); Err then says why.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err is why the allocation ended, or nil while it lives.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Permit lets the peers at ips connect to the relayed address and be
// connected to (CreatePermission); the client refreshes the permissions
// while the allocation lives.
func (c *Client) Permit(ctx context.Context, ips ...netip.Addr) error {
	if len(ips) == 0 {
		return nil
	}
	for i := 0; i < len(ips); i += permBatch {
		var attrs []stun.Setter
		for _, ip := range ips[i:min(i+permBatch, len(ips))] {
			attrs = append(attrs, peerAttr(netip.AddrPortFrom(ip.Unmap(), 0)))
		}
		if _, err := c.request(ctx, stun.MethodCreatePermission, attrs...); err != nil {
			return err
		}
	}
	c.mu.Lock()
	now := time.Now()
	for _, ip := range ips {
		c.perms[ip.Unmap()] = now
	}
	c.mu.Unlock()
	return nil
}

// Permissions the client keeps refreshing: those asked for within
// permKeep, at most maxPerms, sent permBatch to a request (a TURN
// server reads a bounded frame; pion's is 1,600 bytes).
const (
	permKeep  = 10 * time.Minute
	maxPerms  = 1024
	permBatch = 32
)

// refreshPerms renews the permissions still wanted, forgetting the rest.
func (c *Client) refreshPerms(ctx context.Context) error {
	c.mu.Lock()
	var ips []stun.Setter
	for ip, at := range c.perms {
		if time.Since(at) > permKeep || len(ips) >= maxPerms {
			delete(c.perms, ip)
			continue
		}
		ips = append(ips, peerAttr(netip.AddrPortFrom(ip, 0)))
	}
	c.mu.Unlock()
	for len(ips) > 0 {
		n := min(len(ips), permBatch)
		if _, err := c.request(ctx, stun.MethodCreatePermission, ips[:n]...); err != nil {
			return err
		}
		ips = ips[n:]
	}
	return nil
}

// Connect opens a TCP connection from the relayed address to peer
// (which needs a permission: Connect adds it) and returns the data
// connection carrying it.
func (c *Client) Connect(ctx context.Context, peer netip.AddrPort) (*Conn, error) {
	if err := c.Permit(ctx, peer.Addr()); err != nil {
		return nil, err
	}
	res, err := c.request(ctx, stun.MethodConnect, peerAttr(peer))
	if err != nil {
		return nil, err
	}
	v, err := res.Get(stun.AttrConnectionID)
	if err != nil || len(v) != 4 {
		return nil, errors.New("turn: Connect answer has no CONNECTION-ID")
	}
	return c.bind(ctx, Attempt{ID: beUint32(v), Peer: peer})
}

// Accept waits for the next peer connecting to the relayed address and
// binds it to a new data connection.
func (c *Client) Accept(ctx context.Context) (*Conn, error) {
	a, err := c.NextAttempt(ctx)
	if err != nil {
		return nil, err
	}
	return c.Bind(ctx, a)
}

// NextAttempt waits for the next ConnectionAttempt without binding it,
// so a caller can bind several in parallel or refuse some (an attempt not
// bound within 30 s is closed by the server).
func (c *Client) NextAttempt(ctx context.Context) (Attempt, error) {
	for {
		c.mu.Lock()
		if len(c.attempts) > 0 {
			a := c.attempts[0]
			c.attempts = c.attempts[1:]
			c.mu.Unlock()
			return a, nil
		}
		closed := c.closed
		c.mu.Unlock()
		if closed {
			return Attempt{}, ErrClosed
		}
		select {
		case <-c.notify:
		case <-c.done:
		case <-ctx.Done():
			return Attempt{}, ctx.Err()
		}
	}
}

// Bind binds an attempt to a new data connection (ConnectionBind).
func (c *Client) Bind(ctx context.Context, a Attempt) (*Conn, error) { return c.bind(ctx, a) }

// Conn is a data connection: the relayed TCP connection with one peer.
// It is a plain TCP connection to the server once bound.
type Conn struct {
	*net.TCPConn
	// ID is the server's CONNECTION-ID; Peer the peer's address.
	ID   uint32
	Peer netip.AddrPort
	c    *Client
	once sync.Once
}

// Close closes the data connection (the server closes the peer's side).
func (d *Conn) Close() error {
	d.once.Do(func() {
		d.c.mu.Lock()
		delete(d.c.data, d)
		d.c.mu.Unlock()
	})
	return d.TCPConn.Close()
}

func (c *Client) bind(ctx context.Context, a Attempt) (*Conn, error) {
	raw, err := c.cfg.Dialer.DialContext(ctx, "tcp", c.ctrl.RemoteAddr().String())
	if err != nil {
		return nil, fmt.Errorf("turn: data connection to the TURN server: %w", err)
	}
	tc := raw.(*net.TCPConn)
	tc.SetNoDelay(true)
	fail := func(err error) (*Conn, error) {
		tc.Close()
		return nil, err
	}
	req, err := c.build(stun.MethodConnectionBind, connIDAttr(a.ID))
	if err != nil {
		return fail(err)
	}
	if dl, ok := ctx.Deadline(); ok {
		tc.SetDeadline(dl)
	} else {
		tc.SetDeadline(time.Now().Add(30 * time.Second))
	}
	if _, err := tc.Write(req.Raw); err != nil {
		return fail(fmt.Errorf("turn: ConnectionBind: %w", err))
	}
	var hdr [4]byte
	f, err := stunframe.Read(tc, hdr[:])
	if err != nil {
		return fail(fmt.Errorf("turn: ConnectionBind answer: %w", err))
	}
	res := &stun.Message{Raw: f}
	if err := res.Decode(); err != nil {
		return fail(fmt.Errorf("turn: ConnectionBind answer: %w", err))
	}
	if res.TransactionID != req.TransactionID || res.Type.Method != stun.MethodConnectionBind {
		return fail(errors.New("turn: ConnectionBind answer does not match the request"))
	}
	if res.Type.Class == stun.ClassErrorResponse {
		return fail(errorOf(res))
	}
	tc.SetDeadline(time.Time{})
	d := &Conn{TCPConn: tc, ID: a.ID, Peer: a.Peer, c: c}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return fail(ErrClosed)
	}
	c.data[d] = struct{}{}
	c.mu.Unlock()
	return d, nil
}

// Close releases the allocation (Refresh with lifetime 0) and closes the
// control connection and every data connection.
func (c *Client) Close() error {
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if !closed {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		c.request(ctx, stun.MethodRefresh, lifetimeAttr(0))
		cancel()
	}
	c.shut(ErrClosed)
	return nil
}

// shut ends the client once.
func (c *Client) shut(err error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	c.err = err
	data := c.data
	c.data = map[*Conn]struct{}{}
	c.mu.Unlock()
	c.ctrl.Close()
	for d := range data {
		d.TCPConn.Close()
	}
	close(c.done)
}

// readLoop dispatches what the server sends on the control connection.
func (c *Client) readLoop() {
	var hdr [4]byte
	for {
		f, err := stunframe.Read(c.ctrl, hdr[:])
		if err != nil {
			c.shut(fmt.Errorf("turn: control connection lost: %w", err))
			return
		}
		m := &stun.Message{Raw: f}
		if !stun.IsMessage(f) || m.Decode() != nil {
			continue // ChannelData has no place on a TCP allocation
		}
		switch m.Type.Class {
		case stun.ClassSuccessResponse, stun.ClassErrorResponse:
			c.mu.Lock()
			ch := c.txs[m.TransactionID]
			delete(c.txs, m.TransactionID)
			c.mu.Unlock()
			if ch != nil {
				ch <- m
			}
		case stun.ClassIndication:
			if m.Type.Method == stun.MethodConnectionAttempt {
				c.onAttempt(m)
			}
		}
	}
}

func (c *Client) onAttempt(m *stun.Message) {
	v, err := m.Get(stun.AttrConnectionID)
	var pa stun.XORMappedAddress
	if err != nil || len(v) != 4 || pa.GetFromAs(m, stun.AttrXORPeerAddress) != nil {
		c.log.Debug("TURN ConnectionAttempt without CONNECTION-ID or peer ignored")
		return
	}
	a := Attempt{ID: beUint32(v), Peer: addrPort(pa.IP, pa.Port), at: time.Now()}
	c.mu.Lock()
	// Drop attempts the server has surely closed (30 s bind timer), and
	// the oldest when too many wait.
	for len(c.attempts) > 0 && (len(c.attempts) >= maxQueued || time.Since(c.attempts[0].at) > 30*time.Second) {
		c.log.Debug("TURN connection attempt dropped unbound", "peer", c.attempts[0].Peer.String())
		c.attempts = c.attempts[1:]
	}
	c.attempts = append(c.attempts, a)
	c.mu.Unlock()
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

// keepAlive refreshes the allocation and the permissions before they
// expire (permissions last 300 s).
func (c *Client) keepAlive() {
	every := min(c.lifetime/2, 120*time.Second)
	if every <= 0 {
		every = 60 * time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		res, err := c.request(ctx, stun.MethodRefresh, lifetimeAttr(c.cfg.Lifetime))
		if err == nil {
			c.lifetime = lifetimeOf(res, c.cfg.Lifetime)
			// A refused permission (a peer the server filters, say)
			// costs only that permission, not the allocation.
			if perr := c.refreshPerms(ctx); perr != nil && !errors.Is(perr, ErrClosed) {
				c.log.Info("TURN permission refresh failed", "err", perr)
			}
		}
		cancel()
		if err != nil && !errors.Is(err, ErrClosed) {
			c.log.Warn("TURN refresh failed; the allocation ends", "err", err)
			c.shut(fmt.Errorf("turn: refresh failed: %w", err))
			return
		}
	}
}
