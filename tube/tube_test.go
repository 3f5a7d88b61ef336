package tube_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/daemon"
	"github.com/tubes-dev/tubes/identity"
	"github.com/tubes-dev/tubes/internal/node"
	svc "github.com/tubes-dev/tubes/internal/serve"
	"github.com/tubes-dev/tubes/internal/tubetest"
	"github.com/tubes-dev/tubes/peerlink"
	"github.com/tubes-dev/tubes/proxyproto"
	"github.com/tubes-dev/tubes/rendezvous"
	"github.com/tubes-dev/tubes/tperr"
)

var bg = context.Background()

// peer is one account on its own daemon, with its events and log.
type peer struct {
	name     string
	d        *tubetest.Daemon
	ev       *tubetest.Events
	log      *tubetest.LogBuffer
	state    string // the daemon's state directory
	peerAddr string // where it accepts peer links
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func newPeer(t *testing.T, relay *rendezvous.Server, name string) *peer {
	t.Helper()
	return newPeerTURN(t, relay, name, nil)
}

// newPeerTURN is newPeer relaying through turn (nil: the relay's own).
func newPeerTURN(t *testing.T, relay *rendezvous.Server, name string, turn *daemon.TURNServer) *peer {
	t.Helper()
	p := &peer{name: name, log: &tubetest.LogBuffer{}, state: t.TempDir(), peerAddr: freeAddr(t)}
	p.d = tubetest.StartDaemonConfig(t, node.DaemonConfig{StateDir: p.state, Logger: p.log.Logger(), PeerListen: p.peerAddr, TURN: turn})
	p.d.Register(t, name, relay)
	p.ev = tubetest.Record(t, p.d.C, name)
	return p
}

// world is a relay with alice and bob, mutual contacts.
type world struct {
	relay      *rendezvous.Server
	alice, bob *peer
}

func newWorld(t *testing.T) *world {
	t.Helper()
	relay := tubetest.Relay(t, rendezvous.Config{})
	w := &world{relay: relay, alice: newPeer(t, relay, "alice"), bob: newPeer(t, relay, "bob")}
	tubetest.Befriend(t, w.alice.d, "alice", w.bob.d, "bob")
	return w
}

func isEvent(typ, tube string) func(api.Event) bool {
	return func(e api.Event) bool { return e.Type == typ && (tube == "" || e.TubeID == tube) }
}

// serve runs handle on every connection to a new loopback TCP listener.
func serve(t *testing.T, handle func(net.Conn)) string {
	return tubetest.ServeTCP(t, handle).Addr().String()
}

func echo(c net.Conn) { io.Copy(c, c) }

// hashBack answers a connection with the hash and count of what it got
// up to its half-close: a half-close exchange.
var hashBack = svc.HashBack

// offer exports addr as service on alice, offers it to bob and returns
// the tube id once bob has it.
func (w *world) offer(t *testing.T, service string, e api.Export) string {
	t.Helper()
	e.Service = service
	if _, err := w.alice.d.C.Export(bg, "alice", e); err != nil {
		t.Fatalf("export: %v", err)
	}
	tb, err := w.alice.d.C.Offer(bg, "alice", api.OfferRequest{Service: service, To: "bob"})
	if err != nil {
		t.Fatalf("offer: %v", err)
	}
	w.bob.ev.MustWait("bob is offered the tube", isEvent(api.EventNewTube, tb.ID))
	return tb.ID
}

func (w *world) offerAccept(t *testing.T, service string, e api.Export, req api.AcceptRequest) (string, string) {
	t.Helper()
	id := w.offer(t, service, e)
	tb, err := w.bob.d.C.Accept(bg, id, req)
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	return id, tb.Address
}

func roundTrip(t *testing.T, network, addr, msg string) {
	t.Helper()
	c, err := net.Dial(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("echo through the tube: %v", err)
	}
	if string(buf) != msg {
		t.Fatalf("echo: got %q, want %q", buf, msg)
	}
}

// A p2p tube goes through the spec's states on both sides, carries
// typed parameters to the recipient only, maps connections to the
// contact on the offering side, and closing it ends its connections with
// Cancelled on both sides.
func TestP2PTubeLifecycle(t *testing.T) {
	w := newWorld(t)
	addr := serve(t, echo)
	params := map[string]api.Value{
		"password": {Type: api.TypeString, Value: "s3cret-Pa55"},
		"port":     {Type: api.TypeUint, Value: uint64(5900)},
		"blob":     {Type: api.TypeBytes, Value: []byte{0, 1, 2}},
		"flag":     {Type: api.TypeBool, Value: true},
		"delta":    {Type: api.TypeInt, Value: int64(-3)},
	}
	id := w.offer(t, "vnc", api.Export{TCP: addr, Parameters: params})

	// Offerer: NewTube (Not_Offered) then Remote_Pending.
	ne := w.alice.ev.MustWait("alice's NewTube", isEvent(api.EventNewTube, id))
	if ne.Direction != "outgoing" || ne.State != "Not_Offered" || ne.Contact != "bob" || ne.Service != "vnc" {
		t.Errorf("alice's NewTube = %+v", ne)
	}
	sc := w.alice.ev.MustWait("Remote_Pending", isEvent(api.EventTubeStateChanged, id))
	if sc.State != "Remote_Pending" || *sc.StateCode != 1 {
		t.Errorf("alice's first state change = %s", sc.State)
	}
	// Recipient: Local_Pending with the parameters, typed.
	in, err := w.bob.d.C.Tube(bg, id)
	if err != nil {
		t.Fatal(err)
	}
	if in.State != "Local_Pending" || in.StateCode != 0 || in.Peer != "alice" || in.Direction != "incoming" {
		t.Errorf("bob's tube = %+v", in)
	}
	for k, v := range params {
		got := in.Parameters[k]
		if got.Type != v.Type || got.String() != v.String() {
			t.Errorf("parameter %s = %+v, want %+v", k, got, v)
		}
	}
	if out, _ := w.alice.d.C.Tube(bg, id); out.Parameters != nil {
		t.Errorf("the outgoing tube shows parameters: %v", out.Parameters)
	}

	acc, err := w.bob.d.C.Accept(bg, id, api.AcceptRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if acc.State != "Open" || acc.Path != "direct" || acc.Access != "localhost" || !strings.HasPrefix(acc.Address, "127.0.0.1:") {
		t.Errorf("accepted tube = %+v", acc)
	}
	open := w.alice.ev.MustWait("alice's tube opens", func(e api.Event) bool {
		return isEvent(api.EventTubeStateChanged, id)(e) && e.State == "Open"
	})
	if open.Path != "direct" {
		t.Errorf("alice's Open event path = %q", open.Path)
	}

	// A connection: NewLocalConnection on bob, NewRemoteConnection with
	// the source address of alice's own connection to the service.
	c, err := net.Dial("tcp", acc.Address)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "ping")
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo: %q %v", buf, err)
	}
	nl := w.bob.ev.MustWait("NewLocalConnection", isEvent(api.EventNewLocalConnection, id))
	nr := w.alice.ev.MustWait("NewRemoteConnection", isEvent(api.EventNewRemoteConnection, id))
	if nr.Contact != "bob" || nr.Source == "" || *nr.ConnectionID != 1 || *nl.ConnectionID != 1 {
		t.Errorf("NewRemoteConnection = %+v, NewLocalConnection id %d", nr, *nl.ConnectionID)
	}
	who, err := w.alice.d.C.Whois(bg, nr.Source)
	if err != nil || who.Contact != "bob" || who.Tube.ID != id || who.Account != "alice" {
		t.Errorf("whois %s = %+v, %v", nr.Source, who, err)
	}
	conns, _ := w.alice.d.C.Connections(bg)
	if len(conns) != 1 || conns[0].Contact != "bob" || conns[0].Source != nr.Source {
		t.Errorf("alice's connections = %+v", conns)
	}
	if _, err := w.alice.d.C.Whois(bg, "127.0.0.1:1"); !tperr.Has(err, tperr.NotFound) {
		t.Errorf("whois of an unknown source: %v", err)
	}

	// Close: the connection ends with Cancelled on both sides, the app
	// sees a reset, and both tubes are gone.
	if err := w.alice.d.C.CloseTube(bg, id); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*peer{w.alice, w.bob} {
		cc := p.ev.MustWait(p.name+"'s ConnectionClosed", isEvent(api.EventConnectionClosed, id))
		if cc.Error != tperr.Cancelled {
			t.Errorf("%s: ConnectionClosed error %s (%s)", p.name, cc.Error, cc.Message)
		}
		tc := p.ev.MustWait(p.name+"'s TubeClosed", isEvent(api.EventTubeClosed, id))
		if tc.Error != tperr.Cancelled {
			t.Errorf("%s: TubeClosed error %s", p.name, tc.Error)
		}
		if _, err := p.d.C.Tube(bg, id); !tperr.Has(err, tperr.NotFound) {
			t.Errorf("%s still has the tube: %v", p.name, err)
		}
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(buf); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the app's socket after close: %v, want a reset", err)
	}
	if _, err := net.Dial("tcp", acc.Address); err == nil {
		t.Error("the local socket still accepts after close")
	}
}

// pattern returns n deterministic pseudo-random bytes for seed.
func pattern(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// 100 parallel connections each send 10 MiB, half-close, and get back
// the hash of what arrived: every byte checked, and the half-close
// carried through (the service answers only after end of file).
func TestParallelConnectionsHashed(t *testing.T) {
	w := newWorld(t)
	_, addr := w.offerAccept(t, "sink", api.Export{TCP: serve(t, hashBack)}, api.AcceptRequest{})
	hashedConns(t, addr, 100, 10<<20)
}

// hashedConns sends size patterned bytes on each of conns parallel
// connections to addr (a tube to a hashBack service) and checks the hash
// and count each gets back.
func hashedConns(t *testing.T, addr string, conns, size int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			data := pattern(uint64(i), size)
			want := svc.HashLine(data)
			c, err := net.Dial("tcp", addr)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Minute))
			if _, err := c.Write(data); err != nil {
				errs <- fmt.Errorf("conn %d write: %w", i, err)
				return
			}
			c.(*net.TCPConn).CloseWrite()
			got, err := io.ReadAll(c)
			if err != nil {
				errs <- fmt.Errorf("conn %d read: %w", i, err)
				return
			}
			if string(got) != want {
				errs <- fmt.Errorf("conn %d: service got %q, sent %q", i, got, want)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// A third account that learns a tube id and opens a stream for it is
// refused and logged, and not one byte reaches the service.
func TestThirdAccountRefused(t *testing.T) {
	w := newWorld(t)
	carol := newPeer(t, w.relay, "carol")
	tubetest.Befriend(t, w.alice.d, "alice", carol.d, "carol")
	tubetest.Befriend(t, carol.d, "carol", w.bob.d, "bob")
	var mu sync.Mutex
	var reached []string
	addr := serve(t, func(c net.Conn) {
		b, _ := io.ReadAll(c)
		mu.Lock()
		reached = append(reached, string(b))
		mu.Unlock()
	})
	id, _ := w.offerAccept(t, "files", api.Export{TCP: addr}, api.AcceptRequest{})
	// alice offers carol another service, so carol's daemon has her
	// addresses, and carol forges a stream with bob's tube id.
	id2 := func() string {
		if _, err := w.alice.d.C.Export(bg, "alice", api.Export{Service: "other", TCP: serve(t, echo)}); err != nil {
			t.Fatal(err)
		}
		tb, err := w.alice.d.C.Offer(bg, "alice", api.OfferRequest{Service: "other", To: "carol"})
		if err != nil {
			t.Fatal(err)
		}
		carol.ev.MustWait("carol is offered", isEvent(api.EventNewTube, tb.ID))
		return tb.ID
	}()
	if _, err := carol.d.C.Accept(bg, id2, api.AcceptRequest{}); err != nil {
		t.Fatal(err)
	}
	forged, err := forgeStream(t, carol, "alice", w.alice, id)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(forged, "refused") {
		t.Errorf("the forged stream ended with %q, want a refusal", forged)
	}
	if !strings.Contains(w.alice.log.String(), "refused a tube connection") || !strings.Contains(w.alice.log.String(), "from=carol") {
		t.Errorf("alice's log has no refusal naming carol:\n%s", w.alice.log.String())
	}
	time.Sleep(100 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if len(reached) != 0 {
		t.Errorf("the service got connections from the forged stream: %q", reached)
	}
	// Accepting someone else's tube id through the API is refused too.
	if _, err := carol.d.C.Accept(bg, id, api.AcceptRequest{}); !tperr.Has(err, tperr.NotFound) {
		t.Errorf("carol accepting bob's tube: %v", err)
	}
}

// Offering to someone who is not a contact fails with a clear error
// and leaves no tube behind.
func TestOfferToNonContact(t *testing.T) {
	w := newWorld(t)
	newPeer(t, w.relay, "mallory")
	if _, err := w.alice.d.C.Export(bg, "alice", api.Export{Service: "vnc", TCP: serve(t, echo)}); err != nil {
		t.Fatal(err)
	}
	for _, to := range []string{"mallory", "nobody-at-all"} {
		_, err := w.alice.d.C.Offer(bg, "alice", api.OfferRequest{Service: "vnc", To: to})
		if !tperr.Has(err, tperr.PermissionDenied) || !strings.Contains(err.Error(), "is not your contact") {
			t.Errorf("offer to %s: %v", to, err)
		}
	}
	if _, err := w.alice.d.C.Offer(bg, "alice", api.OfferRequest{Service: "nope", To: "bob"}); !tperr.Has(err, tperr.NotAvailable) {
		t.Errorf("offer of a service never exported: %v", err)
	}
	if ts, _ := w.alice.d.C.Tubes(bg); len(ts) != 0 {
		t.Errorf("failed offers left tubes: %+v", ts)
	}
}

// When the exported service is down, the connecting app sees a reset
// and both sides get ConnectionRefused.
func TestServiceDownRefused(t *testing.T) {
	w := newWorld(t)
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := l.Addr().String()
	l.Close()
	id, addr := w.offerAccept(t, "db", api.Export{TCP: dead}, api.AcceptRequest{})
	// The reset may come before the dial has seen its connection complete.
	c, err := net.Dial("tcp", addr)
	switch {
	case errors.Is(err, syscall.ECONNRESET):
	case err != nil:
		t.Fatal(err)
	default:
		defer c.Close()
		io.WriteString(c, "hello")
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("app read: %v, want a reset", err)
		}
	}
	for _, p := range []*peer{w.alice, w.bob} {
		cc := p.ev.MustWait(p.name+" ConnectionClosed", isEvent(api.EventConnectionClosed, id))
		if cc.Error != tperr.ConnectionRefused {
			t.Errorf("%s: %s (%s), want ConnectionRefused", p.name, cc.Error, cc.Message)
		}
	}
	// The tube itself stays open for the next try.
	if tb, _ := w.bob.d.C.Tube(bg, id); tb.State != "Open" {
		t.Errorf("tube after a refused connection: %s", tb.State)
	}
}

// Access control Port lets in only the stated source address; the
// offering side's Port meaning (source → contact) is in the lifecycle
// test.
func TestAccessPort(t *testing.T) {
	w := newWorld(t)
	// Reserve a source port for the permitted client.
	pl, _ := net.Listen("tcp", "127.0.0.1:0")
	src := pl.Addr().(*net.TCPAddr)
	pl.Close()
	id, addr := w.offerAccept(t, "echo", api.Export{TCP: serve(t, echo)}, api.AcceptRequest{Access: "port", Source: src.String()})

	// The refusal is a reset, and it can come so fast that the dial itself
	// reports it; either way the wrong source must get no data.
	wrong, err := net.Dial("tcp", addr)
	switch {
	case errors.Is(err, syscall.ECONNRESET):
	case err != nil:
		t.Fatal(err)
	default:
		wrong.SetReadDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(wrong, "x")
		if _, err := wrong.Read(make([]byte, 1)); err == nil {
			t.Error("a connection from the wrong source port got data")
		}
		wrong.Close()
	}
	if !strings.Contains(w.bob.log.String(), "refused a local connection") {
		t.Error("the refusal is not logged")
	}
	d := net.Dialer{LocalAddr: src}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "ok")
	buf := make([]byte, 2)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ok" {
		t.Fatalf("the permitted source: %q %v", buf, err)
	}
	w.bob.ev.MustWait("NewLocalConnection", isEvent(api.EventNewLocalConnection, id))
	if n := countEvents(w.bob.ev, api.EventNewLocalConnection, id); n != 1 {
		t.Errorf("%d NewLocalConnection events, want 1 (the refused one must not count)", n)
	}
	// Controls that cannot be enforced are refused, not weakened.
	for _, req := range []api.AcceptRequest{
		{Access: "credentials"},                      // TCP has no credentials
		{Access: "port"},                             // no source given
		{Unix: "auto", Access: "port"},               // Unix has no ports
		{Listen: "0.0.0.0:0"},                        // not loopback
		{Access: "netmask"},                          // never implemented by anyone
		{Listen: "127.0.0.1:0", Unix: "/tmp/x.sock"}, // both
	} {
		id := w.offer(t, "echo", api.Export{TCP: serve(t, echo)})
		if _, err := w.bob.d.C.Accept(bg, id, req); err == nil {
			t.Errorf("accept %+v succeeded", req)
		} else if tb, _ := w.bob.d.C.Tube(bg, id); tb.State != "Local_Pending" {
			t.Errorf("after the refused accept %+v the tube is %s", req, tb.State)
		}
	}
}

func countEvents(ev *tubetest.Events, typ, tube string) int {
	n := 0
	for _, e := range ev.All() {
		if isEvent(typ, tube)(e) {
			n++
		}
	}
	return n
}

// Unix sockets: an exported Unix service, accepted as an automatic
// private socket (directory 0700, removed on close), with the
// credentials control; and the Telepathy-compatible credentials byte.
func TestUnixSockets(t *testing.T) {
	w := newWorld(t)
	dir := t.TempDir()
	svc := filepath.Join(dir, "svc.sock")
	l, err := net.Listen("unix", svc)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); echo(c) }()
		}
	}()
	id, addr := w.offerAccept(t, "x-editor", api.Export{Unix: svc}, api.AcceptRequest{Unix: "auto"})
	fi, err := os.Stat(filepath.Dir(addr))
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("socket directory %s: %v %v", filepath.Dir(addr), fi.Mode(), err)
	}
	if tb, _ := w.bob.d.C.Tube(bg, id); tb.Access != "credentials" {
		t.Errorf("default Unix access = %q, want credentials", tb.Access)
	}
	roundTrip(t, "unix", addr, "over unix sockets")
	if err := w.bob.d.C.CloseTube(bg, id); err != nil {
		t.Fatal(err)
	}
	w.alice.ev.MustWait("alice learns bob closed it", isEvent(api.EventTubeClosed, id))
	if _, err := os.Stat(filepath.Dir(addr)); !os.IsNotExist(err) {
		t.Errorf("socket directory after close: %v", err)
	}

	// credentials-byte: the client sends one byte with SCM_CREDENTIALS
	// first; the byte is not part of the stream.
	_, addr = w.offerAccept(t, "x-editor", api.Export{Unix: svc}, api.AcceptRequest{Unix: filepath.Join(dir, "cb.sock"), Access: "credentials-byte"})
	c, err := net.Dial("unix", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := writeCredByte(c.(*net.UnixConn)); err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "abc")
	buf := make([]byte, 3)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "abc" {
		t.Fatalf("after the credentials byte: %q %v", buf, err)
	}
}

// The offering side can prepend a PROXY protocol v2 header naming the
// contact, account and tube, so nginx or HAProxy can log and authorise
// real identities.
func TestProxyProtocol(t *testing.T) {
	w := newWorld(t)
	got := make(chan *proxyproto.Header, 1)
	addr := serve(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		h, err := proxyproto.Read(br)
		if err != nil {
			got <- nil
			return
		}
		got <- h
		io.Copy(c, br)
	})
	id, local := w.offerAccept(t, "web", api.Export{TCP: addr, ProxyProtocol: true}, api.AcceptRequest{})
	roundTrip(t, "tcp", local, "GET / HTTP/1.0\r\n\r\n")
	h := <-got
	if h == nil {
		t.Fatal("the service got no PROXY header")
	}
	for typ, want := range map[byte]string{proxyproto.TypeContact: "bob", proxyproto.TypeAccount: "alice", proxyproto.TypeTube: id} {
		if v, ok := h.TLV(typ); !ok || string(v) != want {
			t.Errorf("TLV %#x = %q, want %q", typ, v, want)
		}
	}
	nr := w.alice.ev.MustWait("NewRemoteConnection", isEvent(api.EventNewRemoteConnection, id))
	if h.Source.String() != nr.Source {
		t.Errorf("PROXY source %s, connection source %s", h.Source, nr.Source)
	}
}

// Parameters never appear in any log, and the offer the relay carries
// holds them only sealed (checked in the package's own tests).
func TestParametersNeverLogged(t *testing.T) {
	w := newWorld(t)
	const secret = "TopSecret-7f3a9c"
	script := filepath.Join(t.TempDir(), "params.sh")
	os.WriteFile(script, []byte("#!/bin/sh\necho '{\"session\":\""+secret+"-'\"$TUBE_CONTACT\"'\"}'\n"), 0o755)
	id := w.offer(t, "vnc", api.Export{TCP: serve(t, echo), ParamsExec: script})
	tb, err := w.bob.d.C.Tube(bg, id)
	if err != nil {
		t.Fatal(err)
	}
	if v := tb.Parameters["session"]; v.Value != secret+"-bob" {
		t.Errorf("--params-exec parameters at bob: %+v", tb.Parameters)
	}
	if _, err := w.bob.d.C.Accept(bg, id, api.AcceptRequest{}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*peer{w.alice, w.bob} {
		if strings.Contains(p.log.String(), secret) {
			t.Errorf("%s's log has the parameter", p.name)
		}
	}
	// A failing generator command refuses the offer with its reason.
	os.WriteFile(script, []byte("#!/bin/sh\necho 'vault is sealed' >&2\nexit 3\n"), 0o755)
	if _, err := w.alice.d.C.Offer(bg, "alice", api.OfferRequest{Service: "vnc", To: "bob"}); err == nil || !strings.Contains(err.Error(), "vault is sealed") {
		t.Errorf("offer with a failing --params-exec: %v", err)
	}
}

// writeCredByte sends Telepathy's credentials byte.
func writeCredByte(c *net.UnixConn) error {
	oob := syscall.UnixCredentials(&syscall.Ucred{Pid: int32(os.Getpid()), Uid: uint32(os.Getuid()), Gid: uint32(os.Getgid())})
	_, _, err := c.WriteMsgUnix([]byte{0}, oob, nil)
	return err
}

// forgeStream opens a peer link to target as from (with from's real
// key) and a stream claiming tube id, sends data, and returns how the
// stream ended.
func forgeStream(t *testing.T, from *peer, targetName string, target *peer, id string) (string, error) {
	t.Helper()
	s, err := dialLinkAs(from, targetName, target)
	if err != nil {
		return "", err
	}
	defer s.Close(peerlink.CodeCancelled)
	st, err := s.OpenStream([]byte(`{"tube":"` + id + `"}`))
	if err != nil {
		return "", err
	}
	app, local := net.Pipe()
	defer app.Close()
	ended := make(chan error, 1)
	st.Splice(local, func(err error) { ended <- err })
	go app.Write([]byte("FORGED DATA"))
	select {
	case err := <-ended:
		if err == nil {
			return "clean close", nil
		}
		return err.Error(), nil
	case <-time.After(10 * time.Second):
		return "", errors.New("the forged stream was neither refused nor closed")
	}
}

// dialLinkAs opens a peer link of its own to target's account
// targetName, as from (with from's real key), the way from's daemon
// would.
func dialLinkAs(from *peer, targetName string, target *peer) (*peerlink.Session, error) {
	key, err := identity.Load(filepath.Join(from.state, "keys", from.name+".key"))
	if err != nil {
		return nil, err
	}
	acct, err := target.d.C.Account(bg, targetName)
	if err != nil {
		return nil, err
	}
	tkey, err := identity.ParsePublicKey(acct.Key)
	if err != nil {
		return nil, err
	}
	raw, err := net.Dial("tcp", target.peerAddr)
	if err != nil {
		return nil, err
	}
	return peerlink.Client(bg, raw, &peerlink.Identity{Name: from.name, Key: key}, targetName, tkey, nopHandler{}, tubetest.Logger())
}

type nopHandler struct{}

func (nopHandler) Open(st *peerlink.Stream, _ []byte) { st.Reset(peerlink.CodeDenied, "no") }
func (nopHandler) Ctrl([]byte)                        {}
