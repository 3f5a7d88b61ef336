package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tubes-dev/tubes/turnclient"
)

// `tube relay --turn-only` is a TURN server alone: coturn-style static
// credentials work with a TURN client, and daemons started with `--turn`
// and its REST secret relay a tube through it.
func TestTURNOnlyRelay(t *testing.T) {
	turn := start(t, nil, "relay", "--turn-only", "--turn-listen", "127.0.0.1:0", "--turn-user", "op:pw",
		"--turn-secret", "e2e-secret", "--allow-peer", "127.0.0.0/8")
	addr := strings.TrimSpace(turn.waitLine("turn: "))

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := turnclient.Allocate(ctx, turnclient.Config{Server: addr, Username: "op", Password: "pw"})
	if err != nil {
		t.Fatalf("allocate on tube relay --turn-only: %v", err)
	}
	defer c.Close()
	if err := c.Permit(ctx, netip.MustParseAddr("127.0.0.1")); err != nil {
		t.Fatal(err)
	}
	p, err := net.Dial("tcp", c.RelayedAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	io.WriteString(p, "through the turn-only relay")
	p.(*net.TCPConn).CloseWrite()
	d, err := c.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(d); string(b) != "through the turn-only relay" {
		t.Fatalf("relayed %q", b)
	}
	d.Close()

	rv := start(t, nil, "relay", "--listen", "127.0.0.1:0", "--turn-listen", "off")
	url := strings.TrimSpace(rv.waitLine("rendezvous: "))
	envs := map[string][]string{}
	for _, n := range []string{"alice", "bob"} {
		dir := t.TempDir()
		sock := filepath.Join(dir, "daemon.sock")
		d := start(t, nil, "daemon", "--state", dir, "--socket", sock, "--peer-listen", "127.0.0.1:0",
			"--turn", addr, "--turn-secret", "e2e-secret")
		d.waitLine("daemon: ")
		envs[n] = []string{"TUBE_SOCKET=" + sock}
		mustRun(t, envs[n], "account", "add", n, "--server", url, "--register")
	}
	alice, bob := envs["alice"], envs["bob"]
	mustRun(t, alice, "contact", "add", "bob")
	mustRun(t, bob, "contact", "approve", "alice")
	svc := serveTCP(t, func(c net.Conn) {
		defer c.Close()
		b, _ := io.ReadAll(c)
		fmt.Fprintf(c, "%d bytes", len(b))
	})
	mustRun(t, alice, "export", "count", "--tcp", svc.Addr().String())
	id := strings.TrimSpace(mustRun(t, alice, "offer", "count", "--to", "bob", "--path", "relay"))
	var local string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		code, out := run(t, bob, "accept", id)
		if code == 0 {
			local = strings.TrimSpace(out)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("accept: %s", out)
		}
	}
	conn, err := net.Dial("tcp", local)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write(make([]byte, 1<<20))
	conn.(*net.TCPConn).CloseWrite()
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	if b, _ := io.ReadAll(conn); string(b) != "1048576 bytes" {
		t.Fatalf("the service answered %q", b)
	}
	if p := tubePath(t, bob, id); p != "relay" {
		t.Fatalf("the tube went %s, want relay", p)
	}
	// --turn without credentials is a usage error.
	code, out := run(t, nil, "daemon", "--turn", addr)
	if code != 2 || !strings.Contains(out, "--turn needs exactly one of") {
		t.Fatalf("daemon --turn without credentials: exit %d %s", code, out)
	}
}
