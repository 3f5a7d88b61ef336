package rendezvous

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The durable state of the rendezvous lives in one JetStream key-value
// bucket, so several relays sharing a NATS cluster share it too:
//
//	acct.<name>          accountRecord
//	invite.<name>        inviteRecord   (closed registration)
//	pair.<a>.<b>         pairRecord     (a < b: one record per pair of accounts)
//	room.<room>              roomRecord
//	member.<room>.<name>     memberRecord
//	invitation.<room>.<name> invitationRecord (name is invited to room)
//
// Each relay keeps a view of the whole bucket in memory, fed by a watch, so
// authentication, roster and membership checks cost no round trip. Writes
// go to the bucket (with compare-and-set where two relays could race) and
// then wait until the view has caught up with their revision, so a client
// reads its own writes.
const bucketName = "tubes"

type accountRecord struct {
	Name    string    `json:"name"`
	Key     string    `json:"key"`
	Created time.Time `json:"created"`
}

type inviteRecord struct {
	Name    string    `json:"name"`
	Hash    []byte    `json:"hash"` // SHA-256 of the token; the token itself is never stored
	Created time.Time `json:"created"`
}

type pairRecord struct {
	A, B   string `json:"-"`
	AWants bool   `json:"a_wants"` // A asked for or approved B
	BWants bool   `json:"b_wants"`
}

// roomRecord is a room. A room written before rooms had Open is
// invite-only, keeping its owner and members.
type roomRecord struct {
	Name    string    `json:"name"`
	Owner   string    `json:"owner"`
	Created time.Time `json:"created"`
	Open    bool      `json:"open,omitempty"`
	// ID tells this room from an earlier one of the same name: member and
	// invitation records count only for the room whose ID they carry, so
	// a record left over from a deleted room (a join that raced the
	// deletion, a deletion that stopped half-way) grants nothing in a
	// room created later under the name.
	ID string `json:"id,omitempty"`
	// OwnerKey is the owner's account key: an account registered later
	// under the owner's name (after the operator removed the first) owns
	// nothing.
	OwnerKey string `json:"owner_key,omitempty"`
}

type memberRecord struct {
	Joined time.Time `json:"joined"`
	Admin  bool      `json:"admin,omitempty"`
	Room   string    `json:"room,omitempty"` // the roomRecord.ID joined
	Key    string    `json:"key,omitempty"`  // the member's account key: a later account of the name is not a member
}

type invitationRecord struct {
	By      string    `json:"by"`
	Created time.Time `json:"created"`
	Room    string    `json:"room,omitempty"` // the roomRecord.ID invited to
	Key     string    `json:"key,omitempty"`  // the invitee's account key when invited
}

func pairKey(a, b string) (key string, first, second string) {
	if b < a {
		a, b = b, a
	}
	return "pair." + a + "." + b, a, b
}

// state reports the relation seen from me.
func (p pairRecord) state(me string) ContactState {
	mine, theirs := p.AWants, p.BWants
	if me == p.B {
		mine, theirs = theirs, mine
	}
	switch {
	case mine && theirs:
		return ContactMutual
	case mine:
		return ContactRequested
	case theirs:
		return ContactPending
	}
	return ContactNone
}

func (p *pairRecord) set(me string, wants bool) {
	if me == p.A {
		p.AWants = wants
	} else {
		p.BWants = wants
	}
}

func (p pairRecord) other(me string) string {
	if me == p.A {
		return p.B
	}
	return p.A
}

// view is the in-memory copy of the bucket.
type view struct {
	mu        sync.Mutex // guards the fields below
	cond      *sync.Cond // broadcast when rev advances
	rev       uint64     // last revision applied
	accounts  map[string]accountRecord
	invites   map[string]inviteRecord
	pairs     map[string]pairRecord      // by pair key
	contacts  map[string]map[string]bool // account → other accounts with a pair record
	rooms     map[string]roomRecord
	members   map[string]map[string]memberRecord     // room → member records (of this room or an earlier one)
	roomsOf   map[string]map[string]bool             // account → rooms it has a member record in
	invited   map[string]map[string]invitationRecord // room → invitees
	invitesOf map[string]map[string]bool             // account → rooms it is invited to
}

func newView() *view {
	v := &view{
		accounts:  map[string]accountRecord{},
		invites:   map[string]inviteRecord{},
		pairs:     map[string]pairRecord{},
		contacts:  map[string]map[string]bool{},
		rooms:     map[string]roomRecord{},
		members:   map[string]map[string]memberRecord{},
		roomsOf:   map[string]map[string]bool{},
		invited:   map[string]map[string]invitationRecord{},
		invitesOf: map[string]map[string]bool{},
	}
	v.cond = sync.NewCond(&v.mu)
	return v
}

func addTo(m map[string]map[string]bool, k, v string) {
	s := m[k]
	if s == nil {
		s = map[string]bool{}
		m[k] = s
	}
	s[v] = true
}

func delFrom(m map[string]map[string]bool, k, v string) {
	if s := m[k]; s != nil {
		delete(s, v)
		if len(s) == 0 {
			delete(m, k)
		}
	}
}

// apply updates the view with one entry of the watch. Malformed values
// (which only a buggy or hostile writer with service credentials could
// store) are treated as deletions and reported.
func (v *view) apply(key string, value []byte, deleted bool, rev uint64) error {
	v.mu.Lock()
	defer func() {
		if rev > v.rev {
			v.rev = rev
		}
		v.cond.Broadcast()
		v.mu.Unlock()
	}()
	parts := strings.Split(key, ".")
	var err error
	switch {
	case parts[0] == "acct" && len(parts) == 2:
		var r accountRecord
		if !deleted {
			err = json.Unmarshal(value, &r)
		}
		if deleted || err != nil {
			delete(v.accounts, parts[1])
		} else {
			v.accounts[parts[1]] = r
		}
	case parts[0] == "invite" && len(parts) == 2:
		var r inviteRecord
		if !deleted {
			err = json.Unmarshal(value, &r)
		}
		if deleted || err != nil {
			delete(v.invites, parts[1])
		} else {
			v.invites[parts[1]] = r
		}
	case parts[0] == "pair" && len(parts) == 3:
		a, b := parts[1], parts[2]
		var r pairRecord
		if !deleted {
			err = json.Unmarshal(value, &r)
		}
		if deleted || err != nil || (!r.AWants && !r.BWants) {
			delete(v.pairs, key)
			delFrom(v.contacts, a, b)
			delFrom(v.contacts, b, a)
		} else {
			r.A, r.B = a, b
			v.pairs[key] = r
			addTo(v.contacts, a, b)
			addTo(v.contacts, b, a)
		}
	case parts[0] == "room" && len(parts) == 2:
		var r roomRecord
		if !deleted {
			err = json.Unmarshal(value, &r)
		}
		if deleted || err != nil {
			delete(v.rooms, parts[1])
		} else {
			v.rooms[parts[1]] = r
		}
	case parts[0] == "member" && len(parts) == 3:
		room, name := parts[1], parts[2]
		var r memberRecord
		if !deleted && len(value) > 0 {
			err = json.Unmarshal(value, &r)
		}
		if deleted || err != nil {
			if m := v.members[room]; m != nil {
				delete(m, name)
				if len(m) == 0 {
					delete(v.members, room)
				}
			}
			delFrom(v.roomsOf, name, room)
		} else {
			if v.members[room] == nil {
				v.members[room] = map[string]memberRecord{}
			}
			v.members[room][name] = r
			addTo(v.roomsOf, name, room)
		}
	case parts[0] == "invitation" && len(parts) == 3:
		room, name := parts[1], parts[2]
		var r invitationRecord
		if !deleted {
			err = json.Unmarshal(value, &r)
		}
		if deleted || err != nil {
			if m := v.invited[room]; m != nil {
				delete(m, name)
				if len(m) == 0 {
					delete(v.invited, room)
				}
			}
			delFrom(v.invitesOf, name, room)
		} else {
			if v.invited[room] == nil {
				v.invited[room] = map[string]invitationRecord{}
			}
			v.invited[room][name] = r
			addTo(v.invitesOf, name, room)
		}
	}
	if err != nil {
		return fmt.Errorf("rendezvous: bad record %s: %w", key, err)
	}
	return nil
}

// waitRev blocks until the view has applied revision rev, or ctx ends.
func (v *view) waitRev(ctx context.Context, rev uint64) error {
	stop := context.AfterFunc(ctx, func() {
		v.mu.Lock()
		v.cond.Broadcast()
		v.mu.Unlock()
	})
	defer stop()
	v.mu.Lock()
	defer v.mu.Unlock()
	for v.rev < rev {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("rendezvous: waiting for state: %w", err)
		}
		v.cond.Wait()
	}
	return nil
}

func (v *view) account(name string) (accountRecord, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	r, ok := v.accounts[name]
	return r, ok
}

func (v *view) invite(name string) (inviteRecord, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	r, ok := v.invites[name]
	return r, ok
}

func (v *view) pair(a, b string) pairRecord {
	key, first, second := pairKey(a, b)
	v.mu.Lock()
	defer v.mu.Unlock()
	r, ok := v.pairs[key]
	if !ok {
		return pairRecord{A: first, B: second}
	}
	return r
}

// contactsOf returns every pair record involving name.
func (v *view) contactsOf(name string) []pairRecord {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := make([]pairRecord, 0, len(v.contacts[name]))
	for other := range v.contacts[name] {
		key, _, _ := pairKey(name, other)
		out = append(out, v.pairs[key])
	}
	return out
}

func (v *view) room(name string) (roomRecord, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	r, ok := v.rooms[name]
	return r, ok
}

// memberLocked returns name's member record in an existing room, if it
// is one of this room's (not of an earlier room of the name). Callers
// hold v.mu.
func (v *view) memberLocked(room, name string) (memberRecord, bool) {
	r, ok := v.rooms[room]
	if !ok {
		return memberRecord{}, false
	}
	m, ok := v.members[room][name]
	return m, ok && m.Room == r.ID && v.sameAccountLocked(name, m.Key)
}

// sameAccountLocked reports whether name's account still has key (a
// record written before keys were kept, key "", counts). Callers hold
// v.mu.
func (v *view) sameAccountLocked(name, key string) bool {
	if key == "" {
		return true
	}
	a, ok := v.accounts[name]
	return ok && a.Key == key
}

// ownerLocked reports whether name owns the existing room r.
func (v *view) ownerLocked(r roomRecord, name string) bool {
	return r.Owner == name && v.sameAccountLocked(name, r.OwnerKey)
}

// isMember reports whether name belongs to an existing room. The owner is
// always a member, even if the write of its member record was lost.
func (v *view) isMember(room, name string) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	r, ok := v.rooms[room]
	if !ok {
		return false
	}
	_, member := v.memberLocked(room, name)
	return v.ownerLocked(r, name) || member
}

// role returns name's role in an existing room, or "" if it is not a
// member.
func (v *view) role(room, name string) string {
	v.mu.Lock()
	defer v.mu.Unlock()
	r, ok := v.rooms[room]
	m, member := v.memberLocked(room, name)
	switch {
	case !ok:
		return ""
	case v.ownerLocked(r, name):
		return RoleOwner
	case member && m.Admin:
		return RoleAdmin
	case member:
		return RoleMember
	}
	return ""
}

// joined returns when name joined the room (its member record's time),
// or the zero time.
func (v *view) joined(room, name string) time.Time {
	v.mu.Lock()
	defer v.mu.Unlock()
	m, _ := v.memberLocked(room, name)
	return m.Joined
}

// invitation returns name's invitation to an existing room.
func (v *view) invitation(room, name string) (invitationRecord, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	rr, ok := v.rooms[room]
	if !ok {
		return invitationRecord{}, false
	}
	r, ok := v.invited[room][name]
	return r, ok && v.invitationValidLocked(rr, name, r)
}

// invitationsOf returns name's invitations to existing rooms, by room.
func (v *view) invitationsOf(name string) []Invitation {
	v.mu.Lock()
	defer v.mu.Unlock()
	var out []Invitation
	for room := range v.invitesOf[name] {
		rr, ok := v.rooms[room]
		r := v.invited[room][name]
		if !ok || !v.invitationValidLocked(rr, name, r) {
			continue
		}
		out = append(out, Invitation{Room: room, By: r.By, Created: r.Created})
	}
	slices.SortFunc(out, func(a, b Invitation) int { return strings.Compare(a.Room, b.Room) })
	return out
}

// inviteesOf returns those invited to a room, sorted.
func (v *view) inviteesOf(room string) []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := make([]string, 0, len(v.invited[room]))
	for n := range v.invited[room] {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// invitationValidLocked reports whether inv, name's invitation to the
// existing room rr, counts: of this room, for this account, and made by
// someone who may still invite (the owner or an admin).
func (v *view) invitationValidLocked(rr roomRecord, name string, inv invitationRecord) bool {
	if inv.Room != rr.ID || !v.sameAccountLocked(name, inv.Key) {
		return false
	}
	if v.ownerLocked(rr, inv.By) {
		return true
	}
	m, ok := v.memberLocked(rr.Name, inv.By)
	return ok && m.Admin
}

// hasInvitationRecord reports whether an invitation record of name to
// room is stored, valid or not.
func (v *view) hasInvitationRecord(room, name string) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	_, ok := v.invited[room][name]
	return ok
}

// invitationsBy returns the invitations name made, as room → invitees.
func (v *view) invitationsBy(name string) map[string][]string {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := map[string][]string{}
	for room, m := range v.invited {
		for invitee, r := range m {
			if r.By == name {
				out[room] = append(out[room], invitee)
			}
		}
	}
	return out
}

// memberNames returns the members of an existing room, sorted.
func (v *view) memberNames(room string) []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.memberNamesLocked(room)
}

func (v *view) memberNamesLocked(room string) []string {
	r, ok := v.rooms[room]
	if !ok {
		return nil
	}
	set := map[string]bool{}
	if v.ownerLocked(r, r.Owner) {
		set[r.Owner] = true
	}
	for m := range v.members[room] {
		if _, ok := v.memberLocked(room, m); ok {
			set[m] = true
		}
	}
	out := make([]string, 0, len(set))
	for m := range set {
		out = append(out, m)
	}
	slices.Sort(out)
	return out
}

// roomsOf returns the existing rooms name belongs to, sorted.
func (v *view) roomsOfAccount(name string) []roomRecord {
	v.mu.Lock()
	defer v.mu.Unlock()
	set := map[string]bool{}
	for room := range v.roomsOf[name] {
		if _, ok := v.memberLocked(room, name); ok {
			set[room] = true
		}
	}
	for _, r := range v.rooms {
		if v.ownerLocked(r, name) {
			set[r.Name] = true
		}
	}
	var out []roomRecord
	for room := range set {
		if r, ok := v.rooms[room]; ok {
			out = append(out, r)
		}
	}
	slices.SortFunc(out, func(a, b roomRecord) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// accountWithKey returns the name of the account registered with key.
func (v *view) accountWithKey(key string) (string, bool) {
	for _, a := range v.accountNames() {
		if a.Key == key {
			return a.Name, true
		}
	}
	return "", false
}

// ownedBy counts the existing rooms name owns.
func (v *view) ownedBy(name string) int {
	v.mu.Lock()
	defer v.mu.Unlock()
	n := 0
	for _, r := range v.rooms {
		if v.ownerLocked(r, name) {
			n++
		}
	}
	return n
}

// requestsBy counts name's contact requests still unanswered.
func (v *view) requestsBy(name string) int {
	n := 0
	for _, p := range v.contactsOf(name) {
		if p.state(name) == ContactRequested {
			n++
		}
	}
	return n
}

// peersOf returns every account that should hear about name's presence:
// mutual contacts and fellow members of its rooms.
func (v *view) peersOf(name string) []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	set := map[string]bool{}
	for other := range v.contacts[name] {
		key, _, _ := pairKey(name, other)
		if v.pairs[key].state(name) == ContactMutual {
			set[other] = true
		}
	}
	for room := range v.roomsOf[name] {
		if _, ok := v.memberLocked(room, name); ok {
			for _, m := range v.memberNamesLocked(room) {
				set[m] = true
			}
		}
	}
	delete(set, name)
	out := make([]string, 0, len(set))
	for m := range set {
		out = append(out, m)
	}
	slices.Sort(out)
	return out
}

func (v *view) accountNames() []accountRecord {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := make([]accountRecord, 0, len(v.accounts))
	for _, r := range v.accounts {
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b accountRecord) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func (v *view) inviteNames() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := make([]string, 0, len(v.invites))
	for n := range v.invites {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// store writes to the bucket and keeps the view.
type store struct {
	js     jetstream.JetStream
	kv     jetstream.KeyValue
	view   *view
	report func(error) // watch problems
}

// purgeDeletes drops the markers that deleted keys leave (a room, pair
// or invitation created and removed), older than age: without it the
// bucket grows with every name ever used, however little it holds.
func (s *store) purgeDeletes(ctx context.Context, age time.Duration) error {
	return s.kv.PurgeDeletes(ctx, jetstream.DeleteMarkersOlderThan(age))
}

// bytes is the bucket's size on the stream.
func (s *store) bytes(ctx context.Context) (uint64, error) {
	st, err := s.kv.Status(ctx)
	if err != nil {
		return 0, err
	}
	return st.Bytes(), nil
}

// errConflict is returned when a compare-and-set lost a race; callers retry.
var errConflict = errors.New("rendezvous: concurrent update")

func openStore(ctx context.Context, nc *nats.Conn, storage jetstream.StorageType, replicas int, report func(error)) (*store, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("rendezvous: jetstream: %w", err)
	}
	if replicas < 1 {
		replicas = 1
	}
	// A cluster's JetStream may still be electing its leader when a relay
	// starts: keep trying until ctx ends.
	var kv jetstream.KeyValue
	for wait := 100 * time.Millisecond; ; wait = min(wait*2, 2*time.Second) {
		kv, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      bucketName,
			Description: "Tubes accounts, contacts and rooms",
			History:     1,
			Storage:     storage,
			Replicas:    replicas,
		})
		if err == nil {
			break
		}
		if report != nil {
			report(fmt.Errorf("rendezvous: state bucket not ready, retrying: %w", err))
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("rendezvous: open state bucket %q: %w", bucketName, err)
		case <-time.After(wait):
		}
	}
	s := &store{js: js, kv: kv, view: newView(), report: report}
	return s, nil
}

// run feeds the view until ctx ends. ready is closed once the initial
// contents are loaded.
func (s *store) run(ctx context.Context, ready chan<- struct{}) error {
	w, err := s.kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("rendezvous: watch state: %w", err)
	}
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("rendezvous: state watch ended")
			}
			if e == nil {
				if ready != nil {
					close(ready)
					ready = nil
				}
				continue
			}
			deleted := e.Operation() != jetstream.KeyValuePut
			if err := s.view.apply(e.Key(), e.Value(), deleted, e.Revision()); err != nil && s.report != nil {
				s.report(err)
			}
		}
	}
}

func (s *store) put(ctx context.Context, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	rev, err := s.kv.Put(ctx, key, b)
	if err != nil {
		return fmt.Errorf("rendezvous: write %s: %w", key, err)
	}
	return s.view.waitRev(ctx, rev)
}

// create writes key only if it does not exist; errConflict otherwise.
func (s *store) create(ctx context.Context, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	rev, err := s.kv.Create(ctx, key, b)
	if errors.Is(err, jetstream.ErrKeyExists) {
		return errConflict
	}
	if err != nil {
		return fmt.Errorf("rendezvous: write %s: %w", key, err)
	}
	return s.view.waitRev(ctx, rev)
}

// update writes key if its revision is still last (0: it must not exist).
func (s *store) update(ctx context.Context, key string, v any, last uint64) error {
	if last == 0 {
		return s.create(ctx, key, v)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	rev, err := s.kv.Update(ctx, key, b, last)
	if err != nil {
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence {
			return errConflict
		}
		return fmt.Errorf("rendezvous: write %s: %w", key, err)
	}
	return s.view.waitRev(ctx, rev)
}

// revision returns the current revision of key (0 if absent), read from
// the bucket itself so compare-and-set sees other relays' writes.
func (s *store) revision(ctx context.Context, key string) (uint64, []byte, error) {
	e, err := s.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return 0, nil, nil
	}
	if err != nil {
		return 0, nil, fmt.Errorf("rendezvous: read %s: %w", key, err)
	}
	return e.Revision(), e.Value(), nil
}

// delete removes key and waits for the view to see it. It publishes the
// KV delete marker itself (ADR-8 layout: $KV.<bucket>.<key>, header
// KV-Operation: DEL) because jetstream.KeyValue.Delete does not return the
// revision it wrote.
func (s *store) delete(ctx context.Context, key string) error {
	msg := nats.NewMsg("$KV." + bucketName + "." + key)
	msg.Header.Set("KV-Operation", "DEL")
	ack, err := s.js.PublishMsg(ctx, msg)
	if err != nil {
		return fmt.Errorf("rendezvous: delete %s: %w", key, err)
	}
	return s.view.waitRev(ctx, ack.Sequence)
}

// deleteIf removes key if its revision is still last; errConflict if
// another write came first. Two requests racing to take the same record
// (a join and the invitation's withdrawal) are so told apart: one wins.
func (s *store) deleteIf(ctx context.Context, key string, last uint64) error {
	msg := nats.NewMsg("$KV." + bucketName + "." + key)
	msg.Header.Set("KV-Operation", "DEL")
	msg.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(last, 10))
	ack, err := s.js.PublishMsg(ctx, msg)
	if err != nil {
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence {
			return errConflict
		}
		return fmt.Errorf("rendezvous: delete %s: %w", key, err)
	}
	return s.view.waitRev(ctx, ack.Sequence)
}

// modifyPair applies f to the pair record of a and b with compare-and-set,
// retrying when another relay wrote in between.
func (s *store) modifyPair(ctx context.Context, a, b string, f func(*pairRecord) error) (pairRecord, error) {
	key, first, second := pairKey(a, b)
	for range 8 {
		rev, raw, err := s.revision(ctx, key)
		if err != nil {
			return pairRecord{}, err
		}
		p := pairRecord{A: first, B: second}
		if raw != nil {
			if err := json.Unmarshal(raw, &p); err != nil {
				return pairRecord{}, fmt.Errorf("rendezvous: bad record %s: %w", key, err)
			}
			p.A, p.B = first, second
		}
		if err := f(&p); err != nil {
			return pairRecord{}, err
		}
		if !p.AWants && !p.BWants {
			if rev == 0 {
				return p, nil
			}
			return p, s.delete(ctx, key)
		}
		switch err := s.update(ctx, key, p, rev); {
		case errors.Is(err, errConflict):
			continue
		case err != nil:
			return pairRecord{}, err
		}
		return p, nil
	}
	return pairRecord{}, errConflict
}

func hashToken(token string) []byte {
	sum := sha256.Sum256([]byte(token))
	return sum[:]
}

func (r inviteRecord) matches(token string) bool {
	return token != "" && subtle.ConstantTimeCompare(r.Hash, hashToken(token)) == 1
}
