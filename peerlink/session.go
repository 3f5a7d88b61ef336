package peerlink

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Handler receives what the peer sends besides stream data. Its methods
// run on the session's reader goroutine and must not block.
type Handler interface {
	// Open is called when the peer opens a stream, with the metadata it
	// sent. The handler either attaches the stream (Stream.Splice) or
	// resets it (Stream.Reset); data the peer sends meanwhile is queued
	// within the stream's window.
	Open(st *Stream, meta []byte)
	// Ctrl is called for a link-level message.
	Ctrl(msg []byte)
}

// Keepalive timing: a ping every pingInterval; no frame at all from the
// peer for deadAfter ends the link (ConnectionLost on its streams).
var (
	pingInterval = 10 * time.Second
	deadAfter    = 30 * time.Second
)

// ErrClosed is returned by operations on a closed session.
var ErrClosed = errors.New("peerlink: link closed")

// Session is a multiplexed link over one connection, after its TLS
// handshake.
type Session struct {
	conn   net.Conn // the network connection the records go over
	client bool
	id     *Identity // limits and counters; nil in tests that drive read
	h      Handler
	log    *slog.Logger

	wmu  sync.Mutex // serializes frame writes; guards werr and out
	werr error
	out  *cipherState
	in   *cipherState // the reader's own

	mu      sync.Mutex // guards the fields below
	streams map[uint32]*Stream
	opened  int  // streams in streams the peer opened
	retired bool // close the link once its last stream ends (Retire)
	acked   bool // the peer answered our retire: it opens no more streams
	// peerRetired: the peer retired the link; new streams go elsewhere.
	peerRetired bool
	nextID      uint32
	err         error // why the session ended

	// The link's window (frame.go), under cmu: what this side may still
	// send on all streams, the streams waiting for that to grow, and what
	// it has received and not yet credited back (held, of which owed
	// is written locally already).
	cmu    sync.Mutex
	credit int
	wait   map[*Stream]struct{}
	held   int
	owed   int
	// heldNow is held, for readers that must not take cmu.
	heldNow atomic.Int64

	// Frames the reader (which may not block on the link) leaves for
	// one goroutine to write (flushLoop), under gmu: window grants by
	// stream (0: the link's), added up, and refusals of streams opened
	// over the cap. A peer that does not read what we send makes this
	// side hold a number per stream and at most maxPendingRsts
	// refusals, never a goroutine per frame.
	gmu     sync.Mutex
	grants  map[uint32]int
	rsts    []pendingRst
	ping    bool
	flushCh chan struct{}

	lastRecv atomic.Int64 // unix nanoseconds of the last frame received
	ponging  atomic.Bool  // a pong is being sent
	done     chan struct{}
	wg       sync.WaitGroup
}

// newSession starts a session on conn, whose TLS handshake gave the
// record states out and in.
func newSession(conn net.Conn, out, in *cipherState, client bool, id *Identity, h Handler, log *slog.Logger) *Session {
	s := &Session{conn: conn, out: out, in: in, client: client, id: id, h: h, log: log,
		streams: map[uint32]*Stream{}, done: make(chan struct{}),
		credit: linkWindow, wait: map[*Stream]struct{}{},
		grants: map[uint32]int{}, flushCh: make(chan struct{}, 1)}
	if client {
		s.nextID = 1
	} else {
		s.nextID = 2
	}
	s.lastRecv.Store(time.Now().UnixNano())
	s.wg.Add(3)
	go s.readLoop()
	go s.keepalive()
	go s.flushLoop()
	return s
}

// pendingRst is a refusal waiting for flushLoop.
type pendingRst struct {
	stream  uint32
	payload []byte
}

// maxPendingRsts is how many refusals may wait for the peer to read: a
// peer that goes on opening streams over the cap without reading the
// refusals is ended.
const maxPendingRsts = 1024

// queueGrant leaves a window grant of n bytes on stream (0: the link)
// for flushLoop; a stream that is gone needs none.
func (s *Session) queueGrant(stream uint32, n int) {
	if stream != 0 && s.stream(stream) == nil {
		return
	}
	s.gmu.Lock()
	s.grants[stream] += n
	s.gmu.Unlock()
	s.flushSoon()
}

// queueRst leaves a refusal of stream for flushLoop; false when too
// many wait already.
func (s *Session) queueRst(stream uint32, payload []byte) bool {
	s.gmu.Lock()
	defer s.gmu.Unlock()
	if len(s.rsts) >= maxPendingRsts {
		return false
	}
	s.rsts = append(s.rsts, pendingRst{stream, payload})
	s.flushSoon()
	return true
}

// queuePing leaves a ping for flushLoop: the keepalive never waits on
// the link, so a peer that stops reading is still found dead after
// deadAfter without a word from it.
func (s *Session) queuePing() {
	s.gmu.Lock()
	s.ping = true
	s.gmu.Unlock()
	s.flushSoon()
}

func (s *Session) flushSoon() {
	select {
	case s.flushCh <- struct{}{}:
	default:
	}
}

// flushLoop writes what the reader left, in turn.
func (s *Session) flushLoop() {
	defer s.wg.Done()
	for {
		select {
		case <-s.flushCh:
		case <-s.done:
			return
		}
		s.gmu.Lock()
		grants, rsts, ping := s.grants, s.rsts, s.ping
		s.grants, s.rsts, s.ping = map[uint32]int{}, nil, false
		s.gmu.Unlock()
		if ping && s.writeSmall(framePing, 0, make([]byte, 8)) != nil {
			return
		}
		for _, r := range rsts {
			if s.writeSmall(frameRst, r.stream, r.payload) != nil {
				return
			}
		}
		for id, n := range grants {
			var p [4]byte
			binary.BigEndian.PutUint32(p[:], uint32(n))
			if s.writeSmall(frameWindow, id, p[:]) != nil {
				return
			}
		}
	}
}

// SetHandler replaces the handler (before the peer can act on the link).
func (s *Session) SetHandler(h Handler) {
	s.mu.Lock()
	s.h = h
	s.mu.Unlock()
}

func (s *Session) handler() Handler {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.h
}

// Done is closed when the session has ended; Err then says why.
func (s *Session) Done() <-chan struct{} { return s.done }

// Err is why the session ended, or nil while it runs.
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// NumStreams is the number of open streams.
func (s *Session) NumStreams() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.streams)
}

// RemoteAddr is the address of the underlying connection's peer.
func (s *Session) RemoteAddr() net.Addr { return s.conn.RemoteAddr() }

// writeFrame seals a frame into a record, in place, and writes it in one
// system call. The payload is buf[recHeaderLen:recHeaderLen+n]; buf has
// room for n+frameRoom bytes. The caller keeps buf.
func (s *Session) writeFrame(buf []byte, n int, typ byte, stream uint32) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.werr != nil {
		return s.werr
	}
	rec, err := s.out.seal(buf, n, typ, stream)
	if err != nil {
		return err // nothing was sent: the link goes on
	}
	if _, err = s.conn.Write(rec); err != nil {
		s.werr = err
		go s.fail(fmt.Errorf("peerlink: write: %w", err), CodeLost)
	}
	return err
}

func (s *Session) writeSmall(typ byte, stream uint32, payload []byte) error {
	b := make([]byte, len(payload)+frameRoom)
	copy(b[recHeaderLen:], payload)
	return s.writeFrame(b, len(payload), typ, stream)
}

// OpenStream opens a stream with metadata for the peer's handler. It
// does not wait for the peer: data may be written at once.
func (s *Session) OpenStream(meta []byte) (*Stream, error) {
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return nil, s.err
	}
	id := s.nextID
	s.nextID += 2
	st := newStream(s, id)
	s.streams[id] = st
	s.mu.Unlock()
	if err := s.writeSmall(frameOpen, id, meta); err != nil {
		s.remove(st)
		return nil, err
	}
	return st, nil
}

// Retire closes the link once the streams open on it have ended and the
// peer has answered (so none of its opens is still on the way): another
// link has taken its place, and the connections this one carries finish
// undisturbed.
func (s *Session) Retire() {
	s.mu.Lock()
	if s.retired || s.err != nil {
		s.mu.Unlock()
		return
	}
	s.retired = true
	s.acked = s.peerRetired // it retired the link first: it opens nothing more
	idle := s.retiredIdle()
	s.mu.Unlock()
	s.writeSmall(frameRetire, 0, nil)
	if idle {
		s.Close(CodeCancelled)
	}
}

// retiredIdle reports whether a retired link may close now (s.mu held).
func (s *Session) retiredIdle() bool {
	return s.retired && s.acked && len(s.streams) == 0 && s.err == nil
}

// Usable reports whether new streams may go on the link: it runs, and
// neither side has retired it.
func (s *Session) Usable() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err == nil && !s.retired && !s.peerRetired
}

// retire acts on the peer's retire frame: the answer to ours, or its own
// retire, which we answer.
func (s *Session) retire() {
	s.mu.Lock()
	answer := !s.retired && !s.peerRetired
	if s.retired {
		s.acked = true
	}
	s.peerRetired = true
	idle := s.retiredIdle()
	s.mu.Unlock()
	if answer {
		go s.writeSmall(frameRetire, 0, nil)
	}
	if idle {
		go s.Close(CodeCancelled)
	}
}

// SendCtrl sends a link-level message to the peer's handler.
func (s *Session) SendCtrl(msg []byte) error { return s.writeSmall(frameCtrl, 0, msg) }

// Close ends the session, resetting its streams with code.
func (s *Session) Close(code Code) error {
	s.writeSmall(frameGoAway, 0, nil)
	s.fail(ErrClosed, code)
	return nil
}

// fail ends the session once: every stream is reset locally with code.
func (s *Session) fail(err error, code Code) {
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return
	}
	s.err = err
	streams := make([]*Stream, 0, len(s.streams))
	for _, st := range s.streams {
		streams = append(streams, st)
	}
	s.mu.Unlock()
	s.conn.Close()
	for _, st := range streams {
		st.abort(&ResetError{Code: code, Message: "the link to the peer ended", Err: err}, false)
	}
	s.cmu.Lock()
	held := s.held - s.owed
	s.held, s.owed = 0, 0
	s.heldNow.Store(0)
	s.cmu.Unlock()
	s.countHeld(-int64(held))
	close(s.done)
}

// Wait waits for the session's goroutines after it ended.
func (s *Session) Wait() { s.wg.Wait() }

func (s *Session) stream(id uint32) *Stream {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.streams[id]
}

// streamAndCount returns stream id and how many streams the link has.
func (s *Session) streamAndCount(id uint32) (*Stream, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.streams[id], len(s.streams)
}

func (s *Session) remove(st *Stream) {
	s.mu.Lock()
	if s.streams[st.id] == st {
		delete(s.streams, st.id)
		if s.peerOpened(st.id) {
			s.opened--
		}
	}
	idle := s.retiredIdle()
	s.mu.Unlock()
	s.gmu.Lock()
	delete(s.grants, st.id) // a stream that is gone needs no credit
	s.gmu.Unlock()
	if idle {
		go s.Close(CodeCancelled)
	}
	s.cmu.Lock()
	delete(s.wait, st)
	s.cmu.Unlock()
}

func (s *Session) readLoop() {
	defer s.wg.Done()
	// Smaller than a bulk record, so that large records are read straight
	// into their buffers rather than copied through this one.
	br := bufio.NewReaderSize(s.conn, 16<<10)
	err := s.read(br)
	code := CodeLost
	if errors.Is(err, errGoAway) {
		code = CodeCancelled
	}
	s.fail(err, code)
}

var errGoAway = errors.New("peerlink: the peer closed the link")

func (s *Session) read(br *bufio.Reader) error {
	var hdr [recHeaderLen]byte
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return fmt.Errorf("peerlink: the peer closed the connection")
			}
			return err
		}
		n, err := recordLength(hdr[:])
		if err != nil {
			return err
		}
		buf := getBuf(n)
		if _, err := io.ReadFull(br, buf); err != nil {
			putBuf(buf)
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return fmt.Errorf("peerlink: the peer closed the connection in the middle of a record")
			}
			return err
		}
		typ, stream, payload, err := s.in.open(buf, hdr[:])
		if err != nil {
			putBuf(buf)
			return err
		}
		s.lastRecv.Store(time.Now().UnixNano())
		if typ == frameData {
			// The payload is at the start of buf, so the stream gives the
			// buffer back to its pool once written.
			if err := s.data(stream, payload); err != nil {
				return err
			}
			continue
		}
		// Other frames are small: the handler gets a copy of its own.
		payload = append([]byte(nil), payload...)
		putBuf(buf)
		if err := s.frame(typ, stream, payload); err != nil {
			return err
		}
	}
}

// data hands a DATA frame's payload (a pooled buffer) to its stream.
func (s *Session) data(stream uint32, payload []byte) error {
	if len(payload) == 0 {
		putBuf(payload)
		return fmt.Errorf("peerlink: an empty data frame on stream %d", stream)
	}
	st, streams := s.streamAndCount(stream)
	if err := s.receive(len(payload), st, streams); err != nil {
		putBuf(payload)
		return err
	}
	if st == nil { // data for a stream that was reset meanwhile
		s.release(len(payload))
		putBuf(payload)
		return nil
	}
	return st.deliver(payload)
}

// peerOpened reports whether stream id is one the peer opens.
func (s *Session) peerOpened(id uint32) bool { return (id%2 == 1) == !s.client }

// receive counts n bytes of DATA for st against the link's window and
// its streams' reserves: a peer that sends more than they allow is
// breaking the protocol. Data for a stream that is gone (nil) is dropped
// at once and holds nothing.
//
// The reserves are counted together, not per stream: a sender takes the
// link's window for one frame and a stream's reserve for another in one
// order and may write them in the other, so the receiver cannot tell
// which bytes were whose. A sender holds at most the window, plus, since
// it last sent on the window, each stream's reserve: the bound is the
// same.
func (s *Session) receive(n int, st *Stream, streams int) error {
	s.cmu.Lock()
	if st != nil && s.held+n > linkWindow+streams*streamReserve {
		s.cmu.Unlock()
		return errors.New("peerlink: the peer overran the link's window and its streams' reserves")
	}
	s.held += n
	s.heldNow.Store(int64(s.held))
	s.cmu.Unlock()
	s.countHeld(int64(n))
	return nil
}

// release gives the link's window back n bytes that were received and
// are gone from this side (written locally, or dropped with their
// stream); once a quarter of the window is owed, or the peer has less
// than a quarter left (streams whose applications do not read hold the
// rest: what the others' applications take must go back at once, or they
// wait for nothing), the peer gets it, from the flusher: no caller waits
// on the link for a grant.
func (s *Session) release(n int) {
	if n <= 0 {
		return
	}
	s.countHeld(-int64(n))
	s.cmu.Lock()
	s.owed += n
	grant := 0
	if s.owed >= linkWindow/4 || linkWindow-s.held < linkWindow/4 {
		grant = s.owed
		s.held -= grant
		s.owed = 0
		s.heldNow.Store(int64(s.held))
	}
	s.cmu.Unlock()
	if grant == 0 {
		return
	}
	s.queueGrant(0, grant) // never waiting on the link: the flusher writes it
}

// countHeld keeps the identity's count of received bytes in memory.
func (s *Session) countHeld(n int64) {
	if s.id != nil && n != 0 {
		s.id.held.Add(n)
	}
}

// linkCredit is what this side may send on the link now; when it is
// none, st is woken (creditCh) once the peer grants more.
func (s *Session) linkCredit(st *Stream) int {
	s.cmu.Lock()
	defer s.cmu.Unlock()
	if s.credit <= 0 {
		s.wait[st] = struct{}{}
	}
	return s.credit
}

// tight reports whether the peer has less than a quarter of the link's
// window left: then every byte taken is credited back at once, on the
// link and on its stream.
func (s *Session) tight() bool { return linkWindow-s.heldNow.Load() < linkWindow/4 }

// takeCredit takes n bytes of the link's window for st, waiting for the
// peer to grant them, or at once when reserve is set (the stream has at
// most streamReserve in flight with them); false means the stream ended
// meanwhile.
func (s *Session) takeCredit(st *Stream, n int, reserve bool) bool {
	for {
		s.cmu.Lock()
		if s.credit >= n || reserve {
			s.credit -= n
			s.cmu.Unlock()
			return true
		}
		s.wait[st] = struct{}{}
		s.cmu.Unlock()
		<-st.creditCh
		if st.dead() {
			return false
		}
	}
}

// addCredit is the peer's grant of link window: every stream waiting for
// it tries again.
func (s *Session) addCredit(n int) {
	s.cmu.Lock()
	s.credit += n
	wait := s.wait
	s.wait = map[*Stream]struct{}{}
	s.cmu.Unlock()
	for st := range wait {
		st.wake()
	}
}

// frame acts on a frame other than DATA.
func (s *Session) frame(typ byte, stream uint32, payload []byte) error {
	switch typ {
	case frameOpen:
		if stream == 0 || (stream%2 == 1) != !s.client {
			return fmt.Errorf("peerlink: peer opened stream %d with the wrong parity", stream)
		}
		s.mu.Lock()
		if _, dup := s.streams[stream]; dup || s.err != nil {
			s.mu.Unlock()
			return fmt.Errorf("peerlink: peer reopened stream %d", stream)
		}
		if s.id != nil && s.opened >= s.id.Limits.streams() {
			// Over the cap: refused alone, the link and its other
			// streams go on. DATA the peer sent meanwhile is dropped
			// (and credited back) as for any reset stream.
			s.mu.Unlock()
			s.id.refused.Add(1)
			p := append([]byte{byte(CodeRefused)}, "too many connections are open on this link"...)
			if !s.queueRst(stream, p) {
				return errors.New("peerlink: the peer goes on opening streams over the cap without reading their refusals")
			}
			return nil
		}
		st := newStream(s, stream)
		s.streams[stream] = st
		s.opened++
		hd := s.h
		s.mu.Unlock()
		hd.Open(st, payload)
	case frameFin:
		if st := s.stream(stream); st != nil {
			st.recvFin()
		}
	case frameRst:
		if st := s.stream(stream); st != nil {
			e := &ResetError{Code: CodeCancelled, Remote: true}
			if len(payload) > 0 {
				e.Code = Code(payload[0])
				e.Message = string(payload[1:])
			}
			st.abort(e, false)
		}
	case frameWindow:
		if len(payload) != 4 {
			return fmt.Errorf("peerlink: malformed window frame")
		}
		n := int(binary.BigEndian.Uint32(payload))
		if stream == 0 {
			s.addCredit(n)
		} else if st := s.stream(stream); st != nil {
			st.addCredit(n)
		}
	case framePing:
		if len(payload) != 8 {
			return fmt.Errorf("peerlink: malformed ping frame")
		}
		// One pong at a time: a peer that pings without reading what we
		// send gets no queue of goroutines here.
		if s.ponging.CompareAndSwap(false, true) {
			go func() {
				s.writeSmall(framePong, 0, payload)
				s.ponging.Store(false)
			}()
		}
	case framePong:
	case frameCtrl:
		s.handler().Ctrl(payload)
	case frameGoAway:
		return errGoAway
	case frameRetire:
		s.retire()
	default:
		return fmt.Errorf("peerlink: unknown frame type %d", typ)
	}
	return nil
}

func (s *Session) keepalive() {
	defer s.wg.Done()
	t := time.NewTicker(pingInterval)
	defer t.Stop()
	stall := s.limits().stall()
	st := time.NewTicker(max(stall/4, time.Millisecond))
	defer st.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-st.C:
			s.resetStalled(stall)
		case <-t.C:
			if time.Since(time.Unix(0, s.lastRecv.Load())) > deadAfter {
				s.fail(fmt.Errorf("peerlink: no word from the peer for %s", deadAfter), CodeLost)
				return
			}
			s.queuePing()
		}
	}
}

// limits are the identity's limits (the defaults without one).
func (s *Session) limits() Limits {
	if s.id == nil {
		return Limits{}
	}
	return s.id.Limits
}

// resetStalled resets the streams whose local sockets took none of their
// data for stall, when the link's receive budget is more than half held:
// their data keeps every other stream of the link to its reserve (they
// share the link's window), and would for as long as their applications
// do not read.
func (s *Session) resetStalled(stall time.Duration) {
	s.cmu.Lock()
	inMemory := s.held - s.owed
	s.cmu.Unlock()
	if inMemory < linkWindow/2 {
		return
	}
	cutoff := time.Now().Add(-stall)
	s.mu.Lock()
	var stalled []*Stream
	for _, st := range s.streams {
		if st.stalled(cutoff) {
			stalled = append(stalled, st)
		}
	}
	s.mu.Unlock()
	for _, st := range stalled {
		if s.id != nil {
			s.id.stalled.Add(1)
		}
		st.abort(&ResetError{Code: CodeCancelled, Message: fmt.Sprintf("the application took none of the data for %s while the link was full", stall)}, true)
	}
}

// Buffers for stream data, in size classes a factor of two apart: a
// frame's buffer is the smallest class that holds it, so a small message
// queued at a receiver does not pin a megabyte, and what a link's
// receive budget holds takes at most twice its size in buffers.
var bufClasses = [...]int{16<<10 + frameRoom, 32<<10 + frameRoom, 64<<10 + frameRoom, 128<<10 + frameRoom,
	256<<10 + frameRoom, 512<<10 + frameRoom, maxData + frameRoom}

var bufPools [len(bufClasses)]sync.Pool

func getBuf(n int) []byte {
	for i, size := range bufClasses {
		if n <= size {
			if bp, ok := bufPools[i].Get().(*[]byte); ok {
				return (*bp)[:n]
			}
			return make([]byte, n, size)
		}
	}
	return make([]byte, n)
}

func putBuf(b []byte) {
	for i, size := range bufClasses {
		if cap(b) == size {
			b = b[:size]
			bufPools[i].Put(&b)
			return
		}
	}
}
