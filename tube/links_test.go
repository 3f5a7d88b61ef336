package tube_test

import (
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/peerlink"
	"github.com/tubes-dev/tubes/tube"
)

// A contact that keeps opening links holds LinksPerPeer at most: each
// new link retires the one before it, which closes once its connections
// end (at once when it has none), and beyond the limit the oldest
// retired link is closed with its connections. The newest keeps working.
func TestLinksPerPeer(t *testing.T) {
	w := newWorld(t)
	id, _ := w.offerAccept(t, "echo", api.Export{TCP: serve(t, echo)}, api.AcceptRequest{})

	// Links without connections close as soon as the next one comes.
	idle, err := dialLinkAs(w.bob, "alice", w.alice)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close(peerlink.CodeCancelled)

	// Links each carrying one connection of the tube, more than the limit.
	const n = tube.LinksPerPeer + 2
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
		st, err := s.OpenStream([]byte(`{"tube":"` + id + `"}`))
		if err != nil {
			t.Fatal(err)
		}
		app, local := net.Pipe()
		defer app.Close()
		st.Splice(local, nil)
		msg := fmt.Sprint("link ", i)
		go app.Write([]byte(msg))
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(app, got); err != nil || string(got) != msg {
			t.Fatalf("link %d: echo %q, %v", i, got, err)
		}
		links = append(links, held{s, app})
	}
	waitDone(t, "the idle link, replaced", idle)
	for i, l := range links {
		if i < n-tube.LinksPerPeer {
			waitDone(t, fmt.Sprintf("link %d, beyond the limit", i), l.s)
			continue
		}
		select {
		case <-l.s.Done():
			t.Fatalf("link %d ended (%v); only the oldest %d should", i, l.s.Err(), n-tube.LinksPerPeer)
		default:
		}
	}
	// A retired link closes once its connection ends.
	oldest := links[n-tube.LinksPerPeer]
	oldest.app.Close()
	waitDone(t, "a retired link whose connection ended", oldest.s)
	// The newest carries new connections.
	last := links[n-1]
	last.app.Write([]byte("still"))
	got := make([]byte, 5)
	if _, err := io.ReadFull(last.app, got); err != nil || string(got) != "still" {
		t.Fatalf("the newest link after the others closed: %q, %v", got, err)
	}
}

func waitDone(t *testing.T, what string, s *peerlink.Session) {
	t.Helper()
	select {
	case <-s.Done():
	case <-time.After(10 * time.Second):
		t.Fatalf("%s is still open", what)
	}
}
