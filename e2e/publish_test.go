package e2e

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/internal/tubetest"
)

// Publication and discovery through the CLI, as two people and a room
// use them: alice registers an on-demand service and a service she runs,
// publishes the first to bob and the second to the room lab; bob and
// carol (a member of lab, not alice's contact) browse with filters
// (JSON compared with golden files), and `tube open` reaches each
// service, the on-demand one started by its first connection, with every
// byte checked.
func TestPublishBrowseOpenCLI(t *testing.T) {
	relay := start(t, nil, "relay", "--turn-listen", "127.0.0.1:0", "--listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)))
	url := strings.TrimSpace(relay.waitLine("rendezvous: "))
	ad, alice := daemon(t)
	_, bob := daemon(t)
	cd, carol := daemon(t)
	defer func() {
		if t.Failed() {
			t.Logf("alice's daemon:\n%s\ncarol's daemon:\n%s", ad.output(), cd.output())
		}
	}()
	for name, env := range map[string][]string{"alice": alice, "bob": bob, "carol": carol} {
		mustRun(t, env, "account", "add", name, "--server", url, "--register")
	}
	mustRun(t, alice, "contact", "add", "bob")
	mustRun(t, bob, "contact", "approve", "alice")
	mustRun(t, alice, "room", "create", "lab", "--open") // carol is not alice's contact
	mustRun(t, carol, "room", "join", "lab")

	// Hasher starts on demand (this test binary as the service); Viewer
	// is a service alice runs herself.
	dir := t.TempDir()
	script := tubetest.ActivatedScript(t, dir, "hasher")
	viewer := serveTCP(t, func(c net.Conn) { io.Copy(c, c) })
	write := func(name, xml string) string {
		path := filepath.Join(dir, name)
		os.WriteFile(path, []byte(xml), 0o644)
		return path
	}
	mustRun(t, alice, "services", "add", write("hasher.xml", `<SFW version="1.1"><service><name>Hasher</name><filepath>`+script+`</filepath>
<interface><name>org.example.Hash</name><version>1.0</version></interface>
<interface><name>org.example.Hash</name><version>2.1</version><capabilities></capabilities>
<customproperty key="idle">1</customproperty></interface></service></SFW>`))
	mustRun(t, alice, "services", "add", write("viewer.xml", `<SFW version="1.1"><service><name>Viewer</name><ipcaddress>`+viewer.Addr().String()+`</ipcaddress>
<interface><name>org.example.View</name><version>1.3</version><customproperty key="format">png</customproperty></interface></service></SFW>`))
	mustRun(t, alice, "services", "publish", "Hasher", "--to", "bob")
	mustRun(t, alice, "services", "publish", "Viewer", "--room", "lab", "--yes") // an open room
	golden(t, "services-publications.json", mustRun(t, alice, "services", "publications", "--json"))
	mustRun(t, alice, "services", "grant", "bob", "ReadUserData", "WriteUserData")
	mustRun(t, alice, "services", "revoke", "bob", "WriteUserData")
	golden(t, "services-grants.json", mustRun(t, alice, "services", "grants", "--json"))

	// What each one sees, through filters.
	golden(t, "services-browse-contact.json", mustRun(t, bob, "services", "browse", "alice", "--json"))
	browse := func(env []string, args ...string) (impls []api.RemoteImplementation) {
		t.Helper()
		if err := json.Unmarshal([]byte(mustRun(t, env, args...)), &impls); err != nil {
			t.Fatal(err)
		}
		return impls
	}
	var impls []api.RemoteImplementation
	impls = browse(bob, "services", "browse", "alice", "--interface", "org.example.hash", "--version", "2.0", "--json")
	if len(impls) != 1 || impls[0].Version.String() != "2.1" || impls[0].Publisher != "alice" {
		t.Fatalf("bob browsing for org.example.Hash 2.0 or later: %+v", impls)
	}
	impls = browse(bob, "services", "browse", "alice", "--interface", "org.example.Hash", "--version", "2.0", "--exact", "--json")
	if len(impls) != 0 {
		t.Fatalf("bob browsing for exactly 2.0: %+v", impls)
	}
	golden(t, "services-browse-room.json", mustRun(t, carol, "services", "browse", "--room", "lab", "--property", "format=png", "--json"))
	impls = browse(carol, "services", "browse", "--room", "lab", "--property", "format=PNG", "--json")
	if len(impls) != 0 {
		t.Fatalf("property values are case-sensitive; carol got %+v", impls)
	}
	if code, out := run(t, carol, "services", "browse", "alice"); code != 1 || !strings.Contains(out, "contact") {
		t.Errorf("carol browsing alice, not her contact: exit %d %s", code, out)
	}
	impls = browse(carol, "services", "browse", "alice", "--room", "lab", "--json")
	if len(impls) != 1 || impls[0].Service != "Viewer" || impls[0].Room != "lab" {
		t.Fatalf("carol browsing what alice publishes to lab: %+v", impls)
	}

	// bob opens by interface: the on-demand Hasher starts with his first
	// connection.
	addr := strings.TrimSpace(mustRun(t, bob, "open", "alice/org.example.Hash@2.0"))
	data := make([]byte, 3<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	got := exchange(t, addr, data)
	var pid int
	var sum string
	var n int
	if _, err := fmt.Sscanf(got, "activated %d %s %d", &pid, &sum, &n); err != nil || sum != fmt.Sprintf("%x", sha256.Sum256(data)) || n != len(data) {
		t.Fatalf("the on-demand service answered %q", got)
	}
	var acts map[string]api.ActivationStatus
	json.Unmarshal([]byte(mustRun(t, alice, "services", "activations", "--json")), &acts)
	if acts["Hasher"].Starts != 1 || acts["Hasher"].PID != pid {
		t.Errorf("alice's activations: %+v (the service said pid %d)", acts, pid)
	}
	// carol, a member of lab, opens what alice published to the room,
	// through the room.
	if code, out := run(t, carol, "open", "alice/org.example.View@1.0"); code != 1 || !strings.Contains(out, "--room") {
		t.Errorf("carol opening without naming the room: exit %d %s", code, out)
	}
	addr = strings.TrimSpace(mustRun(t, carol, "open", "alice/org.example.View@1.0", "--room", " Lab")) // named as the rendezvous does: trimmed, any case
	if got := exchange(t, addr, data); got != string(data) {
		t.Fatalf("carol's connection to Viewer echoed %d bytes of %d", len(got), len(data))
	}
	// The tube that answered carol's request is hers alone and ends with
	// her closing it.
	var tubes []api.Tube
	json.Unmarshal([]byte(mustRun(t, carol, "tubes", "--json")), &tubes)
	if len(tubes) != 1 || tubes[0].Room != "lab" || tubes[0].Peer != "alice" {
		t.Fatalf("carol's tubes: %+v", tubes)
	}
	mustRun(t, carol, "close", tubes[0].ID)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		tubes = nil
		json.Unmarshal([]byte(mustRun(t, alice, "tubes", "--json")), &tubes)
		if !slices.ContainsFunc(tubes, func(x api.Tube) bool { return x.Room == "lab" }) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("alice still has the tube carol closed: %+v", tubes)
		}
	}
	// What is not published to someone stays closed to them.
	if code, out := run(t, carol, "open", "alice/Hasher", "--room", "lab"); code != 1 || !strings.Contains(out, "PermissionDenied") {
		t.Errorf("carol opening Hasher, published to bob only: exit %d %s", code, out)
	}
	mustRun(t, alice, "services", "unpublish", "Hasher", "--to", "bob")
	if code, out := run(t, bob, "open", "alice/org.example.Hash@2.0"); code != 1 {
		t.Errorf("bob opening Hasher after it was unpublished: exit %d %s", code, out)
	}

	// carol is removed from lab while connected to what alice publishes
	// there: the connection is reset at once, and her old catalog opens
	// nothing any more.
	addr = strings.TrimSpace(mustRun(t, carol, "open", "alice/org.example.View@1.0", "--room", "lab"))
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 4)); err != nil { // echoed: the connection is through
		t.Fatal(err)
	}
	mustRun(t, alice, "room", "remove", "lab", "carol")
	if _, err := io.ReadAll(c); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("carol's connection after her removal: %v, want a reset", err)
	}
	if code, out := run(t, carol, "open", "alice/org.example.View@1.0", "--room", "lab"); code != 1 || !strings.Contains(out, "PermissionDenied") {
		t.Errorf("carol opening from her old catalog after her removal: exit %d %s", code, out)
	}
	if code, out := run(t, carol, "room", "members", "lab"); code != 1 || !strings.Contains(out, "PermissionDenied") {
		t.Errorf("carol listing lab's members after her removal: exit %d %s", code, out)
	}
}

// exchange sends data to addr, half-closes, and returns all it reads back.
func exchange(t *testing.T, addr string, data []byte) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	go func() {
		c.Write(data)
		c.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("%s: %v after %d bytes", addr, err, len(got))
	}
	return string(got)
}
