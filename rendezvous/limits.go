package rendezvous

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/tubes-dev/tubes/internal/limit"
	"github.com/tubes-dev/tubes/tperr"
)

// Limits (service side): what one account, one source address or
// everyone together can make the account service do. A request over a
// limit is answered at once with an error that says which; it never
// waits for room.

// Limits bounds the account service. Zero fields take the defaults.
type Limits struct {
	InFlight        int     // requests one account may have in flight
	Rate            float64 // requests per second one account may make, sustained (twice that in a burst)
	Messages        float64 // messages per second one account may send, sustained (twice that in a burst)
	Rooms           int     // rooms one account may own
	ContactRequests int     // contact requests one account may have waiting for an answer
	Invitations     int     // room invitations one account may have waiting for an answer
	// RegisterPerSource is how many accounts one source address (IPv4,
	// IPv6 /64) may register per hour; RegisterPerMinute how many all
	// sources together may register per minute.
	RegisterPerSource int
	RegisterPerMinute int
}

// Defaults of Limits (README's limits table).
const (
	DefaultInFlight          = 16
	DefaultRate              = 50
	DefaultMessages          = 20
	DefaultRooms             = 64
	DefaultContactRequests   = 64
	DefaultInvitations       = 256
	DefaultRegisterPerSource = 20
	DefaultRegisterPerMinute = 60
)

// MaxLoginsInFlight bounds the logins (auth callouts) checked at once. They
// have capacity of their own: no request can take it.
const MaxLoginsInFlight = 64

func (l Limits) withDefaults() Limits {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	deff := func(v *float64, d float64) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&l.InFlight, DefaultInFlight)
	deff(&l.Rate, DefaultRate)
	deff(&l.Messages, DefaultMessages)
	def(&l.Rooms, DefaultRooms)
	def(&l.ContactRequests, DefaultContactRequests)
	def(&l.Invitations, DefaultInvitations)
	def(&l.RegisterPerSource, DefaultRegisterPerSource)
	def(&l.RegisterPerMinute, DefaultRegisterPerMinute)
	return l
}

// burst is a token bucket's depth for a sustained rate: two seconds' worth.
func burst(r float64) int { return max(1, int(2*r)) }

// accountLimits keeps each account's requests in flight and its token
// buckets. An account's entry goes once it is idle with full buckets, so
// the map holds the accounts active lately, not every account.
type accountLimits struct {
	lim    Limits
	mu     sync.Mutex
	m      map[string]*accountUse
	banned map[string]time.Time // accounts shut out, until when
}

type accountUse struct {
	inFlight int
	requests *rate.Limiter
	messages *rate.Limiter
	// refused counts the refusals since since: an account that goes on
	// sending at a rate the refusals say to stop is shut out.
	refused int
	since   time.Time
}

// An account refused more than maxRefusals times in a refusalWindow is
// not slowing down as told (a client of ours waits and retries, well
// under it): its connections are closed and its logins refused for
// banTime. The ban ends by itself.
const (
	maxRefusals   = 5000
	refusalWindow = time.Minute
	banTime       = time.Minute
)

func newAccountLimits(l Limits) *accountLimits {
	return &accountLimits{lim: l, m: map[string]*accountUse{}, banned: map[string]time.Time{}}
}

// refusal counts one refused request of u (a.mu held), and reports
// whether the account has now earned a ban.
func (a *accountLimits) refusal(me string, u *accountUse, now time.Time) bool {
	if now.Sub(u.since) > refusalWindow {
		u.refused, u.since = 0, now
	}
	u.refused++
	if u.refused <= maxRefusals {
		return false
	}
	if until, ok := a.banned[me]; ok && now.Before(until) {
		return false // banned already: its connection is being closed
	}
	u.refused = 0
	a.banned[me] = now.Add(banTime)
	return true
}

// isBanned reports whether account me is shut out now.
func (a *accountLimits) isBanned(me string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	until, ok := a.banned[me]
	if ok && time.Now().After(until) {
		delete(a.banned, me)
		return false
	}
	return ok
}

// begin admits one request of account me for op, or says which limit
// refuses it (its metric label, and the error) and whether the account
// has earned a ban by it. done ends an admitted request.
func (a *accountLimits) begin(me, op string) (done func(), limit string, ban bool, err error) {
	done, limit, err = a.take(me, op)
	if err != nil {
		a.mu.Lock()
		if u := a.m[me]; u != nil {
			ban = a.refusal(me, u, time.Now())
		}
		a.mu.Unlock()
	}
	return done, limit, ban, err
}

func (a *accountLimits) take(me, op string) (done func(), limit string, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	u := a.m[me]
	if u == nil {
		u = &accountUse{
			requests: rate.NewLimiter(rate.Limit(a.lim.Rate), burst(a.lim.Rate)),
			messages: rate.NewLimiter(rate.Limit(a.lim.Messages), burst(a.lim.Messages)),
		}
		a.m[me] = u
	}
	switch {
	case u.inFlight >= a.lim.InFlight:
		return nil, "in_flight", tperr.New(tperr.ServiceBusy, "%s has %d requests in flight, the most this relay allows; wait for their answers", me, a.lim.InFlight)
	case !u.requests.Allow():
		return nil, "rate", tperr.New(tperr.ServiceBusy, "%s is making more than %g requests a second, the most this relay allows; slow down", me, a.lim.Rate)
	case op == opSend && !u.messages.Allow():
		return nil, "messages", tperr.New(tperr.ServiceBusy, "%s is sending more than %g messages a second, the most this relay allows; slow down", me, a.lim.Messages)
	}
	u.inFlight++
	return func() {
		a.mu.Lock()
		defer a.mu.Unlock()
		u.inFlight--
		now := time.Now()
		if u.inFlight == 0 && u.requests.TokensAt(now) >= float64(u.requests.Burst()) && u.messages.TokensAt(now) >= float64(u.messages.Burst()) {
			delete(a.m, me)
		}
	}, "", nil
}

// tracked is how many accounts have an entry, and their requests in
// flight.
func (a *accountLimits) tracked() (accounts, inFlight int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, u := range a.m {
		inFlight += u.inFlight
	}
	return len(a.m), inFlight
}

// registrations limits new accounts per source address and in all, and
// guest logins (which registrations need) per source address. Sources are
// what the auth callout saw for each guest connection, remembered here
// for as long as such a connection may take to register.
type registrations struct {
	perSource int
	mu        sync.Mutex
	global    *rate.Limiter
	sources   map[netip.Prefix]*sourceUse
	guests    map[string]guestSource // guest nkey → where it connected from
}

type sourceUse struct {
	registrations *rate.Limiter // per hour
	logins        *rate.Limiter // guest logins, per minute
}

type guestSource struct {
	src  netip.Prefix
	seen time.Time
}

// guestMemory is how long the source of a guest connection is kept for
// its registrations; maxGuests bounds how many are kept (the oldest go
// first) and maxSources how many sources' buckets.
const (
	guestMemory = 2 * time.Minute
	maxGuests   = 16384
	maxSources  = 16384
)

// GuestLoginsPerSource is how many guest logins (registering, or asking
// why a login was refused) one source address may make per minute.
const GuestLoginsPerSource = 60

func newRegistrations(l Limits) *registrations {
	return &registrations{
		perSource: l.RegisterPerSource,
		global:    rate.NewLimiter(rate.Limit(float64(l.RegisterPerMinute)/60), l.RegisterPerMinute),
		sources:   map[netip.Prefix]*sourceUse{},
		guests:    map[string]guestSource{},
	}
}

// sourceOf is the prefix a per-source limit keys on (limit.Source); the
// zero prefix when host is not an address.
func sourceOf(host string) netip.Prefix {
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Prefix{}
	}
	return limit.Source(ip)
}

// source returns src's buckets (r.mu held), forgetting sources whose
// buckets are full again when there are too many.
func (r *registrations) source(src netip.Prefix, now time.Time) *sourceUse {
	u := r.sources[src]
	if u != nil {
		return u
	}
	if len(r.sources) >= maxSources {
		for p, u := range r.sources {
			if u.registrations.TokensAt(now) >= float64(u.registrations.Burst()) && u.logins.TokensAt(now) >= float64(u.logins.Burst()) {
				delete(r.sources, p)
			}
		}
	}
	u = &sourceUse{
		registrations: rate.NewLimiter(rate.Limit(float64(r.perSource)/3600), r.perSource),
		logins:        rate.NewLimiter(rate.Limit(float64(GuestLoginsPerSource)/60), GuestLoginsPerSource),
	}
	r.sources[src] = u
	return u
}

// guest admits the guest login of nkey from host and remembers where it
// came from, or says why it is refused: its source is logging in as a
// guest faster than GuestLoginsPerSource.
func (r *registrations) guest(nkey, host string) error {
	now := time.Now()
	src := sourceOf(host)
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.source(src, now).logins.AllowN(now, 1) {
		return fmt.Errorf("more than %d guest logins a minute from %s", GuestLoginsPerSource, host)
	}
	if _, known := r.guests[nkey]; !known && len(r.guests) >= maxGuests {
		oldest, at := "", now
		for k, g := range r.guests {
			if now.Sub(g.seen) > guestMemory {
				delete(r.guests, k)
			} else if g.seen.Before(at) {
				oldest, at = k, g.seen
			}
		}
		if len(r.guests) >= maxGuests {
			delete(r.guests, oldest)
		}
	}
	r.guests[nkey] = guestSource{src: src, seen: now}
	return nil
}

// take admits a registration by guest nkey, or says which limit refuses
// it (its metric label, and the error). A guest whose source is not
// known here (in a cluster, another relay answered its login) counts
// against the limit of all sources only.
func (r *registrations) take(nkey string) (string, error) {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	var lim *rate.Limiter
	if g, ok := r.guests[nkey]; ok {
		lim = r.source(g.src, now).registrations
	}
	if lim != nil && lim.TokensAt(now) < 1 {
		return "register_per_source", tperr.New(tperr.ServiceBusy, "%d accounts were registered from your address in the last hour, the most this relay allows; try again later", r.perSource)
	}
	if !r.global.AllowN(now, 1) {
		return "register_per_minute", tperr.New(tperr.ServiceBusy, "this relay is registering accounts as fast as it allows; try again in a minute")
	}
	if lim != nil {
		lim.AllowN(now, 1)
	}
	return "", nil
}

// slot is a request's hold on the service's shared handler capacity; a
// handler that waits on something outside (another server) lets go of it
// while it waits.
type slot struct{ sema chan struct{} }

type slotKey struct{}

// waitOutside runs wait, which waits on something other than this
// service, without holding a handler slot.
func waitOutside(ctx context.Context, wait func()) {
	sl, _ := ctx.Value(slotKey{}).(*slot)
	if sl == nil {
		wait()
		return
	}
	<-sl.sema
	defer func() { sl.sema <- struct{}{} }()
	wait()
}
