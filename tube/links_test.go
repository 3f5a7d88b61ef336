package tube_test

import (
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/peerlink"
	"github.com/tubes-dev/tubes/tube"
)

// A contact that keeps opening links holds LinksPerPeer at most: beyond
// the limit the oldest is closed with its connections, and the newest
// keep working. Retiring a link is the dialer's choice: a link it retires
// closes once its connections end.
func TestLinksPerPeer(t *testing.T) {
	w := newWorld(t)
	id, _ := w.offerAccept(t, "echo", api.Export{TCP: serve(t, echo)}, api.AcceptRequest{})

	idle, err := dialLinkAs(w.bob, "alice", w.alice)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close(peerlink.CodeCancelled)

	// Links each carrying one connection of the tube, more than the
	// limit with the idle one.
	const n = tube.LinksPerPeer + 1
	type held struct {
		s   *peerlink.Session
		app net.Conn
	}
	var links []held
	for i := range n {
		s, err := dialLinkAs(w.bob, "alice", w.alice)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close(peerlink.CodeCancelled)
		links = append(links, held{s, echoOn(t, s, id, fmt.Sprint("link ", i))})
	}
	waitDone(t, "the idle link, the oldest beyond the limit", idle)
	waitDone(t, "link 0, beyond the limit", links[0].s)
	for i, l := range links[1:] {
		select {
		case <-l.s.Done():
			t.Fatalf("link %d ended (%v); only the oldest two should", i+1, l.s.Err())
		default:
		}
	}
	// A link the contact retires closes once its connection ends.
	retired := links[1]
	retired.s.Retire()
	retired.app.Close()
	waitDone(t, "a retired link whose connection ended", retired.s)
	// The newest carries new connections.
	last := links[n-1]
	last.app.Write([]byte("still"))
	got := make([]byte, 5)
	if _, err := io.ReadFull(last.app, got); err != nil || string(got) != "still" {
		t.Fatalf("the newest link after the others closed: %q, %v", got, err)
	}
}

// A second link from a contact does not take the first one's place at
// the daemon it reaches: the contact's dial race may open two and close
// the loser, and the winner must go on carrying connections (the daemon
// once retired the winner when the loser arrived after it).
func TestSecondLinkLeavesFirst(t *testing.T) {
	w := newWorld(t)
	id, _ := w.offerAccept(t, "echo", api.Export{TCP: serve(t, echo)}, api.AcceptRequest{})

	winner, err := dialLinkAs(w.bob, "alice", w.alice)
	if err != nil {
		t.Fatal(err)
	}
	defer winner.Close(peerlink.CodeCancelled)
	first := echoOn(t, winner, id, "first")
	loser, err := dialLinkAs(w.bob, "alice", w.alice)
	if err != nil {
		t.Fatal(err)
	}
	loser.Close(peerlink.CodeCancelled)
	// Once alice has seen the loser end, anything she sent on the winner
	// because of it is on its way; an echo through the winner brings it.
	waitLog(t, w.alice, `msg="peer link ended" account=alice peer=bob path=direct err="peerlink: the peer closed the link"`, 1)
	second := echoOn(t, winner, id, "second")
	if !winner.Usable() {
		t.Fatal("alice retired the first link when the second came")
	}
	first.Close()
	second.Close()
	echoOn(t, winner, id, "third").Close()
	select {
	case <-winner.Done():
		t.Fatalf("the first link ended: %v", winner.Err())
	default:
	}
}

// waitLog waits until p's log has n lines containing s.
func waitLog(t *testing.T, p *peer, s string, n int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); strings.Count(p.log.String(), s) < n; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s's log never had %d lines with %q:\n%s", p.name, n, s, p.log.String())
		}
	}
}

// echoOn opens a connection of tube id on link s and checks an echo of
// msg through it; it returns the application's end.
func echoOn(t *testing.T, s *peerlink.Session, id, msg string) net.Conn {
	t.Helper()
	st, err := s.OpenStream([]byte(`{"tube":"` + id + `"}`))
	if err != nil {
		t.Fatal(err)
	}
	app, local := net.Pipe()
	t.Cleanup(func() { app.Close() })
	st.Splice(local, nil)
	go app.Write([]byte(msg))
	got := make([]byte, len(msg))
	app.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(app, got); err != nil || string(got) != msg {
		t.Fatalf("%s: echo %q, %v", msg, got, err)
	}
	app.SetReadDeadline(time.Time{})
	return app
}

func waitDone(t *testing.T, what string, s *peerlink.Session) {
	t.Helper()
	select {
	case <-s.Done():
	case <-time.After(10 * time.Second):
		t.Fatalf("%s is still open", what)
	}
}
