package rendezvous_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tubes-dev/tubes/connection"
	"github.com/tubes-dev/tubes/identity"
	"github.com/tubes-dev/tubes/rendezvous"
	"github.com/tubes-dev/tubes/tperr"
)

func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("TUBE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func startRelay(t *testing.T, cfg rendezvous.Config) *rendezvous.Server {
	t.Helper()
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	cfg.Logger = testLogger(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := rendezvous.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("start relay: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// inbox collects deliveries of one client.
type inbox struct {
	mu   sync.Mutex
	msgs map[string][][]byte
	ch   chan struct{}
}

func newInbox() *inbox { return &inbox{msgs: map[string][][]byte{}, ch: make(chan struct{}, 1024)} }

func (in *inbox) on(kind string, data []byte) {
	in.mu.Lock()
	in.msgs[kind] = append(in.msgs[kind], append([]byte(nil), data...))
	in.mu.Unlock()
	select {
	case in.ch <- struct{}{}:
	default:
	}
}

// wait returns the first delivery of kind that satisfies match.
func (in *inbox) wait(t *testing.T, kind string, match func([]byte) bool) []byte {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		in.mu.Lock()
		for _, m := range in.msgs[kind] {
			if match(m) {
				in.mu.Unlock()
				return m
			}
		}
		in.mu.Unlock()
		select {
		case <-in.ch:
		case <-deadline:
			t.Fatalf("no %s delivery matched", kind)
		}
	}
}

type account struct {
	name string
	key  *identity.Key
	c    *rendezvous.Client
	in   *inbox
}

func newKey(t *testing.T) *identity.Key {
	k, err := identity.Generate()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func dialCfg(s *rendezvous.Server, name string, key *identity.Key, in *inbox) rendezvous.DialConfig {
	cfg := rendezvous.DialConfig{Server: s.URL(), Account: name, Key: key}
	if in != nil {
		cfg.OnMessage = in.on
	}
	return cfg
}

func register(t *testing.T, s *rendezvous.Server, name string) *account {
	t.Helper()
	ctx := context.Background()
	a := &account{name: name, key: newKey(t), in: newInbox()}
	if err := rendezvous.Register(ctx, dialCfg(s, name, a.key, nil), ""); err != nil {
		t.Fatalf("register %s: %v", name, err)
	}
	c, err := rendezvous.Dial(ctx, dialCfg(s, name, a.key, a.in))
	if err != nil {
		t.Fatalf("dial %s: %v", name, err)
	}
	t.Cleanup(c.Close)
	if _, err := c.Hello(ctx); err != nil {
		t.Fatalf("hello %s: %v", name, err)
	}
	a.c = c
	for _, k := range []string{rendezvous.KindPresence, rendezvous.KindContacts, rendezvous.KindRooms} {
		if err := c.Watch(k, true); err != nil {
			t.Fatal(err)
		}
	}
	return a
}

func befriend(t *testing.T, a, b *account) {
	t.Helper()
	ctx := context.Background()
	if _, err := a.c.ContactRequest(ctx, b.name); err != nil {
		t.Fatal(err)
	}
	c, err := b.c.ContactApprove(ctx, a.name)
	if err != nil {
		t.Fatal(err)
	}
	if c.State != rendezvous.ContactMutual {
		t.Fatalf("after approve: state %s", c.State)
	}
}

func TestRegisterContactsRoomsAndSend(t *testing.T) {
	s := startRelay(t, rendezvous.Config{})
	ctx := context.Background()
	alice := register(t, s, "alice")
	bob := register(t, s, "bob")
	carol := register(t, s, "carol")

	h, err := alice.c.Hello(ctx)
	if err != nil || h.Account != "alice" || h.Key != alice.key.Public().String() {
		t.Fatalf("hello = %+v, %v", h, err)
	}

	// Not contacts yet: sending is refused.
	if _, err := alice.c.Send(ctx, "bob", "", "test", []byte("x")); !tperr.Has(err, tperr.PermissionDenied) {
		t.Fatalf("send to non-contact: %v", err)
	}
	c, err := alice.c.ContactRequest(ctx, "bob")
	if err != nil || c.State != rendezvous.ContactRequested {
		t.Fatalf("request: %+v %v", c, err)
	}
	bob.in.wait(t, rendezvous.KindContacts, func(b []byte) bool {
		var e rendezvous.ContactEvent
		json.Unmarshal(b, &e)
		return e.Name == "alice" && e.State == rendezvous.ContactPending
	})
	// A request alone does not allow sending.
	if _, err := alice.c.Send(ctx, "bob", "", "test", nil); !tperr.Has(err, tperr.PermissionDenied) {
		t.Fatalf("send before approval: %v", err)
	}
	if _, err := carol.c.ContactApprove(ctx, "alice"); !tperr.Has(err, tperr.NotAvailable) {
		t.Fatalf("approve without a request: %v", err)
	}
	if _, err := bob.c.ContactApprove(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	// Both now see each other online.
	alice.in.wait(t, rendezvous.KindPresence, func(b []byte) bool {
		var e rendezvous.PresenceEvent
		json.Unmarshal(b, &e)
		return e.Name == "bob" && e.Online
	})
	cs, err := alice.c.Contacts(ctx)
	if err != nil || len(cs) != 1 || cs[0] != (rendezvous.Contact{Name: "bob", State: rendezvous.ContactMutual, Online: true}) {
		t.Fatalf("contacts = %+v, %v", cs, err)
	}
	got, err := alice.c.Send(ctx, "bob", "", "hello", []byte("hi bob"))
	if err != nil || len(got) != 1 {
		t.Fatalf("send: %v %v", got, err)
	}
	raw := bob.in.wait(t, rendezvous.KindMessage, func([]byte) bool { return true })
	var m rendezvous.Message
	json.Unmarshal(raw, &m)
	if m.From != "alice" || m.Kind != "hello" || string(m.Body) != "hi bob" {
		t.Fatalf("delivered %+v", m)
	}

	// Errors on unknown names.
	if _, err := alice.c.ContactRequest(ctx, "nobody"); !tperr.Has(err, tperr.DoesNotExist) {
		t.Fatalf("request unknown: %v", err)
	}
	if _, err := alice.c.ContactRequest(ctx, "Not A Name"); !tperr.Has(err, tperr.InvalidArgument) {
		t.Fatalf("request invalid: %v", err)
	}
	if err := alice.c.ContactRemove(ctx, "carol"); !tperr.Has(err, tperr.DoesNotExist) {
		t.Fatalf("remove non-contact: %v", err)
	}

	// Rooms (an open one: anyone may join; invite-only rooms are
	// TestRoomMembershipControl's).
	if r, err := alice.c.RoomCreate(ctx, "lab", true); err != nil || !r.Open || r.Role != rendezvous.RoleOwner {
		t.Fatalf("create an open room: %+v, %v", r, err)
	}
	if _, err := bob.c.RoomCreate(ctx, "lab", false); !tperr.Has(err, tperr.NotAvailable) {
		t.Fatalf("create existing room: %v", err)
	}
	if _, err := carol.c.RoomMembers(ctx, "lab"); !tperr.Has(err, tperr.PermissionDenied) {
		t.Fatalf("members as non-member: %v", err)
	}
	if _, err := carol.c.Send(ctx, "", "lab", "x", nil); !tperr.Has(err, tperr.PermissionDenied) {
		t.Fatalf("send to room as non-member: %v", err)
	}
	if _, err := carol.c.RoomJoin(ctx, "nosuch"); !tperr.Has(err, tperr.PermissionDenied) {
		t.Fatalf("join unknown room: %v", err)
	}
	if err := carol.c.RoomLeave(ctx, "lab"); !tperr.Has(err, tperr.PermissionDenied) {
		t.Fatalf("leave without membership: %v", err)
	}
	for _, a := range []*account{bob, carol} {
		if _, err := a.c.RoomJoin(ctx, "lab"); err != nil {
			t.Fatal(err)
		}
	}
	ms, err := carol.c.RoomMembers(ctx, "lab")
	if err != nil || len(ms) != 3 || !ms[0].Owner || ms[0].Name != "alice" || !ms[2].Online {
		t.Fatalf("members = %+v, %v", ms, err)
	}
	got, err = carol.c.Send(ctx, "", "lab", "room-hello", []byte("hi all"))
	if err != nil || len(got) != 2 {
		t.Fatalf("room send reached %v, %v", got, err)
	}
	raw = alice.in.wait(t, rendezvous.KindMessage, func(b []byte) bool {
		var m rendezvous.Message
		json.Unmarshal(b, &m)
		return m.Room == "lab"
	})
	json.Unmarshal(raw, &m)
	if m.From != "carol" || string(m.Body) != "hi all" {
		t.Fatalf("room delivery %+v", m)
	}
	// The owner leaving deletes the room.
	if err := alice.c.RoomLeave(ctx, "lab"); err != nil {
		t.Fatal(err)
	}
	bob.in.wait(t, rendezvous.KindRooms, func(b []byte) bool {
		var e rendezvous.RoomEvent
		json.Unmarshal(b, &e)
		return e.Room == "lab" && e.Deleted
	})
	if rs, err := bob.c.Rooms(ctx); err != nil || len(rs) != 0 {
		t.Fatalf("rooms after deletion = %+v, %v", rs, err)
	}
}

func TestAuthenticationAndRegistrationErrors(t *testing.T) {
	s := startRelay(t, rendezvous.Config{})
	ctx := context.Background()
	alice := register(t, s, "alice")

	// Unknown account.
	_, err := rendezvous.Dial(ctx, dialCfg(s, "nobody", newKey(t), nil))
	var ce *rendezvous.ConnError
	if !errors.As(err, &ce) || ce.Reason != connection.AuthenticationFailed || ce.Name != tperr.AuthenticationFailed {
		t.Fatalf("unknown account: %#v", err)
	}
	if ce.Details["server-message"] == "" {
		t.Fatalf("no server-message in %v", ce.Details)
	}
	// Wrong key.
	_, err = rendezvous.Dial(ctx, dialCfg(s, "alice", newKey(t), nil))
	if !errors.As(err, &ce) || ce.Reason != connection.AuthenticationFailed {
		t.Fatalf("wrong key: %v", err)
	}
	// Taken name.
	err = rendezvous.Register(ctx, dialCfg(s, "alice", newKey(t), nil), "")
	if !errors.As(err, &ce) || ce.Reason != connection.NameInUse || ce.Name != tperr.RegistrationExists {
		t.Fatalf("register taken name: %v", err)
	}
	// Registering our own name again is fine.
	if err := rendezvous.Register(ctx, dialCfg(s, "alice", alice.key, nil), ""); err != nil {
		t.Fatalf("re-register: %v", err)
	}
	// Unreachable relay.
	_, err = rendezvous.Dial(ctx, rendezvous.DialConfig{Server: "127.0.0.1:1", Account: "alice", Key: alice.key})
	if !errors.As(err, &ce) || ce.Reason != connection.NetworkError || ce.Name != tperr.ConnectionRefused {
		t.Fatalf("unreachable: %v", err)
	}
}

// TestImpersonationRefused uses a raw NATS client holding alice's
// credentials to act as bob: the server itself must refuse.
func TestImpersonationRefused(t *testing.T) {
	s := startRelay(t, rendezvous.Config{})
	alice := register(t, s, "alice")
	bob := register(t, s, "bob")
	befriend(t, alice, bob)

	kp, _ := alice.key.NKey()
	pub, _ := kp.PublicKey()
	errs := make(chan error, 16)
	nc, err := nats.Connect(s.URL(), nats.UserInfo("alice", ""), nats.Nkey(pub, kp.Sign),
		nats.CustomInboxPrefix("tube.reply.alice"),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs <- err }))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()

	expectViolation := func(what string) {
		t.Helper()
		select {
		case err := <-errs:
			if !errors.Is(err, nats.ErrPermissionViolation) {
				t.Fatalf("%s: %v", what, err)
			}
		case <-time.After(3 * time.Second):
			t.Fatalf("%s: no permissions violation", what)
		}
	}
	// Publish a request as bob.
	nc.Publish("tube.svc.bob.send", []byte(`{"to":"alice","kind":"x"}`))
	nc.Flush()
	expectViolation("publish as bob")
	// Read bob's inbox.
	if _, err := nc.Subscribe("tube.inbox.bob.>", func(*nats.Msg) {}); err != nil {
		t.Fatal(err)
	}
	nc.Flush()
	expectViolation("subscribe to bob's inbox")
	// Write into bob's inbox directly, forging a message from carol.
	nc.Publish("tube.inbox.bob.msg", []byte(`{"from":"carol","kind":"x"}`))
	nc.Flush()
	expectViolation("publish into bob's inbox")
	// Wildcards that would cover bob's subjects.
	nc.Subscribe("tube.inbox.*.msg", func(*nats.Msg) {})
	nc.Flush()
	expectViolation("wildcard subscribe")
	// Ask the service to reply into bob's reply subjects: dropped.
	if err := nc.PublishRequest("tube.svc.alice.hello", "tube.reply.bob.x", nil); err != nil {
		t.Fatal(err)
	}
	nc.Flush()
	// Nothing from carol reached bob.
	time.Sleep(200 * time.Millisecond)
	bob.in.mu.Lock()
	n := len(bob.in.msgs[rendezvous.KindMessage])
	bob.in.mu.Unlock()
	if n != 0 {
		t.Fatalf("bob received %d forged messages", n)
	}
}

func TestNewestConnectionWins(t *testing.T) {
	s := startRelay(t, rendezvous.Config{})
	ctx := context.Background()
	alice := register(t, s, "alice")
	second, err := rendezvous.Dial(ctx, dialCfg(s, "alice", alice.key, nil))
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	select {
	case <-alice.c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("first connection was not replaced")
	}
	ce := alice.c.Err()
	if ce == nil || ce.Reason != connection.NameInUse || ce.Name != tperr.ConnectionReplaced {
		t.Fatalf("first connection ended with %+v", ce)
	}
	if _, err := second.Hello(ctx); err != nil {
		t.Fatalf("second connection: %v", err)
	}
}

func TestStateSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	s := startRelay(t, rendezvous.Config{DataDir: dir})
	alice := register(t, s, "alice")
	bob := register(t, s, "bob")
	befriend(t, alice, bob)
	if _, err := alice.c.RoomCreate(ctx, "lab", false); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.c.RoomInvite(ctx, "lab", "bob"); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.c.RoomJoin(ctx, "lab"); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.c.RoomAdmin(ctx, "lab", "bob", false); err != nil {
		t.Fatal(err)
	}
	alice.c.Close()
	bob.c.Close()
	s.Close()

	s2 := startRelay(t, rendezvous.Config{DataDir: dir})
	c, err := rendezvous.Dial(ctx, dialCfg(s2, "alice", alice.key, nil))
	if err != nil {
		t.Fatalf("alice after restart: %v", err)
	}
	defer c.Close()
	cs, err := c.Contacts(ctx)
	if err != nil || len(cs) != 1 || cs[0].Name != "bob" || cs[0].State != rendezvous.ContactMutual {
		t.Fatalf("contacts after restart: %+v %v", cs, err)
	}
	ms, err := c.RoomMembers(ctx, "lab")
	if err != nil || len(ms) != 2 || !ms[0].Owner || ms[1].Name != "bob" || !ms[1].Admin {
		t.Fatalf("members after restart: %+v %v; want alice the owner, bob an admin", ms, err)
	}
}

func TestClosedRegistration(t *testing.T) {
	dir := t.TempDir()
	s := startRelay(t, rendezvous.Config{DataDir: dir, Registration: rendezvous.RegistrationClosed})
	ctx := context.Background()
	var ce *rendezvous.ConnError
	err := rendezvous.Register(ctx, dialCfg(s, "dave", newKey(t), nil), "")
	if !errors.As(err, &ce) || ce.Name != tperr.PermissionDenied {
		t.Fatalf("register on closed relay: %v", err)
	}
	adm := dialAdmin(t, dir)
	code, err := adm.UserAdd(ctx, "dave", "")
	if err != nil || code == "" {
		t.Fatalf("user add: %q %v", code, err)
	}
	key := newKey(t)
	if err := rendezvous.Register(ctx, dialCfg(s, "dave", key, nil), "wrong"); !errors.As(err, &ce) || ce.Name != tperr.AuthenticationFailed {
		t.Fatalf("wrong invitation: %v", err)
	}
	if err := rendezvous.Register(ctx, dialCfg(s, "dave", key, nil), code); err != nil {
		t.Fatalf("register with invitation: %v", err)
	}
	// Pre-bound key.
	erin := newKey(t)
	if _, err := adm.UserAdd(ctx, "erin", erin.Public().String()); err != nil {
		t.Fatal(err)
	}
	c, err := rendezvous.Dial(ctx, dialCfg(s, "erin", erin, nil))
	if err != nil {
		t.Fatalf("erin: %v", err)
	}
	if _, err := c.Hello(ctx); err != nil {
		t.Fatal(err)
	}
	users, err := adm.UserList(ctx)
	if err != nil || len(users) != 2 || !users[1].Online {
		t.Fatalf("users = %+v %v", users, err)
	}
	if err := adm.UserRemove(ctx, "erin"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("removed account still connected")
	}
	if _, err := rendezvous.Dial(ctx, dialCfg(s, "erin", erin, nil)); !errors.As(err, &ce) || ce.Reason != connection.AuthenticationFailed {
		t.Fatalf("removed account login: %v", err)
	}
	if err := adm.UserRemove(ctx, "erin"); !tperr.Has(err, tperr.DoesNotExist) {
		t.Fatalf("remove twice: %v", err)
	}
}

// dialAdmin connects as the relay's operator (tube relay user …).
func dialAdmin(t *testing.T, dir string) *rendezvous.Admin {
	t.Helper()
	info, err := readAdmin(dir)
	if err != nil {
		t.Fatal(err)
	}
	adm, err := rendezvous.DialAdmin(context.Background(), info)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(adm.Close)
	return adm
}

func readAdmin(dir string) (rendezvous.AdminInfo, error) {
	var info rendezvous.AdminInfo
	b, err := os.ReadFile(rendezvous.AdminFile(dir))
	if err != nil {
		return info, err
	}
	err = json.Unmarshal(b, &info)
	return info, err
}

func TestKeysAndRoomMemberDelivery(t *testing.T) {
	s := startRelay(t, rendezvous.Config{})
	ctx := context.Background()
	alice := register(t, s, "alice")
	bob := register(t, s, "bob")
	carol := register(t, s, "carol")
	dave := register(t, s, "dave")
	befriend(t, alice, bob)
	alice.c.RoomCreate(ctx, "lab", true)
	carol.c.RoomJoin(ctx, "lab")

	keys, err := alice.c.Keys(ctx, []string{"bob", "carol", "dave", "nobody"})
	if err != nil {
		t.Fatal(err)
	}
	if keys["bob"] != bob.key.Public().String() || keys["carol"] != carol.key.Public().String() {
		t.Fatalf("keys of a contact and a room co-member: %v", keys)
	}
	if _, ok := keys["dave"]; ok {
		t.Fatal("the key of a stranger was given out")
	}
	// To one member of a shared room: allowed for members only.
	if got, err := alice.c.Send(ctx, "carol", "lab", "x", []byte("hi")); err != nil || len(got) != 1 {
		t.Fatalf("send to room member: %v %v", got, err)
	}
	raw := carol.in.wait(t, rendezvous.KindMessage, func([]byte) bool { return true })
	var m rendezvous.Message
	json.Unmarshal(raw, &m)
	if m.From != "alice" || m.Room != "lab" {
		t.Fatalf("delivered %+v", m)
	}
	if _, err := alice.c.Send(ctx, "dave", "lab", "x", nil); !tperr.Has(err, tperr.PermissionDenied) {
		t.Fatalf("send to a non-member through a room: %v", err)
	}
	if _, err := dave.c.Send(ctx, "carol", "lab", "x", nil); !tperr.Has(err, tperr.PermissionDenied) {
		t.Fatalf("non-member sending through a room: %v", err)
	}
}

// Closing a relay while requests keep arriving ends cleanly: handlers
// already started finish, later ones are dropped (run with -race, this
// checks that no handler starts while Close waits for them).
func TestCloseDuringRequests(t *testing.T) {
	for range 5 {
		s := startRelay(t, rendezvous.Config{})
		a := register(t, s, "alice")
		var wg sync.WaitGroup
		stop := make(chan struct{})
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
					a.c.Hello(ctx)
					cancel()
				}
			}()
		}
		time.Sleep(50 * time.Millisecond)
		done := make(chan struct{})
		go func() { s.Close(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Fatal("Close did not return while requests kept arriving")
		}
		close(stop)
		wg.Wait()
	}
}
