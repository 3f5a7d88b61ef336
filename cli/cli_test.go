package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tubes-dev/tubes/cli"
	"github.com/tubes-dev/tubes/internal/tubetest"
	"github.com/tubes-dev/tubes/rendezvous"
)

// tube runs the command in-process against socket and returns its exit
// code, stdout and stderr.
func tube(t *testing.T, socket string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	if socket != "" {
		args = append([]string{"--socket", socket}, args...)
	}
	code := cli.Run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func mustTube(t *testing.T, socket string, args ...string) string {
	t.Helper()
	code, out, errs := tube(t, socket, args...)
	if code != 0 {
		t.Fatalf("tube %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errs)
	}
	return out
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"nosuch"},
		{"account", "add"},
		{"account", "add", "alice"}, // no --server
		{"account", "add", "alice", "--server", "x", "--invite", "c"}, // --invite without --register
		{"status", "--bogus"},
		{"contact", "add"},
		{"connect", "a", "b"},
		{"relay", "--registration", "maybe"},
		{"services", "publish", "svc", "--to", "bob", "--scope", "system"}, // publications have no scope
		{"services", "browse", "alice", "--scope", "user"},
		{"services", "list", "--scope", "galaxy"},
	} {
		code, _, errs := tube(t, "/nonexistent.sock", args...)
		if code != cli.ExitUsage {
			t.Errorf("tube %v: exit %d, want %d (%s)", args, code, cli.ExitUsage, errs)
		}
		if !strings.HasPrefix(errs, "tube: ") || strings.Count(strings.TrimSpace(errs), "\n") > 1 {
			t.Errorf("tube %v: stderr should be one sentence and a hint: %q", args, errs)
		}
	}
}

func TestHelpListsEveryVerb(t *testing.T) {
	out := mustTube(t, "", "--help")
	for _, verb := range []string{"relay", "daemon", "account", "connect", "disconnect", "status", "contact", "room", "demo"} {
		if !strings.Contains(out, "\n  "+verb+" ") {
			t.Errorf("tube --help does not list %s:\n%s", verb, out)
		}
	}
	for _, sub := range [][]string{{"account", "--help"}, {"contact", "--help"}, {"room", "--help"}, {"relay", "user", "--help"}} {
		if code, out, _ := tube(t, "", sub...); code != 0 || !strings.Contains(out, "Usage:") {
			t.Errorf("tube %v: exit %d", sub, code)
		}
	}
}

func TestNoDaemon(t *testing.T) {
	code, _, errs := tube(t, t.TempDir()+"/none.sock", "status")
	if code != cli.ExitFailure || !strings.Contains(errs, "no daemon is listening") || !strings.Contains(errs, "tube daemon") {
		t.Fatalf("exit %d: %s", code, errs)
	}
}

func TestAccountsContactsRoomsThroughCLI(t *testing.T) {
	relay := tubetest.Relay(t, rendezvous.Config{})
	da := tubetest.StartDaemon(t, "")
	db := tubetest.StartDaemon(t, "")
	a, b := da.Socket, db.Socket

	out := mustTube(t, a, "account", "add", "alice", "--server", relay.URL(), "--register")
	if !strings.HasPrefix(out, "alice\tConnected\tU") {
		t.Fatalf("account add printed %q", out)
	}
	mustTube(t, b, "account", "add", "bob", "--server", relay.URL(), "--register")

	// An account that does not connect (no relay there): exit 1, with
	// --json as without; the JSON still says what the account is.
	dead := tubetest.StartDaemon(t, "")
	for _, args := range [][]string{{}, {"--json"}} {
		code, out, errs := tube(t, dead.Socket, append([]string{"account", "add", "ghost" + fmt.Sprint(len(args)), "--server", "127.0.0.1:1"}, args...)...)
		if code != cli.ExitFailure || !strings.Contains(errs, "not connected") {
			t.Fatalf("account add %v to no relay: exit %d, %s", args, code, errs)
		}
		if len(args) > 0 && !json.Valid([]byte(out)) {
			t.Fatalf("account add --json to no relay printed %q", out)
		}
	}

	// A taken name: exit 1, one sentence naming the problem.
	dc := tubetest.StartDaemon(t, "")
	code, _, errs := tube(t, dc.Socket, "account", "add", "alice", "--server", relay.URL(), "--register")
	if code != cli.ExitFailure || !strings.Contains(errs, "already registered") || !strings.Contains(errs, "RegistrationExists") {
		t.Fatalf("taken name: exit %d %s", code, errs)
	}

	if out := mustTube(t, a, "contact", "add", "bob"); out != "bob\trequested\n" {
		t.Fatalf("contact add: %q", out)
	}
	if out := mustTube(t, b, "contact", "approve", "alice"); out != "alice\tcontact\n" {
		t.Fatalf("contact approve: %q", out)
	}
	code, _, errs = tube(t, a, "contact", "add", "nobody")
	if code != cli.ExitFailure || !strings.Contains(errs, "no account named nobody") {
		t.Fatalf("add unknown contact: exit %d %s", code, errs)
	}
	code, _, errs = tube(t, b, "contact", "approve", "carol")
	if code != cli.ExitFailure || !strings.Contains(errs, "DoesNotExist") {
		t.Fatalf("approve unknown: exit %d %s", code, errs)
	}
	var contacts []map[string]any
	json.Unmarshal([]byte(mustTube(t, a, "contact", "list", "--json")), &contacts)
	if len(contacts) != 1 || contacts[0]["name"] != "bob" || contacts[0]["state"] != "contact" || contacts[0]["online"] != true {
		t.Fatalf("contact list --json = %v", contacts)
	}

	mustTube(t, a, "room", "create", "lab")
	// A non-member hears the same about lab as about a room that does
	// not exist, for every verb.
	for _, verb := range [][]string{{"join"}, {"members"}, {"leave"}, {"decline"}, {"invite", "$", "alice"}, {"remove", "$", "alice"}, {"admin", "$", "alice"}} {
		answer := func(room string) string {
			args := append([]string{"room"}, verb...)
			if len(verb) == 1 {
				args = append(args, room)
			} else {
				args[2] = room
			}
			code, _, errs := tube(t, b, args...)
			if code != cli.ExitFailure || !strings.Contains(errs, "(PermissionDenied)") {
				t.Fatalf("tube %v as a non-member: exit %d %s", args, code, errs)
			}
			return strings.ReplaceAll(errs, room, "ROOM")
		}
		if f, m := answer("lab"), answer("nosuch"); f != m {
			t.Fatalf("room %s: %q for lab, %q for a missing room", verb[0], f, m)
		}
	}
	var invs []map[string]any
	json.Unmarshal([]byte(mustTube(t, a, "room", "invite", "lab", "bob", "--json")), &invs)
	json.Unmarshal([]byte(mustTube(t, b, "room", "invitations", "--json")), &invs)
	if len(invs) != 1 || invs[0]["room"] != "lab" || invs[0]["by"] != "alice" {
		t.Fatalf("room invitations --json = %v", invs)
	}
	mustTube(t, b, "room", "join", "lab")
	out = mustTube(t, b, "room", "members", "lab")
	if !strings.Contains(out, "alice   owner") || !strings.Contains(out, "bob     member") {
		t.Fatalf("room members:\n%s", out)
	}
	var m map[string]any
	json.Unmarshal([]byte(mustTube(t, a, "room", "admin", "lab", "bob", "--json")), &m)
	if m["name"] != "bob" || m["admin"] != true {
		t.Fatalf("room admin --json = %v", m)
	}
	var rooms []map[string]any
	json.Unmarshal([]byte(mustTube(t, b, "room", "list", "--json")), &rooms)
	if len(rooms) != 1 || rooms[0]["role"] != "admin" || rooms[0]["open"] != nil {
		t.Fatalf("room list --json = %v; want lab, invite-only, bob an admin", rooms)
	}
	// An open room: offering a tube with parameters or publishing a
	// service to it needs --yes (a usage error without, never a prompt).
	mustTube(t, a, "room", "create", "hall", "--open")
	mustTube(t, a, "export", "vnc", "--tcp", "127.0.0.1:1", "--param", "password=s3cret")
	if code, _, errs := tube(t, a, "offer", "vnc", "--room", "hall"); code != cli.ExitUsage || !strings.Contains(errs, "--yes") {
		t.Fatalf("offer with parameters to an open room without --yes: exit %d %s", code, errs)
	}
	if code, _, errs := tube(t, a, "services", "publish", "Anything", "--room", "hall"); code != cli.ExitUsage || !strings.Contains(errs, "--yes") {
		t.Fatalf("publish to an open room without --yes: exit %d %s", code, errs)
	}
	mustTube(t, a, "offer", "vnc", "--room", "hall", "--yes")
	id := strings.TrimSpace(mustTube(t, a, "offer", "vnc", "--room", "lab")) // invite-only: no --yes needed
	// The daemon's refusal is a failure (exit 1), even when its sentence
	// reads like one of cobra's usage errors ("… accepts it").
	if code, _, errs := tube(t, a, "accept", id); code != cli.ExitFailure || !strings.Contains(errs, "accepts it") {
		t.Fatalf("accepting a tube one offered: exit %d %s, want exit 1", code, errs)
	}
	mustTube(t, b, "room", "join", "hall")
	mustTube(t, b, "room", "leave", "hall")

	// status --json has the documented shape.
	var st map[string]json.RawMessage
	if err := json.Unmarshal([]byte(mustTube(t, a, "status", "--json")), &st); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"accounts", "tubes", "connections"} {
		if _, ok := st[k]; !ok {
			t.Fatalf("status --json lacks %q", k)
		}
	}
	var accts []map[string]any
	json.Unmarshal(st["accounts"], &accts)
	want := []string{"name", "server", "status", "status_code", "reason", "reason_code", "self_handle"}
	for _, k := range want {
		if _, ok := accts[0][k]; !ok {
			t.Errorf("status --json accounts[0] lacks %q", k)
		}
	}
	if accts[0]["status"] != "Connected" || accts[0]["status_code"] != 0.0 || accts[0]["reason"] != "Requested" || accts[0]["reason_code"] != 1.0 {
		t.Fatalf("account status fields: %v", accts[0])
	}

	// disconnect, connect.
	if out := mustTube(t, a, "disconnect"); out != "alice\tDisconnected\n" {
		t.Fatalf("disconnect: %q", out)
	}
	if out := mustTube(t, a, "status"); !strings.Contains(out, "Disconnected  Requested") {
		t.Fatalf("status after disconnect:\n%s", out)
	}
	if out := mustTube(t, a, "connect", "alice"); out != "alice\tConnected\n" {
		t.Fatalf("connect: %q", out)
	}
}

func TestStatusWatch(t *testing.T) {
	relay := tubetest.Relay(t, rendezvous.Config{})
	d := tubetest.StartDaemon(t, "")
	d.Register(t, "alice", relay)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out syncBuffer
	done := make(chan int)
	go func() {
		done <- cli.Run(ctx, []string{"--socket", d.Socket, "status", "--watch"}, &out, &out)
	}()
	waitFor(t, &out, "Connected")
	mustTube(t, d.Socket, "disconnect")
	waitFor(t, &out, "alice: Disconnected (Requested)")
	mustTube(t, d.Socket, "connect")
	waitFor(t, &out, "alice: Connected (Requested)")
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("status --watch exit %d:\n%s", code, out.String())
	}
	// Each event is followed by a fresh table.
	lines := strings.Split(out.String(), "\n")
	tables := 0
	for _, l := range lines {
		if strings.HasPrefix(l, "ACCOUNT") {
			tables++
		}
	}
	if tables < 4 {
		t.Fatalf("status --watch redrew %d times:\n%s", tables, out.String())
	}
}

func TestHandlesOrder(t *testing.T) {
	// Contact list ordering is stable (sorted by name).
	relay := tubetest.Relay(t, rendezvous.Config{})
	da := tubetest.StartDaemon(t, "")
	da.Register(t, "alice", relay)
	for _, n := range []string{"zed", "bob", "mia"} {
		d := tubetest.StartDaemon(t, "")
		d.Register(t, n, relay)
		mustTube(t, da.Socket, "contact", "add", n)
	}
	var cs []struct{ Name string }
	json.Unmarshal([]byte(mustTube(t, da.Socket, "contact", "list", "--json")), &cs)
	var names []string
	for _, c := range cs {
		names = append(names, c.Name)
	}
	if !sort.StringsAreSorted(names) || !slices.Equal(names, []string{"bob", "mia", "zed"}) {
		t.Fatalf("contact list order: %v", names)
	}
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func waitFor(t *testing.T, b *syncBuffer, s string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(b.String(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("output never contained %q:\n%s", s, b.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The demo runs every step, the tube included, and says its checks held.
func TestDemo(t *testing.T) {
	out := mustTube(t, "", "demo")
	for _, want := range []string{"contacts on both sides", "path direct", "hashed exactly what bob sent", "is bob's", "All checks held."} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
}

// An account moves to another machine with its key: export writes it
// (mode 0600, never to stdout), add --key brings it, and the account is
// the same one there (same key, its contacts), its old daemon replaced.
func TestAccountKeyExportImport(t *testing.T) {
	relay := tubetest.Relay(t, rendezvous.Config{})
	da, db, dc := tubetest.StartDaemon(t, ""), tubetest.StartDaemon(t, ""), tubetest.StartDaemon(t, "")
	mustTube(t, da.Socket, "account", "add", "alice", "--server", relay.URL(), "--register")
	mustTube(t, dc.Socket, "account", "add", "bob", "--server", relay.URL(), "--register")
	mustTube(t, da.Socket, "contact", "add", "bob")
	mustTube(t, dc.Socket, "contact", "approve", "alice")
	file := filepath.Join(t.TempDir(), "alice.key")
	if code, _, errs := tube(t, da.Socket, "account", "export", "alice"); code != cli.ExitUsage || !strings.Contains(errs, "--out") {
		t.Fatalf("export without --out: exit %d %s", code, errs)
	}
	if code, out, _ := tube(t, da.Socket, "account", "export", "alice", "--out", file); code != 0 || out != "" {
		t.Fatalf("export: exit %d, stdout %q", code, out)
	}
	if st, err := os.Stat(file); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("exported key file: %v %v, want mode 0600", st, err)
	}
	if code, _, errs := tube(t, da.Socket, "account", "export", "alice", "--out", file); code != cli.ExitFailure || !strings.Contains(errs, "never overwrites") {
		t.Fatalf("export over an existing file: exit %d %s", code, errs)
	}
	if code, _, errs := tube(t, db.Socket, "account", "add", "alice", "--server", relay.URL(), "--key", file, "--register"); code != cli.ExitUsage {
		t.Fatalf("--key with --register: exit %d %s", code, errs)
	}
	var a struct{ Key, Status string }
	json.Unmarshal([]byte(mustTube(t, db.Socket, "account", "add", "alice", "--server", relay.URL(), "--key", file, "--json")), &a)
	var orig []struct{ Key, Status, Reason string }
	json.Unmarshal([]byte(mustTube(t, da.Socket, "account", "list", "--json")), &orig)
	if a.Status != "Connected" || len(orig) != 1 || a.Key != orig[0].Key {
		t.Fatalf("imported alice %+v, original %+v: want the same key, connected", a, orig)
	}
	var contacts []struct{ Name, State string }
	json.Unmarshal([]byte(mustTube(t, db.Socket, "contact", "list", "--json")), &contacts)
	if len(contacts) != 1 || contacts[0].Name != "bob" || contacts[0].State != "contact" {
		t.Fatalf("the moved account's contacts: %+v", contacts)
	}
	// Another account's key does not make anyone alice: the relay refuses
	// the login.
	dd := tubetest.StartDaemon(t, "")
	mustTube(t, dd.Socket, "account", "add", "carol", "--server", relay.URL(), "--register")
	other := filepath.Join(t.TempDir(), "carol.key")
	mustTube(t, dd.Socket, "account", "export", "carol", "--out", other)
	de := tubetest.StartDaemon(t, "")
	if code, _, errs := tube(t, de.Socket, "account", "add", "alice", "--server", relay.URL(), "--key", other); code != cli.ExitFailure || !strings.Contains(errs, "not connected") {
		t.Fatalf("alice with carol's key: exit %d %s", code, errs)
	}
}
