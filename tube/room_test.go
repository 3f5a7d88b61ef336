package tube_test

import (
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/internal/testenv"
	"github.com/tubes-dev/tubes/internal/tubetest"
	"github.com/tubes-dev/tubes/localclient"
	"github.com/tubes-dev/tubes/tperr"
)

// A room tube: every member may accept; each member's connections map
// to that member on the offering side; a member who joins later is
// offered only the tubes offered to later members, with parameters
// sealed to them; a removed member loses its tubes and connections at
// once and cannot reach the service again; and the tube ends for
// everyone when its offerer leaves the room.
func TestRoomTube(t *testing.T) {
	w := newWorld(t)
	carol := newPeer(t, w.relay, "carol")
	dave := newPeer(t, w.relay, "dave")
	if _, err := w.alice.d.C.CreateRoom(bg, "alice", "lab"); err != nil {
		t.Fatal(err)
	}
	tubetest.InviteAndJoin(t, w.alice.d, "alice", "lab", w.bob.d, "bob")
	for _, p := range []*peer{carol, dave} {
		tubetest.Befriend(t, w.alice.d, "alice", p.d, p.name)
	}
	tubetest.InviteAndJoin(t, w.alice.d, "alice", "lab", carol.d, "carol")
	if _, err := w.alice.d.C.Export(bg, "alice", api.Export{Service: "whiteboard", TCP: serve(t, echo),
		Parameters: map[string]api.Value{"token": {Type: api.TypeString, Value: "room-secret"}}}); err != nil {
		t.Fatal(err)
	}
	tb, err := w.alice.d.C.Offer(bg, "alice", api.OfferRequest{Service: "whiteboard", Room: "lab"})
	if err != nil {
		t.Fatal(err)
	}
	if tb.State != "Open" || tb.Room != "lab" {
		t.Errorf("an offered room tube is %s in %q, want Open in lab", tb.State, tb.Room)
	}
	id := tb.ID
	sources := map[string]string{}
	addrs := map[string]string{}
	for _, p := range []*peer{w.bob, carol} {
		p.ev.MustWait(p.name+" is offered", isEvent(api.EventNewTube, id))
		in, _ := p.d.C.Tube(bg, id)
		if in.Room != "lab" || in.Peer != "alice" || in.Parameters["token"].Value != "room-secret" {
			t.Errorf("%s's room tube = %+v", p.name, in)
		}
		acc, err := p.d.C.Accept(bg, id, api.AcceptRequest{})
		if err != nil {
			t.Fatal(err)
		}
		addrs[p.name] = acc.Address
		roundTrip(t, "tcp", acc.Address, "hello from "+p.name)
		nr := w.alice.ev.MustWait("connection from "+p.name, func(e api.Event) bool {
			return isEvent(api.EventNewRemoteConnection, id)(e) && e.Contact == p.name
		})
		if nr.Room != "lab" {
			t.Errorf("NewRemoteConnection room %q", nr.Room)
		}
		sources[p.name] = nr.Source
	}
	if sources["bob"] == sources["carol"] {
		t.Error("two members' connections have one source address")
	}

	// dave joins later: he is offered the tube offered to later members
	// (later), not id. Offers to a later member go out in the order the
	// tubes were offered, so id would have reached him before later.
	later, err := w.alice.d.C.Offer(bg, "alice", api.OfferRequest{Service: "whiteboard", Room: "lab", LaterMembers: true})
	if err != nil {
		t.Fatal(err)
	}
	tubetest.InviteAndJoin(t, w.alice.d, "alice", "lab", dave.d, "dave")
	dave.ev.MustWait("dave, joining later, is offered the later-members tube", isEvent(api.EventNewTube, later.ID))
	if n := countEvents(dave.ev, api.EventNewTube, id); n != 0 {
		t.Errorf("dave, who joined after it was offered, was offered tube %s", id)
	}
	if in, _ := dave.d.C.Tube(bg, later.ID); in.Parameters["token"].Value != "room-secret" {
		t.Errorf("dave's later-members tube = %+v, want its parameters sealed to him", in)
	}

	// carol is removed with a connection open: her tube ends (Cancelled),
	// the connection is reset, and a stream she forges for the tube later
	// is refused.
	c, err := net.Dial("tcp", addrs["carol"])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("open")); err != nil {
		t.Fatal(err)
	}
	w.alice.ev.MustWait("carol's second connection", func(e api.Event) bool {
		return isEvent(api.EventNewRemoteConnection, id)(e) && e.Contact == "carol" && e.Source != sources["carol"]
	})
	if err := w.alice.d.C.RemoveFromRoom(bg, "alice", "lab", "carol"); err != nil {
		t.Fatal(err)
	}
	ev := carol.ev.MustWait("carol's tube closes", isEvent(api.EventTubeClosed, id))
	if ev.Error != tperr.Cancelled || !strings.Contains(ev.Message, "removed from room lab") {
		t.Errorf("carol's tube closed with %s %q, want Cancelled, removed", ev.Error, ev.Message)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 64)
	for err == nil {
		_, err = c.Read(buf)
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("carol's open connection after her removal: %v, want a reset", err)
	}
	w.alice.ev.MustWait("alice's daemon follows the removal", func(e api.Event) bool {
		return e.Type == api.EventRoomsChanged && e.Change == "removed" && e.Member == "carol"
	})
	if forged, err := forgeStream(t, carol, "alice", w.alice, id); err != nil || !strings.Contains(forged, "refused") {
		t.Errorf("carol's forged stream after her removal ended with %q, %v; want a refusal", forged, err)
	}
	roundTrip(t, "tcp", addrs["bob"], "bob is still in") // the members keep working

	// alice leaves: the tubes end for every member.
	if err := w.alice.d.C.LeaveRoom(bg, "alice", "lab"); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*peer{w.alice, w.bob} {
		p.ev.MustWait(p.name+"'s tube closes", isEvent(api.EventTubeClosed, id))
	}
	for _, p := range []*peer{w.alice, w.bob, dave} {
		p.ev.MustWait(p.name+"'s later-members tube closes", isEvent(api.EventTubeClosed, later.ID))
	}
}

// Reverse tubes: bob asks alice for a service she exported for him and
// gets a local address; carol, not allowed, is refused; a room named by
// --allow-room lets its members in.
func TestReverseTube(t *testing.T) {
	w := newWorld(t)
	carol := newPeer(t, w.relay, "carol")
	tubetest.Befriend(t, w.alice.d, "alice", carol.d, "carol")
	if _, err := w.alice.d.C.Export(bg, "alice", api.Export{Service: "desktop", TCP: serve(t, echo), Allow: []string{"bob"}}); err != nil {
		t.Fatal(err)
	}
	tb, err := w.bob.d.C.Open(bg, "bob", api.OpenRequest{Contact: "alice", Service: "desktop"})
	if err != nil {
		t.Fatal(err)
	}
	if tb.State != "Open" || tb.Peer != "alice" || tb.Address == "" {
		t.Fatalf("opened tube = %+v", tb)
	}
	roundTrip(t, "tcp", tb.Address, "connect to my desktop")

	_, err = carol.d.C.Open(bg, "carol", api.OpenRequest{Contact: "alice", Service: "desktop"})
	if !tperr.Has(err, tperr.PermissionDenied) || !strings.Contains(err.Error(), "has not exported desktop for carol") {
		t.Errorf("carol's request: %v", err)
	}
	_, err = w.bob.d.C.Open(bg, "bob", api.OpenRequest{Contact: "alice", Service: "nothing-here"})
	if !tperr.Has(err, tperr.PermissionDenied) {
		t.Errorf("a request for a service never exported: %v", err)
	}

	// --allow-room: members of lab may ask.
	if _, err := w.alice.d.C.CreateRoom(bg, "alice", "lab"); err != nil {
		t.Fatal(err)
	}
	tubetest.InviteAndJoin(t, w.alice.d, "alice", "lab", carol.d, "carol")
	if _, err := w.alice.d.C.Export(bg, "alice", api.Export{Service: "printer", TCP: serve(t, echo), AllowRooms: []string{"lab"}}); err != nil {
		t.Fatal(err)
	}
	tb, err = carol.d.C.Open(bg, "carol", api.OpenRequest{Contact: "alice", Service: "printer"})
	if err != nil {
		t.Fatalf("carol, a lab member, asking for printer: %v", err)
	}
	if tb.Room != "lab" {
		t.Errorf("the tube carol got through lab, asked for directly, is in room %q: want lab's", tb.Room)
	}
	roundTrip(t, "tcp", tb.Address, "print this")
	if _, err := w.bob.d.C.Open(bg, "bob", api.OpenRequest{Contact: "alice", Service: "printer"}); !tperr.Has(err, tperr.PermissionDenied) {
		t.Errorf("bob, not in lab, asking for printer: %v", err)
	}
	// Removed from lab, carol loses the tube she got through it.
	if err := w.alice.d.C.RemoveFromRoom(bg, "alice", "lab", "carol"); err != nil {
		t.Fatal(err)
	}
	carol.ev.MustWait("carol's printer tube closes", isEvent(api.EventTubeClosed, tb.ID))
}

// Room changes an account did not hear of: the offerer leaving a room it
// does not own ends its own room tubes at once (the relay tells the
// others); an offerer who was offline while a member was removed (and let
// back in) drops the member from its tubes when it connects again, so a
// stream the member forges for an old tube then is refused.
func TestRoomChangesMissed(t *testing.T) {
	w := newWorld(t) // alice and bob
	carol := newPeer(t, w.relay, "carol")
	tubetest.Befriend(t, w.bob.d, "bob", carol.d, "carol")
	// carol is alice's contact too: a link between them stays allowed, so
	// only the tube's own membership check can refuse her stream.
	tubetest.Befriend(t, w.alice.d, "alice", carol.d, "carol")
	if _, err := w.bob.d.C.CreateRoom(bg, "bob", "r2"); err != nil {
		t.Fatal(err)
	}
	tubetest.InviteAndJoin(t, w.bob.d, "bob", "r2", w.alice.d, "alice")
	tubetest.InviteAndJoin(t, w.bob.d, "bob", "r2", carol.d, "carol")
	if _, err := w.alice.d.C.Export(bg, "alice", api.Export{Service: "echo", TCP: serve(t, echo)}); err != nil {
		t.Fatal(err)
	}
	offer := func() string {
		t.Helper()
		tb, err := w.alice.d.C.Offer(bg, "alice", api.OfferRequest{Service: "echo", Room: "r2"})
		if err != nil {
			t.Fatal(err)
		}
		carol.ev.MustWait("carol is offered", isEvent(api.EventNewTube, tb.ID))
		acc, err := carol.d.C.Accept(bg, tb.ID, api.AcceptRequest{})
		if err != nil {
			t.Fatal(err)
		}
		roundTrip(t, "tcp", acc.Address, "hello")
		return tb.ID
	}

	// alice, the offerer, is offline while bob removes carol.
	id := offer()
	later, err := w.alice.d.C.Offer(bg, "alice", api.OfferRequest{Service: "echo", Room: "r2", LaterMembers: true})
	if err != nil {
		t.Fatal(err)
	}
	carol.ev.MustWait("carol is offered the later-members tube", isEvent(api.EventNewTube, later.ID))
	if _, err := w.alice.d.C.Disconnect(bg, "alice"); err != nil {
		t.Fatal(err)
	}
	if err := w.bob.d.C.RemoveFromRoom(bg, "bob", "r2", "carol"); err != nil {
		t.Fatal(err)
	}
	carol.ev.MustWait("carol's tube closes", isEvent(api.EventTubeClosed, id))
	// ... and lets her back in: a member again, but not of the old tube.
	tubetest.InviteAndJoin(t, w.bob.d, "bob", "r2", carol.d, "carol")
	if a, err := w.alice.d.C.ConnectWait(bg, "alice"); err != nil || a.Status != "Connected" {
		t.Fatalf("alice reconnecting: %+v %v", a, err)
	}
	if forged, err := forgeStream(t, carol, "alice", w.alice, id); err != nil || !strings.Contains(forged, "refused") {
		t.Errorf("carol's forged stream after a removal (and a new join) alice missed ended with %q, %v; want a refusal", forged, err)
	}
	// The join alice missed counts for the later-members tube: carol, a
	// member again, is offered it again.
	carol.ev.MustWait("carol, back, is offered the later-members tube again", func(e api.Event) bool {
		return isEvent(api.EventNewTube, later.ID)(e) && countEvents(carol.ev, api.EventNewTube, later.ID) == 2
	})

	// alice leaves r2 (bob's): her own tube ends, not only carol's.
	id = offer()
	if err := w.alice.d.C.LeaveRoom(bg, "alice", "r2"); err != nil {
		t.Fatal(err)
	}
	ev := w.alice.ev.MustWait("alice's own tube closes", isEvent(api.EventTubeClosed, id))
	if !strings.Contains(ev.Message, "left room r2") {
		t.Errorf("alice's tube closed with %q", ev.Message)
	}
	carol.ev.MustWait("carol's tube closes", isEvent(api.EventTubeClosed, id))
}

// The library: a StreamTubeServer whose generator gives each offer its
// own parameters and which learns each connection's contact, and a
// StreamTubeClient that accepts matching offers without approval; the
// handler and the generator end with their client.
func TestStreamTubeServerAndClient(t *testing.T) {
	w := newWorld(t)
	srv, err := w.alice.d.C.NewStreamTubeServer(bg, "alice")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	var calls atomic.Int32
	err = srv.ExportTCPGenerator(bg, "x-game", serve(t, echo), func(r localclient.ParamsRequest) (map[string]api.Value, error) {
		calls.Add(1)
		return map[string]api.Value{"seat": {Type: api.TypeString, Value: "for-" + r.Contact}}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	bobLib := localclient.New(w.bob.d.Socket)
	defer bobLib.Close()
	cl, err := bobLib.NewStreamTubeClient(bg, "bob", localclient.StreamTubeClientOptions{Services: []string{"x-game"}, From: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	tb, err := srv.Offer(bg, "x-game", "bob", "")
	if err != nil {
		t.Fatal(err)
	}
	var addr string
	deadline := time.After(10 * time.Second)
	for addr == "" {
		select {
		case ev := <-cl.Events():
			if ev.Type == api.EventTubeStateChanged && ev.TubeID == tb.ID && ev.Address != "" {
				addr = ev.Address
			}
		case <-deadline:
			t.Fatal("the StreamTubeClient did not accept the tube")
		}
	}
	in, _ := w.bob.d.C.Tube(bg, tb.ID)
	if in.Parameters["seat"].Value != "for-bob" || calls.Load() != 1 {
		t.Errorf("generated parameters at bob: %+v (generator called %d times)", in.Parameters, calls.Load())
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "move e4")
	io.ReadFull(c, make([]byte, 7))
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		m := srv.TCPConnections()
		if len(m) == 1 {
			for _, rc := range m {
				if rc.Contact != "bob" || rc.Tube != tb.ID || rc.Account != "alice" {
					t.Errorf("TCPConnections: %+v", m)
				}
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("TCPConnections = %+v", m)
		}
	}
	// The client learns of its connection from its own event, which may
	// come after the server's.
	for deadline := time.After(10 * time.Second); ; {
		select {
		case ev := <-cl.Events():
			if ev.Type != api.EventNewLocalConnection || ev.TubeID != tb.ID {
				continue
			}
		case <-deadline:
			t.Fatal("the StreamTubeClient was not told of its connection")
		}
		break
	}
	if got := cl.Connections(tb.ID); len(got) != 1 {
		t.Errorf("client connections of the tube: %v", got)
	}

	// The client goes away: new offers wait for approval again.
	cl.Close()
	bobLib.Close()
	time.Sleep(200 * time.Millisecond)
	tb2, err := srv.Offer(bg, "x-game", "bob", "")
	if err != nil {
		t.Fatal(err)
	}
	w.bob.ev.MustWait("second offer", isEvent(api.EventNewTube, tb2.ID))
	time.Sleep(300 * time.Millisecond)
	if in, _ := w.bob.d.C.Tube(bg, tb2.ID); in.State != "Local_Pending" {
		t.Errorf("after the handler's client left, a new offer is %s", in.State)
	}
	// The server goes away: its generator export goes with it.
	srv.Close()
	time.Sleep(200 * time.Millisecond)
	if ex, _ := w.alice.d.C.Exports(bg); len(ex) != 0 {
		t.Errorf("exports after the server closed: %+v", ex)
	}
}

// The credentials control refuses a process of another uid (the client
// runs as nobody), while the daemon's own uid gets through.
func TestCredentialsOtherUID(t *testing.T) {
	testenv.MustHaveRoot(t)
	w := newWorld(t)
	base, err := os.MkdirTemp("", "tube-cred-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(base)
	os.Chmod(base, 0o755)
	sock := filepath.Join(base, "tube.sock")
	_, addr := w.offerAccept(t, "x-editor", api.Export{TCP: serve(t, echo)}, api.AcceptRequest{Unix: sock, Access: "credentials"})
	os.Chmod(addr, 0o777) // let nobody reach the socket, so only the control stands in the way
	self, _ := os.Executable()
	bin := filepath.Join(base, "helper.test")
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^TestHelperDial$")
	cmd.Env = []string{"TUBE_HELPER_DIAL=" + addr}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "refused:") {
		t.Fatalf("a client of uid 65534: %v\n%s", err, out)
	}
	if !strings.Contains(w.bob.log.String(), "uid 65534") {
		t.Error("the refusal of uid 65534 is not logged")
	}
	roundTrip(t, "unix", addr, "same uid")
}

// TestHelperDial is run by TestCredentialsOtherUID as another user: it
// connects, sends, and says whether it got an echo or was refused.
func TestHelperDial(t *testing.T) {
	addr := os.Getenv("TUBE_HELPER_DIAL")
	if addr == "" {
		return
	}
	c, err := net.Dial("unix", addr)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "hi")
	buf := make([]byte, 2)
	if _, err := io.ReadFull(c, buf); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.ErrUnexpectedEOF) {
			os.Stdout.WriteString("refused: " + err.Error() + "\n")
			return
		}
		t.Fatalf("read: %v", err)
	}
	os.Stdout.WriteString("echoed: " + string(buf) + "\n")
}
