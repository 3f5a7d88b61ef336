// Package daemon is the connection manager: one per user, like a Telepathy
// connection manager. It owns the accounts and their connections to the
// rendezvous (status, reasons, handles, client interests, reconnection),
// persists them under the state directory, and publishes what happens on
// an event bus. The local API (package localapi) exposes it.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/connection"
	"github.com/tubes-dev/tubes/identity"
	"github.com/tubes-dev/tubes/peerlink"
	"github.com/tubes-dev/tubes/registry"
	"github.com/tubes-dev/tubes/rendezvous"
	"github.com/tubes-dev/tubes/tperr"
	"github.com/tubes-dev/tubes/tube"
)

// Reconnection defaults (Config).
const (
	DefaultEarlyBackoff = 5 * time.Second
	DefaultEarlyOutage  = 2 * time.Minute
)

// Config configures a daemon.
type Config struct {
	StateDir       string
	Logger         *slog.Logger
	Registerer     prometheus.Registerer // may be nil
	ConnectTimeout time.Duration         // one connection attempt; default 5s
	MinBackoff     time.Duration         // first reconnect delay; default 500ms
	MaxBackoff     time.Duration         // longest reconnect delay; default 30s
	// EarlyBackoff is the longest reconnect delay in the first
	// EarlyOutage of an outage (default 5s and 2 min): a relay that
	// restarts is found again within seconds, and only a long outage
	// backs off to MaxBackoff.
	EarlyBackoff, EarlyOutage time.Duration
	PeerListen                string // where peer links are accepted (default ":0")
	SocketDir                 string // where automatic tube sockets go (default <state>/sockets)
	// TURN, when set, is the TURN server every account relays through
	// instead of the one its relay announces (an operator's coturn, say).
	TURN *TURNServer
	// SystemServices is the system scope's service registry file
	// (default /var/lib/tube/services.json; only root may change it).
	SystemServices string
	// Limits bound what contacts and local clients can make the daemon
	// hold; zero values are the defaults.
	Limits Limits
}

// Limits bound what others can make the daemon hold. Zero values are the
// defaults named beside them.
type Limits struct {
	LinkStreams         int           // streams a contact may have open on one link (peerlink.DefaultStreams)
	LinkHandshake       time.Duration // a peer link's TLS handshake and account check (peerlink.DefaultHandshake)
	LinkStall           time.Duration // a stream taking none of its data on a full link is reset after it (peerlink.DefaultStall)
	HandshakesPerSource int           // peer-link handshakes in progress per source address (tube.DefaultHandshakesPerSource)
	EventBytes          int           // JSON bytes queued for one event-stream client (DefaultEventBytes)
	EventWriteTimeout   time.Duration // how long one write to an event-stream client may block (DefaultEventWriteTimeout)
}

// DefaultEventWriteTimeout is Limits.EventWriteTimeout's default.
const DefaultEventWriteTimeout = 10 * time.Second

// withDefaults fills in the zero values.
func (l Limits) withDefaults() Limits {
	if l.LinkStreams <= 0 {
		l.LinkStreams = peerlink.DefaultStreams
	}
	if l.LinkStall <= 0 {
		l.LinkStall = peerlink.DefaultStall
	}
	if l.LinkHandshake <= 0 {
		l.LinkHandshake = peerlink.DefaultHandshake
	}
	if l.HandshakesPerSource <= 0 {
		l.HandshakesPerSource = tube.DefaultHandshakesPerSource
	}
	if l.EventBytes <= 0 {
		l.EventBytes = DefaultEventBytes
	}
	if l.EventWriteTimeout <= 0 {
		l.EventWriteTimeout = DefaultEventWriteTimeout
	}
	return l
}

// EventStats are the event streams' counts: clients subscribed now, and
// those cut off so far for falling behind.
func (d *Daemon) EventStats() (subscribers int, cut uint64) {
	return d.bus.Subscribers(), d.bus.Cut()
}

// Limits are the limits the daemon runs with, defaults filled in.
func (d *Daemon) Limits() Limits { return d.cfg.Limits }

// TURNServer is an external TURN server: static long-term credentials
// (User, Password) or a TURN REST shared secret.
type TURNServer struct {
	Addr           string
	User, Password string
	Secret         string
}

// Daemon is the connection manager.
type Daemon struct {
	cfg     Config
	log     *slog.Logger
	store   *store
	bus     Bus
	metrics *metrics

	mu        sync.Mutex // guards the fields below; lock order: Daemon.mu before account.mu
	accounts  map[string]*account
	order     []string
	ctx       context.Context // set by Run; account loops run under it
	loops     sync.WaitGroup
	paramReqs map[string]paramReq // pending parameters-generator requests

	expMu    sync.Mutex // orders export changes and their saves (exports.go)
	services *registry.Registry
	pubs     *pubState
	acts     activations
}

// New loads the state directory, which the daemon holds until Wait
// returns.
func New(cfg Config) (_ *Daemon, err error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 5 * time.Second
	}
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = 500 * time.Millisecond
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = 30 * time.Second
	}
	if cfg.EarlyBackoff == 0 {
		cfg.EarlyBackoff = DefaultEarlyBackoff
	}
	if cfg.EarlyOutage == 0 {
		cfg.EarlyOutage = DefaultEarlyOutage
	}
	cfg.Limits = cfg.Limits.withDefaults()
	// Absolute: the state directory names this daemon's socket
	// directory, which a relative name would share with another daemon
	// started elsewhere.
	if cfg.StateDir != "" {
		abs, err := filepath.Abs(cfg.StateDir)
		if err != nil {
			return nil, fmt.Errorf("daemon: state directory: %w", err)
		}
		cfg.StateDir = abs
	}
	st, err := openStore(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	d := &Daemon{cfg: cfg, log: cfg.Logger.With("component", "daemon"), store: st, accounts: map[string]*account{}, paramReqs: map[string]paramReq{}}
	defer func() {
		if err != nil {
			d.closeActivations()
			st.close()
		}
	}()
	d.bus.MaxBytes = cfg.Limits.EventBytes
	d.metrics = newMetrics(cfg.Registerer, d)
	// Publications first: the registry's events update them.
	if err := d.openPublications(); err != nil {
		return nil, err
	}
	if err := d.openServices(); err != nil {
		return nil, err
	}
	// What was published of services removed while the daemon was down
	// goes; older publications learn their service's location.
	d.prunePublications("")
	saved, err := st.load()
	if err != nil {
		return nil, err
	}
	for _, as := range saved.Accounts {
		key, _, err := st.key(as.Name)
		if err != nil {
			return nil, fmt.Errorf("daemon: key of %s: %w", as.Name, err)
		}
		a, err := newAccount(d, as, key)
		if err != nil {
			return nil, err
		}
		d.accounts[as.Name] = a
		d.order = append(d.order, as.Name)
	}
	if err := d.restoreExports(); err != nil {
		return nil, err
	}
	return d, nil
}

// Start starts the accounts' connection loops, which run until ctx ends;
// Wait waits for them.
func (d *Daemon) Start(ctx context.Context) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ctx = ctx
	for _, name := range d.order {
		d.startLoop(d.accounts[name])
	}
	d.loops.Add(1)
	go d.watchSystemServices(ctx)
}

// Wait waits until every account loop has stopped (after Start's ctx ends).
func (d *Daemon) Wait() {
	d.loops.Wait()
	d.closeActivations()
	d.store.close()
}

// Run is Start, then Wait once ctx ends.
func (d *Daemon) Run(ctx context.Context) error {
	d.Start(ctx)
	<-ctx.Done()
	d.Wait()
	return nil
}

// startLoop starts an account's loop and its tubes. d.mu must be held.
func (d *Daemon) startLoop(a *account) {
	if err := a.tubes.Start(d.ctx); err != nil {
		a.log.Error("tubes not available", "err", err)
	}
	d.loops.Add(1)
	go func() {
		defer d.loops.Done()
		a.run(d.ctx)
		a.tubes.Close()
	}()
}

// Events subscribes to the event bus.
func (d *Daemon) Events() *Subscription { return d.bus.Subscribe() }

func (d *Daemon) account(name string) (*account, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if name == "" {
		switch len(d.order) {
		case 0:
			return nil, tperr.New(tperr.NotAvailable, "there are no accounts yet; add one with tube account add NAME --server HOST:PORT")
		case 1:
			return d.accounts[d.order[0]], nil
		}
		return nil, tperr.New(tperr.InvalidArgument, "there are several accounts (%s); say which one with --account", strings.Join(d.order, ", "))
	}
	a, ok := d.accounts[name]
	if !ok {
		return nil, tperr.New(tperr.NotFound, "there is no account named %q in this daemon", name)
	}
	if a == nil {
		return nil, tperr.New(tperr.NotAvailable, "the account %s is being added", name)
	}
	return a, nil
}

// Accounts lists the accounts.
func (d *Daemon) Accounts() []api.Account {
	d.mu.Lock()
	list := make([]*account, 0, len(d.order))
	for _, n := range d.order {
		list = append(list, d.accounts[n])
	}
	d.mu.Unlock()
	out := make([]api.Account, 0, len(list))
	for _, a := range list {
		out = append(out, a.snapshot())
	}
	return out
}

// Account returns one account ("" means the only one).
func (d *Daemon) Account(name string) (api.Account, error) {
	a, err := d.account(name)
	if err != nil {
		return api.Account{}, err
	}
	return a.snapshot(), nil
}

// Status is the daemon's state as `tube status` shows it.
func (d *Daemon) Status() api.Status {
	st := api.Status{Accounts: d.Accounts(), Tubes: d.Tubes(), Connections: d.Connections(), Activations: d.Activations()}
	d.mu.Lock()
	accts := make([]*account, 0, len(d.order))
	for _, n := range d.order {
		accts = append(accts, d.accounts[n])
	}
	d.mu.Unlock()
	for _, a := range accts {
		st.KeyChanges = append(st.KeyChanges, a.keyChanges()...)
	}
	return st
}

func (d *Daemon) saveLocked() error {
	var st stateFile
	for _, n := range d.order {
		st.Accounts = append(st.Accounts, d.accounts[n].state())
	}
	return d.store.save(st)
}

func (d *Daemon) save() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.saveLocked()
}

// AddAccount creates an account's key (or reuses one left by an earlier
// attempt), registers the account on its relay when asked, saves it and
// connects. It returns after the first connection attempt. A failed
// registration leaves nothing behind: the spec's "a connection that was
// attempted and failed is removed", and no key or entry on disk.
func (d *Daemon) AddAccount(ctx context.Context, req api.AddAccountRequest) (api.Account, error) {
	name, err := rendezvous.NormalizeName("account", req.Name)
	if err != nil {
		return api.Account{}, err
	}
	if strings.TrimSpace(req.Server) == "" {
		return api.Account{}, tperr.New(tperr.InvalidArgument, "field \"server\" is required: the relay's HOST:PORT")
	}
	d.mu.Lock()
	if d.ctx == nil {
		d.mu.Unlock()
		return api.Account{}, tperr.New(tperr.NotAvailable, "the daemon is not running")
	}
	if _, ok := d.accounts[name]; ok {
		d.mu.Unlock()
		return api.Account{}, tperr.New(tperr.NotAvailable, "the account %s already exists in this daemon", name)
	}
	// Reserve the name while registering.
	d.accounts[name] = nil
	d.mu.Unlock()
	release := func() {
		d.mu.Lock()
		delete(d.accounts, name)
		d.mu.Unlock()
	}

	var (
		key     *identity.Key
		created bool
	)
	if req.Key != "" {
		if key, err = identity.Parse([]byte(req.Key)); err != nil {
			release()
			return api.Account{}, tperr.New(tperr.InvalidArgument, "the key given for %s is not an account key (a PEM PRIVATE KEY, as tube account export writes it)", name)
		}
		created, err = d.store.importKey(name, key)
	} else {
		key, created, err = d.store.key(name)
	}
	if err != nil {
		release()
		if tperr.Name(err) != "" {
			return api.Account{}, err
		}
		return api.Account{}, fmt.Errorf("daemon: account key: %w", err)
	}
	st := accountState{Name: name, Server: strings.TrimSpace(req.Server), CA: req.CA, AutoConnect: true}
	a, err := newAccount(d, st, key)
	if err != nil {
		release()
		if created {
			d.store.removeKey(name)
		}
		return api.Account{}, err
	}
	d.bus.Publish(api.Event{Type: api.EventAccountAdded, Account: name})
	if req.Register {
		a.setStatus(connection.Connecting, connection.Requested, nil)
		if err := rendezvous.Register(ctx, a.dialConfig(), req.Invite); err != nil {
			ce := asConnError(err)
			a.setStatus(connection.Disconnected, ce.Reason, ce)
			d.bus.Publish(api.Event{Type: api.EventAccountRemoved, Account: name})
			release()
			if created {
				d.store.removeKey(name)
			}
			return api.Account{}, &tperr.Error{Name: ce.Name, Message: "could not register " + name + ": " + ce.Message, Err: ce}
		}
	}
	d.mu.Lock()
	d.accounts[name] = a
	d.order = append(d.order, name)
	if err := d.saveLocked(); err != nil {
		delete(d.accounts, name)
		d.order = slices.DeleteFunc(d.order, func(n string) bool { return n == name })
		d.mu.Unlock()
		return api.Account{}, fmt.Errorf("daemon: save state: %w", err)
	}
	d.startLoop(a)
	d.mu.Unlock()
	a.nudge()
	wctx, cancel := context.WithTimeout(ctx, d.cfg.ConnectTimeout+10*time.Second)
	defer cancel()
	a.waitAttempt(wctx)
	return a.snapshot(), nil
}

// ExportKey returns an account's private key (PEM), to move the account
// to another daemon (AddAccount with Key). The local API gives it only to
// the daemon's own user; it is never logged.
func (d *Daemon) ExportKey(name string) (api.AccountKey, error) {
	a, err := d.account(name)
	if err != nil {
		return api.AccountKey{}, err
	}
	b, err := d.store.exportKey(a.name)
	if err != nil {
		return api.AccountKey{}, tperr.Wrap(err, tperr.NotAvailable, "the key of %s cannot be read", a.name)
	}
	d.log.Info("account key exported", "account", a.name)
	return api.AccountKey{Key: string(b)}, nil
}

// RemoveAccount disconnects an account and deletes it and its key.
func (d *Daemon) RemoveAccount(name string) error {
	a, err := d.account(name)
	if err != nil {
		return err
	}
	d.mu.Lock()
	delete(d.accounts, a.name)
	d.order = slices.DeleteFunc(d.order, func(n string) bool { return n == a.name })
	err = d.saveLocked()
	d.mu.Unlock()
	a.mu.Lock()
	a.removed = true
	a.wanted = false
	a.mu.Unlock()
	a.nudge()
	d.bus.Publish(api.Event{Type: api.EventAccountRemoved, Account: a.name})
	return errors.Join(err, d.store.removeKey(a.name), d.forgetExports())
}

// Connect asks an account to connect. Connecting or connected accounts are
// left alone, as the spec says.
func (d *Daemon) Connect(name string) error {
	a, err := d.account(name)
	if err != nil {
		return err
	}
	a.setWanted(true)
	a.nudge()
	return d.save()
}

// Disconnect disconnects an account and stops its retries.
func (d *Daemon) Disconnect(name string) error {
	a, err := d.account(name)
	if err != nil {
		return err
	}
	if a.setWanted(false) {
		a.nudge()
	}
	return d.save()
}

// WaitDisconnected waits (up to 5 s) until a disconnected account's
// connection has ended, and returns it; it fails with Timeout if the
// connection has not ended by then.
func (d *Daemon) WaitDisconnected(ctx context.Context, name string) (api.Account, error) {
	a, err := d.account(name)
	if err != nil {
		return api.Account{}, err
	}
	return a.waitStatus(ctx, connection.Disconnected, 5*time.Second)
}

// WaitSettled waits for the account's next connection attempt to end, or
// returns at once if it is connected or not trying.
func (d *Daemon) WaitSettled(ctx context.Context, name string) (api.Account, error) {
	a, err := d.account(name)
	if err != nil {
		return api.Account{}, err
	}
	a.mu.Lock()
	busy := a.wanted && a.status != connection.Connected
	a.mu.Unlock()
	if busy {
		a.waitAttempt(ctx)
	}
	return a.snapshot(), nil
}

// RequestHandles returns handles for contacts or rooms of a connected
// account. Identifiers must name existing accounts or rooms.
func (d *Daemon) RequestHandles(ctx context.Context, name string, t connection.HandleType, ids []string) ([]connection.Handle, error) {
	a, err := d.account(name)
	if err != nil {
		return nil, err
	}
	c, err := a.conn()
	if err != nil {
		return nil, err
	}
	if t != connection.HandleContact && t != connection.HandleRoom {
		return a.handles.Request(t, ids) // the spec's error for the type
	}
	norm := make([]string, len(ids))
	for i, id := range ids {
		n, err := a.handles.Normalize(t, id)
		if err != nil {
			return nil, tperr.Wrap(err, tperr.InvalidHandle, "%q is not a valid %s identifier: %v", id, strings.ToLower(t.String()), err)
		}
		norm[i] = n
	}
	var found map[string]bool
	if t == connection.HandleContact {
		found, _, err = c.Exists(ctx, norm, nil)
	} else {
		_, found, err = c.Exists(ctx, nil, norm)
	}
	if err != nil {
		return nil, err
	}
	for i, n := range norm {
		switch {
		case found[n]:
		case t == connection.HandleRoom:
			// The same answer for a room that exists and one that does
			// not: a non-member learns nothing.
			return nil, tperr.New(tperr.InvalidHandle, "%q names no room that you are in or invited to", ids[i])
		default:
			return nil, tperr.New(tperr.InvalidHandle, "%q names no %s on the relay", ids[i], strings.ToLower(t.String()))
		}
	}
	return a.handles.Request(t, norm)
}

// InspectHandles returns the identifiers of handles.
func (d *Daemon) InspectHandles(name string, t connection.HandleType, hs []connection.Handle) ([]string, error) {
	a, err := d.account(name)
	if err != nil {
		return nil, err
	}
	if _, err := a.conn(); err != nil {
		return nil, err
	}
	return a.handles.Inspect(t, hs)
}

// AddClientInterest and RemoveClientInterest count a local-API client's
// interest in tokens for an account.
func (d *Daemon) AddClientInterest(name, client string, tokens []string) error {
	a, err := d.account(name)
	if err != nil {
		return err
	}
	a.addInterest(client, tokens)
	return nil
}

// RemoveClientInterest is AddClientInterest's counterpart.
func (d *Daemon) RemoveClientInterest(name, client string, tokens []string) error {
	a, err := d.account(name)
	if err != nil {
		return err
	}
	a.removeInterest(client, tokens)
	return nil
}

// ClientGone drops every interest of a local-API client that went away.
func (d *Daemon) ClientGone(client string) {
	d.mu.Lock()
	list := make([]*account, 0, len(d.accounts))
	for _, a := range d.accounts {
		if a != nil {
			list = append(list, a)
		}
	}
	d.mu.Unlock()
	for _, a := range list {
		a.dropClient(client)
		a.tubes.DropClient(client)
	}
}

// Watching reports whether an account currently subscribes to the network
// notifications behind an interest token.
func (d *Daemon) Watching(name, token string) (bool, error) {
	a, err := d.account(name)
	if err != nil {
		return false, err
	}
	c, err := a.conn()
	if err != nil {
		return false, nil
	}
	return c.Watching(interestKinds[token]), nil
}

var discard = slog.New(slog.DiscardHandler)
