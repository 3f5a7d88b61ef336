package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/internal/tubetest"
	"github.com/tubes-dev/tubes/localclient"
	"github.com/tubes-dev/tubes/tperr"
)

// The offerer's daemon is killed (SIGKILL) in the middle of a transfer:
// the accepting application sees a reset, never a clean end of file, and
// the accepting daemon reports ConnectionLost.
func TestOffererKilledMidTransfer(t *testing.T) {
	aliceProc, alice, bob := contacts(t)

	// A service that streams without end.
	chunk := make([]byte, 64<<10)
	l := serveTCP(t, func(c net.Conn) {
		for {
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	})
	bc := localclient.New(strings.TrimPrefix(bob[0], "TUBE_SOCKET="))
	defer bc.Close()
	ev := tubetest.Record(t, bc, "bob")

	mustRun(t, alice, "export", "firehose", "--tcp", l.Addr().String())
	id := strings.TrimSpace(mustRun(t, alice, "offer", "firehose", "--to", "bob"))
	ev.MustWait("the offer", func(e api.Event) bool { return e.Type == api.EventNewTube && e.TubeID == id })
	addr := strings.TrimSpace(mustRun(t, bob, "accept", id))

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.CopyN(io.Discard, c, 4<<20); err != nil {
		t.Fatalf("before the kill: %v", err)
	}
	aliceProc.kill()
	_, err = io.Copy(io.Discard, c)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("after the offerer died the app's read ended with %v, want a reset", err)
	}
	cc := ev.MustWait("ConnectionClosed", func(e api.Event) bool { return e.Type == api.EventConnectionClosed && e.TubeID == id })
	if cc.Error != tperr.ConnectionLost {
		t.Errorf("ConnectionClosed %s (%s), want ConnectionLost", cc.Error, cc.Message)
	}
}

// The CLI end to end: export, offer (prints the id), accept (prints the
// address), tubes and connections listings, whois and close.
func TestTubeCLI(t *testing.T) {
	_, alice, bob := contacts(t)
	l := serveTCP(t, func(c net.Conn) { io.Copy(c, c) })
	mustRun(t, alice, "export", "echo", "--tcp", l.Addr().String(), "--param", "pw=hunter2", "--param", "port:uint=5900")
	if code, out := run(t, alice, "offer", "echo", "--to", "mallory"); code != 1 || !strings.Contains(out, "not your contact") {
		t.Errorf("offer to a non-contact: exit %d %s", code, out)
	}
	if code, _ := run(t, alice, "offer", "echo"); code != 2 {
		t.Errorf("offer without --to or --room: exit %d, want 2", code)
	}
	id := strings.TrimSpace(mustRun(t, alice, "offer", "echo", "--to", "bob"))
	var addr string
	for deadline := time.Now().Add(10 * time.Second); addr == ""; time.Sleep(50 * time.Millisecond) {
		if code, out := run(t, bob, "accept", id); code == 0 {
			addr = strings.TrimSpace(out)
		} else if time.Now().After(deadline) {
			t.Fatalf("accept: %s", out)
		}
	}
	var tubes []api.Tube
	json.Unmarshal([]byte(mustRun(t, bob, "tubes", "--json")), &tubes)
	if len(tubes) != 1 || tubes[0].ID != id || tubes[0].State != "Open" || tubes[0].Path != "direct" {
		t.Errorf("bob's tubes: %+v", tubes)
	}
	if p := tubes[0].Parameters; p["port"].Type != "uint" || p["port"].Value != uint64(5900) || p["pw"].Value != "hunter2" {
		t.Errorf("parameters at bob: %+v", p)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "ping")
	io.ReadFull(c, make([]byte, 4))
	var conns []api.Connection
	for deadline := time.Now().Add(5 * time.Second); len(conns) == 0 && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		json.Unmarshal([]byte(mustRun(t, alice, "connections", "--json")), &conns)
	}
	if len(conns) != 1 || conns[0].Contact != "bob" {
		t.Fatalf("alice's connections: %+v", conns)
	}
	if out := mustRun(t, alice, "whois", conns[0].Source); !strings.HasPrefix(out, "bob (tube "+id) {
		t.Errorf("whois: %q", out)
	}
	mustRun(t, alice, "close", id)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("after close: %v", err)
	}
}

// contacts starts a relay and two daemons whose accounts alice and bob
// are mutual contacts (alice's daemon with extra flags, if any); it
// returns alice's daemon and both environments.
func contacts(t *testing.T, aliceFlags ...string) (*proc, []string, []string) {
	t.Helper()
	relay := start(t, nil, "relay", "--turn-listen", "127.0.0.1:0", "--listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)))
	url := strings.TrimSpace(relay.waitLine("rendezvous: "))
	aliceProc, alice := daemon(t, aliceFlags...)
	_, bob := daemon(t)
	mustRun(t, alice, "account", "add", "alice", "--server", url, "--register")
	mustRun(t, bob, "account", "add", "bob", "--server", url, "--register")
	mustRun(t, alice, "contact", "add", "bob")
	mustRun(t, bob, "contact", "approve", "alice")
	return aliceProc, alice, bob
}

// serveTCP runs handle on each connection to a new loopback listener.
func serveTCP(t *testing.T, handle func(net.Conn)) net.Listener { return tubetest.ServeTCP(t, handle) }

// Exports are kept across a daemon killed and started again on its
// state: `tube exports` lists them as before, and a contact allowed to
// ask reaches the service again. A second daemon on the same state
// directory is refused while the first runs.
func TestExportsKeptAcrossRestart(t *testing.T) {
	relay := start(t, nil, "relay", "--turn-listen", "127.0.0.1:0", "--listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)))
	url := strings.TrimSpace(relay.waitLine("rendezvous: "))
	state := t.TempDir()
	sock := filepath.Join(state, "daemon.sock")
	startAlice := func() *proc {
		p := start(t, nil, "daemon", "--state", state, "--socket", sock)
		p.waitLine("daemon: ")
		return p
	}
	aliceProc, alice := startAlice(), []string{"TUBE_SOCKET=" + sock}
	_, bob := daemon(t)
	mustRun(t, alice, "account", "add", "alice", "--server", url, "--register")
	mustRun(t, bob, "account", "add", "bob", "--server", url, "--register")
	mustRun(t, alice, "contact", "add", "bob")
	mustRun(t, bob, "contact", "approve", "alice")
	l := serveTCP(t, func(c net.Conn) { io.Copy(c, c) })
	mustRun(t, alice, "export", "echo", "--tcp", l.Addr().String(), "--param", "pw=hunter2", "--allow", "bob")
	mustRun(t, alice, "export", "files", "--unix", "/run/files.sock", "--allow-room", "lab")
	want := mustRun(t, alice, "exports")
	rows := map[string]string{}
	for _, line := range strings.Split(want, "\n") {
		if f := strings.Fields(line); len(f) == 5 {
			rows[f[1]] = strings.Join(f, " ")
		}
	}
	if rows["echo"] != "alice echo "+l.Addr().String()+" 1 bob" || rows["files"] != "alice files /run/files.sock - room:lab" {
		t.Fatalf("tube exports:\n%s", want)
	}
	if code, out := run(t, nil, "daemon", "--state", state, "--socket", filepath.Join(t.TempDir(), "second.sock")); code != 1 ||
		!strings.Contains(out, "in use by another daemon") || !strings.Contains(out, "(NotAvailable)") {
		t.Fatalf("a second daemon on alice's state: exit %d %s", code, out)
	}

	aliceProc.kill()
	startAlice()
	if got := mustRun(t, alice, "exports"); got != want {
		t.Fatalf("tube exports after the restart:\n%s\nwant\n%s", got, want)
	}
	var addr string
	for deadline := time.Now().Add(20 * time.Second); addr == ""; time.Sleep(50 * time.Millisecond) {
		// alice's daemon logs in again by itself.
		if code, out := run(t, bob, "open", "alice/echo"); code == 0 {
			addr = strings.TrimSpace(out)
		} else if time.Now().After(deadline) {
			t.Fatalf("bob opens the kept export: %s", out)
		}
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "ping")
	if b := make([]byte, 4); func() error { _, err := io.ReadFull(c, b); return err }() != nil || string(b) != "ping" {
		t.Fatalf("echo through the kept export: %q", b)
	}
}
