package turnclient_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v4"

	"github.com/tubes-dev/tubes/internal/turntest"
	"github.com/tubes-dev/tubes/relay"
	"github.com/tubes-dev/tubes/turnclient"
)

func startRelay(t *testing.T, listen string) *relay.Server {
	t.Helper()
	s, err := relay.Start(relay.Config{Listen: listen, Users: map[string]string{"alice": "secret"}, Secret: "s3cret",
		AllowPeers: []string{"127.0.0.0/8", "::1"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func allocate(t *testing.T, server, user, pass string) *turnclient.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := turnclient.Allocate(ctx, turnclient.Config{Server: server, Username: user, Password: pass})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// exchange sends n random bytes each way between a and b and checks them.
func exchange(t *testing.T, a, b net.Conn, n int) {
	t.Helper()
	data := make([]byte, n)
	rand.Read(data)
	errc := make(chan error, 1)
	go func() {
		_, err := a.Write(data)
		errc <- err
	}()
	got := make([]byte, n)
	if _, err := io.ReadFull(b, got); err != nil {
		t.Fatalf("read through the relay: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(got) != sha256.Sum256(data) {
		t.Fatal("bytes changed on the way through the relay")
	}
	go func() {
		_, err := b.Write(data[:n/2])
		errc <- err
	}()
	if _, err := io.ReadFull(a, got[:n/2]); err != nil {
		t.Fatalf("read back through the relay: %v", err)
	}
	<-errc
	if !bytes.Equal(got[:n/2], data[:n/2]) {
		t.Fatal("bytes changed on the way back")
	}
}

func TestAcceptAndConnect(t *testing.T) {
	s := startRelay(t, "127.0.0.1:0")
	c := allocate(t, s.Addr(), "alice", "secret")
	if !c.RelayedAddr().Addr().IsLoopback() || c.RelayedAddr().Port() == 0 {
		t.Fatalf("relayed address %v", c.RelayedAddr())
	}
	ctx := ctxT(t)

	// A peer connects to the relayed address: ConnectionAttempt, bound.
	if err := c.Permit(ctx, netip.MustParseAddr("127.0.0.1")); err != nil {
		t.Fatal(err)
	}
	peer, err := net.Dial("tcp", c.RelayedAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	// Early data, sent before the client binds, must come first.
	peer.Write([]byte("early"))
	d, err := c.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.Peer.String() != peer.LocalAddr().String() {
		t.Fatalf("attempt names peer %v, want %v", d.Peer, peer.LocalAddr())
	}
	early := make([]byte, 5)
	if _, err := io.ReadFull(d, early); err != nil || string(early) != "early" {
		t.Fatalf("early data %q, %v", early, err)
	}
	exchange(t, peer, d, 4<<20)

	// Connect to a listening peer through the relay.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		p, _ := ln.Accept()
		acc <- p
	}()
	out, err := c.Connect(ctx, netip.MustParseAddrPort(ln.Addr().String()))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	p := <-acc
	defer p.Close()
	if p.RemoteAddr().(*net.TCPAddr).Port != int(c.RelayedAddr().Port()) {
		t.Fatalf("peer sees %v, want the relayed port %d", p.RemoteAddr(), c.RelayedAddr().Port())
	}
	exchange(t, out, p, 1<<20)
}

func TestAgainstCoturn(t *testing.T) {
	for _, rest := range []bool{false, true} {
		name := map[bool]string{false: "long-term", true: "REST"}[rest]
		t.Run(name, func(t *testing.T) {
			var co *turntest.Coturn
			user, pass := "alice", "secret"
			if rest {
				co = turntest.StartCoturn(t, turntest.Options{Secret: "s3cret"})
				user, pass = relay.RESTCredentials("s3cret", "alice", time.Hour, time.Now())
			} else {
				co = turntest.StartCoturn(t, turntest.Options{User: user, Password: pass})
			}
			c := allocate(t, co.Addr, user, pass)
			ctx := ctxT(t)
			if err := c.Permit(ctx, netip.MustParseAddr("127.0.0.1")); err != nil {
				t.Fatal(err)
			}
			peer, err := net.Dial("tcp", c.RelayedAddr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer peer.Close()
			d, err := c.Accept(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			exchange(t, peer, d, 1<<20)

			ln, _ := net.Listen("tcp", "127.0.0.1:0")
			defer ln.Close()
			acc := make(chan net.Conn, 1)
			go func() {
				p, _ := ln.Accept()
				acc <- p
			}()
			out, err := c.Connect(ctx, netip.MustParseAddrPort(ln.Addr().String()))
			if err != nil {
				t.Fatal(err)
			}
			defer out.Close()
			p := <-acc
			defer p.Close()
			exchange(t, out, p, 1<<20)
		})
	}
}

// FuzzServerMessage feeds arbitrary server messages to what the client
// reads from them: errors, lifetimes, addresses and connection attempts.
func FuzzServerMessage(f *testing.F) {
	for _, s := range serverMessages() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		turnclient.DecodeForFuzz(b)
	})
}

// serverMessages are seeds: a ConnectionAttempt and an error response.
func serverMessages() [][]byte {
	att, _ := stun.Build(stun.TransactionID, stun.NewType(stun.MethodConnectionAttempt, stun.ClassIndication),
		stun.RawAttribute{Type: stun.AttrConnectionID, Value: []byte{0, 0, 0, 7}})
	var xa stun.XORMappedAddress
	xa.IP, xa.Port = net.ParseIP("198.18.0.3"), 40000
	xa.AddToAs(att, stun.AttrXORPeerAddress)
	e, _ := stun.Build(stun.TransactionID, stun.NewType(stun.MethodConnect, stun.ClassErrorResponse),
		&stun.ErrorCodeAttribute{Code: 446, Reason: []byte("Connection Already Exists")})
	return [][]byte{att.Raw, e.Raw}
}

// Many permissions (one per accepter address over a long allocation) are
// refreshed in batches a server can read, so the allocation survives.
func TestManyPermissionsRefresh(t *testing.T) {
	s, err := relay.Start(relay.Config{Listen: "127.0.0.1:0", Users: map[string]string{"alice": "secret"}, AllowPeers: []string{"198.18.0.0/15"}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c := allocate(t, s.Addr(), "alice", "secret")
	ctx := ctxT(t)
	for i := range 300 {
		if err := c.Permit(ctx, netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.RefreshPerms(ctx); err != nil {
		t.Fatalf("refresh of 300 permissions: %v", err)
	}
	select {
	case <-c.Done():
		t.Fatalf("the allocation ended: %v", c.Err())
	default:
	}
}
