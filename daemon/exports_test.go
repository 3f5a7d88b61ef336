package daemon_test

import (
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/internal/node"
	"github.com/tubes-dev/tubes/internal/tubetest"
	"github.com/tubes-dev/tubes/localclient"
	"github.com/tubes-dev/tubes/rendezvous"
	"github.com/tubes-dev/tubes/tperr"
)

// Exports survive a daemon restart, as made: addresses, parameters,
// who may ask; a contact reaches a restored export as before. A
// parameters generator's export ends with its client and is not kept;
// an unexport is kept too; a change that cannot be saved is undone and
// refused; a corrupt file stops the daemon with a sentence naming it;
// a removed account's exports are forgotten.
func TestExportsSurviveRestart(t *testing.T) {
	relay := tubetest.Relay(t, rendezvous.Config{})
	dir := t.TempDir()
	alice, bob := tubetest.StartDaemon(t, dir), tubetest.StartDaemon(t, "")
	alice.Register(t, "alice", relay)
	bob.Register(t, "bob", relay)
	tubetest.Befriend(t, alice, "alice", bob, "bob")
	echo := tubetest.ServeTCP(t, func(c net.Conn) { io.Copy(c, c); c.Close() })
	durable := []api.Export{
		{Account: "alice", Service: "echo", TCP: echo.Addr().String(), Allow: []string{"bob"},
			Parameters: map[string]api.Value{"pw": {Type: api.TypeString, Value: "s3cret"}}},
		{Account: "alice", Service: "files", Unix: "/run/files.sock", ParamsExec: "printf {}", AllowRooms: []string{"lab"}},
	}
	for _, x := range durable {
		if _, err := alice.C.Export(ctx, "alice", x); err != nil {
			t.Fatal(err)
		}
	}
	lib := localclient.New(alice.Socket)
	srv, err := lib.NewStreamTubeServer(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.ExportTCPGenerator(ctx, "generated", echo.Addr().String(), func(localclient.ParamsRequest) (map[string]api.Value, error) { return nil, nil }); err != nil {
		t.Fatal(err)
	}
	if xs, _ := alice.C.Exports(ctx); len(xs) != 3 {
		t.Fatalf("exports before the restart: %+v", xs)
	}
	file := filepath.Join(dir, "exports.json")
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("exports.json: %v %v", fi, err)
	}
	restart := func() *tubetest.Daemon {
		t.Helper()
		lib.Close()
		alice.Close()
		alice = tubetest.StartDaemon(t, dir)
		lib = localclient.New(alice.Socket)
		return alice
	}
	restart()
	xs, err := alice.C.Exports(ctx)
	if err != nil || !slices.EqualFunc(xs, durable, func(a, b api.Export) bool {
		ja, _ := json.Marshal(a)
		jb, _ := json.Marshal(b)
		return string(ja) == string(jb)
	}) {
		t.Fatalf("exports after the restart: %+v (%v), want %+v", xs, err, durable)
	}
	// bob reaches the restored export, once alice is back online.
	aliceEv := tubetest.Record(t, alice.C, "alice")
	if a, _ := alice.C.Account(ctx, "alice"); a.Status != "Connected" {
		aliceEv.MustWait("alice connected", tubetest.IsStatus("alice", "Connected", ""))
	}
	tb, err := bob.C.Open(ctx, "bob", api.OpenRequest{Contact: "alice", Service: "echo"})
	if err != nil {
		t.Fatalf("bob opens the restored export: %v", err)
	}
	if tb.Parameters["pw"].Value != "s3cret" {
		t.Fatalf("the restored export's parameters: %+v", tb.Parameters)
	}
	c, err := net.Dial("tcp", tb.Address)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "ping")
	got := make([]byte, 4)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "ping" {
		t.Fatalf("echo through the restored export: %q %v", got, err)
	}
	c.Close()

	// A change that cannot be saved is refused and undone.
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(file, "in-the-way"), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.C.Export(ctx, "alice", api.Export{Service: "new", TCP: echo.Addr().String()}); tperr.Name(err) != tperr.NotAvailable {
		t.Fatalf("an export that cannot be saved: %v", err)
	}
	if err := alice.C.Unexport(ctx, "alice", "files"); tperr.Name(err) != tperr.NotAvailable {
		t.Fatalf("an unexport that cannot be saved: %v", err)
	}
	if xs, _ := alice.C.Exports(ctx); len(xs) != 2 || xs[0].Service != "echo" || xs[1].Service != "files" {
		t.Fatalf("exports after refused changes: %+v", xs)
	}
	os.RemoveAll(file)
	if err := alice.C.Unexport(ctx, "alice", "files"); err != nil {
		t.Fatal(err)
	}
	restart()
	if xs, _ := alice.C.Exports(ctx); len(xs) != 1 || xs[0].Service != "echo" {
		t.Fatalf("after unexporting files and a restart: %+v", xs)
	}

	// The account goes, and its exports with it.
	if err := alice.C.RemoveAccount(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	var saved struct{ Exports []api.Export }
	b, _ := os.ReadFile(file)
	if err := json.Unmarshal(b, &saved); err != nil || len(saved.Exports) != 0 {
		t.Fatalf("exports.json after removing alice: %s (%v)", b, err)
	}

	// A corrupt file stops the daemon, and says which file.
	lib.Close()
	alice.Close()
	os.WriteFile(file, []byte(`{"exports":[{`), 0o600)
	_, err = node.StartDaemon(ctx, node.DaemonConfig{StateDir: dir, Socket: filepath.Join(t.TempDir(), "d.sock")})
	if err == nil || !strings.Contains(err.Error(), file+" is corrupt") {
		t.Fatalf("a daemon with a corrupt exports.json: %v", err)
	}
}
