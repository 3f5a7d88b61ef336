package relay_test

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pion/stun/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/tubes-dev/tubes/internal/stunframe"
	"github.com/tubes-dev/tubes/internal/testenv"
	"github.com/tubes-dev/tubes/relay"
)

// These tests speak raw STUN to a relay on loopback, over real TCP and UDP
// sockets, so that they can send what a well-behaved client never does.

const (
	alice, alicePass = "alice", "secret"
	bob, bobPass     = "bob", "hunter2"
	restSecret       = "s3cret"

	protoTCP, protoUDP = 6, 17

	// How long a refused peer connection may take to be closed, and how
	// long to wait for a ConnectionAttempt that must not come.
	prompt = 2 * time.Second
	quiet  = 300 * time.Millisecond

	magicCookie = 0x2112A442 // RFC 8489 §5
)

var loopback = []string{"127.0.0.0/8"}

// startRelay starts a relay on 127.0.0.1 for alice, bob and REST users,
// with cfg's other settings.
func startRelay(t *testing.T, cfg relay.Config) *relay.Server {
	t.Helper()
	cfg.Listen = "127.0.0.1:0"
	if cfg.Users == nil {
		cfg.Users = map[string]string{alice: alicePass, bob: bobPass}
	}
	if cfg.Secret == "" {
		cfg.Secret = restSecret
	}
	s, err := relay.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// turnConn speaks raw STUN over one TCP connection or UDP socket, with
// long-term credentials.
type turnConn struct {
	net.Conn
	t            *testing.T
	tcp          bool
	user, pass   string
	realm, nonce string          // learnt from the first 401
	queue        []*stun.Message // indications read while waiting for a response
	hdr          [4]byte
}

func dialTURN(t *testing.T, network, addr, user, pass string) *turnConn {
	t.Helper()
	c, err := net.Dial(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &turnConn{Conn: c, t: t, tcp: network == "tcp", user: user, pass: pass}
}

func dialTCP(t *testing.T, s *relay.Server, user, pass string) *turnConn {
	return dialTURN(t, "tcp", s.Addr(), user, pass)
}

// read reads one STUN message.
func (c *turnConn) read(timeout time.Duration) (*stun.Message, error) {
	c.SetReadDeadline(time.Now().Add(timeout))
	defer c.SetReadDeadline(time.Time{})
	var raw []byte
	if c.tcp {
		f, err := stunframe.Read(c.Conn, c.hdr[:])
		if err != nil {
			return nil, err
		}
		raw = f
	} else {
		buf := make([]byte, 2048)
		n, err := c.Read(buf)
		if err != nil {
			return nil, err
		}
		raw = buf[:n]
	}
	m := &stun.Message{Raw: raw}
	if err := m.Decode(); err != nil {
		return nil, err
	}
	return m, nil
}

// do sends a request and returns the response. Once the relay named its
// realm and nonce (in the 401 to the first request, which do answers),
// requests carry USERNAME, REALM, NONCE and MESSAGE-INTEGRITY.
func (c *turnConn) do(method stun.Method, attrs ...stun.Setter) *stun.Message {
	c.t.Helper()
	for try := 0; ; try++ {
		authed := c.nonce != ""
		setters := append([]stun.Setter{stun.TransactionID, stun.NewType(method, stun.ClassRequest)}, attrs...)
		if authed {
			setters = append(setters, stun.NewUsername(c.user), stun.NewRealm(c.realm), stun.NewNonce(c.nonce),
				stun.NewLongTermIntegrity(c.user, c.realm, c.pass))
		}
		req, err := stun.Build(append(setters, stun.Fingerprint)...)
		if err != nil {
			c.t.Fatal(err)
		}
		res := c.roundTrip(req)
		code := errCode(res)
		if code == 401 || code == 438 {
			var realm stun.Realm
			var nonce stun.Nonce
			if realm.GetFrom(res) != nil || nonce.GetFrom(res) != nil {
				c.t.Fatalf("%v: %d without REALM and NONCE", method, code)
			}
			c.realm, c.nonce = realm.String(), nonce.String()
			if try == 0 {
				continue
			}
		} else if authed {
			// Every answer to an authenticated request is signed, the
			// guard's refusals too.
			if err := stun.NewLongTermIntegrity(c.user, c.realm, c.pass).Check(res); err != nil {
				c.t.Fatalf("%v answer (%d): MESSAGE-INTEGRITY: %v", method, code, err)
			}
		}
		return res
	}
}

func (c *turnConn) roundTrip(req *stun.Message) *stun.Message {
	c.t.Helper()
	if _, err := c.Write(req.Raw); err != nil {
		c.t.Fatalf("%v: %v", req.Type, err)
	}
	for {
		m, err := c.read(10 * time.Second)
		if err != nil {
			c.t.Fatalf("%v: no answer: %v", req.Type, err)
		}
		if m.Type.Class == stun.ClassIndication {
			c.queue = append(c.queue, m)
			continue
		}
		if m.TransactionID == req.TransactionID {
			return m
		}
	}
}

// indication returns the next indication, or nil if none comes in time.
func (c *turnConn) indication(timeout time.Duration) *stun.Message {
	c.t.Helper()
	if len(c.queue) > 0 {
		m := c.queue[0]
		c.queue = c.queue[1:]
		return m
	}
	for {
		m, err := c.read(timeout)
		if isTimeout(err) {
			return nil
		}
		if err != nil {
			c.t.Fatalf("control connection: %v", err)
		}
		if m.Type.Class == stun.ClassIndication {
			return m
		}
	}
}

// attempt waits for a ConnectionAttempt and returns its peer and id.
func (c *turnConn) attempt() (netip.AddrPort, uint32) {
	c.t.Helper()
	m := c.indication(5 * time.Second)
	if m == nil {
		c.t.Fatal("no ConnectionAttempt")
	}
	return c.attemptOf(m)
}

// attemptOf returns the peer and connection id of a ConnectionAttempt.
func (c *turnConn) attemptOf(m *stun.Message) (netip.AddrPort, uint32) {
	c.t.Helper()
	if m.Type != stun.NewType(stun.MethodConnectionAttempt, stun.ClassIndication) {
		c.t.Fatalf("got %v, want a ConnectionAttempt", m.Type)
	}
	var peer stun.XORMappedAddress
	if err := peer.GetFromAs(m, stun.AttrXORPeerAddress); err != nil {
		c.t.Fatalf("ConnectionAttempt without XOR-PEER-ADDRESS: %v", err)
	}
	return addrPort(peer), connIDOf(c.t, m)
}

// noAttempt fails if a ConnectionAttempt arrives soon.
func (c *turnConn) noAttempt() {
	c.t.Helper()
	if m := c.indication(quiet); m != nil {
		c.t.Fatalf("unexpected %v", m.Type)
	}
}

// allocate asks for an allocation and returns its relayed address and
// lifetime, failing unless it succeeds.
func (c *turnConn) allocate(proto byte, attrs ...stun.Setter) (netip.AddrPort, time.Duration) {
	c.t.Helper()
	res := c.do(stun.MethodAllocate, append([]stun.Setter{transport(proto)}, attrs...)...)
	if code := errCode(res); code != 0 {
		c.t.Fatalf("Allocate: %d %s", code, reason(res))
	}
	var relayed stun.XORMappedAddress
	if err := relayed.GetFromAs(res, stun.AttrXORRelayedAddress); err != nil {
		c.t.Fatalf("Allocate: XOR-RELAYED-ADDRESS: %v", err)
	}
	return addrPort(relayed), lifetimeOf(c.t, res)
}

// expect does a request and checks the answer's code (0: success).
func (c *turnConn) expect(want int, method stun.Method, attrs ...stun.Setter) *stun.Message {
	c.t.Helper()
	res := c.do(method, attrs...)
	if code := errCode(res); code != want {
		c.t.Fatalf("%v: got %d %s, want %d", method, code, reason(res), want)
	}
	return res
}

func (c *turnConn) permit(ips ...string) {
	c.t.Helper()
	var attrs []stun.Setter
	for _, ip := range ips {
		attrs = append(attrs, peerAddr(netip.AddrPortFrom(netip.MustParseAddr(ip), 1)))
	}
	c.expect(0, stun.MethodCreatePermission, attrs...)
}

// bind opens a data connection for id with user's credentials.
func bind(t *testing.T, s *relay.Server, user, pass string, id uint32) net.Conn {
	t.Helper()
	d := dialTCP(t, s, user, pass)
	d.expect(0, stun.MethodConnectionBind, connID(id))
	return d.Conn
}

// connect makes the relay connect to a new listening peer and returns
// the peer's side and the connection id.
func (c *turnConn) connect() (net.Conn, uint32) {
	c.t.Helper()
	ln := listen(c.t)
	res := c.expect(0, stun.MethodConnect, peerAddr(netip.MustParseAddrPort(ln.Addr().String())))
	p, err := ln.Accept()
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { p.Close() })
	return p, connIDOf(c.t, res)
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// dialPeer connects a peer to a relayed address, from 127.0.0.1 or src.
func dialPeer(t *testing.T, relayed netip.AddrPort, src ...string) net.Conn {
	t.Helper()
	var d net.Dialer
	if len(src) > 0 {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src[0])}
	}
	c, err := d.Dial("tcp", relayed.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// expectPeerClosed connects a peer to a relayed address (from 127.0.0.1
// or src) and fails unless the relay closes the connection at once: the
// kernel completes the handshake, so the close (or reset) comes after it,
// sometimes before connect(2) returns.
func expectPeerClosed(t *testing.T, relayed netip.AddrPort, src ...string) {
	t.Helper()
	var d net.Dialer
	if len(src) > 0 {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src[0])}
	}
	c, err := d.Dial("tcp", relayed.String())
	if errors.Is(err, syscall.ECONNRESET) {
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	expectClosed(t, c, prompt)
}

// waitClosed waits up to d for c to be closed (EOF or reset), ignoring
// bytes read, and reports whether it was.
func waitClosed(c net.Conn, d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	defer c.SetReadDeadline(time.Time{})
	_, err := io.Copy(io.Discard, c)
	return !isTimeout(err)
}

func expectClosed(t *testing.T, c net.Conn, d time.Duration) {
	t.Helper()
	if !waitClosed(c, d) {
		t.Fatalf("%v still open after %v", c.LocalAddr(), d)
	}
}

// expectOpen fails if c is closed within d.
func expectOpen(t *testing.T, c net.Conn, d time.Duration) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	defer c.SetReadDeadline(time.Time{})
	var b [1]byte
	if _, err := c.Read(b[:]); !isTimeout(err) {
		t.Fatalf("%v: read %v, want it open and silent", c.LocalAddr(), err)
	}
}

func expectRefused(t *testing.T, addr netip.AddrPort) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr.String(), prompt)
	if err == nil {
		c.Close()
		t.Fatalf("%v still accepts connections", addr)
	}
}

// relays writes msg to a and checks that it comes out of b.
func relays(t *testing.T, a, b net.Conn, msg string) {
	t.Helper()
	if _, err := a.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	b.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer b.SetReadDeadline(time.Time{})
	if _, err := io.ReadFull(b, got); err != nil || string(got) != msg {
		t.Fatalf("relayed %q, %v; want %q", got, err, msg)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Attributes.

func transport(proto byte) stun.Setter {
	return stun.RawAttribute{Type: stun.AttrRequestedTransport, Value: []byte{proto, 0, 0, 0}}
}

func lifetime(seconds uint32) stun.Setter {
	return stun.RawAttribute{Type: stun.AttrLifetime, Value: binary.BigEndian.AppendUint32(nil, seconds)}
}

func connID(id uint32) stun.Setter {
	return stun.RawAttribute{Type: stun.AttrConnectionID, Value: binary.BigEndian.AppendUint32(nil, id)}
}

type setterFunc func(*stun.Message) error

func (f setterFunc) AddTo(m *stun.Message) error { return f(m) }

// peerAddr is an XOR-PEER-ADDRESS in ap's own family: unlike
// stun.XORMappedAddress it writes ::ffff:a.b.c.d as an IPv6 address.
func peerAddr(ap netip.AddrPort) stun.Setter {
	return setterFunc(func(m *stun.Message) error {
		var key [16]byte
		binary.BigEndian.PutUint32(key[:4], magicCookie)
		copy(key[4:], m.TransactionID[:])
		ip := ap.Addr().AsSlice()
		v := []byte{0, 1, 0, 0}
		if len(ip) == 16 {
			v[1] = 2
		}
		binary.BigEndian.PutUint16(v[2:], ap.Port()^uint16(magicCookie>>16))
		for i, b := range ip {
			v = append(v, b^key[i])
		}
		m.Add(stun.AttrXORPeerAddress, v)
		return nil
	})
}

func errCode(m *stun.Message) int {
	if m.Type.Class == stun.ClassSuccessResponse {
		return 0
	}
	var ec stun.ErrorCodeAttribute
	if ec.GetFrom(m) != nil {
		return -1
	}
	return int(ec.Code)
}

func reason(m *stun.Message) string {
	var ec stun.ErrorCodeAttribute
	if ec.GetFrom(m) != nil {
		return ""
	}
	return strconv.Quote(string(ec.Reason))
}

func connIDOf(t *testing.T, m *stun.Message) uint32 {
	t.Helper()
	v, err := m.Get(stun.AttrConnectionID)
	if err != nil || len(v) != 4 {
		t.Fatalf("%v without a CONNECTION-ID (0x002A): %v", m.Type, err)
	}
	return binary.BigEndian.Uint32(v)
}

func lifetimeOf(t *testing.T, m *stun.Message) time.Duration {
	t.Helper()
	v, err := m.Get(stun.AttrLifetime)
	if err != nil || len(v) != 4 {
		t.Fatalf("%v without LIFETIME: %v", m.Type, err)
	}
	return time.Duration(binary.BigEndian.Uint32(v)) * time.Second
}

func addrPort(a stun.XORMappedAddress) netip.AddrPort {
	ip, _ := netip.AddrFromSlice(a.IP)
	return netip.AddrPortFrom(ip.Unmap(), uint16(a.Port))
}

// The tests run in parallel: TestBindTimeout waits 30 s.

// TestBindTimeout: a peer connection that is not bound within 30 s is
// closed, both one a peer opened and one Connect opened.
func TestBindTimeout(t *testing.T) {
	t.Parallel()
	s := startRelay(t, relay.Config{AllowPeers: loopback})
	c := dialTCP(t, s, alice, alicePass)
	relayed, _ := c.allocate(protoTCP)
	c.permit("127.0.0.1")
	inbound := dialPeer(t, relayed)
	c.attempt()
	outbound, _ := c.connect()
	start := time.Now()

	var wg sync.WaitGroup
	for _, p := range []net.Conn{inbound, outbound} {
		wg.Go(func() {
			if waitClosed(p, 5*time.Second) {
				t.Errorf("%v closed after %v, before the 30 s bind timer", p.LocalAddr(), time.Since(start))
			} else if !waitClosed(p, 40*time.Second-time.Since(start)) {
				t.Errorf("%v still open after 40 s unbound", p.LocalAddr())
			} else if d := time.Since(start); d < 25*time.Second {
				t.Errorf("%v closed after %v, before the 30 s bind timer", p.LocalAddr(), d)
			}
		})
	}
	wg.Wait()
}

// TestAllocateRefusals: RFC 6062 §5.1 and RFC 8656 §7.2.
func TestAllocateRefusals(t *testing.T) {
	t.Parallel()
	s := startRelay(t, relay.Config{AllowPeers: loopback})

	u := dialTURN(t, "udp", s.Addr(), alice, alicePass)
	u.expect(400, stun.MethodAllocate, transport(protoTCP))
	u.expect(442, stun.MethodAllocate, transport(99))
	u.allocate(protoUDP) // the refusals left no state behind

	c := dialTCP(t, s, alice, alicePass)
	c.expect(400, stun.MethodAllocate, transport(protoTCP), stun.RawAttribute{Type: stun.AttrDontFragment})
	c.expect(400, stun.MethodAllocate, transport(protoTCP), stun.RawAttribute{Type: stun.AttrReservationToken, Value: []byte("12345678")})
	c.expect(400, stun.MethodAllocate, transport(protoTCP), stun.RawAttribute{Type: stun.AttrEvenPort, Value: []byte{0x80}})
	c.expect(442, stun.MethodAllocate, transport(99))
	c.expect(400, stun.MethodAllocate) // no REQUESTED-TRANSPORT
	relayed, _ := c.allocate(protoTCP)
	if !relayed.Addr().IsLoopback() || relayed.Port() == 0 {
		t.Fatalf("relayed address %v", relayed)
	}
	c.expect(437, stun.MethodAllocate, transport(protoTCP)) // one allocation per 5-tuple

	// Unauthenticated requests get pion's 401, not the guard's answer.
	raw := dialTCP(t, s, alice, alicePass)
	res := raw.roundTrip(stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodAllocate, stun.ClassRequest),
		transport(protoTCP), stun.RawAttribute{Type: stun.AttrEvenPort, Value: []byte{0x80}}))
	if errCode(res) != 401 {
		t.Fatalf("unauthenticated Allocate: %d, want 401", errCode(res))
	}
}

// TestNoAllocation: requests that need an allocation get 437 without one
// (pion itself leaves Refresh, CreatePermission and ChannelBind
// unanswered; the guard answers).
func TestNoAllocation(t *testing.T) {
	t.Parallel()
	s := startRelay(t, relay.Config{AllowPeers: loopback})
	peer := peerAddr(netip.MustParseAddrPort("127.0.0.1:9"))
	channel := stun.RawAttribute{Type: stun.AttrChannelNumber, Value: []byte{0x40, 0, 0, 0}}
	for _, network := range []string{"tcp", "udp"} {
		c := dialTURN(t, network, s.Addr(), alice, alicePass)
		c.expect(437, stun.MethodRefresh)
		c.expect(437, stun.MethodRefresh, lifetime(0))
		c.expect(437, stun.MethodCreatePermission, peer)
		c.expect(437, stun.MethodChannelBind, peer, channel)
		if network == "tcp" {
			c.expect(437, stun.MethodConnect, peer)
		}
		c.allocate(protoUDP)
		c.expect(0, stun.MethodCreatePermission, peer)
		c.expect(0, stun.MethodChannelBind, peer, channel)
		c.expect(0, stun.MethodRefresh, lifetime(0))
		c.expect(437, stun.MethodRefresh)
	}
}

// TestPermissionPerIP: CreatePermission lets in every port of one IP,
// and a peer without permission is closed at once, unannounced.
func TestPermissionPerIP(t *testing.T) {
	t.Parallel()
	s := startRelay(t, relay.Config{AllowPeers: loopback})
	c := dialTCP(t, s, alice, alicePass)
	relayed, _ := c.allocate(protoTCP)

	expectPeerClosed(t, relayed)
	c.noAttempt()

	c.permit("127.0.0.1") // for port 1; peers come from other ports
	for range 2 {
		p := dialPeer(t, relayed)
		peer, _ := c.attempt()
		if peer.String() != p.LocalAddr().String() {
			t.Fatalf("ConnectionAttempt names %v, want %v", peer, p.LocalAddr())
		}
	}

	// Another IP of the same host has no permission.
	expectPeerClosed(t, relayed, "127.0.0.2")
	c.noAttempt()
	c.permit("127.0.0.2")
	p := dialPeer(t, relayed, "127.0.0.2")
	if peer, _ := c.attempt(); peer.String() != p.LocalAddr().String() {
		t.Fatalf("ConnectionAttempt names %v, want %v", peer, p.LocalAddr())
	}
}

// TestConnect: RFC 6062 §5.2.
func TestConnect(t *testing.T) {
	t.Parallel()
	s := startRelay(t, relay.Config{AllowPeers: loopback})
	ln := listen(t)
	target := peerAddr(netip.MustParseAddrPort(ln.Addr().String()))

	c := dialTCP(t, s, alice, alicePass)
	c.expect(437, stun.MethodConnect, target) // no allocation yet
	relayed, _ := c.allocate(protoTCP)
	c.expect(400, stun.MethodConnect) // no XOR-PEER-ADDRESS
	c.expect(400, stun.MethodConnect, stun.RawAttribute{Type: stun.AttrXORPeerAddress, Value: []byte{0, 1, 0}})

	res := c.expect(0, stun.MethodConnect, target)
	id := connIDOf(t, res)
	p, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if p.RemoteAddr().String() != relayed.String() {
		t.Fatalf("the peer sees %v, want the relayed address %v", p.RemoteAddr(), relayed)
	}
	c.expect(446, stun.MethodConnect, target) // pending
	d := bind(t, s, alice, alicePass, id)
	relays(t, d, p, "hello peer")
	relays(t, p, d, "hello client")
	c.expect(446, stun.MethodConnect, target) // active

	// A closed port on loopback: the connection fails.
	closed := listen(t)
	closed.Close()
	c.expect(447, stun.MethodConnect, peerAddr(netip.MustParseAddrPort(closed.Addr().String())))

	// Connect over UDP, and on a UDP allocation.
	u := dialTURN(t, "udp", s.Addr(), alice, alicePass)
	u.expect(400, stun.MethodConnect, target)
	u.allocate(protoUDP)
	u.expect(400, stun.MethodConnect, target)
	tu := dialTCP(t, s, alice, alicePass)
	tu.allocate(protoUDP) // a UDP allocation over TCP is fine (RFC 8656 §3.1)
	tu.expect(400, stun.MethodConnect, target)
}

// TestConnectionBind: RFC 6062 §5.4.
func TestConnectionBind(t *testing.T) {
	t.Parallel()
	s := startRelay(t, relay.Config{AllowPeers: loopback})
	c := dialTCP(t, s, alice, alicePass)
	relayed, _ := c.allocate(protoTCP)
	c.permit("127.0.0.1")

	t.Run("unknown id", func(t *testing.T) {
		d := dialTCP(t, s, alice, alicePass)
		d.expect(400, stun.MethodConnectionBind, connID(12345))
		d.expect(400, stun.MethodConnectionBind) // no CONNECTION-ID
		// The refused binds left it a TURN connection, still guarded.
		d.expect(400, stun.MethodAllocate, transport(protoTCP), stun.RawAttribute{Type: stun.AttrEvenPort, Value: []byte{0x80}})
		d.allocate(protoTCP)
	})

	p := dialPeer(t, relayed)
	p.Write([]byte("early bytes;"))
	_, id := c.attempt()

	t.Run("over UDP", func(t *testing.T) {
		u := dialTURN(t, "udp", s.Addr(), alice, alicePass)
		u.expect(400, stun.MethodConnectionBind, connID(id))
	})

	t.Run("other credentials", func(t *testing.T) {
		// Pion binds only with credentials of the allocation's user id
		// (the user name, or the user part of a REST name).
		d := dialTCP(t, s, bob, bobPass)
		d.expect(400, stun.MethodConnectionBind, connID(id))
		u, pw := relay.RESTCredentials(restSecret, bob, time.Hour, time.Now())
		d = dialTCP(t, s, u, pw)
		d.expect(400, stun.MethodConnectionBind, connID(id))
		expectOpen(t, p, quiet)
	})

	d := bind(t, s, alice, alicePass, id) // the refused binds did not use up id
	p.Write([]byte("late bytes"))
	got := make([]byte, len("early bytes;late bytes"))
	d.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(d, got); err != nil || string(got) != "early bytes;late bytes" {
		t.Fatalf("the data connection starts with %q, %v", got, err)
	}
	relays(t, d, p, "to the peer")

	again := dialTCP(t, s, alice, alicePass)
	again.expect(400, stun.MethodConnectionBind, connID(id)) // bound already
}

// TestClose: closing either side of a data connection closes the other;
// Refresh with LIFETIME 0 closes the allocation and every connection.
func TestClose(t *testing.T) {
	t.Parallel()
	s := startRelay(t, relay.Config{AllowPeers: loopback})
	c := dialTCP(t, s, alice, alicePass)
	relayed, _ := c.allocate(protoTCP)
	c.permit("127.0.0.1")
	accept := func() (peer, data net.Conn) {
		peer = dialPeer(t, relayed)
		_, id := c.attempt()
		data = bind(t, s, alice, alicePass, id)
		relays(t, peer, data, "ping")
		return peer, data
	}

	peer, data := accept()
	data.Close()
	expectClosed(t, peer, prompt)

	peer, data = accept()
	peer.Close()
	expectClosed(t, data, prompt)

	peer, data = accept()
	out, id := c.connect()
	outData := bind(t, s, alice, alicePass, id)
	relays(t, outData, out, "pong")
	pending := dialPeer(t, relayed)
	c.attempt()
	pendingOut, _ := c.connect()

	res := c.expect(0, stun.MethodRefresh, lifetime(0))
	if l := lifetimeOf(t, res); l != 0 {
		t.Fatalf("Refresh(0) answered LIFETIME %v", l)
	}
	for _, conn := range []net.Conn{peer, data, out, outData, pending, pendingOut} {
		expectClosed(t, conn, prompt)
	}
	expectRefused(t, relayed)
	if n := s.Allocations(); n != 0 {
		t.Fatalf("%d allocations after Refresh(0)", n)
	}
	c.expect(437, stun.MethodRefresh)
	c.expect(0, stun.MethodAllocate, transport(protoTCP)) // the 5-tuple is free again
}

// TestLifetime: default 600 s, at most 3600 s (RFC 8656 §7.2, §7.3).
func TestLifetime(t *testing.T) {
	t.Parallel()
	s := startRelay(t, relay.Config{AllowPeers: loopback})
	for _, tc := range []struct {
		network string
		attrs   []stun.Setter
		want    time.Duration
	}{
		{"tcp", nil, 600 * time.Second},
		{"tcp", []stun.Setter{lifetime(7200)}, time.Hour},
		{"tcp", []stun.Setter{lifetime(3600)}, time.Hour},
		{"tcp", []stun.Setter{lifetime(1800)}, 1800 * time.Second},
		{"tcp", []stun.Setter{lifetime(60)}, 600 * time.Second},
		{"udp", []stun.Setter{lifetime(7200)}, time.Hour},
		{"udp", nil, 600 * time.Second},
	} {
		c := dialTURN(t, tc.network, s.Addr(), alice, alicePass)
		proto := byte(protoTCP)
		if tc.network == "udp" {
			proto = protoUDP
		}
		if _, got := c.allocate(proto, tc.attrs...); got != tc.want {
			t.Errorf("Allocate over %s with %d attributes: lifetime %v, want %v", tc.network, len(tc.attrs), got, tc.want)
		}
		for _, r := range []struct {
			attrs []stun.Setter
			want  time.Duration
		}{{[]stun.Setter{lifetime(7200)}, time.Hour}, {nil, 600 * time.Second}, {[]stun.Setter{lifetime(900)}, 900 * time.Second}} {
			if got := lifetimeOf(t, c.expect(0, stun.MethodRefresh, r.attrs...)); got != r.want {
				t.Errorf("Refresh over %s: lifetime %v, want %v", tc.network, got, r.want)
			}
		}
	}

	// The lifetime is the allocation's real timer: at expiry the relay
	// closes it and its connections.
	reg := prometheus.NewRegistry()
	s = startRelay(t, relay.Config{AllowPeers: loopback, Lifetime: 2 * time.Second, Registerer: reg})
	short := dialTCP(t, s, alice, alicePass)
	relayed, l := short.allocate(protoTCP)
	if l != 2*time.Second {
		t.Fatalf("lifetime %v, want the configured 2s", l)
	}
	short.permit("127.0.0.1")
	peer := dialPeer(t, relayed)
	_, id := short.attempt()
	data := bind(t, s, alice, alicePass, id)
	long := dialTCP(t, s, alice, alicePass)
	if _, l := long.allocate(protoTCP, lifetime(3600)); l != time.Hour {
		t.Fatalf("lifetime %v, want 1h", l)
	}
	expectClosed(t, peer, 5*time.Second)
	expectClosed(t, data, prompt)
	// Pion closes the connections, then the relayed listener, then says
	// the allocation is gone.
	deadline := time.Now().Add(prompt)
	for gather(t, reg, "tubes_turn_allocations", "tcp") != 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	expectRefused(t, relayed)
	short.expect(437, stun.MethodRefresh) // the client learns it expired
	short.expect(0, stun.MethodAllocate, transport(protoTCP))
	long.expect(0, stun.MethodRefresh)
}

// TestPeerFilterEndToEnd: a relay without --allow-peer refuses
// non-public peers in CreatePermission, ChannelBind, Connect and inbound
// connections.
func TestPeerFilterEndToEnd(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	s := startRelay(t, relay.Config{Registerer: reg})
	c := dialTCP(t, s, alice, alicePass)
	relayed, _ := c.allocate(protoTCP)
	u := dialTURN(t, "udp", s.Addr(), alice, alicePass)
	u.allocate(protoUDP)
	for _, ip := range []string{"127.0.0.1", "10.0.0.1", "169.254.169.254", "::ffff:127.0.0.1", "0.0.0.0"} {
		peer := peerAddr(netip.AddrPortFrom(netip.MustParseAddr(ip), 80))
		c.expect(403, stun.MethodCreatePermission, peer)
		c.expect(403, stun.MethodConnect, peer)
		u.expect(403, stun.MethodChannelBind, peer, stun.RawAttribute{Type: stun.AttrChannelNumber, Value: []byte{0x40, 0, 0, 0}})
	}
	// One refused address makes the whole CreatePermission fail.
	c.expect(403, stun.MethodCreatePermission, peerAddr(netip.MustParseAddrPort("8.8.8.8:1")), peerAddr(netip.MustParseAddrPort("10.0.0.1:1")))
	c.expect(0, stun.MethodCreatePermission, peerAddr(netip.MustParseAddrPort("8.8.8.8:1")))

	expectPeerClosed(t, relayed)
	c.noAttempt()
	if n := gather(t, reg, "tubes_turn_peers_refused_total", ""); n < 16 {
		t.Errorf("tubes_turn_peers_refused_total = %v, want ≥ 16", n)
	}
}

// TestQuotas: allocations per user, and pending (unbound) connections.
func TestQuotas(t *testing.T) {
	t.Parallel()
	t.Run("allocations", func(t *testing.T) {
		s := startRelay(t, relay.Config{AllowPeers: loopback, MaxAllocations: 2})
		a1 := dialTCP(t, s, alice, alicePass)
		a1.allocate(protoTCP)
		dialTURN(t, "udp", s.Addr(), alice, alicePass).allocate(protoUDP)
		a3 := dialTCP(t, s, alice, alicePass)
		a3.expect(486, stun.MethodAllocate, transport(protoTCP))
		u, pw := relay.RESTCredentials(restSecret, alice, time.Hour, time.Now())
		dialTCP(t, s, u, pw).expect(486, stun.MethodAllocate, transport(protoTCP)) // same user
		dialTCP(t, s, bob, bobPass).allocate(protoTCP)                             // another user

		a1.Close() // ends its allocation
		deadline := time.Now().Add(prompt)
		for s.Allocations() != 2 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		a3.allocate(protoTCP)
	})

	t.Run("allocations of everyone", func(t *testing.T) {
		// Users under their own quota are refused together once the
		// relay holds its total; an ended allocation makes room.
		s := startRelay(t, relay.Config{AllowPeers: loopback, TotalAllocations: 2})
		a1 := dialTCP(t, s, alice, alicePass)
		a1.allocate(protoTCP)
		dialTCP(t, s, bob, bobPass).allocate(protoTCP)
		u, pw := relay.RESTCredentials(restSecret, "carol", time.Hour, time.Now())
		carol := dialTCP(t, s, u, pw)
		carol.expect(486, stun.MethodAllocate, transport(protoTCP))
		a1.Close()
		deadline := time.Now().Add(prompt)
		for s.Allocations() != 1 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		carol.allocate(protoTCP)
	})

	t.Run("UDP and TCP from one port", func(t *testing.T) {
		// A UDP and a TCP client on the same address and port have
		// different 5-tuples: their allocations are counted apart.
		s := startRelay(t, relay.Config{AllowPeers: loopback, MaxAllocations: 2})
		u, c := twins(t, s, alice, alicePass)
		c.allocate(protoTCP)
		u.allocate(protoUDP)
		c.connect() // still known as a TCP allocation
		c.expect(0, stun.MethodRefresh, lifetime(0))
		u.expect(0, stun.MethodRefresh, lifetime(0))
		for range 2 {
			dialTCP(t, s, alice, alicePass).allocate(protoTCP)
		}
	})

	t.Run("pending", func(t *testing.T) {
		s := startRelay(t, relay.Config{AllowPeers: loopback, MaxPending: 1})
		c, relayed := loopbackAllocation(t, s)
		p1 := dialPeer(t, relayed)
		_, id := c.attempt()
		turnedAway(t, c, relayed)

		d := bind(t, s, alice, alicePass, id)
		relays(t, p1, d, "bound") // relaying: no longer pending
		p3 := dialPeer(t, relayed)
		if peer, _ := c.attempt(); peer.String() != p3.LocalAddr().String() {
			t.Fatalf("ConnectionAttempt names %v, want %v", peer, p3.LocalAddr())
		}
	})

	t.Run("connections per allocation", func(t *testing.T) {
		s := startRelay(t, relay.Config{AllowPeers: loopback, MaxConnections: 2})
		c, relayed := loopbackAllocation(t, s)
		p1 := dialPeer(t, relayed)
		_, id1 := c.attempt()
		d1 := bind(t, s, alice, alicePass, id1)
		relays(t, p1, d1, "one")
		dialPeer(t, relayed)
		c.attempt() // the second, left unbound: it counts too

		// Full: a third peer is turned away, and so is a Connect.
		turnedAway(t, c, relayed)
		// Another allocation of the same user has its own room.
		c2, relayed2 := loopbackAllocation(t, s)
		dialPeer(t, relayed2)
		c2.attempt()

		// The first connection ends: room for one more.
		p1.Close()
		d1.Close()
		deadline := time.Now().Add(prompt)
		for {
			p, err := net.Dial("tcp", relayed.String())
			if err != nil { // reset while still full: try again
				if time.Now().After(deadline) {
					t.Fatalf("no room for a new peer after one of two connections ended: %v", err)
				}
				continue
			}
			t.Cleanup(func() { p.Close() })
			if m := c.indication(quiet); m != nil {
				if peer, _ := c.attemptOf(m); peer.String() != p.LocalAddr().String() {
					t.Fatalf("ConnectionAttempt names %v, want %v", peer, p.LocalAddr())
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("no room for a new peer after one of two connections ended")
			}
		}
	})
}

// loopbackAllocation makes a TCP allocation for alice that permits
// peers on 127.0.0.1.
func loopbackAllocation(t *testing.T, s *relay.Server) (*turnConn, netip.AddrPort) {
	t.Helper()
	c := dialTCP(t, s, alice, alicePass)
	relayed, _ := c.allocate(protoTCP)
	c.permit("127.0.0.1")
	return c, relayed
}

// turnedAway checks that a quota is reached: a new peer's connection is
// closed with no ConnectionAttempt, and Connect fails with 447.
func turnedAway(t *testing.T, c *turnConn, relayed netip.AddrPort) {
	t.Helper()
	expectPeerClosed(t, relayed)
	c.noAttempt()
	ln := listen(t)
	c.expect(447, stun.MethodConnect, peerAddr(netip.MustParseAddrPort(ln.Addr().String())))
}

// TestREST: TURN REST credentials (coturn's use-auth-secret).
func TestREST(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	s := startRelay(t, relay.Config{AllowPeers: loopback, Registerer: reg})

	u, pw := relay.RESTCredentials(restSecret, "carol", time.Hour, time.Now())
	if !strings.HasSuffix(u, ":carol") {
		t.Fatalf("REST username %q", u)
	}
	c := dialTCP(t, s, u, pw)
	relayed, _ := c.allocate(protoTCP)
	c.permit("127.0.0.1")
	dialPeer(t, relayed)
	_, id := c.attempt()
	u2, pw2, err := s.Credentials("carol", time.Minute) // another credential of carol's binds
	if err != nil {
		t.Fatal(err)
	}
	bind(t, s, u2, pw2, id)

	u, pw = relay.RESTCredentials(restSecret, "carol", -time.Minute, time.Now())
	dialTCP(t, s, u, pw).expect(401, stun.MethodAllocate, transport(protoTCP))
	u, _ = relay.RESTCredentials(restSecret, "carol", time.Hour, time.Now())
	dialTCP(t, s, u, base64.StdEncoding.EncodeToString([]byte("not the HMAC"))).expect(401, stun.MethodAllocate, transport(protoTCP))
	u, pw = relay.RESTCredentials("another secret", "carol", time.Hour, time.Now())
	dialTCP(t, s, u, pw).expect(401, stun.MethodAllocate, transport(protoTCP))
	dialTCP(t, s, alice, "wrong").expect(401, stun.MethodAllocate, transport(protoTCP))
	dialTCP(t, s, "mallory", "secret").expect(401, stun.MethodAllocate, transport(protoTCP))

	// Unknown users, expired credentials and wrong passwords all count.
	if n := gather(t, reg, "tubes_turn_auth_failures_total", ""); n != 5 {
		t.Errorf("tubes_turn_auth_failures_total = %v, want 5", n)
	}

	noREST, err := relay.Start(relay.Config{Listen: "127.0.0.1:0", Users: map[string]string{alice: alicePass}})
	if err != nil {
		t.Fatal(err)
	}
	defer noREST.Close()
	if _, _, err := noREST.Credentials("carol", time.Minute); err == nil {
		t.Error("a relay without a secret issued REST credentials")
	}
	u, pw = relay.RESTCredentials(restSecret, "carol", time.Hour, time.Now())
	dialTCP(t, noREST, u, pw).expect(401, stun.MethodAllocate, transport(protoTCP))
}

// TestMetrics: relayed connections and bytes are counted.
func TestMetrics(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	s := startRelay(t, relay.Config{AllowPeers: loopback, Registerer: reg})
	c := dialTCP(t, s, alice, alicePass)
	relayed, _ := c.allocate(protoTCP)
	c.permit("127.0.0.1")
	peer := dialPeer(t, relayed)
	_, id := c.attempt()
	if n := gather(t, reg, "tubes_turn_pending_connections", ""); n != 1 {
		t.Errorf("tubes_turn_pending_connections = %v, want 1", n)
	}
	data := bind(t, s, alice, alicePass, id)
	up := strings.Repeat("u", 100_000)
	down := strings.Repeat("d", 30_000)
	relays(t, data, peer, up)
	relays(t, peer, data, down)
	if n := gather(t, reg, "tubes_turn_relayed_connections", ""); n != 1 {
		t.Errorf("tubes_turn_relayed_connections = %v, want 1", n)
	}
	if n := gather(t, reg, "tubes_turn_allocations", "tcp"); n != 1 {
		t.Errorf("tubes_turn_allocations{transport=tcp} = %v, want 1", n)
	}
	data.Close()
	expectClosed(t, peer, prompt)

	// Bytes are counted when the connection ends, just after the peer
	// sees it closed.
	want := map[[2]string]float64{
		{"tubes_turn_relayed_connections_total", ""}:    1,
		{"tubes_turn_relayed_connections", ""}:          0,
		{"tubes_turn_pending_connections", ""}:          0,
		{"tubes_turn_relayed_bytes_total", "to_peer"}:   float64(len(up)),
		{"tubes_turn_relayed_bytes_total", "from_peer"}: float64(len(down)),
		{"tubes_turn_allocations", "tcp"}:               1,
	}
	for deadline := time.Now().Add(prompt); ; time.Sleep(10 * time.Millisecond) {
		var wrong []string
		for metric, v := range want {
			if got := gather(t, reg, metric[0], metric[1]); got != v {
				wrong = append(wrong, fmt.Sprintf("%s{%s} = %v, want %v", metric[0], metric[1], got, v))
			}
		}
		if len(wrong) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(strings.Join(wrong, "\n"))
		}
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if problems, err := promlint.NewWithMetricFamilies(mfs).Lint(); err != nil || len(problems) > 0 {
		t.Errorf("metrics lint: %v %v", problems, err)
	}
}

// gather returns the value of a counter or gauge, of its series whose
// only label has the value label ("" for none); 0 if absent.
func gather(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := ""
			if len(m.GetLabel()) > 0 {
				l = m.GetLabel()[0].GetValue()
			}
			if l == label {
				return m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	return 0
}

// TestCoturnClient: coturn's turnutils_uclient relays over TCP
// allocations through our server with no loss.
func TestCoturnClient(t *testing.T) {
	t.Parallel()
	bin := testenv.MustHaveCommand(t, "turnutils_uclient")
	s := startRelay(t, relay.Config{AllowPeers: loopback})
	_, port, _ := net.SplitHostPort(s.Addr())
	for name, auth := range map[string][]string{
		"long-term": {"-u", alice, "-w", alicePass},
		"REST":      {"-u", "dave", "-W", restSecret},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			const msgs, clients = 50, 2
			args := append([]string{"-T", "-n", strconv.Itoa(msgs), "-m", strconv.Itoa(clients), "-l", "170", "-X", "-p", port}, auth...)
			out, err := exec.Command(bin, append(args, "127.0.0.1")...).CombinedOutput()
			if err != nil {
				t.Fatalf("turnutils_uclient %s: %v\n%s", strings.Join(args, " "), err, out)
			}
			if bytes.Contains(out, []byte("ERROR")) {
				t.Fatalf("turnutils_uclient reported errors:\n%s", out)
			}
			lost := regexp.MustCompile(`Total lost packets (\d+) `).FindSubmatch(out)
			sent := regexp.MustCompile(`tot_send_msgs=(\d+), tot_recv_msgs=(\d+)\n`).FindAllSubmatch(out, -1)
			if lost == nil || len(sent) == 0 {
				t.Fatalf("turnutils_uclient output without totals:\n%s", out)
			}
			last := sent[len(sent)-1]
			if string(lost[1]) != "0" || string(last[1]) != strconv.Itoa(msgs*clients) || string(last[2]) != string(last[1]) {
				t.Fatalf("turnutils_uclient: lost %s, sent %s, received %s; want %d each, none lost:\n%s",
					lost[1], last[1], last[2], msgs*clients, out)
			}
		})
	}
}

// A TCP connection to the TURN port that does not authenticate within
// the deadline is closed (idle connects used to pile up until the relay ran
// out of descriptors); a wrong password does not stop the clock; a client
// whose Allocate succeeded keeps its connection past the deadline, and a
// data connection whose ConnectionBind succeeded keeps relaying.
func TestTURNAuthDeadline(t *testing.T) {
	const deadline = 300 * time.Millisecond
	s := startRelay(t, relay.Config{AuthDeadline: deadline, AllowPeers: []string{"127.0.0.0/8"}})
	idle, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	wrong := dialTCP(t, s, alice, "not the password")
	wrong.expect(401, stun.MethodAllocate, transport(protoTCP))

	good := dialTCP(t, s, alice, alicePass)
	relayed, _ := good.allocate(protoTCP)
	good.permit("127.0.0.1")
	expectClosed(t, idle, 5*time.Second)
	expectClosed(t, wrong, 5*time.Second)
	expectOpen(t, good, 2*deadline) // past the deadline: authenticated
	peer := dialPeer(t, relayed)
	_, id := good.attempt()
	data := bind(t, s, alice, alicePass, id)
	expectOpen(t, data, 2*deadline)
	io.WriteString(peer, "after the deadline")
	buf := make([]byte, 18)
	data.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(data, buf); err != nil || string(buf) != "after the deadline" {
		t.Fatalf("the bound connection after the deadline: %q %v", buf, err)
	}
}

// Account credentials get permissions only for peers the rendezvous
// vouches for, whatever the allocation's transport, and one allocation
// ending does not lift the check from another of the same address and
// port (the record of which account made an allocation was once keyed by
// the address alone, so closing a UDP allocation made its TCP twin an
// open relay).
func TestAccountPeers(t *testing.T) {
	t.Parallel()
	s := startRelay(t, relay.Config{AllowPeers: loopback})
	s.SetAccountPeers(func(account string, ip netip.Addr) bool {
		return account == "alice" && ip == netip.MustParseAddr("127.0.0.5")
	})
	user, pass, err := s.AccountCredentials("alice", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	u, c := twins(t, s, user, pass)
	u.allocate(protoUDP)
	c.allocate(protoTCP)
	for _, tc := range []*turnConn{u, c} {
		tc.permit("127.0.0.5")
		tc.expect(403, stun.MethodCreatePermission, peerAddr(netip.MustParseAddrPort("127.0.0.9:1")))
	}
	u.expect(0, stun.MethodRefresh, lifetime(0)) // the UDP twin ends
	deadline := time.Now().Add(prompt)
	for s.Allocations() != 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	c.expect(403, stun.MethodCreatePermission, peerAddr(netip.MustParseAddrPort("127.0.0.9:1")))
	c.permit("127.0.0.5")

	// A static user keeps the general behaviour.
	dialTCP(t, s, alice, alicePass).permitAfterAllocate(t, "127.0.0.9")
}

func (c *turnConn) permitAfterAllocate(t *testing.T, ip string) {
	t.Helper()
	c.allocate(protoTCP)
	c.permit(ip)
}

// twins dials the relay over UDP and over TCP from the same local address
// and port, as user.
func twins(t *testing.T, s *relay.Server, user, pass string) (u, c *turnConn) {
	t.Helper()
	for try := 0; c == nil; try++ {
		u = dialTURN(t, "udp", s.Addr(), user, pass)
		la := u.LocalAddr().(*net.UDPAddr)
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: la.IP, Port: la.Port}}
		tc, err := d.Dial("tcp", s.Addr())
		if err != nil && try < 10 {
			continue // that TCP port is taken; another one
		}
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tc.Close() })
		c = &turnConn{Conn: tc, t: t, tcp: true, user: user, pass: pass}
	}
	return u, c
}
