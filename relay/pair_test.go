package relay

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/tubes-dev/tubes/turnclient"
)

// Every bound data connection is paired with its peer connection, so the
// bytes move with splice(2) rather than through pion's buffers: for
// connections peers open (ConnectionAttempt) and ones the client opens
// (Connect); and the bytes still arrive intact both ways.
func TestDataConnectionsPaired(t *testing.T) {
	s, c, ctx := allocated(t, Config{})
	check := func(a, b net.Conn) {
		t.Helper()
		msg := bytes.Repeat([]byte("paired "), 100000)
		go a.Write(msg)
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(b, got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("relayed bytes: %v", err)
		}
		go b.Write(msg[:1000])
		if _, err := io.ReadFull(a, got[:1000]); err != nil || !bytes.Equal(got[:1000], msg[:1000]) {
			t.Fatalf("relayed bytes back: %v", err)
		}
	}
	for range 3 {
		p, err := net.Dial("tcp", c.RelayedAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		d, err := c.Accept(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		check(p, d)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		p, err := ln.Accept()
		if err == nil {
			io.Copy(p, p)
		}
	}()
	out, err := c.Connect(ctx, netip.MustParseAddrPort(ln.Addr().String()))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	out.Write([]byte("echo"))
	if b := make([]byte, 4); func() error { _, err := io.ReadFull(out, b); return err }() != nil || string(b) != "echo" {
		t.Fatal("no echo through a Connect")
	}
	if n := s.paired.Load(); n != 4 {
		t.Fatalf("%d of 4 data connections paired for splice(2)", n)
	}
	s.mu.Lock()
	left := len(s.cids)
	s.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d CONNECTION-IDs still waiting for a bind", left)
	}
}

// With a bandwidth cap, a user's relayed connections together carry no
// more than the cap allows (the bytes still arrive intact).
func TestBandwidthCap(t *testing.T) {
	t.Parallel()
	const capBps = 1 << 20
	_, c, ctx := allocated(t, Config{Bandwidth: capBps})
	// Two connections of 1.5 MiB each: 3 MiB at 1 MiB/s after a 100 KiB
	// burst cannot take less than about 2.9 s.
	const each = 3 << 19
	start := time.Now()
	done := make(chan error, 2)
	for range 2 {
		p, err := net.Dial("tcp", c.RelayedAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		d, err := c.Accept(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		msg := bytes.Repeat([]byte{'b'}, each)
		go p.Write(msg)
		go func() {
			got := make([]byte, each)
			_, err := io.ReadFull(d, got)
			if err == nil && !bytes.Equal(got, msg) {
				err = io.ErrUnexpectedEOF
			}
			done <- err
		}()
	}
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if took := time.Since(start); took < 2500*time.Millisecond {
		t.Fatalf("3 MiB crossed a 1 MiB/s cap in %v", took)
	}
}

// A side that sends its last bytes and closes at once: the other side
// gets every byte and then the end, promptly, both ways (the end comes
// with the bytes and raises no readiness event of its own).
func TestEndRightAfterData(t *testing.T) {
	_, c, ctx := allocated(t, Config{})
	for i := range 20 {
		size := 1000 + i*9000 // below and above the splice threshold
		msg := bytes.Repeat([]byte{byte(i)}, size)
		p, err := net.Dial("tcp", c.RelayedAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		d, err := c.Accept(ctx)
		if err != nil {
			t.Fatal(err)
		}
		from, to := net.Conn(p), net.Conn(d)
		if i%2 == 1 {
			from, to = d, p
		}
		from.Write(msg)
		from.Close()
		to.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, err := io.ReadAll(to)
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("round %d: %d of %d bytes, then %v", i, len(got), size, err)
		}
		to.Close()
	}
}

// A relay listening on every address (the usual deployment) still makes
// outgoing connections for Connect.
func TestConnectFromWildcardRelay(t *testing.T) {
	_, c, ctx := allocated(t, Config{Listen: "0.0.0.0:0", External: "127.0.0.1"})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		p, err := ln.Accept()
		if err == nil {
			io.Copy(p, p)
		}
	}()
	out, err := c.Connect(ctx, netip.MustParseAddrPort(ln.Addr().String()))
	if err != nil {
		t.Fatalf("Connect through a wildcard relay: %v", err)
	}
	defer out.Close()
	out.Write([]byte("ping"))
	b := make([]byte, 4)
	if _, err := io.ReadFull(out, b); err != nil || string(b) != "ping" {
		t.Fatalf("echo: %q %v", b, err)
	}
}

// allocated starts a relay (cfg, on loopback unless it says otherwise,
// with user alice and loopback peers allowed) and a client with an
// allocation on it that permits loopback peers.
func allocated(t *testing.T, cfg Config) (*Server, *turnclient.Client, context.Context) {
	t.Helper()
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	cfg.Users = map[string]string{"alice": "secret"}
	cfg.AllowPeers = []string{"127.0.0.0/8"}
	s, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	c, err := turnclient.Allocate(ctx, turnclient.Config{Server: s.PublicAddr(), Username: "alice", Password: "secret"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Permit(ctx, netip.MustParseAddr("127.0.0.1")); err != nil {
		t.Fatal(err)
	}
	return s, c, ctx
}
