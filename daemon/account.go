package daemon

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/connection"
	"github.com/tubes-dev/tubes/identity"
	"github.com/tubes-dev/tubes/rendezvous"
	"github.com/tubes-dev/tubes/tperr"
	"github.com/tubes-dev/tubes/tube"
)

// Interfaces every connection has; the list may only grow before
// Connected and is frozen after, as the spec requires.
var baseInterfaces = []string{
	"im.telepathy1.Connection",
	api.InterestContactList,
	api.InterestPresence,
	api.InterestRooms,
}

// interestKinds maps client-interest tokens to the rendezvous inbox kinds
// the daemon subscribes to only while someone is interested.
var interestKinds = map[string]string{
	api.InterestPresence:    rendezvous.KindPresence,
	api.InterestContactList: rendezvous.KindContacts,
	api.InterestRooms:       rendezvous.KindRooms,
}

// account is one account and its connection: a Telepathy Connection. Its
// run loop owns the rendezvous client; everything else asks the loop to
// act through wake.
type account struct {
	d     *Daemon
	log   *slog.Logger
	name  string
	key   *identity.Key
	roots *x509.CertPool

	handles   connection.Handles
	interests connection.Interests
	tubes     *tube.Manager
	pins      *pins // the keys of contacts and room co-members, pinned on first sight

	wake chan struct{} // buffered: Connect/Disconnect nudge the loop

	mu         sync.Mutex // guards the fields below
	server     string
	caPEM      string
	wanted     bool // the user wants it connected (persisted as auto_connect)
	status     connection.Status
	reason     connection.Reason
	lastErr    *rendezvous.ConnError // while disconnected: why
	client     *rendezvous.Client
	selfHandle connection.Handle
	interfaces []string
	nextRetry  time.Time
	attempts   uint64        // finished connection attempts
	settled    chan struct{} // closed and replaced when an attempt finishes
	changed    chan struct{} // closed and replaced when the status changes
	removed    bool
}

func newAccount(d *Daemon, st accountState, key *identity.Key) (*account, error) {
	a := &account{
		d:          d,
		log:        d.log.With("account", st.Name),
		name:       st.Name,
		key:        key,
		server:     st.Server,
		caPEM:      st.CA,
		wanted:     st.AutoConnect,
		status:     connection.Disconnected,
		reason:     connection.NoneSpecified,
		interfaces: append([]string(nil), baseInterfaces...),
		wake:       make(chan struct{}, 1),
		settled:    make(chan struct{}),
		changed:    make(chan struct{}),
	}
	if st.CA != "" {
		a.roots = x509.NewCertPool()
		if !a.roots.AppendCertsFromPEM([]byte(st.CA)) {
			return nil, tperr.New(tperr.InvalidArgument, "the CA given for %s holds no PEM certificate", st.Name)
		}
	}
	pf := filepath.Join(d.cfg.StateDir, "pins", st.Name+".json")
	var err error
	if a.pins, err = loadPins(pf, a.keyChanged); err != nil {
		return nil, err
	}
	a.handles.Normalize = func(t connection.HandleType, id string) (string, error) {
		kind := "contact"
		if t == connection.HandleRoom {
			kind = "room"
		}
		return rendezvous.NormalizeName(kind, id)
	}
	a.interests.Known = func(tok string) bool { _, ok := interestKinds[tok]; return ok || tok == api.InterestServices }
	if err := a.newTubes(); err != nil {
		return nil, err
	}
	return a, nil
}

func (a *account) nudge() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

func (a *account) state() accountState {
	a.mu.Lock()
	defer a.mu.Unlock()
	return accountState{Name: a.name, Server: a.server, CA: a.caPEM, AutoConnect: a.wanted}
}

// snapshot returns the account as the local API shows it.
func (a *account) snapshot() api.Account {
	a.mu.Lock()
	defer a.mu.Unlock()
	acc := api.Account{
		Name:         a.name,
		Server:       a.server,
		ConnectionID: connectionID(a.name, a.server),
		Protocol:     "tubes",
		Status:       a.status.String(),
		StatusCode:   uint32(a.status),
		Reason:       a.reason.String(),
		ReasonCode:   uint32(a.reason),
		SelfHandle:   uint32(a.selfHandle),
		Interfaces:   append([]string(nil), a.interfaces...),
		Key:          a.key.Public().String(),
		Fingerprint:  a.key.Public().Fingerprint(),
		SafetyNumber: a.key.Public().SafetyNumber(),
		AutoConnect:  a.wanted,
	}
	if a.lastErr != nil && a.status == connection.Disconnected {
		acc.Error, acc.Message = a.lastErr.Name, a.lastErr.Message
		if a.lastErr.Reason == connection.AuthenticationFailed {
			acc.Login = "unanswered"
			if a.lastErr.Refused {
				acc.Login = "refused"
			}
		}
	}
	if !a.nextRetry.IsZero() && a.status == connection.Disconnected {
		acc.NextRetry = a.nextRetry.UTC().Format(time.RFC3339)
	}
	return acc
}

// connectionID is the spec's bus-name form, made an opaque identifier:
// im.telepathy1.Connection.<cm>.<proto>.<account>, with the account part
// escaped as telepathy-glib's tp_escape_as_identifier does.
func connectionID(name, server string) string {
	return "im.telepathy1.Connection.tube.tubes." + escapeIdentifier(name+"@"+server)
}

func escapeIdentifier(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9' && i > 0) {
			b.WriteByte(c)
			continue
		}
		b.WriteString("_" + strings.ToLower(hex2(c)))
	}
	return b.String()
}

func hex2(c byte) string {
	const digits = "0123456789ABCDEF"
	return string([]byte{digits[c>>4], digits[c&15]})
}

func u32(v uint32) *uint32 { return &v }

func statusEvent(name string, s connection.Status, r connection.Reason) api.Event {
	return api.Event{Type: api.EventStatusChanged, Account: name,
		Status: s.String(), StatusCode: u32(uint32(s)), Reason: r.String(), ReasonCode: u32(uint32(r))}
}

// setStatus records and signals a status change. A ConnectionError, when
// given, is published immediately before it, with nothing in between.
//
// A change to the status it already has is not signalled again (the
// Connecting of a registration flows into the first connection attempt).
func (a *account) setStatus(s connection.Status, r connection.Reason, ce *rendezvous.ConnError) {
	a.mu.Lock()
	if ce == nil && s == a.status && r == a.reason {
		a.mu.Unlock()
		return
	}
	a.status, a.reason = s, r
	close(a.changed)
	a.changed = make(chan struct{})
	if s != connection.Disconnected {
		a.lastErr = nil
		a.nextRetry = time.Time{}
	} else if ce != nil {
		a.lastErr = ce
	}
	a.mu.Unlock()
	var evs []api.Event
	if ce != nil {
		evs = append(evs, api.Event{Type: api.EventConnectionError, Account: a.name, Error: ce.Name, Details: ce.Details})
	}
	evs = append(evs, statusEvent(a.name, s, r))
	a.d.bus.Publish(evs...)
	a.d.metrics.status(a.name, s)
	if ce != nil && ce.Err != nil {
		a.log.Info("status", "status", s, "reason", r, "error", errName(ce), "cause", ce.Err)
	} else {
		a.log.Info("status", "status", s, "reason", r, "error", errName(ce))
	}
}

func errName(ce *rendezvous.ConnError) string {
	if ce == nil {
		return ""
	}
	return ce.Name
}

// settle marks the end of a connection attempt.
func (a *account) settle() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.attempts++
	close(a.settled)
	a.settled = make(chan struct{})
}

// waitStatus waits until the account's status is want, for at most
// timeout, and returns the account as it is then; it fails with Timeout
// if the status did not come.
func (a *account) waitStatus(ctx context.Context, want connection.Status, timeout time.Duration) (api.Account, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		a.mu.Lock()
		st, ch := a.status, a.changed
		a.mu.Unlock()
		if st == want {
			return a.snapshot(), nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return a.snapshot(), ctx.Err()
		case <-timer.C:
			return a.snapshot(), tperr.New(tperr.Timeout, "%s is still %s %v after it was asked to be %s", a.name, st, timeout, want)
		}
	}
}

// waitAttempt waits until an attempt that ends after now has finished.
func (a *account) waitAttempt(ctx context.Context) {
	a.mu.Lock()
	ch := a.settled
	a.mu.Unlock()
	select {
	case <-ch:
	case <-ctx.Done():
	}
}

func (a *account) isWanted() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.wanted && !a.removed
}

// setWanted records the user's wish; it reports whether it changed.
func (a *account) setWanted(w bool) bool {
	a.mu.Lock()
	changed := a.wanted != w
	a.wanted = w
	a.mu.Unlock()
	return changed
}

func (a *account) dialConfig() rendezvous.DialConfig {
	a.mu.Lock()
	defer a.mu.Unlock()
	return rendezvous.DialConfig{
		Server:    a.server,
		Account:   a.name,
		Key:       a.key,
		RootCAs:   a.roots,
		Timeout:   a.d.cfg.ConnectTimeout,
		Logger:    a.log,
		OnMessage: a.onMessage,
	}
}

// retryable reports whether a failure is worth retrying on its own:
// network trouble is, and so is a refused login the relay did not confirm
// (an overloaded relay's login check times out into the same refusal).
// Confirmed refusals, certificate problems and being replaced wait for
// the user.
func retryable(ce *rendezvous.ConnError) bool {
	return ce.Reason == connection.NetworkError || unconfirmedRefusal(ce)
}

func unconfirmedRefusal(ce *rendezvous.ConnError) bool {
	return ce.Reason == connection.AuthenticationFailed && !ce.Refused
}

// slowBackoff is the wait after a refusal the relay did not confirm: it
// may be overloaded, so the daemon does not add to it. It starts at ten
// times the network back-off and grows to ten times its longest.
func (a *account) slowBackoff(backoff time.Duration) time.Duration {
	return min(max(2*backoff, 10*a.d.cfg.MinBackoff), 10*a.d.cfg.MaxBackoff)
}

// reconnectBackoff is the wait between connection attempts: doubling
// from MinBackoff, capped at EarlyBackoff for the first EarlyOutage of an
// outage and at MaxBackoff after, with jitter (each wait is a random
// point in the back-off's upper half) so that the daemons of a relay that
// restarts do not all come back at once.
type reconnectBackoff struct {
	cfg     *Config
	backoff time.Duration
	outage  time.Time // when the relay was lost or first not reached
}

func (b *reconnectBackoff) reset() { b.backoff, b.outage = b.cfg.MinBackoff, time.Time{} }

// next is the wait before another attempt at now.
func (b *reconnectBackoff) next(now time.Time) time.Duration {
	if b.outage.IsZero() {
		b.outage = now
	}
	limit := b.cfg.MaxBackoff
	if now.Sub(b.outage) < b.cfg.EarlyOutage {
		limit = min(limit, b.cfg.EarlyBackoff)
	}
	wait := min(b.backoff, limit)
	b.backoff = min(b.backoff*2, limit)
	return wait/2 + rand.N(wait/2+1)
}

// run is the account's connection loop: Connecting → Connected, and after
// a network loss Disconnected/Network_Error → (backoff) → Connecting → …
func (a *account) run(ctx context.Context) {
	rb := reconnectBackoff{cfg: &a.d.cfg}
	rb.reset()
	next := func() time.Duration { return rb.next(time.Now()) }
	for ctx.Err() == nil {
		a.mu.Lock()
		removed := a.removed
		a.mu.Unlock()
		if removed {
			return
		}
		if !a.isWanted() {
			select {
			case <-a.wake:
				continue
			case <-ctx.Done():
				return
			}
		}
		a.setStatus(connection.Connecting, connection.Requested, nil)
		c, ce := a.dial(ctx)
		if ctx.Err() != nil {
			if c != nil {
				c.Close()
			}
			return
		}
		if ce != nil {
			a.setStatus(connection.Disconnected, ce.Reason, ce)
			a.settle()
			if !retryable(ce) {
				a.setWanted(false)
				continue
			}
			if unconfirmedRefusal(ce) {
				rb.backoff = a.slowBackoff(rb.backoff)
				a.log.Warn("the relay refused the login without confirming it; trying again later", "in", rb.backoff)
				a.backoff(ctx, rb.backoff)
				continue
			}
			a.backoff(ctx, next())
			continue
		}
		rb.reset()
		a.connected(c)
		// Contacts' keys are pinned before the attempt counts as done
		// (ConnectWait), so that the first start after pinning came
		// pins existing contacts before anything else uses them.
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		a.pinContacts(pctx, c)
		a.tubes.Resync(pctx) // room changes missed while offline
		a.tubes.Reconnected()
		cancel()
		a.settle()
		if ended := a.serve(ctx, c); ended != nil {
			a.disconnected(ended)
			if !retryable(ended) {
				a.setWanted(false)
				continue
			}
			// Lost after being up: try again soon, then back off.
			a.backoff(ctx, next())
		}
	}
}

func (a *account) dial(ctx context.Context) (*rendezvous.Client, *rendezvous.ConnError) {
	cfg := a.dialConfig()
	dctx, cancel := context.WithTimeout(ctx, a.d.cfg.ConnectTimeout+5*time.Second)
	defer cancel()
	c, err := rendezvous.Dial(dctx, cfg)
	if err != nil {
		return nil, asConnError(err)
	}
	if _, err := c.Hello(dctx); err != nil {
		c.Close()
		return nil, asConnError(err)
	}
	return c, nil
}

func asConnError(err error) *rendezvous.ConnError {
	var ce *rendezvous.ConnError
	if errors.As(err, &ce) {
		return ce
	}
	name := tperr.Name(err)
	if name == "" {
		name = tperr.NetworkError
	}
	return &rendezvous.ConnError{Reason: connection.NetworkError, Name: name, Message: err.Error(),
		Details: map[string]any{"debug-message": err.Error()}, Err: err}
}

func (a *account) connected(c *rendezvous.Client) {
	self, _ := a.handles.Request(connection.HandleContact, []string{a.name})
	a.mu.Lock()
	a.client = c
	changed := a.selfHandle != self[0]
	a.selfHandle = self[0]
	a.mu.Unlock()
	if changed {
		a.d.bus.Publish(api.Event{Type: api.EventSelfHandleChanged, Account: a.name, SelfHandle: uint32(self[0])})
	}
	// Interest registered before Connected is applied now.
	for _, tok := range a.interests.Tokens() {
		if interestKinds[tok] == "" {
			continue // kept by the daemon, not a network subscription
		}
		if err := c.Watch(interestKinds[tok], true); err != nil {
			a.log.Warn("subscribe", "token", tok, "err", err)
		}
	}
	a.setStatus(connection.Connected, connection.Requested, nil)
}

// keyChanged reports a key the relay gave for name that is not the one
// pinned for it.
func (a *account) keyChanged(name string, old, new identity.PublicKey) {
	a.log.Warn("a contact's key changed: refused until verified", "contact", name, "pinned", old.Fingerprint(), "relay_gave", new.Fingerprint())
	a.d.bus.Publish(api.Event{Type: api.EventContactKeyChanged, Account: a.name, Contact: name,
		OldFingerprint: old.SafetyNumber(), NewFingerprint: new.SafetyNumber()})
}

// serve waits while connected. It returns why the connection ended, or
// nil if the user disconnected (already signalled) or the daemon stops.
func (a *account) serve(ctx context.Context, c *rendezvous.Client) *rendezvous.ConnError {
	for {
		select {
		case <-c.Done():
			return c.Err()
		case <-a.wake:
			if a.isWanted() {
				continue
			}
			c.Close()
			a.disconnected(&rendezvous.ConnError{Reason: connection.Requested, Name: tperr.Cancelled,
				Message: "disconnected as requested"})
			return nil
		case <-ctx.Done():
			c.Close()
			return nil
		}
	}
}

func (a *account) disconnected(ce *rendezvous.ConnError) {
	a.mu.Lock()
	a.client = nil
	a.mu.Unlock()
	a.setStatus(connection.Disconnected, ce.Reason, ce)
}

// backoff waits before the next attempt; Connect (wake) cuts it short and
// Disconnect ends the retries.
func (a *account) backoff(ctx context.Context, d time.Duration) {
	a.mu.Lock()
	a.nextRetry = time.Now().Add(d)
	a.mu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-a.wake:
	case <-ctx.Done():
	}
}

// conn returns the live rendezvous client, or a Disconnected error.
func (a *account) conn() (*rendezvous.Client, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.client == nil || a.status != connection.Connected {
		return nil, tperr.New(tperr.Disconnected, "%s is not connected (status %s); run tube connect %s", a.name, a.status, a.name)
	}
	return a.client, nil
}

// onMessage turns inbox deliveries into events.
func (a *account) onMessage(kind string, data []byte) {
	ev := api.Event{Account: a.name}
	var err error
	switch kind {
	case rendezvous.KindPresence:
		var p rendezvous.PresenceEvent
		err = json.Unmarshal(data, &p)
		ev.Type, ev.Contact, ev.Online = api.EventPresenceChanged, p.Name, &p.Online
		if err == nil {
			a.tubes.OnPresence(p.Name, p.Online)
		}
	case rendezvous.KindContacts:
		var c rendezvous.ContactEvent
		err = json.Unmarshal(data, &c)
		ev.Type, ev.Contact, ev.State = api.EventContactsChanged, c.Name, string(c.State)
		if err == nil && c.State != rendezvous.ContactMutual {
			a.tubes.OnContactRemoved(c.Name)
		}
	case rendezvous.KindRooms:
		var r rendezvous.RoomEvent
		err = json.Unmarshal(data, &r)
		ev.Type, ev.Room, ev.Member, ev.Joined, ev.Deleted = api.EventRoomsChanged, r.Room, r.Member, &r.Joined, r.Deleted
		ev.Change, ev.By, ev.Role = r.Change, r.By, r.Role
		if err == nil && r.Membership() {
			a.tubes.OnRoomEvent(r.Room, r.Member, r.Joined, r.Deleted, r.Change == rendezvous.RoomRemoved)
		}
	case rendezvous.KindMessage:
		var m rendezvous.Message
		err = json.Unmarshal(data, &m)
		if err == nil && (a.tubeMessage(kind, m) || a.serviceMessage(m)) {
			return
		}
		if err == nil {
			body, serr := a.tubes.OpenSigned(m.From, m.Room, m.Kind, m.Body)
			if serr != nil {
				a.log.Warn("dropped a message", "from", m.From, "room", m.Room, "kind", m.Kind, "err", serr)
				return
			}
			m.Body = body
		}
		ev.Type, ev.From, ev.Room, ev.Kind, ev.Body = api.EventMessageReceived, m.From, m.Room, m.Kind, m.Body
	default:
		return
	}
	if err != nil {
		a.log.Warn("malformed delivery from relay", "kind", kind, "err", err)
		return
	}
	a.d.bus.Publish(ev)
}

// addInterest and removeInterest apply a client's interest changes to the
// network subscriptions when the total for a token starts or stops.
func (a *account) addInterest(client string, tokens []string) {
	for _, tok := range a.interests.Add(client, tokens) {
		a.watch(tok, true)
	}
}

func (a *account) removeInterest(client string, tokens []string) {
	for _, tok := range a.interests.Remove(client, tokens) {
		a.watch(tok, false)
	}
}

func (a *account) dropClient(client string) {
	for _, tok := range a.interests.DropClient(client) {
		a.watch(tok, false)
	}
}

func (a *account) watch(tok string, on bool) {
	if interestKinds[tok] == "" {
		return // kept by the daemon, not a network subscription
	}
	c, err := a.conn()
	if err != nil {
		return // applied when connected
	}
	if err := c.Watch(interestKinds[tok], on); err != nil {
		a.log.Warn("subscription change", "token", tok, "on", on, "err", err)
	}
}
