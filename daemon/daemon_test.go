package daemon_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/internal/node"
	"github.com/tubes-dev/tubes/internal/tubetest"
	"github.com/tubes-dev/tubes/rendezvous"
	"github.com/tubes-dev/tubes/tperr"
)

var ctx = context.Background()

// signalsOf returns the connection signals of one account.
func signalsOf(evs []api.Event, account string) []string {
	var mine []api.Event
	for _, ev := range evs {
		if ev.Account == account {
			mine = append(mine, ev)
		}
	}
	return tubetest.Signals(mine)
}

func assertSignals(t *testing.T, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Fatalf("signals:\n  got  %s\n  want %s", strings.Join(got, "\n       "), strings.Join(want, "\n       "))
	}
}

func TestRegisterConnectDisconnectSignals(t *testing.T) {
	relay := tubetest.Relay(t, rendezvous.Config{})
	d := tubetest.StartDaemon(t, "")
	ev := tubetest.Record(t, d.C, "")
	a := d.Register(t, "alice", relay)
	if a.SelfHandle == 0 || a.Protocol != "tubes" || a.ConnectionID == "" {
		t.Fatalf("account = %+v", a)
	}
	if _, err := d.C.Disconnect(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	ev.MustWait("Disconnected", tubetest.IsStatus("alice", "Disconnected", "Requested"))
	// Connect while disconnected, then Connect again while connected: the
	// second has no effect (no new signals).
	if a, err := d.C.ConnectWait(ctx, "alice"); err != nil || a.Status != "Connected" {
		t.Fatalf("connect: %+v %v", a, err)
	}
	if _, err := d.C.ConnectWait(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	assertSignals(t, signalsOf(ev.All(), "alice"), []string{
		"StatusChanged Connecting Requested",
		"SelfHandleChanged 1",
		"StatusChanged Connected Requested",
		"ConnectionError im.telepathy1.Error.Cancelled",
		"StatusChanged Disconnected Requested",
		"StatusChanged Connecting Requested",
		"StatusChanged Connected Requested",
	})
	// Interfaces are frozen once connected and include the ones we use.
	a, _ = d.C.Account(ctx, "alice")
	for _, want := range []string{api.InterestPresence, api.InterestContactList, api.InterestRooms} {
		if !slices.Contains(a.Interfaces, want) {
			t.Errorf("interfaces %v lack %s", a.Interfaces, want)
		}
	}
}

// TestNetworkLossAndRecovery kills the relay under a connected account:
// Disconnected/Network_Error, retries (Connecting → refused), and recovery
// when the relay returns on the same address with the same data.
func TestNetworkLossAndRecovery(t *testing.T) {
	data := t.TempDir()
	relay := tubetest.Relay(t, rendezvous.Config{DataDir: data})
	addr := relay.Addr()
	d := tubetest.StartDaemon(t, "")
	d.Register(t, "alice", relay)
	ev := tubetest.Record(t, d.C, "alice")

	relay.Close()
	ev.MustWait("loss", tubetest.IsStatus("alice", "Disconnected", "Network_Error"))
	// At least one retry fails while the relay is down.
	ev.MustWait("refused retry", func(e api.Event) bool {
		return e.Type == api.EventConnectionError && e.Error == tperr.ConnectionRefused
	})
	a, _ := d.C.Account(ctx, "alice")
	if a.Status != "Disconnected" && a.Status != "Connecting" {
		t.Fatalf("while the relay is down: %+v", a)
	}
	tubetest.Relay(t, rendezvous.Config{DataDir: data, Listen: addr})
	ev.MustWait("recovery", tubetest.IsStatus("alice", "Connected", "Requested"))

	sig := signalsOf(ev.All(), "alice")
	if sig[0] != "ConnectionError im.telepathy1.Error.ConnectionLost" || sig[1] != "StatusChanged Disconnected Network_Error" {
		t.Fatalf("loss signals: %v", sig)
	}
	// Every ConnectionError is immediately followed by Disconnected, and
	// every retry goes through Connecting.
	for i, s := range sig {
		if strings.HasPrefix(s, "ConnectionError") && (i+1 >= len(sig) || !strings.HasPrefix(sig[i+1], "StatusChanged Disconnected Network_Error")) {
			t.Fatalf("ConnectionError not followed by Disconnected: %v", sig)
		}
		if s == "StatusChanged Connected Requested" && sig[i-1] != "StatusChanged Connecting Requested" {
			t.Fatalf("Connected without Connecting: %v", sig)
		}
	}
	if sig[len(sig)-1] != "StatusChanged Connected Requested" {
		t.Fatalf("did not end connected: %v", sig)
	}
}

func TestAuthenticationFailedIsNotRetried(t *testing.T) {
	relay := tubetest.Relay(t, rendezvous.Config{})
	d1 := tubetest.StartDaemon(t, "")
	d1.Register(t, "alice", relay)

	// Another daemon has its own key for "alice": refused.
	d2 := tubetest.StartDaemon(t, "")
	ev := tubetest.Record(t, d2.C, "")
	a, err := d2.C.AddAccount(ctx, api.AddAccountRequest{Name: "alice", Server: relay.URL()})
	if err != nil {
		t.Fatal(err)
	}
	if a.Status != "Disconnected" || a.Reason != "Authentication_Failed" || a.Error != tperr.AuthenticationFailed {
		t.Fatalf("account = %+v", a)
	}
	if !strings.Contains(a.Message, "another key") {
		t.Fatalf("message %q does not say why", a.Message)
	}
	// Unknown account: same reason, a message saying so.
	a, err = d2.C.AddAccount(ctx, api.AddAccountRequest{Name: "nobody", Server: relay.URL()})
	if err != nil || a.Reason != "Authentication_Failed" || !strings.Contains(a.Message, "no account named nobody") {
		t.Fatalf("unknown account: %+v %v", a, err)
	}
	time.Sleep(500 * time.Millisecond) // several backoff periods
	assertSignals(t, signalsOf(ev.All(), "alice"), []string{
		"StatusChanged Connecting Requested",
		"ConnectionError im.telepathy1.Error.AuthenticationFailed",
		"StatusChanged Disconnected Authentication_Failed",
	})
}

func TestRegistrationExistsLeavesNothing(t *testing.T) {
	relay := tubetest.Relay(t, rendezvous.Config{})
	d1 := tubetest.StartDaemon(t, "")
	d1.Register(t, "alice", relay)

	dir := t.TempDir()
	d2 := tubetest.StartDaemon(t, dir)
	ev := tubetest.Record(t, d2.C, "")
	_, err := d2.C.AddAccount(ctx, api.AddAccountRequest{Name: "alice", Server: relay.URL(), Register: true})
	if !tperr.Has(err, tperr.RegistrationExists) {
		t.Fatalf("register a taken name: %v", err)
	}
	ev.MustWait("AccountRemoved", func(e api.Event) bool { return e.Type == api.EventAccountRemoved })
	assertSignals(t, signalsOf(ev.All(), "alice"), []string{
		"StatusChanged Connecting Requested",
		"ConnectionError im.telepathy1.Error.RegistrationExists",
		"StatusChanged Disconnected Name_In_Use",
	})
	if as, _ := d2.C.Accounts(ctx); len(as) != 0 {
		t.Fatalf("accounts after failed registration: %+v", as)
	}
	if _, err := os.Stat(filepath.Join(dir, "keys", "alice.key")); !os.IsNotExist(err) {
		t.Fatalf("key left behind: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "accounts.json")); err == nil && strings.Contains(string(b), "alice") {
		t.Fatalf("accounts.json mentions alice: %s", b)
	}
}

// TestNameInUseNewestWins: a second daemon holding alice's key connects;
// the first is replaced (ConnectionReplaced, Name_In_Use) and stays off.
func TestNameInUseNewestWins(t *testing.T) {
	relay := tubetest.Relay(t, rendezvous.Config{})
	dir1 := t.TempDir()
	d1 := tubetest.StartDaemon(t, dir1)
	d1.Register(t, "alice", relay)
	ev := tubetest.Record(t, d1.C, "alice")

	dir2 := t.TempDir()
	os.MkdirAll(filepath.Join(dir2, "keys"), 0o700)
	key, _ := os.ReadFile(filepath.Join(dir1, "keys", "alice.key"))
	os.WriteFile(filepath.Join(dir2, "keys", "alice.key"), key, 0o600)
	d2 := tubetest.StartDaemon(t, dir2)
	if a, err := d2.C.AddAccount(ctx, api.AddAccountRequest{Name: "alice", Server: relay.URL()}); err != nil || a.Status != "Connected" {
		t.Fatalf("second connection: %+v %v", a, err)
	}
	ev.MustWait("replaced", tubetest.IsStatus("alice", "Disconnected", "Name_In_Use"))
	time.Sleep(400 * time.Millisecond)
	assertSignals(t, signalsOf(ev.All(), "alice"), []string{
		"ConnectionError im.telepathy1.Error.ConnectionReplaced",
		"StatusChanged Disconnected Name_In_Use",
	})
	if a, _ := d2.C.Account(ctx, "alice"); a.Status != "Connected" {
		t.Fatalf("the newer connection is %s", a.Status)
	}
}

func TestHandles(t *testing.T) {
	relay := tubetest.Relay(t, rendezvous.Config{})
	d := tubetest.StartDaemon(t, "")
	d.Register(t, "alice", relay)
	other := tubetest.StartDaemon(t, "")
	other.Register(t, "bob", relay)
	other.Register(t, "carol", relay)
	if _, err := d.C.CreateRoom(ctx, "alice", "lab"); err != nil {
		t.Fatal(err)
	}
	const contact, room = 1, 2

	hs, err := d.C.RequestHandles(ctx, "alice", contact, "bob", "carol", "BOB")
	if err != nil {
		t.Fatal(err)
	}
	if hs[0] == 0 || hs[0] != hs[2] || hs[0] == hs[1] {
		t.Fatalf("handles %v: equal ids must get equal non-zero handles", hs)
	}
	again, _ := d.C.RequestHandles(ctx, "alice", contact, "carol", "bob")
	if again[0] != hs[1] || again[1] != hs[0] {
		t.Fatalf("handles changed: %v then %v", hs, again)
	}
	self, _ := d.C.Account(ctx, "alice")
	if ids, err := d.C.InspectHandles(ctx, "alice", contact, self.SelfHandle, hs[0]); err != nil || !slices.Equal(ids, []string{"alice", "bob"}) {
		t.Fatalf("inspect = %v %v", ids, err)
	}
	rh, err := d.C.RequestHandles(ctx, "alice", room, "lab")
	if err != nil || rh[0] == 0 {
		t.Fatalf("room handle %v %v", rh, err)
	}
	// Per type: a room handle is not a contact handle.
	if ids, err := d.C.InspectHandles(ctx, "alice", room, rh[0]); err != nil || ids[0] != "lab" {
		t.Fatalf("inspect room = %v %v", ids, err)
	}
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"unknown contact", second(d.C.RequestHandles(ctx, "alice", contact, "bob", "nobody")), tperr.InvalidHandle},
		{"invalid id", second(d.C.RequestHandles(ctx, "alice", contact, "not valid!")), tperr.InvalidHandle},
		{"unknown room", second(d.C.RequestHandles(ctx, "alice", room, "nosuch")), tperr.InvalidHandle},
		{"unsupported type", second(d.C.RequestHandles(ctx, "alice", 3, "x")), tperr.NotImplemented},
		{"type None", second(d.C.RequestHandles(ctx, "alice", 0, "x")), tperr.InvalidArgument},
		{"inspect unknown", second(d.C.InspectHandles(ctx, "alice", contact, 999)), tperr.InvalidHandle},
		{"inspect zero", second(d.C.InspectHandles(ctx, "alice", contact, 0)), tperr.InvalidHandle},
		{"inspect bad type", second(d.C.InspectHandles(ctx, "alice", 7, 1)), tperr.InvalidArgument},
	} {
		if !tperr.Has(tc.err, tc.want) {
			t.Errorf("%s: got %v, want %s", tc.name, tc.err, tc.want)
		}
	}
	// bob, not in lab, learns nothing from a room handle request: the
	// answer for lab is the answer for a room that does not exist.
	errF := second(other.C.RequestHandles(ctx, "bob", room, "lab"))
	errM := second(other.C.RequestHandles(ctx, "bob", room, "nosuch"))
	if !tperr.Has(errF, tperr.InvalidHandle) || strings.ReplaceAll(tperr.Message(errF), "lab", "R") != strings.ReplaceAll(tperr.Message(errM), "nosuch", "R") {
		t.Fatalf("a stranger's room handle requests: %v / %v; want one InvalidHandle answer for both", errF, errM)
	}
	// Disconnected: handles cannot be requested or inspected.
	d.C.Disconnect(ctx, "alice")
	if _, err := d.C.RequestHandles(ctx, "alice", contact, "bob"); !tperr.Has(err, tperr.Disconnected) {
		t.Fatalf("request while disconnected: %v", err)
	}
	if _, err := d.C.InspectHandles(ctx, "alice", contact, hs[0]); !tperr.Has(err, tperr.Disconnected) {
		t.Fatalf("inspect while disconnected: %v", err)
	}
	// Stable across reconnection.
	d.C.ConnectWait(ctx, "alice")
	if again, _ := d.C.RequestHandles(ctx, "alice", contact, "bob"); again[0] != hs[0] {
		t.Fatalf("handle of bob changed across reconnection: %d → %d", hs[0], again[0])
	}
}

func second[T any](_ T, err error) error { return err }

// TestClientInterest: the daemon subscribes to presence notifications only
// while some local-API client is interested, counts per client, and drops
// a client's interest when it goes away.
func TestClientInterest(t *testing.T) {
	relay := tubetest.Relay(t, rendezvous.Config{})
	dA := tubetest.StartDaemon(t, "")
	dA.Register(t, "alice", relay)
	dB := tubetest.StartDaemon(t, "")
	dB.Register(t, "bob", relay)
	tubetest.Befriend(t, dA, "alice", dB, "bob")

	watching := func() bool {
		w, err := dA.Watching("alice", api.InterestPresence)
		if err != nil {
			t.Fatal(err)
		}
		return w
	}
	if watching() {
		t.Fatal("watching presence with no interested client")
	}
	// No interest: bob's presence changes are not even received.
	ev := tubetest.Record(t, dA.C, "alice")
	dB.C.Disconnect(ctx, "bob")
	dB.C.ConnectWait(ctx, "bob")
	if _, ok := ev.Wait(func(e api.Event) bool { return e.Type == api.EventPresenceChanged }, 300*time.Millisecond); ok {
		t.Fatal("presence delivered although nobody was interested")
	}

	c1 := tubetest.StartClient(t, dA)
	c2 := tubetest.StartClient(t, dA)
	if err := c1.AddClientInterest(ctx, "alice", api.InterestPresence, api.InterestPresence, "org.example.Unknown"); err != nil {
		t.Fatalf("add interest (with an unknown token, ignored): %v", err)
	}
	if !watching() {
		t.Fatal("not watching after a client's interest")
	}
	c2.AddClientInterest(ctx, "alice", api.InterestPresence)
	dB.C.Disconnect(ctx, "bob")
	ev.MustWait("bob offline", func(e api.Event) bool {
		return e.Type == api.EventPresenceChanged && e.Contact == "bob" && !*e.Online
	})
	// c1 counted twice: one removal leaves it interested, c1 going away
	// drops the rest; c2 still holds it.
	c1.RemoveClientInterest(ctx, "alice", api.InterestPresence)
	c1.Close()
	time.Sleep(100 * time.Millisecond)
	if !watching() {
		t.Fatal("stopped watching while c2 is still interested")
	}
	c2.RemoveClientInterest(ctx, "alice", api.InterestPresence)
	if watching() {
		t.Fatal("still watching after the last interest was removed")
	}
	// A client that dies without removing its interest: dropped.
	c3 := tubetest.StartClient(t, dA)
	c3.AddClientInterest(ctx, "alice", api.InterestPresence)
	if !watching() {
		t.Fatal("not watching for c3")
	}
	c3.Close()
	deadline := time.Now().Add(3 * time.Second)
	for watching() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if watching() {
		t.Fatal("interest of a client that went away was kept")
	}

	// Interest registered while disconnected applies once connected.
	dA.C.Disconnect(ctx, "alice")
	c4 := tubetest.StartClient(t, dA)
	c4.AddClientInterest(ctx, "alice", api.InterestPresence)
	dA.C.ConnectWait(ctx, "alice")
	if !watching() {
		t.Fatal("interest registered before Connected was not applied")
	}
}

func TestStateDirectory(t *testing.T) {
	relay := tubetest.Relay(t, rendezvous.Config{})
	dir := t.TempDir()
	d := tubetest.StartDaemon(t, dir)
	d.Register(t, "alice", relay)
	for path, mode := range map[string]os.FileMode{
		dir:                                     0o700,
		filepath.Join(dir, "keys"):              0o700,
		filepath.Join(dir, "keys", "alice.key"): 0o600,
		filepath.Join(dir, "accounts.json"):     0o600,
		filepath.Join(dir, "daemon.sock"):       0o600,
	} {
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != mode {
			t.Errorf("%s: mode %v, want %v", path, st.Mode().Perm(), mode)
		}
	}
	var saved struct {
		Accounts []struct {
			Name, Server string
			AutoConnect  bool `json:"auto_connect"`
		}
	}
	b, _ := os.ReadFile(filepath.Join(dir, "accounts.json"))
	if err := json.Unmarshal(b, &saved); err != nil || len(saved.Accounts) != 1 || !saved.Accounts[0].AutoConnect {
		t.Fatalf("accounts.json = %s (%v)", b, err)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(dir, ".*tmp*")); len(leftovers) != 0 {
		t.Fatalf("temporary files left: %v", leftovers)
	}
	// A restarted daemon reconnects its account by itself.
	d.Close()
	d2 := tubetest.StartDaemon(t, dir)
	ev := tubetest.Record(t, d2.C, "alice")
	if a, _ := d2.C.Account(ctx, "alice"); a.Status != "Connected" {
		ev.MustWait("reconnect after restart", tubetest.IsStatus("alice", "Connected", ""))
	}
	// Removing the account removes its key.
	if err := d2.C.RemoveAccount(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "keys", "alice.key")); !os.IsNotExist(err) {
		t.Fatalf("key kept after removal: %v", err)
	}
}

func TestOperationsNeedConnection(t *testing.T) {
	relay := tubetest.Relay(t, rendezvous.Config{})
	d := tubetest.StartDaemon(t, "")
	d.Register(t, "alice", relay)
	d.C.Disconnect(ctx, "alice")
	if _, err := d.C.AddContact(ctx, "alice", "bob"); !tperr.Has(err, tperr.Disconnected) {
		t.Fatalf("contact add while disconnected: %v", err)
	}
	if _, err := d.C.Account(ctx, "nobody"); !tperr.Has(err, tperr.NotFound) {
		t.Fatalf("unknown account: %v", err)
	}
	if _, err := d.C.AddAccount(ctx, api.AddAccountRequest{Name: "alice", Server: relay.URL()}); !tperr.Has(err, tperr.NotAvailable) {
		t.Fatalf("duplicate account: %v", err)
	}
	if _, err := d.C.AddAccount(ctx, api.AddAccountRequest{Name: "Bad Name", Server: relay.URL()}); !tperr.Has(err, tperr.InvalidArgument) {
		t.Fatalf("bad name: %v", err)
	}
}

func TestRosterAndRooms(t *testing.T) {
	relay := tubetest.Relay(t, rendezvous.Config{})
	dA := tubetest.StartDaemon(t, "")
	dA.Register(t, "alice", relay)
	dB := tubetest.StartDaemon(t, "")
	dB.Register(t, "bob", relay)
	evB := tubetest.Record(t, dB.C, "bob")
	cB := tubetest.StartClient(t, dB)
	cB.AddClientInterest(ctx, "bob", api.InterestContactList, api.InterestRooms)

	if _, err := dA.C.AddContact(ctx, "alice", "nobody"); !tperr.Has(err, tperr.DoesNotExist) {
		t.Fatalf("add unknown contact: %v", err)
	}
	if _, err := dA.C.AddContact(ctx, "alice", "bob"); err != nil {
		t.Fatal(err)
	}
	evB.MustWait("request", func(e api.Event) bool {
		return e.Type == api.EventContactsChanged && e.Contact == "alice" && e.State == "pending"
	})
	if _, err := dB.C.ApproveContact(ctx, "bob", "alice"); err != nil {
		t.Fatal(err)
	}
	cs, err := dA.C.Contacts(ctx, "alice")
	if err != nil || len(cs) != 1 || cs[0].State != "contact" || !cs[0].Online || cs[0].Handle == 0 {
		t.Fatalf("contacts = %+v %v", cs, err)
	}
	bobEv := tubetest.Record(t, dB.C, "bob")
	if _, err := dA.C.CreateRoom(ctx, "alice", "lab"); err != nil {
		t.Fatal(err)
	}
	if _, err := dB.C.JoinRoom(ctx, "bob", "nosuch"); !tperr.Has(err, tperr.PermissionDenied) {
		t.Fatalf("join unknown room: %v", err)
	}
	if _, err := dB.C.JoinRoom(ctx, "bob", "lab"); !tperr.Has(err, tperr.PermissionDenied) {
		t.Fatalf("join without an invitation: %v", err)
	}
	if _, err := dB.C.RoomMembers(ctx, "bob", "lab"); !tperr.Has(err, tperr.PermissionDenied) {
		t.Fatalf("members as non-member: %v", err)
	}
	if inv, err := dA.C.InviteToRoom(ctx, "alice", "lab", "bob"); err != nil || inv.Room != "lab" || inv.By != "alice" {
		t.Fatalf("invite: %+v %v", inv, err)
	}
	ev := bobEv.MustWait("bob is invited", func(e api.Event) bool { return e.Type == api.EventRoomsChanged && e.Change == "invited" })
	if ev.Room != "lab" || ev.By != "alice" {
		t.Fatalf("invitation event %+v", ev)
	}
	if invs, err := dB.C.Invitations(ctx, "bob"); err != nil || len(invs) != 1 || invs[0].Room != "lab" {
		t.Fatalf("invitations = %+v %v", invs, err)
	}
	if _, err := dB.C.JoinRoom(ctx, "bob", "lab"); err != nil {
		t.Fatal(err)
	}
	rs, err := dB.C.Rooms(ctx, "bob")
	if err != nil || len(rs) != 1 || rs[0].Owner != "alice" || rs[0].Members != 2 || rs[0].Open || rs[0].Role != "member" {
		t.Fatalf("rooms = %+v %v", rs, err)
	}
	if m, err := dA.C.SetRoomAdmin(ctx, "alice", "lab", "bob", false); err != nil || !m.Admin {
		t.Fatalf("admin: %+v %v", m, err)
	}
	bobEv.MustWait("bob is made admin", func(e api.Event) bool {
		return e.Type == api.EventRoomsChanged && e.Change == "role" && e.Role == "admin"
	})
	if ms, err := dB.C.RoomMembers(ctx, "bob", "lab"); err != nil || len(ms) != 2 || !ms[1].Admin {
		t.Fatalf("members = %+v %v", ms, err)
	}
	// Local programs may not send the kinds tubes and the service
	// framework own (they would be signed with the account's key).
	for _, kind := range []string{"tube.offer", "svc.catalog"} {
		if _, err := dA.C.Send(ctx, "alice", api.SendRequest{To: "bob", Kind: kind, Body: []byte("{}")}); !tperr.Has(err, tperr.InvalidArgument) {
			t.Fatalf("sending kind %s: %v, want InvalidArgument", kind, err)
		}
	}
	// Deliver to the room.
	if r, err := dA.C.Send(ctx, "alice", api.SendRequest{Room: "lab", Kind: "x.test", Body: []byte("hi")}); err != nil || len(r.Delivered) != 1 {
		t.Fatalf("room send: %+v %v", r, err)
	}
	evB.MustWait("room message", func(e api.Event) bool {
		return e.Type == api.EventMessageReceived && e.From == "alice" && e.Room == "lab" && string(e.Body) == "hi"
	})
	if err := dA.C.LeaveRoom(ctx, "alice", "lab"); err != nil {
		t.Fatal(err)
	}
	evB.MustWait("room deleted", func(e api.Event) bool { return e.Type == api.EventRoomsChanged && e.Deleted })
	if err := dB.C.RemoveContact(ctx, "bob", "alice"); err != nil {
		t.Fatal(err)
	}
	if _, err := dA.C.Send(ctx, "alice", api.SendRequest{To: "bob", Kind: "x"}); !tperr.Has(err, tperr.PermissionDenied) {
		t.Fatalf("send after removal: %v", err)
	}
}

// A state directory is one daemon's: a second daemon given it is refused
// with a sentence naming the first, and gets it once the first is gone;
// what a daemon killed mid-write left behind is cleared.
func TestStateDirectoryHeldByOne(t *testing.T) {
	dir := t.TempDir()
	leftover := filepath.Join(dir, ".accounts.json.tmp123456")
	if err := os.WriteFile(leftover, []byte(`{"accou`), 0o600); err != nil {
		t.Fatal(err)
	}
	first := tubetest.StartDaemon(t, dir)
	if _, err := os.Stat(leftover); !os.IsNotExist(err) {
		t.Fatalf("a killed write's temporary file is still there: %v", err)
	}
	second, err := node.StartDaemon(ctx, node.DaemonConfig{StateDir: dir, Socket: filepath.Join(t.TempDir(), "second.sock")})
	if err == nil {
		second.Close()
		t.Fatal("a second daemon started on the first's state directory")
	}
	if tperr.Name(err) != tperr.NotAvailable || !strings.Contains(err.Error(), fmt.Sprintf("in use by another daemon (pid %d)", os.Getpid())) {
		t.Fatalf("second daemon: %v", err)
	}
	first.Close()
	again := tubetest.StartDaemon(t, dir)
	if _, err := again.C.Accounts(ctx); err != nil {
		t.Fatalf("the daemon after the first: %v", err)
	}
}

// A daemon.lock that is not a regular file (a FIFO) is refused at once,
// not waited on.
func TestStateLockNotAFile(t *testing.T) {
	dir := t.TempDir()
	if err := syscall.Mkfifo(filepath.Join(dir, "daemon.lock"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := node.StartDaemon(ctx, node.DaemonConfig{StateDir: dir})
	if err == nil || !strings.Contains(err.Error(), "daemon.lock is not a regular file") {
		t.Fatalf("a FIFO for daemon.lock: %v", err)
	}
}

// Two daemons given the same relative --state from different working
// directories have socket directories of their own.
func TestRelativeStateDirectories(t *testing.T) {
	scripts := t.TempDir()
	sockets := map[string]bool{}
	for _, wd := range []string{t.TempDir(), t.TempDir()} {
		t.Chdir(wd)
		d := tubetest.StartDaemon(t, "state")
		xml := `<SFW version="1.1"><service><name>rsvc</name><filepath>` + tubetest.ActivatedScript(t, scripts, "rsvc") +
			`</filepath><interface><name>org.ex.R</name><version>1.0</version></interface></service></SFW>`
		if _, err := d.C.AddService(ctx, xml, "rsvc.xml", ""); err != nil {
			t.Fatal(err)
		}
		acts, err := d.C.Activations(ctx)
		if err != nil || acts["rsvc"].Socket == "" {
			t.Fatalf("activations %+v %v", acts, err)
		}
		sockets[acts["rsvc"].Socket] = true
	}
	if len(sockets) != 2 {
		t.Fatalf("both daemons' rsvc on %v", sockets)
	}
}
