package daemon

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/internal/atomicfile"
	"github.com/tubes-dev/tubes/registry"
	"github.com/tubes-dev/tubes/rendezvous"
	"github.com/tubes-dev/tubes/tperr"
	"github.com/tubes-dev/tubes/tube"
)

// Publication and discovery of services. A publisher sends the
// descriptor of a service it publishes to the contact or room
// (svc.published) and withdraws it (svc.withdrawn); a browser asks a
// contact or a room's members what they publish to it (svc.browse) and
// each answers with its catalog (svc.catalog). Descriptors received are
// validated like registered ones; only what is published to the asker
// (or to the room it asks in) is ever sent.
const (
	kindPublished = "svc.published"
	kindWithdrawn = "svc.withdrawn"
	kindBrowse    = "svc.browse"
	kindCatalog   = "svc.catalog"

	maxCatalog    = 256      // services one publisher shows us
	maxSources    = 4096     // publishers (contact, or room member) remembered per account
	maxRemote     = 4096     // published services remembered per account, all publishers
	maxPublished  = 16 << 10 // bytes of one published service's message
	maxAnswering  = 4        // catalogs being answered at once, all contacts
	browseTimeout = 5 * time.Second
	roomWait      = 2 * time.Second
)

type publishedMsg struct {
	Service *registry.Descriptor `json:"service"`
}

type withdrawnMsg struct {
	Service string `json:"service"`
}

type browseMsg struct {
	ID string `json:"id"`
}

type catalogMsg struct {
	ID       string                 `json:"id"`
	Services []*registry.Descriptor `json:"services"`
	// Defaults: interface (lower case) → "service version", the
	// publisher's defaults among what it shows.
	Defaults map[string]string `json:"defaults,omitempty"`
}

// catalogAnswer is one member's answer to a browse.
type catalogAnswer struct {
	from, room string
	services   []*registry.Descriptor
	defaults   map[string]string
}

// pubState is the daemon's publications, per account, and what contacts
// published to it (in memory: a browse asks afresh).
type pubState struct {
	mu      sync.Mutex
	file    string
	pubs    map[string][]api.Publication                          // account → publications
	remote  map[string]map[string]map[string]*registry.Descriptor // account → source → service → descriptor
	browses map[string]chan catalogAnswer
	// answering holds a token per catalog being made and sent (at most
	// maxAnswering: each costs a registry walk and a message).
	answering      chan struct{}
	browsesDropped atomic.Int64

	qmu      sync.Mutex
	queue    []registry.Event // registry changes for registryChanged
	draining bool             // a goroutine takes them
	// changeMu orders publishing, unpublishing and taking in a registry
	// change: each sees the others whole. Taken before mu.
	changeMu sync.Mutex
}

func (d *Daemon) openPublications() error {
	p := &pubState{file: filepath.Join(d.cfg.StateDir, "publications.json"), pubs: map[string][]api.Publication{},
		remote: map[string]map[string]map[string]*registry.Descriptor{}, browses: map[string]chan catalogAnswer{},
		answering: make(chan struct{}, maxAnswering)}
	b, err := os.ReadFile(p.file)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return err
	default:
		if err := json.Unmarshal(b, &p.pubs); err != nil {
			return tperr.New(tperr.InvalidArgument, "%s is corrupt: %v", p.file, err)
		}
	}
	d.pubs = p
	return nil
}

// savePubs writes the publications; callers hold pubs.mu.
func (p *pubState) save() error {
	b, err := json.MarshalIndent(p.pubs, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(p.file, append(b, '\n'), 0o600)
}

// registryChanged updates the publications of a service the registry
// added or removed: events are taken in the order they came, one at a
// time, so that a withdrawal never overtakes the publication before it.
func (d *Daemon) registryChanged(e registry.Event) {
	p := d.pubs
	p.qmu.Lock()
	p.queue = append(p.queue, e)
	start := !p.draining
	p.draining = true
	p.qmu.Unlock()
	if !start {
		return
	}
	go func() {
		for {
			p.qmu.Lock()
			if len(p.queue) == 0 {
				p.draining = false
				p.qmu.Unlock()
				return
			}
			e := p.queue[0]
			p.queue = p.queue[1:]
			p.qmu.Unlock()
			p.changeMu.Lock()
			switch e.Type {
			case registry.ServiceRemoved:
				d.withdrawRemoved(e)
			case registry.ServiceAdded:
				d.republish(e.Service)
			}
			p.changeMu.Unlock()
		}
	}()
}

func isServiceKind(kind string) bool { return strings.HasPrefix(kind, "svc.") }

// locations finds a registered service (user scope, then system): the
// descriptor of each location it is registered at, in the order they
// were registered.
func (d *Daemon) locations(name string) []*registry.Descriptor {
	ds, _, _ := d.services.Service(name, registry.UserScope)
	return ds
}

// Publish makes a registered service visible to a contact or a room.
func (d *Daemon) Publish(ctx context.Context, name string, p api.Publication) (api.Publication, error) {
	if (p.To == "") == (p.Room == "") {
		return p, tperr.New(tperr.InvalidArgument, "a service is published to a contact (to) or a room (room), exactly one")
	}
	if err := normalizeNames(&p.To, &p.Room); err != nil {
		return p, err
	}
	a, _, err := d.live(name)
	if err != nil {
		return p, err
	}
	// From the lookup to the record, no registry change is taken in: a
	// removal meanwhile then withdraws this publication too.
	d.pubs.changeMu.Lock()
	defer d.pubs.changeMu.Unlock()
	locs := d.locations(p.Service)
	if len(locs) == 0 {
		return p, tperr.New(tperr.NotFound, "there is no registered service %s (tube services list)", p.Service)
	}
	_, pin := d.served(p.Service)
	p.Service, p.Pin = locs[0].Name, pin
	body, err := d.publishedBody(locs)
	if err != nil {
		return p, err
	}
	if _, err := a.tubes.SendSigned(ctx, p.To, p.Room, kindPublished, body); err != nil {
		return p, err
	}
	runHook(&afterPublishSent)
	d.pubs.mu.Lock()
	defer d.pubs.mu.Unlock()
	old := d.pubs.pubs[a.name]
	if !slices.Contains(d.pubs.pubs[a.name], p) {
		// Published anew, to the same contact or room, it is this
		// service's publication now.
		d.pubs.pubs[a.name] = slices.DeleteFunc(slices.Clone(d.pubs.pubs[a.name]), func(q api.Publication) bool {
			return strings.EqualFold(q.Service, p.Service) && q.To == p.To && q.Room == p.Room
		})
		d.pubs.pubs[a.name] = append(d.pubs.pubs[a.name], p)
		if err := d.pubs.save(); err != nil {
			d.pubs.pubs[a.name] = old
			return p, err
		}
	}
	d.log.Info("service published", "account", a.name, "service", p.Service, "to", p.To, "room", p.Room)
	p.Pin = ""
	return p, nil
}

// afterPublishSent, set by tests, runs between a publication's sending
// and its record; beforeCatalog before a catalog is made.
var afterPublishSent, beforeCatalog atomic.Pointer[func()]

// runHook runs the test hook h holds, if any.
func runHook(h *atomic.Pointer[func()]) {
	if f := h.Load(); f != nil {
		(*f)()
	}
}

// Unpublish withdraws a publication.
func (d *Daemon) Unpublish(ctx context.Context, name string, p api.Publication) error {
	if err := normalizeNames(&p.To, &p.Room); err != nil {
		return err
	}
	a, err := d.account(name)
	if err != nil {
		return err
	}
	d.pubs.changeMu.Lock()
	defer d.pubs.changeMu.Unlock()
	d.pubs.mu.Lock()
	list := d.pubs.pubs[a.name]
	i := slices.IndexFunc(list, func(q api.Publication) bool {
		return strings.EqualFold(q.Service, p.Service) && q.To == p.To && q.Room == p.Room
	})
	if i < 0 {
		d.pubs.mu.Unlock()
		return tperr.New(tperr.NotFound, "%s does not publish %s there (tube services publications)", a.name, p.Service)
	}
	q := list[i]
	d.pubs.pubs[a.name] = slices.DeleteFunc(slices.Clone(list), func(q api.Publication) bool {
		return strings.EqualFold(q.Service, p.Service) && q.To == p.To && q.Room == p.Room
	})
	err = d.pubs.save()
	if err != nil {
		d.pubs.pubs[a.name] = list
	}
	d.pubs.mu.Unlock()
	if err != nil {
		return err
	}
	d.sendWithdrawn(ctx, a, q)
	return nil
}

// publishedBody is the svc.published message of a service: its public
// form, which those it is published to must be able to take, in it and
// in a catalog with our defaults.
func (d *Daemon) publishedBody(locs []*registry.Descriptor) ([]byte, error) {
	sh := show(locs, d.defaultRules())
	if err := sh.check(); err != nil {
		return nil, err
	}
	body, _ := json.Marshal(publishedMsg{Service: sh.desc})
	return body, nil
}

// republish sends the publications of service again, as it is now: a
// location added to it adds its implementations to what contacts see.
func (d *Daemon) republish(service string) {
	locs, pin := d.served(service)
	if len(locs) == 0 {
		return
	}
	body, err := d.publishedBody(locs)
	d.eachPublication(d.prunePublications(service), d.sendWithdrawn)
	d.pubs.mu.Lock()
	todo, shadowed := map[string][]api.Publication{}, map[string][]api.Publication{}
	for acct, list := range d.pubs.pubs {
		for _, p := range list {
			switch {
			case !strings.EqualFold(p.Service, service):
			case applies(p, pin):
				todo[acct] = append(todo[acct], p)
			default:
				shadowed[acct] = append(shadowed[acct], p)
			}
		}
	}
	d.pubs.mu.Unlock()
	// Publications of the name's other location (the system's, behind a
	// user's of the name) show nothing while it is hidden.
	d.eachPublication(shadowed, d.sendWithdrawn)
	if err != nil {
		// What contacts have of it would go on showing what is no longer
		// so, and catalogs leave it out: withdrawn from them while it is
		// too large (its publications stay, and say so in the log).
		if len(todo) > 0 {
			d.log.Warn("a published service withdrawn", "service", service, "err", err)
			d.eachPublication(todo, d.sendWithdrawn)
		}
		return
	}
	d.eachPublication(todo, func(ctx context.Context, a *account, p api.Publication) {
		_, err := a.conn()
		if err == nil {
			_, err = a.tubes.SendSigned(ctx, p.To, p.Room, kindPublished, body)
		}
		if err != nil {
			a.log.Info("updated publication not delivered", "service", p.Service, "to", p.To, "room", p.Room, "err", err)
		}
	})
}

// served is the service name as lookups see it, with its pin (the
// fingerprint publications of it carry): none when nothing is registered
// under the name.
func (d *Daemon) served(name string) ([]*registry.Descriptor, string) {
	locs, scope, _ := d.services.Service(name, registry.UserScope)
	if len(locs) == 0 {
		return nil, ""
	}
	return locs, registry.Fingerprint(locs[0], scope)
}

// applies says whether publication p is of the service pinned pin (the
// name's, as lookups see it): the one it was published as.
func applies(p api.Publication, pin string) bool { return pin != "" && p.Pin == pin }

// prunePublications drops the publications of service (every one: "")
// that no registered service is theirs any more: their pin is neither
// scope's registration of the name (a service registered under it since
// is not published by them). At start it also drops what no publication
// can be (neither a contact nor a room, or both; repeats), and one from
// before pins takes the name's as it is now. While the system scope's
// file cannot be read, nothing is dropped for want of its services. What
// is dropped is logged, the file saved, and returned (by account), for
// the caller to tell.
func (d *Daemon) prunePublications(service string) map[string][]api.Publication {
	pins := map[string][]string{} // folded name → each scope's registration
	lookup := func(name string) []string {
		key := registry.FoldName(name)
		if f, ok := pins[key]; ok {
			return f
		}
		var f []string
		for _, scope := range []registry.Scope{registry.UserScope, registry.SystemScope} {
			if ds, s, _ := d.services.Service(name, scope); len(ds) > 0 && s == scope {
				f = append(f, registry.Fingerprint(ds[0], s))
			}
		}
		pins[key] = f
		return f
	}
	systemKnown := d.services.SystemKnown()
	d.pubs.mu.Lock()
	defer d.pubs.mu.Unlock()
	changed := false
	dropped := map[string][]api.Publication{}
	for acct, list := range d.pubs.pubs {
		keep := list[:0:0]
		for _, p := range list {
			if service != "" && !strings.EqualFold(p.Service, service) {
				keep = append(keep, p)
				continue
			}
			f := lookup(p.Service)
			if p.Pin == "" && len(f) > 0 {
				p.Pin, changed = f[0], true
			}
			why := ""
			switch {
			case (p.To == "") == (p.Room == ""):
				why = "it names neither a contact nor a room, or both"
			case slices.ContainsFunc(keep, func(q api.Publication) bool {
				return strings.EqualFold(q.Service, p.Service) && q.To == p.To && q.Room == p.Room
			}):
				why = "it repeats another"
			case !slices.Contains(f, p.Pin) && systemKnown:
				why = "its service is no longer registered"
			}
			if why != "" {
				d.log.Info("a publication dropped", "why", why, "account", acct, "service", p.Service, "to", p.To, "room", p.Room)
				changed = true
				dropped[acct] = append(dropped[acct], p)
				continue
			}
			keep = append(keep, p)
		}
		d.pubs.pubs[acct] = keep
	}
	if changed {
		if err := d.pubs.save(); err != nil {
			d.log.Error("publications not saved", "err", err)
		}
	}
	return dropped
}

// eachPublication calls send for each of pubs (account → publications),
// with the account, each account's sends bounded together in time.
func (d *Daemon) eachPublication(pubs map[string][]api.Publication, send func(context.Context, *account, api.Publication)) {
	for acct, ps := range pubs {
		a, err := d.account(acct)
		if err != nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		for _, p := range ps {
			send(ctx, a, p)
		}
		cancel()
	}
}

func (d *Daemon) sendWithdrawn(ctx context.Context, a *account, p api.Publication) {
	_, err := a.conn()
	if err == nil {
		body, _ := json.Marshal(withdrawnMsg{Service: p.Service})
		_, err = a.tubes.SendSigned(ctx, p.To, p.Room, kindWithdrawn, body)
	}
	if err != nil {
		a.log.Info("withdrawal not delivered", "service", p.Service, "to", p.To, "room", p.Room, "err", err)
	}
}

// withdrawRemoved withdraws the publications of a service that left the
// registry (e), whatever the registry holds now: a service registered
// under the name since is not published by them. When the other scope
// registers the name too, only the removed one's publications go (a
// publication of the other's shows it again).
func (d *Daemon) withdrawRemoved(e registry.Event) {
	service := e.Service
	if e.Remains {
		d.republish(service)
		return
	}
	d.pubs.mu.Lock()
	gone := map[string][]api.Publication{}
	for acct, list := range d.pubs.pubs {
		keep := list[:0:0]
		for _, p := range list {
			if strings.EqualFold(p.Service, service) {
				gone[acct] = append(gone[acct], p)
			} else {
				keep = append(keep, p)
			}
		}
		d.pubs.pubs[acct] = keep
	}
	var saveErr error
	if len(gone) > 0 {
		saveErr = d.pubs.save()
	}
	d.pubs.mu.Unlock()
	if saveErr != nil {
		// The service has left the registry, so its publications are
		// withdrawn all the same; the file keeps them until the next save.
		d.log.Error("publications of a removed service not saved", "service", service, "err", saveErr)
	}
	d.eachPublication(gone, d.sendWithdrawn)
}

// Publications lists an account's publications.
func (d *Daemon) Publications(name string) ([]api.Publication, error) {
	a, err := d.account(name)
	if err != nil {
		return nil, err
	}
	d.pubs.mu.Lock()
	defer d.pubs.mu.Unlock()
	out := append([]api.Publication{}, d.pubs.pubs[a.name]...)
	for i := range out {
		out[i].Pin = "" // the daemon's own
	}
	return out, nil
}

// Browse asks a contact, or a room's members, what they publish to us,
// and returns what f selects.
func (d *Daemon) Browse(ctx context.Context, name string, req api.BrowseRequest) ([]api.RemoteImplementation, error) {
	if req.Contact == "" && req.Room == "" {
		return nil, tperr.New(tperr.InvalidArgument, "browse a contact, a room, or a member of a room (both)")
	}
	if err := normalizeNames(&req.Contact, &req.Room); err != nil {
		return nil, err
	}
	if _, err := registry.Select(req.Filter, nil, registry.RemoteScope); err != nil {
		return nil, serviceErr(err)
	}
	a, _, err := d.live(name)
	if err != nil {
		return nil, err
	}
	id := browseID()
	ch := make(chan catalogAnswer, 64)
	d.pubs.mu.Lock()
	d.pubs.browses[id] = ch
	d.pubs.mu.Unlock()
	defer func() {
		d.pubs.mu.Lock()
		delete(d.pubs.browses, id)
		d.pubs.mu.Unlock()
	}()
	body, _ := json.Marshal(browseMsg{ID: id})
	got, err := a.tubes.SendSigned(ctx, req.Contact, req.Room, kindBrowse, body)
	if err != nil {
		return nil, err
	}
	wait := browseTimeout
	if req.Room != "" {
		wait = roomWait
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	var answers []catalogAnswer
	answered := map[string]bool{}
collect:
	for len(answers) < len(got) {
		select {
		case ans := <-ch:
			if slices.Contains(got, ans.from) && ans.room == req.Room && !answered[ans.from] {
				answered[ans.from] = true
				answers = append(answers, ans)
			}
		case <-timer.C:
			break collect
		case <-ctx.Done():
			return nil, tperr.New(tperr.Cancelled, "browse cancelled")
		}
	}
	if req.Contact != "" && len(answers) == 0 {
		return nil, tperr.New(tperr.NetworkError, "%s did not answer within %s (is it online?)", req.Contact, wait)
	}
	out := []api.RemoteImplementation{}
	slices.SortFunc(answers, func(x, y catalogAnswer) int { return strings.Compare(x.from, y.from) })
	for _, ans := range answers {
		d.setRemote(a.name, source(ans.from, ans.room), ans.services)
		impls, _ := registry.Select(req.Filter, ans.services, registry.RemoteScope)
		for _, impl := range impls {
			def := strings.EqualFold(ans.defaults[strings.ToLower(impl.Interface)], impl.Service+" "+impl.Version.String())
			out = append(out, api.RemoteImplementation{Implementation: impl, Publisher: ans.from, Room: ans.room, Default: def})
		}
	}
	return out, nil
}

func source(from, room string) string {
	if room == "" {
		return "contact:" + from
	}
	return "room:" + room + "/" + from
}

func browseID() string {
	b := make([]byte, 12)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// setRemote replaces what a source publishes to an account.
func (d *Daemon) setRemote(acct, src string, ds []*registry.Descriptor) {
	d.pubs.mu.Lock()
	defer d.pubs.mu.Unlock()
	if d.pubs.remote[acct] == nil {
		d.pubs.remote[acct] = map[string]map[string]*registry.Descriptor{}
	}
	m := map[string]*registry.Descriptor{}
	for _, s := range ds {
		m[strings.ToLower(s.Name)] = s
	}
	d.pubs.remote[acct][src] = m
}

// serviceMessage handles svc.* deliveries; it reports whether it took m.
func (a *account) serviceMessage(m rendezvous.Message) bool {
	if !isServiceKind(m.Kind) {
		return false
	}
	body, err := a.tubes.OpenSigned(m.From, m.Room, m.Kind, m.Body)
	if err != nil {
		a.log.Warn("dropped a service message", "from", m.From, "room", m.Room, "kind", m.Kind, "err", err)
		return true
	}
	m.Body = body
	if err := a.d.onServiceMessage(a, m); err != nil {
		a.log.Warn("ignored a service message", "from", m.From, "room", m.Room, "kind", m.Kind, "err", err)
	}
	return true
}

func (d *Daemon) onServiceMessage(a *account, m rendezvous.Message) error {
	switch m.Kind {
	case kindPublished:
		var p publishedMsg
		if len(m.Body) > maxPublished {
			return fmt.Errorf("a published service of %d bytes (at most %d)", len(m.Body), maxPublished)
		}
		if err := json.Unmarshal(m.Body, &p); err != nil {
			return err
		}
		if err := registry.ValidatePublished(p.Service); err != nil {
			return err
		}
		d.pubs.mu.Lock()
		if d.pubs.remote[a.name] == nil {
			d.pubs.remote[a.name] = map[string]map[string]*registry.Descriptor{}
		}
		src := source(m.From, m.Room)
		cat := d.pubs.remote[a.name][src]
		if cat == nil {
			if len(d.pubs.remote[a.name]) >= maxSources {
				d.pubs.mu.Unlock()
				return errors.New("too many publishers remembered")
			}
			cat = map[string]*registry.Descriptor{}
			d.pubs.remote[a.name][src] = cat
		}
		key := strings.ToLower(p.Service.Name)
		if _, known := cat[key]; !known && len(cat) >= maxCatalog {
			d.pubs.mu.Unlock()
			return errors.New("a publisher's catalog is full")
		}
		if _, known := cat[key]; !known {
			total := 0
			for _, c := range d.pubs.remote[a.name] {
				total += len(c)
			}
			if total >= maxRemote {
				d.pubs.mu.Unlock()
				return errors.New("too many published services remembered")
			}
		}
		cat[key] = p.Service
		d.pubs.mu.Unlock()
		if a.interests.Wanted(api.InterestServices) {
			d.bus.Publish(api.Event{Type: api.EventServiceAdded, Account: a.name, Service: p.Service.Name,
				Contact: m.From, Room: m.Room, Scope: string(registry.RemoteScope)})
		}
	case kindWithdrawn:
		var w withdrawnMsg
		if err := json.Unmarshal(m.Body, &w); err != nil || w.Service == "" || len(w.Service) > 255 {
			return errors.New("malformed withdrawal")
		}
		d.pubs.mu.Lock()
		delete(d.pubs.remote[a.name][source(m.From, m.Room)], strings.ToLower(w.Service))
		d.pubs.mu.Unlock()
		if a.interests.Wanted(api.InterestServices) {
			d.bus.Publish(api.Event{Type: api.EventServiceRemoved, Account: a.name, Service: w.Service,
				Contact: m.From, Room: m.Room, Scope: string(registry.RemoteScope)})
		}
	case kindBrowse:
		var b browseMsg
		if err := json.Unmarshal(m.Body, &b); err != nil || b.ID == "" || len(b.ID) > 64 {
			return errors.New("malformed browse request")
		}
		select {
		case d.pubs.answering <- struct{}{}:
		default:
			d.pubs.browsesDropped.Add(1)
			return fmt.Errorf("%d catalogs are being answered already: this browse is dropped", maxAnswering)
		}
		go func() {
			defer func() { <-d.pubs.answering }()
			runHook(&beforeCatalog)
			d.answerBrowse(a, m.From, m.Room, b.ID)
		}()
	case kindCatalog:
		var c catalogMsg
		if err := json.Unmarshal(m.Body, &c); err != nil || len(c.Services) > maxCatalog {
			return errors.New("malformed catalog")
		}
		for _, s := range c.Services {
			if err := registry.ValidatePublished(s); err != nil {
				return err
			}
		}
		d.pubs.mu.Lock()
		ch := d.pubs.browses[c.ID]
		d.pubs.mu.Unlock()
		if ch == nil {
			return errors.New("a catalog nobody asked for")
		}
		select {
		case ch <- catalogAnswer{from: m.From, room: m.Room, services: c.Services, defaults: c.Defaults}:
		default:
		}
	default:
		return errors.New("unknown kind")
	}
	return nil
}

// answerBrowse sends from what we publish to it: our publications to it
// as a contact, or to the room it asks in.
func (d *Daemon) answerBrowse(a *account, from, room, id string) {
	d.pubs.mu.Lock()
	var pubs []api.Publication
	for _, p := range d.pubs.pubs[a.name] {
		if (room == "" && p.To == from) || (room != "" && p.Room == room) {
			pubs = append(pubs, p)
		}
	}
	d.pubs.mu.Unlock()
	// Each service looked up once: what is checked is what is shown.
	var services [][]*registry.Descriptor
	for _, p := range pubs {
		locs, pin := d.served(p.Service)
		if applies(p, pin) && !slices.ContainsFunc(services, func(l []*registry.Descriptor) bool {
			return strings.EqualFold(l[0].Name, locs[0].Name)
		}) {
			services = append(services, locs)
		}
	}
	body := d.catalog(id, services)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := a.conn()
	if err == nil {
		_, err = a.tubes.SendSigned(ctx, from, room, kindCatalog, body)
	}
	if err != nil {
		a.log.Info("catalog not delivered", "to", from, "room", room, "err", err)
	}
}

// catalog is the svc.catalog message answering browse id with
// services (each a name's locations): each as publicForm makes it, with our defaults among
// its interfaces, as many as one message carries. The rest are left out
// and logged: a service too large to publish, or one that would make the
// message too large (those after it may still fit).
func (d *Daemon) catalog(id string, services [][]*registry.Descriptor) []byte {
	rules := d.defaultRules()
	msg := catalogMsg{ID: id, Services: []*registry.Descriptor{}, Defaults: map[string]string{}}
	empty, _ := json.Marshal(msg)
	total := len(empty)
	for _, locs := range services {
		if len(msg.Services) == maxCatalog {
			break
		}
		n := locs[0].Name
		sh := show(locs, rules)
		if err := sh.check(); err != nil {
			d.log.Warn("a service left out of a catalog", "service", n, "err", err)
			continue
		}
		if total+sh.size > tube.MaxMessageBody {
			d.log.Warn("a service left out of a catalog", "service", n,
				"err", fmt.Sprintf("with it the catalog would be %d bytes, at most %d", total+sh.size, tube.MaxMessageBody))
			continue
		}
		total += sh.size
		msg.Services = append(msg.Services, sh.desc)
		maps.Copy(msg.Defaults, sh.defaults)
	}
	body, _ := json.Marshal(msg)
	return body
}

// shown is a service as a catalog carries it: its public form and our
// defaults among its interfaces (interface, lower case → "NAME M.m").
type shown struct {
	desc     *registry.Descriptor
	defaults map[string]string
	size     int // bytes it adds to a catalog, at most
}

// defaultRules are the defaults lookups in the user scope follow, by
// interface (lower case): the user's rule, else the system's.
func (d *Daemon) defaultRules() map[string]registry.Implementation {
	rules, _ := d.services.Defaults(registry.UserScope)
	out := map[string]registry.Implementation{}
	for _, r := range rules {
		key := strings.ToLower(r.Interface)
		if _, ok := out[key]; !ok {
			out[key] = r.Implementation
		}
	}
	return out
}

// show makes the catalog entry of the service registered at locs.
func show(locs []*registry.Descriptor, rules map[string]registry.Implementation) shown {
	sh := shown{desc: publicForm(locs), defaults: map[string]string{}}
	b, _ := json.Marshal(sh.desc)
	sh.size = len(b) + 1 // and a comma
	for _, in := range sh.desc.Interfaces {
		key := strings.ToLower(in.Name)
		impl, ok := rules[key]
		if _, done := sh.defaults[key]; done || !ok || !strings.EqualFold(impl.Service, sh.desc.Name) {
			continue
		}
		v := sh.desc.Name + " " + impl.Version.String()
		sh.defaults[key] = v
		k, _ := json.Marshal(key)
		w, _ := json.Marshal(v)
		sh.size += len(k) + len(w) + 2 // a colon and a comma
	}
	return sh
}

// check refuses a service larger than one publication carries.
func (sh shown) check() error {
	if sh.size > maxPublished {
		return tperr.New(tperr.InvalidArgument, "service %s is too large to publish: %d bytes of descriptor and defaults, at most %d",
			sh.desc.Name, sh.size, maxPublished)
	}
	return nil
}

// publishedExport is the export that serves a service account publishes,
// when its descriptor's ipcaddress is a TCP HOST:PORT or a Unix socket
// path, or it has a <filepath> (a service started on demand). Of a
// service registered at several locations it serves the one that
// implements impl ("INTERFACE@M.m"), or, with no impl, the first
// registered that it can reach.
func (d *Daemon) publishedExport(account, service, impl, from string) (api.Export, bool) {
	var e api.Export
	locs, pin := d.served(service)
	d.pubs.mu.Lock()
	for _, p := range d.pubs.pubs[account] {
		if !strings.EqualFold(p.Service, service) || !applies(p, pin) {
			continue
		}
		if p.To != "" {
			e.Allow = append(e.Allow, p.To)
		} else {
			e.AllowRooms = append(e.AllowRooms, p.Room)
		}
	}
	d.pubs.mu.Unlock()
	if len(e.Allow)+len(e.AllowRooms) == 0 {
		return api.Export{}, false
	}
	if err := show(locs, d.defaultRules()).check(); err != nil {
		// Withdrawn from those it is published to (republish).
		d.log.Info("a tube refused: the service is withdrawn", "service", service, "err", err)
		return api.Export{}, false
	}
	// The location implementing impl; with none named, the first that a
	// tube reaches and whose capabilities the contact holds.
	var desc *registry.Descriptor
	var missing []string
	for _, l := range locs {
		if impl != "" && !implements(l, impl) || impl == "" && !reachable(l) {
			continue
		}
		if m := d.missingCaps(account, from, l); len(m) > 0 {
			if missing == nil {
				missing = m
			}
			continue
		}
		desc = l
		break
	}
	if desc == nil {
		if missing != nil {
			d.log.Info("a contact lacks the capabilities a service requires", "account", account, "contact", from,
				"service", service, "implementation", impl, "missing", missing)
		}
		return api.Export{}, false
	}
	e.Service = desc.Name
	if ap, err := netip.ParseAddrPort(desc.IPCAddress); err == nil {
		e.TCP = ap.String()
	} else if strings.HasPrefix(desc.IPCAddress, "/") {
		e.Unix = desc.IPCAddress
	} else if desc.FilePath != "" {
		// Tubes reach it through its unit (connectActivated); the socket
		// names it for the export.
		a, err := d.activated(desc, onDemandUnit(d.onDemandLocations(service), desc))
		if err != nil {
			d.log.Warn("on-demand service unavailable", "service", desc.Name, "err", err)
			return api.Export{}, false
		}
		e.Unix, e.Unit = a.socket, a.serial
	} else {
		return api.Export{}, false
	}
	return e, true
}

// reachable says whether a tube can reach desc's location: a TCP
// HOST:PORT or Unix socket path, or an executable started on demand.
func reachable(desc *registry.Descriptor) bool {
	_, err := netip.ParseAddrPort(desc.IPCAddress)
	return err == nil || strings.HasPrefix(desc.IPCAddress, "/") || desc.FilePath != ""
}

// implements says whether desc provides impl, "INTERFACE@M.m".
func implements(desc *registry.Descriptor, impl string) bool {
	iface, v, _ := strings.Cut(impl, "@")
	ver, err := registry.ParseVersion(v)
	if err != nil {
		return false
	}
	return slices.ContainsFunc(desc.Interfaces, func(in registry.Interface) bool {
		return strings.EqualFold(in.Name, iface) && in.Version == ver
	})
}

// resolveOpen turns "INTERFACE@M.m" (or an interface name) in a
// reverse-tube request into the service the contact publishes that
// implements it: the contact's default implementation if the filter
// selects it, else the highest version the filter selects (ties to the
// first service name). A plain name that no interface matches is taken
// as a service name.
func (d *Daemon) resolveOpen(ctx context.Context, name string, req *api.OpenRequest) error {
	iface, version, hasVersion := strings.Cut(req.Service, "@")
	if !hasVersion && !strings.Contains(iface, ".") {
		return nil
	}
	impls, err := d.Browse(ctx, name, api.BrowseRequest{Contact: req.Contact, Room: req.Room, Filter: api.ServiceFilter{Interface: iface, Version: version}})
	if err != nil {
		if hasVersion {
			return err
		}
		return nil
	}
	if len(impls) == 0 {
		if hasVersion {
			return tperr.New(tperr.NotFound, "%s publishes no service implementing %s %s or later", req.Contact, iface, version)
		}
		return nil
	}
	// The publisher's default when the filter selects it, else the
	// highest version.
	best := impls[0]
	for _, i := range impls[1:] {
		if (i.Default && !best.Default) || (i.Default == best.Default && best.Version.Less(i.Version)) {
			best = i
		}
	}
	d.log.Info("interface resolved", "contact", req.Contact, "interface", iface, "version", version, "service", best.Service, "implementation", best.Version.String())
	req.Service = best.Service
	if req.Implementation == "" {
		req.Implementation = best.Interface + "@" + best.Version.String()
	}
	return nil
}

// normalizeNames puts a contact and a room name (either may be empty) in
// the form the rendezvous uses (trimmed, lower case), so that what a user
// types matches what messages carry.
func normalizeNames(contact, room *string) error {
	for _, n := range []struct {
		kind string
		p    *string
	}{{"contact", contact}, {"room", room}} {
		if *n.p == "" {
			continue
		}
		v, err := rendezvous.NormalizeName(n.kind, *n.p)
		if err != nil {
			return err
		}
		*n.p = v
	}
	return nil
}

// publicForm is a service, registered at the locations locs, as those it
// is published to see it: one descriptor with every location's
// interfaces, no location, and none of the custom properties that
// configure this machine.
func publicForm(locs []*registry.Descriptor) *registry.Descriptor {
	p := registry.PublishedService(locs)
	for i, in := range p.Interfaces {
		if in.Properties == nil {
			continue
		}
		props := maps.Clone(in.Properties)
		for _, k := range localProperties {
			delete(props, k)
		}
		if len(props) == 0 {
			props = nil
		}
		p.Interfaces[i].Properties = props
	}
	return p
}
