package tube_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/daemon"
	"github.com/tubes-dev/tubes/internal/tubetest"
	"github.com/tubes-dev/tubes/internal/turntest"
	"github.com/tubes-dev/tubes/rendezvous"
	"github.com/tubes-dev/tubes/tperr"
)

// relayWorld is alice and bob, mutual contacts, on a relay with a TURN
// server; turn overrides the TURN server of both daemons when set.
func relayWorld(t *testing.T, turn func(name string) *daemon.TURNServer) *world {
	t.Helper()
	rv, _ := tubetest.RelayWithTURN(t, rendezvous.Config{})
	var ta, tb *daemon.TURNServer
	if turn != nil {
		ta, tb = turn("alice"), turn("bob")
	}
	return turnWorld(t, rv, ta, tb)
}

// turnWorld is alice and bob, mutual contacts on rv, each relaying
// through its TURN server (nil: the relay's own).
func turnWorld(t *testing.T, rv *rendezvous.Server, aliceTURN, bobTURN *daemon.TURNServer) *world {
	t.Helper()
	w := &world{relay: rv, alice: newPeerTURN(t, rv, "alice", aliceTURN), bob: newPeerTURN(t, rv, "bob", bobTURN)}
	tubetest.Befriend(t, w.alice.d, "alice", w.bob.d, "bob")
	return w
}

// proxiedWorld is alice and bob on a relay whose TURN server alice
// reaches through a recording proxy (which can also cut her connections).
func proxiedWorld(t *testing.T) (*world, *recorder) {
	t.Helper()
	ts := tubetest.TURN(t)
	rec := &recorder{}
	proxy := rec.proxy(t, ts.Addr())
	rv := tubetest.Relay(t, rendezvous.Config{})
	return turnWorld(t, rv, testTURN(proxy), testTURN(ts.Addr())), rec
}

// testTURN is a TURN server of tubetest.TURN's reached at addr.
func testTURN(addr string) *daemon.TURNServer {
	return &daemon.TURNServer{Addr: addr, Secret: "test-secret"}
}

// offerRelayed offers service (exported from addr) to bob forced onto the
// relay path, and returns the tube id and bob's local address.
func (w *world) offerRelayed(t *testing.T, service, addr string) (string, string) {
	t.Helper()
	if _, err := w.alice.d.C.Export(bg, "alice", api.Export{Service: service, TCP: addr}); err != nil {
		t.Fatal(err)
	}
	tb, err := w.alice.d.C.Offer(bg, "alice", api.OfferRequest{Service: service, To: "bob", Path: "relay"})
	if err != nil {
		t.Fatalf("offer on the relay path: %v", err)
	}
	w.bob.ev.MustWait("bob is offered the tube", isEvent(api.EventNewTube, tb.ID))
	acc, err := w.bob.d.C.Accept(bg, tb.ID, api.AcceptRequest{})
	if err != nil {
		t.Fatalf("accept on the relay path: %v", err)
	}
	if acc.Path != "relay" {
		t.Fatalf("bob's tube path %q, want relay", acc.Path)
	}
	return tb.ID, acc.Address
}

// A tube forced onto the relay path goes through the offerer's TURN TCP
// allocation: both sides report path relay, 20 parallel connections of
// 2 MiB each arrive intact, and closing the last tube releases the
// allocation.
func TestRelayPathTube(t *testing.T) {
	rv, ts := tubetest.RelayWithTURN(t, rendezvous.Config{})
	w := turnWorld(t, rv, nil, nil)
	alice, bob := w.alice, w.bob

	id, addr := w.offerRelayed(t, "sink", serve(t, hashBack))
	if ts.Allocations() != 1 {
		t.Fatalf("TURN allocations while alice offers a tube: %d, want 1", ts.Allocations())
	}
	hashedConns(t, addr, 20, 2<<20)
	tb, _ := alice.d.C.Tube(bg, id)
	if tb.Path != "relay" {
		t.Fatalf("alice's tube path %q, want relay", tb.Path)
	}
	if !regexp.MustCompile(`msg="peer link up".* peer=alice path=relay`).MatchString(bob.log.String()) {
		t.Fatalf("bob's log has no relayed link:\n%s", bob.log.String())
	}
	if err := alice.d.C.CloseTube(bg, id); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for ts.Allocations() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("alice's allocation outlived her last tube: %d allocations", ts.Allocations())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Offering on the relay path without any TURN server is refused with
// NotAvailable and leaves no tube.
func TestRelayPathUnavailable(t *testing.T) {
	w := newWorld(t)
	if _, err := w.alice.d.C.Export(bg, "alice", api.Export{Service: "echo", TCP: serve(t, echo)}); err != nil {
		t.Fatal(err)
	}
	_, err := w.alice.d.C.Offer(bg, "alice", api.OfferRequest{Service: "echo", To: "bob", Path: "relay"})
	if tperr.Name(err) != tperr.NotAvailable || !strings.Contains(err.Error(), "TURN") {
		t.Fatalf("relay offer without TURN: %v", err)
	}
	if tubes, _ := w.alice.d.C.Tubes(bg); len(tubes) != 0 {
		t.Fatalf("a refused offer left tubes: %+v", tubes)
	}
}

// The relay is blind: a marker sent both ways through a relayed tube never
// appears in the bytes the relay forwarded to and from the offerer (all
// of alice's TURN traffic is recorded by a proxy in front of the server).
func TestRelayBlind(t *testing.T) {
	w, rec := proxiedWorld(t)
	_, addr := w.offerRelayed(t, "echo", serve(t, echo))

	marker := bytes.Repeat([]byte("TUBES-BLIND-RELAY-MARKER-"), 400)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	for range 20 {
		if _, err := c.Write(marker); err != nil {
			t.Fatal(err)
		}
		back := make([]byte, len(marker))
		if _, err := io.ReadFull(c, back); err != nil || !bytes.Equal(back, marker) {
			t.Fatalf("echo through the relayed tube: %v", err)
		}
	}
	got := rec.bytes()
	if len(got) < 2*20*len(marker) {
		t.Fatalf("the proxy saw %d bytes, less than the %d the tube carried: not recording the relayed path", len(got), 2*20*len(marker))
	}
	if bytes.Contains(got, []byte("TUBES-BLIND-RELAY")) {
		t.Fatal("plaintext of the tube crossed the relay")
	}
}

// A tube whose daemons use coturn, the reference TURN server, as their
// TURN server (REST credentials) moves data on the relay path.
func TestRelayPathCoturn(t *testing.T) {
	co := turntest.StartCoturn(t, turntest.Options{Secret: "coturn-secret"})
	w := relayWorld(t, func(string) *daemon.TURNServer {
		return &daemon.TURNServer{Addr: co.Addr, Secret: "coturn-secret"}
	})
	_, addr := w.offerRelayed(t, "sink", serve(t, hashBack))
	hashedConns(t, addr, 10, 2<<20)
}

// When the relayed link breaks while the relay is still there, the
// connections it carried end with ConnectionLost (the application sees a
// reset), and the link comes back by itself: a new connection works
// without a new offer. With only the data connections cut, alice keeps
// her allocation; with her control connection cut too, the allocation
// dies, she allocates again and re-sends her offer with the new relayed
// address.
func TestRelayedLinkRecovers(t *testing.T) {
	for _, c := range []struct {
		name string
		from int
	}{{"data connections cut", 1}, {"allocation lost", 0}} {
		t.Run(c.name, func(t *testing.T) {
			ts := tubetest.TURN(t)
			rec := &recorder{}
			proxy := rec.proxy(t, ts.Addr())
			rv := tubetest.Relay(t, rendezvous.Config{})
			w := turnWorld(t, rv, testTURN(proxy), testTURN(ts.Addr()))
			id, addr := w.offerRelayed(t, "echo", serve(t, echo))
			roundTrip(t, "tcp", addr, "before")

			held, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer held.Close()
			held.Write([]byte("x"))
			io.ReadFull(held, make([]byte, 1))
			rec.cut(c.from)
			held.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := held.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("the connection on the broken link ended with %v, want a reset", err)
			}
			w.bob.ev.MustWait("ConnectionClosed with ConnectionLost", func(e api.Event) bool {
				return e.Type == api.EventConnectionClosed && e.TubeID == id && e.Error == tperr.ConnectionLost
			})
			deadline := time.Now().Add(15 * time.Second)
			for !strings.Contains(w.bob.log.String(), "peer link re-established") {
				if time.Now().After(deadline) {
					t.Fatalf("bob never re-established the link:\n%s", w.bob.log.String())
				}
				time.Sleep(20 * time.Millisecond)
			}
			roundTrip(t, "tcp", addr, "after")
			if c.from == 0 && !strings.Contains(w.alice.log.String(), "relay allocation made again") {
				t.Fatalf("alice did not allocate again:\n%s", w.alice.log.String())
			}
		})
	}
}

// recorder is a TCP proxy that keeps every byte it forwards, and can cut
// the connections it carries.
type recorder struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	conns []net.Conn // client sides, in the order they came
}

// cut resets every connection from the from-th on (0: all of them).
func (r *recorder) cut(from int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.conns[from:] {
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}
}

func (r *recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.buf.Write(p)
}

func (r *recorder) bytes() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return bytes.Clone(r.buf.Bytes())
}

func (r *recorder) proxy(t *testing.T, target string) string {
	ln := tubetest.ServeTCP(t, func(c net.Conn) {
		r.mu.Lock()
		r.conns = append(r.conns, c)
		r.mu.Unlock()
		u, err := net.Dial("tcp", target)
		if err != nil {
			return
		}
		defer u.Close()
		done := make(chan struct{}, 2)
		// Recorded before forwarded: all that reached the far end is here.
		go func() { io.Copy(io.MultiWriter(r, u), c); u.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
		go func() { io.Copy(io.MultiWriter(r, c), u); c.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
		<-done
		<-done
	})
	return ln.Addr().String()
}

// An offer re-sent with a new relayed address to a contact that is
// offline then is owed to it, and sent when it comes online: bob, away
// while alice's allocation was made again, reaches the tube through the
// new address once he is back (he once kept dialing the old one).
func TestOwedOfferReachesPeerLater(t *testing.T) {
	w, rec := proxiedWorld(t)
	_, addr := w.offerRelayed(t, "echo", serve(t, echo))
	roundTrip(t, "tcp", addr, "before")

	if err := w.alice.d.C.AddClientInterest(bg, "alice", api.InterestPresence); err != nil {
		t.Fatal(err)
	}
	mark := len(w.alice.ev.All())
	if _, err := w.bob.d.C.Disconnect(bg, "bob"); err != nil {
		t.Fatal(err)
	}
	// Away as the relay sees it, before alice makes her allocation again
	// (an offer sent in the instant he goes is lost on the way: see
	// TestStaleRelayedAddressAsksAgain).
	if _, ok := w.alice.ev.WaitFrom(mark, func(e api.Event) bool {
		return e.Type == api.EventPresenceChanged && e.Contact == "bob" && !*e.Online
	}, 10*time.Second); !ok {
		t.Fatal("alice never saw bob go")
	}
	rec.cut(0) // alice's allocation dies with its control connection
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(w.alice.log.String(), "tube offer not re-sent yet") {
		if time.Now().After(deadline) {
			t.Fatalf("alice never tried bob while he was away:\n%s", w.alice.log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := w.bob.d.C.ConnectWait(bg, "bob"); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.SetDeadline(time.Now().Add(5 * time.Second))
			c.Write([]byte("x"))
			_, err = io.ReadFull(c, make([]byte, 1))
			c.Close()
		}
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("bob never reached the tube after he came back: %v\nalice:\n%s", err, w.alice.log.String())
		}
	}
}
