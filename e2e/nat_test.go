package e2e

import (
	"context"
	"encoding/json"
	"io"
	"math/rand/v2"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tubes-dev/tubes/internal/netns"
	"github.com/tubes-dev/tubes/internal/serve"
)

// daemonIn starts a daemon inside a lab host; its local API socket is a
// file, so CLI commands reach it from anywhere.
func daemonIn(t *testing.T, h *netns.Host) []string {
	t.Helper()
	_, env := daemonProcIn(t, h)
	return env
}

// daemonProcIn is daemonIn that returns the daemon's process too.
func daemonProcIn(t *testing.T, h *netns.Host) (*proc, []string) {
	t.Helper()
	dir := t.TempDir()
	sock := filepath.Join(dir, "daemon.sock")
	p := startCmd(t, h.Command(context.Background(), tubeBin, "daemon", "--state", dir, "--socket", sock), nil)
	p.waitLine("daemon: ")
	return p, []string{"TUBE_SOCKET=" + sock}
}

// hashService serves, inside h, a service that answers each connection
// with the SHA-256 and length of what it read up to the client's
// half-close.
func hashService(t *testing.T, h *netns.Host) string {
	t.Helper()
	ln, err := h.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go serve.Loop(ln, serve.HashBack)
	return ln.Addr().String()
}

// checkHashed sends size random bytes from h to addr and checks the hash
// the service answers with.
func checkHashed(t *testing.T, h *netns.Host, addr string, size int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := h.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("connect to the tube's local end in %s: %v", h.Name, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	data := make([]byte, size)
	r := rand.NewChaCha8([32]byte{1})
	r.Read(data)
	if _, err := c.Write(data); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if want := serve.HashLine(data); string(got) != want {
		t.Fatalf("the service got %q, we sent %q", got, want)
	}
}

// tubePath returns the path `tube tubes --json` shows for tube id.
func tubePath(t *testing.T, env []string, id string) string {
	t.Helper()
	var tubes []struct{ ID, Path string }
	if err := json.Unmarshal([]byte(mustRun(t, env, "tubes", "--json")), &tubes); err != nil {
		t.Fatal(err)
	}
	for _, tb := range tubes {
		if tb.ID == id {
			return tb.Path
		}
	}
	t.Fatalf("tube %s is not listed", id)
	return ""
}

// Alice and bob each sit in a private LAN behind their own NAT (iptables
// MASQUERADE, no port forwarding); the relay is on the "public" segment.
// Neither can reach the other directly, so a tube between them opens
// through the relay's TURN server and moves data with every byte
// checked. Carol, on alice's LAN, reaches alice directly.
func TestNATRelayFallback(t *testing.T) {
	lab := netns.New(t)
	pub := lab.Public("relay")
	lanA, lanB := lab.LAN("a"), lab.LAN("b")
	aliceH, carolH := lanA.Host("alice"), lanA.Host("carol")
	bobH := lanB.Host("bob")

	ip := pub.IP.String()
	relay := startCmd(t, pub.Command(context.Background(), tubeBin, "relay",
		"--listen", ip+":4222", "--turn-listen", ip+":3478",
		"--allow-peer", "198.18.0.0/24"), nil) // the lab's "internet" is a benchmarking range the filter refuses
	url := strings.TrimSpace(relay.waitLine("rendezvous: "))

	alice, bob, carol := daemonIn(t, aliceH), daemonIn(t, bobH), daemonIn(t, carolH)
	for name, env := range map[string][]string{"alice": alice, "bob": bob, "carol": carol} {
		mustRun(t, env, "account", "add", name, "--server", url, "--register")
	}
	mustRun(t, alice, "contact", "add", "bob")
	mustRun(t, bob, "contact", "approve", "alice")
	mustRun(t, alice, "contact", "add", "carol")
	mustRun(t, carol, "contact", "approve", "alice")

	mustRun(t, alice, "export", "hash", "--tcp", hashService(t, aliceH))
	for _, c := range []struct {
		name string
		env  []string
		host *netns.Host
		path string
	}{{"bob", bob, bobH, "relay"}, {"carol", carol, carolH, "direct"}} {
		id := strings.TrimSpace(mustRun(t, alice, "offer", "hash", "--to", c.name))
		var addr string
		deadline := time.Now().Add(10 * time.Second)
		for {
			code, out := run(t, c.env, "accept", id)
			if code == 0 {
				addr = strings.TrimSpace(out)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s accept: %s", c.name, out)
			}
			time.Sleep(50 * time.Millisecond) // the offer may still be on its way
		}
		checkHashed(t, c.host, addr, 16<<20)
		if p := tubePath(t, c.env, id); p != c.path {
			t.Errorf("%s's tube went %s, want %s", c.name, p, c.path)
		}
		if p := tubePath(t, alice, id); p != c.path {
			t.Errorf("alice's tube to %s went %s, want %s", c.name, p, c.path)
		}
	}
}
