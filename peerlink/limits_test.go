package peerlink

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// stuckHandler splices every stream to one end of a pipe nobody reads:
// whatever the peer sends stays in this side's memory. release resets
// the streams it holds.
type stuckHandler struct {
	mu      sync.Mutex
	streams []*Stream
}

func (h *stuckHandler) Open(st *Stream, _ []byte) {
	local, _ := net.Pipe() // no kernel buffer: every byte is held here
	h.mu.Lock()
	h.streams = append(h.streams, st)
	h.mu.Unlock()
	st.Splice(local, nil)
}

func (h *stuckHandler) Ctrl([]byte) {}

func (h *stuckHandler) release() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, st := range h.streams {
		st.Reset(CodeCancelled, "released")
	}
	h.streams = nil
}

// flood opens a stream and sends zeros on it until the stream ends.
func flood(t *testing.T, s *Session) {
	app, _ := openConn(t, s, "flood")
	t.Cleanup(func() { app.Close() })
	go io.Copy(app, zeroReader{})
}

// waitSettled waits until f stops changing (a reading that stays the same
// for several looks; a zero reading counts only if zero is allowed), and
// returns it.
func waitSettled(t *testing.T, f func() int64, zero bool) int64 {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	last, same := f(), 0
	for same < 10 {
		if time.Now().After(deadline) {
			t.Fatalf("still changing at %d", last)
		}
		time.Sleep(10 * time.Millisecond)
		if v := f(); v == last && (v > 0 || zero) {
			same++
		} else {
			last, same = v, 0
		}
	}
	return last
}

// A peer that opens many streams to a service that does not read makes
// this side hold at most the link's receive budget (and each stream's
// reserve), not a window per stream (12 streams × 4 MiB would be 48 MiB);
// the link is not broken by it, and once the stuck streams end a new one
// carries data again.
func TestLinkReceiveBudget(t *testing.T) {
	h := &stuckHandler{}
	l := newLink(t, h)
	const streams = 12
	for range streams {
		flood(t, l.client)
	}
	held := waitSettled(t, l.server.id.HeldBytes, false)
	if most := ReceiveBudget + streams*streamReserve; held > int64(most) {
		t.Fatalf("%d streams to a service that does not read hold %d bytes, over the link's budget and their reserves (%d)", streams, held, most)
	}
	if held < ReceiveBudget/2 {
		t.Fatalf("only %d bytes arrived before the senders stopped: the budget (%d) should be nearly used", held, ReceiveBudget)
	}
	if err := l.server.Err(); err != nil {
		t.Fatalf("the link ended: %v", err)
	}
	h.release()
	waitStreams(t, l.server, 0)
	// Their writers give their buffers back as the pipes close.
	if got := waitSettled(t, l.server.id.HeldBytes, true); got != 0 {
		t.Fatalf("%d bytes still held after the streams ended", got)
	}
	// The credit of the dropped data came back: a new stream moves more
	// than the whole budget.
	l.server.SetHandler(serviceHandler(t, echo))
	app, done := openConn(t, l.client, "after")
	data := bytes.Repeat([]byte("after the flood "), 2*ReceiveBudget/16)
	go func() {
		app.Write(data)
		app.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(app)
	if err != nil || sha256.Sum256(got) != sha256.Sum256(data) {
		t.Fatalf("after the flood: %d of %d bytes back, %v", len(got), len(data), err)
	}
	if err := <-done; err != nil {
		t.Fatalf("the stream after the flood ended with %v", err)
	}
}

// newLimitedLink is newLink with limits on the accepting side.
func newLimitedLink(t *testing.T, serverHandler Handler, lim Limits) link {
	t.Helper()
	old := testServerLimits
	testServerLimits = lim
	defer func() { testServerLimits = old }()
	return newLink(t, serverHandler)
}

// A peer may have Limits.Streams streams open on a link: one more is
// refused with a reset, alone; the open ones keep working, and once one
// ends a new stream is taken again.
func TestLinkStreamCap(t *testing.T) {
	const cap = 4
	l := newLimitedLink(t, serviceHandler(t, echo), Limits{Streams: cap})
	var apps []net.Conn
	for i := range cap {
		app, _ := openConn(t, l.client, "")
		defer app.Close()
		if _, err := app.Write([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		var b [1]byte
		if _, err := io.ReadFull(app, b[:]); err != nil || b[0] != byte(i) {
			t.Fatalf("stream %d: echo %v, %v", i, b, err)
		}
		apps = append(apps, app)
	}
	over, done := openConn(t, l.client, "")
	defer over.Close()
	var re *ResetError
	if err := <-done; !errors.As(err, &re) || re.Code != CodeRefused || !re.Remote {
		t.Fatalf("the stream over the cap ended with %v, want a refusal", err)
	}
	if _, err := readToError(over); !isReset(err) {
		t.Fatalf("the application of the refused stream saw %v, want a reset", err)
	}
	if n := l.server.id.RefusedStreams(); n != 1 {
		t.Fatalf("%d streams counted as refused, want 1", n)
	}
	// The open streams are untouched.
	for i, app := range apps {
		app.Write([]byte("x"))
		var b [1]byte
		if _, err := io.ReadFull(app, b[:]); err != nil || b[0] != 'x' {
			t.Fatalf("stream %d after the refusal: %v", i, err)
		}
	}
	apps[0].(*net.TCPConn).CloseWrite()
	io.ReadAll(apps[0])
	waitStreams(t, l.server, cap-1)
	again, _ := openConn(t, l.client, "")
	defer again.Close()
	again.Write([]byte("y"))
	var b [1]byte
	if _, err := io.ReadFull(again, b[:]); err != nil || b[0] != 'y' {
		t.Fatalf("a stream after one ended: %v", err)
	}
}

// A peer that sends more than the link's window on all streams together
// (each stream within its own) is breaking the protocol: the link ends.
func TestLinkWindowOverrun(t *testing.T) {
	out, in := directionStates(t, tls.TLS_AES_128_GCM_SHA256)
	var wire []byte
	chunk := make([]byte, maxData)
	sent := 0
	for id := uint32(1); sent <= linkWindow; id += 2 {
		wire = append(wire, sealed(t, out, frameOpen, id, []byte{0})...) // kept, never attached
		for range initialWindow / maxData {
			wire = append(wire, sealed(t, out, frameData, id, chunk)...)
			sent += maxData
		}
	}
	s := newSessionForRead(in, out, &ctrlRecorder{})
	err := s.read(bufio.NewReader(bytes.NewReader(wire)))
	if err == nil || !strings.Contains(err.Error(), "overran the link's window") {
		t.Fatalf("%d bytes on %d-byte windows: the reader stopped with %v", sent, initialWindow, err)
	}
	s.fail(err, CodeLost)
}

// A retired link takes the streams its peer opens until the peer has
// answered, then closes once they end: the peer stops using it (Usable)
// as soon as it hears, and no open is lost on the way.
func TestRetire(t *testing.T) {
	l := newLink(t, serviceHandler(t, echo))
	app, done := openConn(t, l.client, "")
	l.server.Retire()
	for deadline := time.Now().Add(10 * time.Second); l.client.Usable(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the peer never heard the link was retired")
		}
	}
	// Open before the retire arrived, and still served.
	app.Write([]byte("ping"))
	var b [4]byte
	if _, err := io.ReadFull(app, b[:]); err != nil || string(b[:]) != "ping" {
		t.Fatalf("a stream on the retired link: %q, %v", b, err)
	}
	select {
	case <-l.server.Done():
		t.Fatal("the retired link closed with a stream open")
	default:
	}
	app.(*net.TCPConn).CloseWrite()
	io.ReadAll(app)
	if err := <-done; err != nil {
		t.Fatalf("the stream ended with %v", err)
	}
	select {
	case <-l.server.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the retired link stayed open after its last stream ended")
	}
}

// mixedHandler sends streams opened with meta "flood" to a stuckHandler
// and the others to another handler.
type mixedHandler struct {
	stuck *stuckHandler
	other Handler
}

func (h mixedHandler) Open(st *Stream, meta []byte) {
	if string(meta) == "flood" {
		h.stuck.Open(st, meta)
		return
	}
	h.other.Open(st, meta)
}

func (h mixedHandler) Ctrl([]byte) {}

// Streams whose application takes none of their data hold the link's
// window: once the link is more than half full, those that took nothing
// for Limits.Stall are reset and the window comes back, while a stream
// whose application reads gets through meanwhile, on its reserve.
func TestStalledStreamsReset(t *testing.T) {
	h := mixedHandler{stuck: &stuckHandler{}, other: serviceHandler(t, echo)}
	l := newLimitedLink(t, h, Limits{Stall: 100 * time.Millisecond})
	for range 12 {
		flood(t, l.client)
	}
	for deadline := time.Now().Add(20 * time.Second); l.server.id.HeldBytes() < ReceiveBudget/2; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the floods hold only %d bytes", l.server.id.HeldBytes())
		}
	}
	app, _ := openConn(t, l.client, "echo")
	defer app.Close()
	app.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := app.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4)
	if _, err := io.ReadFull(app, got); err != nil || string(got) != "ping" {
		t.Fatalf("a reading stream behind stalled ones: %q, %v", got, err)
	}
	for deadline := time.Now().Add(20 * time.Second); l.server.id.StalledStreams() == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no stream counted as stalled")
		}
	}
	if err := l.server.Err(); err != nil {
		t.Fatalf("the link ended: %v", err)
	}
}

// Streams whose applications read go on, at full speed, while streams
// whose applications do not read hold the link's whole budget: each
// stream may have its reserve in flight whatever the link's window (once
// they waited for credit that only the stalled streams' resets, after
// Limits.Stall, gave back). Nothing is reset meanwhile.
func TestReadersGoOnBehindStuckStreams(t *testing.T) {
	h := mixedHandler{stuck: &stuckHandler{}, other: serviceHandler(t, echo)}
	l := newLink(t, h)
	for range 12 {
		flood(t, l.client)
	}
	waitSettled(t, l.server.id.HeldBytes, false)
	if held := l.server.id.HeldBytes(); held < ReceiveBudget {
		t.Fatalf("the floods hold only %d bytes, not the link's budget", held)
	}
	// Several readers at once: their frames go out in another order than
	// they took the link's window or their reserves in (a receiver that
	// judged each frame by its own stream's reserve ended such a link).
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			app, done := openConn(t, l.client, "echo")
			app.SetDeadline(time.Now().Add(20 * time.Second))
			data := bytes.Repeat([]byte{byte('a' + i)}, 8<<20)
			go func() {
				app.Write(data)
				app.(*net.TCPConn).CloseWrite()
			}()
			got, err := io.ReadAll(app)
			if err != nil || sha256.Sum256(got) != sha256.Sum256(data) {
				t.Errorf("reader %d behind stuck streams: %d of %d bytes back, %v", i, len(got), len(data), err)
			}
			if err := <-done; err != nil {
				t.Errorf("reader %d ended with %v", i, err)
			}
		})
	}
	wg.Wait()
	if n := l.server.id.StalledStreams(); n != 0 {
		t.Fatalf("%d streams reset", n)
	}
	if err := l.server.Err(); err != nil {
		t.Fatalf("the link ended: %v", err)
	}
}

// An application that does not read is left alone while its link has
// room: one stream holds at most its own window, under half the link's.
func TestStallNeedsAFullLink(t *testing.T) {
	l := newLink(t, &stuckHandler{})
	flood(t, l.client)
	waitSettled(t, l.server.id.HeldBytes, false)
	l.server.resetStalled(0) // every stream with data waiting counts as stalled now
	if n := l.server.id.StalledStreams(); n != 0 {
		t.Fatalf("%d streams reset on a link with room", n)
	}
}

// blockedConn is a connection whose writes never complete (a peer that
// reads nothing of what we send) until it is closed.
type blockedConn struct {
	discardConn
	once sync.Once
	ch   chan struct{}
}

func (c *blockedConn) Write(p []byte) (int, error) { <-c.ch; return 0, io.EOF }
func (c *blockedConn) Close() error {
	c.once.Do(func() { close(c.ch) })
	return nil
}

// A peer that reads nothing of what we send, while its data fills the
// link's window and is credited back frame by frame, costs this side a
// number per stream, not a goroutine per window grant: each grant the
// reader could not write once waited in a goroutine of its own (20,000
// one-byte frames made 20,000 of them).
func TestGrantsWaitWithoutGoroutines(t *testing.T) {
	out, in := directionStates(t, tls.TLS_AES_128_GCM_SHA256)
	s := newSessionForRead(in, out, &stuckHandler{})
	conn := &blockedConn{ch: make(chan struct{})}
	s.conn = conn
	defer conn.Close()
	var wire bytes.Buffer
	chunk := make([]byte, maxData)
	for i := range 4 { // 13 MiB held by streams that do not read: the link is tight
		id := uint32(2*i + 1)
		wire.Write(sealed(t, out, frameOpen, id, []byte{0}))
		for range 3 {
			wire.Write(sealed(t, out, frameData, id, chunk))
		}
	}
	wire.Write(sealed(t, out, frameData, 1, chunk))
	for range 20000 { // data for a stream that is gone: dropped and credited back
		wire.Write(sealed(t, out, frameData, 99999, []byte{1}))
	}
	before := runtime.NumGoroutine()
	err := s.read(bufio.NewReader(&wire))
	if err != nil && !strings.Contains(err.Error(), "the peer closed the connection") { // the end of the input
		t.Fatalf("the reader stopped with %v", err)
	}
	if grew := runtime.NumGoroutine() - before; grew > 100 {
		t.Fatalf("20,000 grants the peer does not read made %d goroutines", grew)
	}
	s.gmu.Lock()
	pending := len(s.grants)
	s.gmu.Unlock()
	if pending == 0 {
		t.Fatal("no grant is waiting for the peer")
	}
	s.fail(io.EOF, CodeLost)
}

// A peer that stops reading and sends nothing more (frozen: its kernel
// holds the connection open) is found dead after deadAfter even while
// our writes to it block: the keepalive once wrote its ping behind the
// blocked writer and never looked at the clock again.
func TestFrozenPeerFoundDead(t *testing.T) {
	oldPing, oldDead := pingInterval, deadAfter
	pingInterval, deadAfter = 20*time.Millisecond, 300*time.Millisecond
	t.Cleanup(func() { pingInterval, deadAfter = oldPing, oldDead }) // after the link's own cleanup has ended its sessions
	freeze := make(chan struct{})
	via := func(addr string) string { // a proxy that stops forwarding, both ways, and holds on
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", addr)
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close(); u.Close() })
			pipe := func(dst, src net.Conn) {
				b := make([]byte, 32<<10)
				for {
					n, err := src.Read(b)
					if err != nil {
						return
					}
					select {
					case <-freeze:
						<-t.Context().Done() // frozen: nothing read or written any more
						return
					default:
					}
					if _, err := dst.Write(b[:n]); err != nil {
						return
					}
				}
			}
			go pipe(u, c)
			go pipe(c, u)
		}()
		return ln.Addr().String()
	}
	l := newLinkVia(t, &stuckHandler{}, via)
	for range 4 { // 16 MiB of window: more than the sockets between hold, so a write blocks
		flood(t, l.client)
	}
	close(freeze)
	deadline := time.Now().Add(10 * time.Second)
	for l.client.Err() == nil {
		if time.Now().After(deadline) {
			t.Fatal("the link to a frozen peer is still up")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(l.client.Err().Error(), "no word from the peer") {
		t.Fatalf("the link ended with %v", l.client.Err())
	}
}

// A read is into a buffer no bigger than what may be sent: a stream that
// reads while it has little credit and then waits for more holds that
// much, not a whole frame's megabyte (64 writers behind a full link once
// held 64 of them in the sending daemon).
func TestReadBufferFitsTheCredit(t *testing.T) {
	app, local := tcpPair(t)
	if _, err := app.Write([]byte("a little")); err != nil {
		t.Fatal(err)
	}
	rc, err := local.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	buf, n, err := readLocal(rc, 100)
	if err != nil || n != len("a little") {
		t.Fatalf("read %d bytes, %v", n, err)
	}
	if cap(buf) > bufClasses[0] {
		t.Fatalf("a read of at most 100 bytes took a %d-byte buffer", cap(buf))
	}
	putBuf(buf)
}
