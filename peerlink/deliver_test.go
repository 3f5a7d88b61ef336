package peerlink

import (
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"
)

// Small frames are written to the local socket by the link's reader
// itself; when the socket is full, what is left must reach the
// application whole and in order through the drain goroutine.
func TestSmallFramesThroughAFullSocket(t *testing.T) {
	apps := make(chan net.Conn, 1)
	l := newLink(t, funcHandler{open: func(st *Stream, meta []byte) {
		app, local := tcpPair(t)
		// Small buffers (fixed, not autotuned), so that the reader's
		// direct writes come up short.
		app.(*net.TCPConn).SetReadBuffer(64 << 10)
		local.(*net.TCPConn).SetWriteBuffer(64 << 10)
		apps <- app
		st.Splice(local, nil)
	}})
	st, err := l.client.OpenStream([]byte("small"))
	if err != nil {
		t.Fatal(err)
	}
	app := <-apps
	defer app.Close()
	// 30,000 frames of 100 bytes (3 MB, within the window), each carrying
	// its sequence number, sent before the application reads anything.
	const frames, size = 30000, 100
	for i := range frames {
		b := make([]byte, size+frameRoom)
		binary.BigEndian.PutUint32(b[recHeaderLen:], uint32(i))
		if err := l.client.writeFrame(b, size, frameData, st.id); err != nil {
			t.Fatal(err)
		}
	}
	l.client.writeSmall(frameFin, st.id, nil)
	time.Sleep(100 * time.Millisecond) // let the socket fill up
	app.SetReadDeadline(time.Now().Add(20 * time.Second))
	got, err := io.ReadAll(app)
	if err != nil {
		t.Fatalf("after %d bytes: %v", len(got), err)
	}
	if len(got) != frames*size {
		t.Fatalf("the application got %d bytes, want %d", len(got), frames*size)
	}
	for i := range frames {
		if n := binary.BigEndian.Uint32(got[i*size:]); n != uint32(i) {
			t.Fatalf("frame %d arrived as number %d", i, n)
		}
	}
}

// Credit goes back to the sender once a quarter of the window has been
// written, not after every small message: a request/response exchange
// costs no window frames.
func TestNoWindowFramePerSmallMessage(t *testing.T) {
	l := newLink(t, serviceHandler(t, echo))
	app, _ := openConn(t, l.client, "echo")
	defer app.Close()
	msg := make([]byte, 100)
	const rounds = 50
	for range rounds {
		app.Write(msg)
		if _, err := io.ReadFull(app, msg); err != nil {
			t.Fatal(err)
		}
	}
	credit := func(s *Session) int {
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, st := range s.streams {
			st.mu.Lock()
			defer st.mu.Unlock()
			return st.credit
		}
		return -1
	}
	if c, want := credit(l.client), initialWindow-rounds*len(msg); c != want {
		t.Errorf("the client's credit is %d after %d small messages, want %d (no grants)", c, rounds, want)
	}
	// Past a quarter of the window, credit comes back.
	big := make([]byte, initialWindow/4+1)
	go app.Write(big)
	if _, err := io.ReadFull(app, make([]byte, len(big))); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for credit(l.client) <= initialWindow/2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if c := credit(l.client); c <= initialWindow/2 {
		t.Errorf("the client's credit is %d after a quarter of the window was written; no grant came", c)
	}
}
