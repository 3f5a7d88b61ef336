package e2e

// The account service's limits attacked over the real relay binary: a
// hello flood against everyone's logins, and registration, room, contact
// request and message floods against their quotas.

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/identity"
	"github.com/tubes-dev/tubes/rendezvous"
	"github.com/tubes-dev/tubes/tperr"
	"github.com/tubes-dev/tubes/turnclient"
)

// startRendezvous runs `tube relay` without TURN and returns its URL and
// its metrics address.
func startRendezvous(t *testing.T, flags ...string) (url, httpAddr string) {
	t.Helper()
	httpAddr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	relay := start(t, nil, append([]string{"relay", "--turn-listen", "off", "--http", httpAddr,
		"--listen", fmt.Sprintf("127.0.0.1:%d", freePort(t))}, flags...)...)
	url = strings.TrimSpace(relay.waitLine("rendezvous: "))
	relay.waitLine("metrics: ")
	return url, httpAddr
}

type testAccount struct {
	name string
	key  *identity.Key
	c    *rendezvous.Client
}

func (a *testAccount) cfg(url, src string) rendezvous.DialConfig {
	return rendezvous.DialConfig{Server: url, Account: a.name, Key: a.key, LocalAddr: src}
}

// registerFrom registers name from source address src ("" any) and
// logs it in.
func registerFrom(t *testing.T, url, name, src string) *testAccount {
	t.Helper()
	a := &testAccount{name: name, key: newKey(t)}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := rendezvous.Register(ctx, a.cfg(url, src), ""); err != nil {
		t.Fatalf("register %s: %v", name, err)
	}
	a.loginFrom(t, url, src)
	return a
}

func (a *testAccount) login(t *testing.T, url string) { t.Helper(); a.loginFrom(t, url, "") }

// loginFrom logs a in from source address src ("" any).
func (a *testAccount) loginFrom(t *testing.T, url, src string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := rendezvous.Dial(ctx, a.cfg(url, src))
	if err != nil {
		t.Fatalf("log in %s: %v", a.name, err)
	}
	t.Cleanup(c.Close)
	if _, err := c.Hello(ctx); err != nil {
		t.Fatalf("hello %s: %v", a.name, err)
	}
	a.c = c
}

func newKey(t *testing.T) *identity.Key {
	k, err := identity.Generate()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// befriend makes a and b mutual contacts.
func befriend(t *testing.T, a, b *testAccount) {
	t.Helper()
	ctx := context.Background()
	if _, err := a.c.ContactRequest(ctx, b.name); err != nil {
		t.Fatal(err)
	}
	if _, err := b.c.ContactApprove(ctx, a.name); err != nil {
		t.Fatal(err)
	}
}

// One account floods the relay with hellos naming a NATS server that
// does not exist (each once held a handler slot for 3 s, and logins
// shared those slots): everyone else's logins all succeed meanwhile. With
// the default per-account limit the flood is refused at once beyond it;
// with that limit raised out of the way, the hellos hold no slot while
// they wait and logins have capacity of their own, so logins still all
// succeed.
func TestHelloFloodLeavesLogins(t *testing.T) {
	for _, tc := range []struct {
		name   string
		flags  []string
		refuse bool
	}{
		{"per-account limit", []string{"--register-per-source", "100"}, true},
		{"no per-account limit", []string{"--register-per-source", "100", "--account-requests-in-flight", "100000", "--account-request-rate", "100000"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url, httpAddr := startRendezvous(t, tc.flags...)
			mallory := registerFrom(t, url, "mallory", "")
			var others []*testAccount
			for i := range 10 {
				a := &testAccount{name: fmt.Sprintf("user%d", i), key: newKey(t)}
				if err := rendezvous.Register(context.Background(), a.cfg(url, ""), ""); err != nil {
					t.Fatal(err)
				}
				others = append(others, a)
			}
			nc := rawLogin(t, url, mallory)
			const flood = 300
			var wg sync.WaitGroup
			var busy atomic.Int32
			for range flood {
				wg.Go(func() {
					m, err := nc.Request("tube.svc.mallory.hello", []byte(`{"server":"NBOGUSSERVERIDTHATNEVERANSWERS","cid":7}`), 20*time.Second)
					if err == nil && strings.Contains(string(m.Data), tperr.ServiceBusy) {
						busy.Add(1)
					}
				})
			}
			// The flood is in: refused beyond the limit, or all of it
			// waiting on the server that never answers.
			if tc.refuse {
				waitMetric(t, httpAddr, `tubes_rendezvous_refused_total{limit="in_flight"}`, func(v float64) bool { return v > 0 })
			} else {
				waitMetric(t, httpAddr, "tubes_rendezvous_requests_in_flight", func(v float64) bool { return v >= 250 })
			}
			for _, a := range others {
				a.login(t, url) // fails the test if refused
			}
			wg.Wait()
			if got := busy.Load(); tc.refuse && got < flood-rendezvous.DefaultInFlight-rendezvous.DefaultRate*2 {
				t.Errorf("only %d of %d hellos over the limit were refused", got, flood)
			} else if !tc.refuse && got != 0 {
				t.Errorf("%d hellos refused with the limit raised", got)
			}
		})
	}
}

// rawLogin logs a in over plain NATS, for requests the client library
// would never make.
func rawLogin(t *testing.T, url string, a *testAccount) *nats.Conn {
	t.Helper()
	kp, err := a.key.NKey()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	nc, err := nats.Connect(url, nats.Nkey(pub, kp.Sign), nats.UserInfo(a.name, ""), nats.CustomInboxPrefix("tube.reply."+a.name), nats.NoReconnect())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// Registrations from one source address stop at its quota, while
// another address registers; rooms, contact requests and messages of one
// account stop at theirs while other accounts are served.
func TestAccountQuotas(t *testing.T) {
	url, httpAddr := startRendezvous(t, "--register-per-source", "5", "--account-rooms", "3",
		"--account-contact-requests", "4", "--account-invitations", "2", "--account-message-rate", "5")
	ctx := context.Background()

	t.Run("registrations per source", func(t *testing.T) {
		var refused error
		for i := range 8 {
			a := &testAccount{name: fmt.Sprintf("flood%d", i), key: newKey(t)}
			err := rendezvous.Register(ctx, a.cfg(url, "127.0.0.2"), "")
			if i < 5 && err != nil {
				t.Fatalf("registration %d, under the quota: %v", i, err)
			}
			if i >= 5 {
				if err == nil {
					t.Fatalf("registration %d from one address, over its quota of 5, went through", i)
				}
				refused = err
			}
		}
		if !strings.Contains(refused.Error(), "from your address") || tperr.Name(refused) != tperr.ServiceBusy {
			t.Errorf("refusal: %v (%s)", refused, tperr.Name(refused))
		}
		registerFrom(t, url, "elsewhere", "127.0.0.3")
		if v, _ := metric(t, httpAddr, `tubes_rendezvous_refused_total{limit="register_per_source"}`); v != 3 {
			t.Errorf("%v registrations counted as refused, want 3", v)
		}
	})

	alice := registerFrom(t, url, "alice", "")
	bob := registerFrom(t, url, "bob", "")
	befriend(t, alice, bob)

	t.Run("rooms per account", func(t *testing.T) {
		for i := range 3 {
			if _, err := alice.c.RoomCreate(ctx, fmt.Sprint("room", i), false); err != nil {
				t.Fatal(err)
			}
		}
		_, err := alice.c.RoomCreate(ctx, "room3", false)
		if tperr.Name(err) != tperr.PermissionDenied || !strings.Contains(fmt.Sprint(err), "you own 3 rooms") {
			t.Fatalf("a fourth room: %v", err)
		}
		if _, err := bob.c.RoomCreate(ctx, "bobs", false); err != nil {
			t.Fatalf("another account's room: %v", err)
		}
		// Removing one makes room for another.
		if err := alice.c.RoomLeave(ctx, "room0"); err != nil { // the owner leaving ends it
			t.Fatal(err)
		}
		if _, err := alice.c.RoomCreate(ctx, "room3", false); err != nil {
			t.Fatalf("a room after removing one: %v", err)
		}
	})

	t.Run("contact requests per account", func(t *testing.T) {
		for i := range 5 {
			registerFrom(t, url, fmt.Sprint("stranger", i), "127.0.0.4")
		}
		for i := range 4 {
			if _, err := alice.c.ContactRequest(ctx, fmt.Sprint("stranger", i)); err != nil {
				t.Fatal(err)
			}
		}
		_, err := alice.c.ContactRequest(ctx, "stranger4")
		if tperr.Name(err) != tperr.PermissionDenied || !strings.Contains(fmt.Sprint(err), "4 contact requests") {
			t.Fatalf("a fifth request: %v", err)
		}
		if _, err := bob.c.ContactRequest(ctx, "stranger4"); err != nil {
			t.Fatalf("another account's request: %v", err)
		}
		// An answered request stops counting.
		if err := alice.c.ContactRemove(ctx, "stranger0"); err != nil {
			t.Fatal(err)
		}
		if _, err := alice.c.ContactRequest(ctx, "stranger4"); err != nil {
			t.Fatalf("a request after withdrawing one: %v", err)
		}
	})

	t.Run("invitations per account", func(t *testing.T) {
		var invitees []*testAccount
		for i := range 3 {
			a := registerFrom(t, url, fmt.Sprint("guest", i), "127.0.0.7")
			befriend(t, a, alice) // alice is at her cap of requests: they ask
			invitees = append(invitees, a)
		}
		for _, a := range invitees[:2] {
			if _, err := alice.c.RoomInvite(ctx, "room1", a.name); err != nil {
				t.Fatal(err)
			}
		}
		_, err := alice.c.RoomInvite(ctx, "room1", "guest2")
		if tperr.Name(err) != tperr.PermissionDenied || !strings.Contains(fmt.Sprint(err), "2 invitations") {
			t.Fatalf("a third invitation: %v", err)
		}
		// Inviting someone invited already is no new invitation.
		if _, err := alice.c.RoomInvite(ctx, "room1", "guest0"); err != nil {
			t.Fatalf("inviting guest0 again: %v", err)
		}
		// An answered invitation stops counting.
		if err := invitees[0].c.RoomDecline(ctx, "room1"); err != nil {
			t.Fatal(err)
		}
		if _, err := alice.c.RoomInvite(ctx, "room1", "guest2"); err != nil {
			t.Fatalf("an invitation after one was declined: %v", err)
		}
	})

	t.Run("messages per second", func(t *testing.T) {
		// Raw requests, as a flooder sends them: the client library
		// waits and sends again when told to slow down. (The raw login
		// replaces alice's client connection.)
		nc := rawLogin(t, url, alice)
		var busy int
		var last string
		for range 60 {
			m, err := nc.Request("tube.svc.alice.send", []byte(`{"to":"bob","kind":"flood","body":"eA=="}`), 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(m.Data), tperr.ServiceBusy) {
				busy++
				last = string(m.Data)
			}
		}
		if busy == 0 {
			t.Fatal("60 messages in a burst, none refused at 5 a second")
		}
		if !strings.Contains(last, "messages a second") {
			t.Errorf("refusal: %s", last)
		}
		if _, err := bob.c.Send(ctx, "alice", "", "hello", []byte("y")); err != nil {
			t.Fatalf("another account's message: %v", err)
		}
		if v, _ := metric(t, httpAddr, `tubes_rendezvous_refused_total{limit="messages"}`); v != float64(busy) {
			t.Errorf("%v messages counted as refused, %d were", v, busy)
		}
		// The client library spreads a burst out instead: every one of
		// 15 messages at once arrives, at 5 a second. (Logging in again
		// replaces the raw connection, as the newest login does.)
		alice.login(t, url)
		for i := range 15 {
			if _, err := alice.c.Send(ctx, "bob", "", "burst", []byte("z")); err != nil {
				t.Fatalf("message %d of a burst through the client: %v", i, err)
			}
		}
	})
}

// A login that the relay's account service does not answer (it is down
// or too busy: NATS reports the callout's timeout as a refusal) is not a
// refusal: the daemon says the login went unanswered and tries again by
// itself, slowly, and is connected once the service answers again. A
// refusal the relay confirms (no such account) still waits for the user.
func TestDaemonRetriesUnansweredLogin(t *testing.T) {
	data := t.TempDir()
	addr, flags := natsForRelay(t, data)
	relayArgs := append([]string{"relay", "--turn-listen", "off"}, flags...)
	relay := start(t, nil, relayArgs...)
	relay.waitLine("rendezvous: ")
	_, alice := daemon(t)
	mustRun(t, alice, "account", "add", "alice", "--server", addr, "--register")

	relay.kill()
	mustRun(t, alice, "disconnect")
	run(t, alice, "connect") // exits 1: not connected
	acc := waitAccount(t, alice, "alice", func(a api.Account) bool { return a.Login != "" })
	if acc.Login != "unanswered" || acc.Status != "Disconnected" || !acc.AutoConnect || acc.NextRetry == "" {
		t.Fatalf("with the account service down: %+v", acc)
	}
	relay = start(t, nil, relayArgs...)
	relay.waitLine("rendezvous: ")
	waitAccount(t, alice, "alice", func(a api.Account) bool { return a.Status == "Connected" })

	_, carol := daemon(t)
	run(t, carol, "account", "add", "carol", "--server", addr) // not registered: refused
	acc = waitAccount(t, carol, "carol", func(a api.Account) bool { return a.Login != "" })
	if acc.Login != "refused" || acc.AutoConnect || acc.NextRetry != "" {
		t.Fatalf("a confirmed refusal: %+v", acc)
	}
}

// waitAccount waits until the daemon's account name satisfies ok.
func waitAccount(t *testing.T, env []string, name string, ok func(api.Account) bool) api.Account {
	t.Helper()
	var last api.Account
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		var st struct{ Accounts []api.Account }
		json.Unmarshal([]byte(mustRun(t, env, "status", "--json")), &st)
		for _, a := range st.Accounts {
			if a.Name == name {
				if last = a; ok(a) {
					return a
				}
			}
		}
	}
	t.Fatalf("account %s never got there: %+v", name, last)
	return last
}

// TURN credentials the relay issues to an account relay only to where
// one of the account's contacts is connected from: not to another
// account that is no contact, not to an address no account uses. A
// static --turn-user keeps the general TURN behaviour.
func TestTURNForAccountsOnly(t *testing.T) {
	httpAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	relay := start(t, nil, "relay", "--turn-listen", "127.0.0.1:0", "--allow-peer", "127.0.0.0/8", "--turn-user", "op:pw",
		"--http", httpAddr, "--listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)))
	turnAddr := strings.TrimSpace(relay.waitLine("turn: "))
	url := strings.TrimSpace(relay.waitLine("rendezvous: "))
	relay.waitLine("metrics: ")
	alice := registerFrom(t, url, "alice", "127.0.0.1")
	bob := registerFrom(t, url, "bob", "127.0.0.5")
	registerFrom(t, url, "mallory", "127.0.0.6") // an account, no contact of alice's
	befriend(t, alice, bob)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cred, err := alice.c.TURN(ctx)
	if err != nil {
		t.Fatal(err)
	}
	allocate := func(user, pass string) *turnclient.Client {
		t.Helper()
		c, err := turnclient.Allocate(ctx, turnclient.Config{Server: turnAddr, Username: user, Password: pass})
		if err != nil {
			t.Fatalf("allocate as %s: %v", user, err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	issued := allocate(cred.Username, cred.Password)
	if err := issued.Permit(ctx, netip.MustParseAddr("127.0.0.5")); err != nil {
		t.Errorf("a permission for the contact's address: %v", err)
	}
	for _, ip := range []string{"127.0.0.6", "127.0.0.9"} {
		if err := issued.Permit(ctx, netip.MustParseAddr(ip)); err == nil {
			t.Errorf("the issued credential got a permission for %s, where no contact of alice's is", ip)
		}
	}
	if v, _ := metric(t, httpAddr, "tubes_turn_foreign_peers_refused_total"); v != 2 {
		t.Errorf("%v foreign peers counted, want 2", v)
	}
	static := allocate("op", "pw")
	if err := static.Permit(ctx, netip.MustParseAddr("127.0.0.9")); err != nil {
		t.Errorf("a static credential's permission: %v", err)
	}
}

// Registrations from every source together stop at the relay's rate per
// minute, each source under its own quota.
func TestRegistrationsPerMinute(t *testing.T) {
	url, httpAddr := startRendezvous(t, "--register-per-minute", "3")
	for i := range 3 {
		registerFrom(t, url, fmt.Sprint("early", i), fmt.Sprintf("127.0.0.%d", 10+i))
	}
	a := &testAccount{name: "late", key: newKey(t)}
	err := rendezvous.Register(context.Background(), a.cfg(url, "127.0.0.20"), "")
	if tperr.Name(err) != tperr.ServiceBusy || !strings.Contains(fmt.Sprint(err), "try again in a minute") {
		t.Fatalf("a fourth registration in the minute, from a fresh address: %v", err)
	}
	if v, _ := metric(t, httpAddr, `tubes_rendezvous_refused_total{limit="register_per_minute"}`); v != 1 {
		t.Errorf("%v registrations counted as refused, want 1", v)
	}
}

// Operations a client makes up are counted under one label: their names
// once became metric labels, and a flood of made-up names grew the
// relay's memory without bound.
func TestMadeUpOperationsOneLabel(t *testing.T) {
	url, httpAddr := startRendezvous(t)
	mallory := registerFrom(t, url, "mallory", "")
	nc := rawLogin(t, url, mallory)
	for i := range 5 {
		if _, err := nc.Request(fmt.Sprintf("tube.svc.mallory.madeup%d", i), []byte(`{}`), 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	waitMetric(t, httpAddr, `tubes_rendezvous_requests_total{op="unknown",result="NotImplemented"}`, equal(5))
	if _, there := metric(t, httpAddr, `tubes_rendezvous_requests_total{op="madeup0",result="NotImplemented"}`); there {
		t.Fatal("a made-up operation has a label of its own")
	}
}

// Registrations count per login, and so per source: one guest key
// registers one name (a second one once counted against a bucket all
// unknown sources shared, which any guest could drain for everyone), and
// one source may make GuestLoginsPerSource guest logins a minute, while
// another source logs in.
func TestGuestLimits(t *testing.T) {
	url, httpAddr := startRendezvous(t)
	ctx := context.Background()
	a := &testAccount{name: "first", key: newKey(t)}
	if err := rendezvous.Register(ctx, a.cfg(url, "127.0.0.30"), ""); err != nil {
		t.Fatal(err)
	}
	a.name = "second"
	err := rendezvous.Register(ctx, a.cfg(url, "127.0.0.30"), "")
	if tperr.Name(err) != tperr.RegistrationExists || !strings.Contains(fmt.Sprint(err), "registered already, as first") {
		t.Fatalf("a second name for one key: %v", err)
	}

	guest := func(src string) error {
		kp, err := newKey(t).NKey()
		if err != nil {
			t.Fatal(err)
		}
		pub, _ := kp.PublicKey()
		nc, err := nats.Connect(url, nats.Nkey(pub, kp.Sign), nats.CustomInboxPrefix("tube.guest."+pub+".reply"),
			nats.SetCustomDialer(&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}), nats.NoReconnect())
		if err == nil {
			nc.Close()
		}
		return err
	}
	refused := 0
	for range rendezvous.GuestLoginsPerSource + 10 {
		if guest("127.0.0.31") != nil {
			refused++
		}
	}
	if refused < 5 { // the bucket refills a little meanwhile
		t.Fatalf("%d of %d guest logins from one source in a burst refused", refused, rendezvous.GuestLoginsPerSource+10)
	}
	if err := guest("127.0.0.32"); err != nil {
		t.Fatalf("a guest login from another source: %v", err)
	}
	if v, _ := metric(t, httpAddr, `tubes_rendezvous_refused_total{limit="guest_logins"}`); v != float64(refused) {
		t.Errorf("%v guest logins counted as refused, %d were", v, refused)
	}
}

// An account that goes on flooding after it is told to slow down is shut
// out: its connection is closed and its logins refused for a while,
// while everyone else logs in and is served.
func TestFlooderShutOut(t *testing.T) {
	url, httpAddr := startRendezvous(t)
	mallory := registerFrom(t, url, "mallory", "")
	alice := registerFrom(t, url, "alice", "")
	nc := rawLogin(t, url, mallory)
	closed := make(chan struct{})
	nc.SetClosedHandler(func(*nats.Conn) { close(closed) })
	go func() {
		for i := 0; i < 200000 && !nc.IsClosed(); i++ {
			nc.PublishRequest("tube.svc.mallory.contacts", "tube.reply.mallory.flood", []byte(`{}`))
		}
	}()
	select {
	case <-closed:
	case <-time.After(30 * time.Second):
		t.Fatal("the flooder's connection is still open")
	}
	if v, _ := metric(t, httpAddr, `tubes_rendezvous_refused_total{limit="banned"}`); v != 1 {
		t.Errorf("%v bans counted, want 1", v)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if c, err := rendezvous.Dial(ctx, mallory.cfg(url, "")); err == nil {
		c.Close()
		t.Fatal("the flooder logged in again at once")
	} else if !strings.Contains(err.Error(), "shut mallory out for a while") {
		t.Errorf("the flooder is told %q", err)
	}
	alice.login(t, url)
	if _, err := alice.c.Contacts(ctx); err != nil {
		t.Fatalf("another account during the ban: %v", err)
	}
}
