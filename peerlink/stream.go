package peerlink

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Code says why a stream was reset.
type Code byte

// Reset codes, carried in RST frames.
const (
	CodeCancelled Code = 1 // closed on purpose (tube closed, local socket aborted)
	CodeLost      Code = 2 // the link broke
	CodeRefused   Code = 3 // the offerer could not reach its service
	CodeDenied    Code = 4 // the peer may not open this stream
)

func (c Code) String() string {
	switch c {
	case CodeCancelled:
		return "cancelled"
	case CodeLost:
		return "lost"
	case CodeRefused:
		return "refused"
	case CodeDenied:
		return "denied"
	}
	return fmt.Sprintf("code %d", byte(c))
}

// ResetError is why a stream ended abnormally. Message is a sentence for
// people, and a local reset sends it to the peer: it never holds the
// cause, which stays in Err for this side's logs (tperr's policy).
type ResetError struct {
	Code    Code
	Message string
	Remote  bool  // the peer reset the stream
	Err     error // the local cause, never sent
}

func (e *ResetError) Error() string {
	if e.Message == "" {
		return "stream " + e.Code.String()
	}
	return e.Message
}

func (e *ResetError) Unwrap() error { return e.Err }

// LogValue gives a log the message and the local cause.
func (e *ResetError) LogValue() slog.Value {
	if e.Err == nil {
		return slog.StringValue(e.Error())
	}
	return slog.StringValue(e.Error() + ": " + e.Err.Error())
}

// Stream is one connection carried by a link. The layer above attaches a
// local socket with Splice; from then on the stream moves bytes both ways
// itself:
//
//   - local → peer: one goroutine waits until the local socket is
//     readable (holding no buffer while idle), reads at most the credit the
//     peer granted, and sends DATA; end of file becomes FIN, a read error
//     RST.
//   - peer → local: DATA is queued as it arrives; a goroutine that exists
//     only while there is queued data writes it to the local socket and
//     grants the credit back. FIN becomes CloseWrite on the local socket
//     once everything queued is written (drain before teardown).
//
// An RST, or the link ending, aborts the local socket: TCP sockets are
// closed with SO_LINGER 0, so the application sees a reset, never a clean
// end of file.
type Stream struct {
	s  *Session
	id uint32

	mu       sync.Mutex // guards the fields below
	credit   int        // bytes we may still send
	creditCh chan struct{}
	queue    [][]byte // received, not yet written locally
	queued   int      // bytes in queue
	writing  int      // bytes taken from the queue, being written locally
	// waitSince is when data last began to wait for the local socket,
	// or the socket last took some: the stall check's clock.
	waitSince time.Time
	owed      int // bytes written locally, not yet credited back
	finRecv   bool
	sendDone  bool // FIN or RST sent
	recvDone  bool // FIN received and written through, or reset
	draining  bool
	local     net.Conn
	rc        syscall.RawConn // local's, when it has one
	onClose   func(error)
	err       error // set when reset
	finished  bool

	// lmu orders writes to the local socket against the pump's end of
	// file: a write that fails on a reset takes the socket's error, and
	// the pump's next read then sees a plain end of file. broken (set
	// under lmu with the failed write) tells it that end is a reset.
	lmu    sync.Mutex
	broken bool
}

func newStream(s *Session, id uint32) *Stream {
	return &Stream{s: s, id: id, credit: initialWindow, creditCh: make(chan struct{}, 1)}
}

// ID is the stream's id within its link.
func (st *Stream) ID() uint32 { return st.id }

// Splice attaches the local socket and starts moving bytes; it returns
// at once. onClose is called once when the stream has ended: with nil
// after a clean close in both directions, or a *ResetError.
func (st *Stream) Splice(local net.Conn, onClose func(error)) {
	if st.attach(local, onClose) {
		go st.pump()
	}
}

// attach sets the local socket, writes what was queued meanwhile, and
// reports whether the stream is still alive.
func (st *Stream) attach(local net.Conn, onClose func(error)) bool {
	st.mu.Lock()
	if st.err != nil {
		err := st.err
		st.mu.Unlock()
		abortConn(local)
		if onClose != nil {
			onClose(err)
		}
		return false
	}
	st.local = local
	if sc, ok := local.(syscall.Conn); ok {
		st.rc, _ = sc.SyscallConn()
	}
	st.onClose = onClose
	start := len(st.queue) > 0 || st.finRecv
	if start {
		st.draining = true
	}
	st.mu.Unlock()
	if start {
		st.drain(false)
	}
	return true
}

// stalled reports whether data has waited for the local socket, which
// took none of it, since before cutoff.
func (st *Stream) stalled(cutoff time.Time) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.err == nil && st.queued+st.writing > 0 && st.waitSince.Before(cutoff)
}

// Reset aborts the stream: the peer gets RST with code and message, and
// the local socket (if attached) is aborted.
func (st *Stream) Reset(code Code, msg string) {
	st.abort(&ResetError{Code: code, Message: msg}, true)
}

// abort ends the stream with e, optionally telling the peer.
func (st *Stream) abort(e *ResetError, tell bool) {
	st.mu.Lock()
	if st.err != nil || st.finished {
		st.mu.Unlock()
		return
	}
	st.err = e
	st.sendDone, st.recvDone = true, true
	queue, queued := st.queue, st.queued
	st.queue, st.queued = nil, 0
	local := st.local
	st.mu.Unlock()
	for _, b := range queue {
		putBuf(b)
	}
	st.s.release(queued)
	st.wake()
	if tell {
		// Left for the flusher: an abort never waits on the link (the
		// keepalive's stall resets and the reader's refusals abort).
		p := append([]byte{byte(e.Code)}, e.Message...)
		if !st.s.queueRst(st.id, p) {
			go st.s.fail(errors.New("peerlink: the peer reads none of our resets"), CodeLost)
		}
	}
	if local != nil {
		abortConn(local)
	}
	st.finish()
}

// finish runs once both directions are done.
func (st *Stream) finish() {
	st.mu.Lock()
	if st.finished || !st.sendDone || !st.recvDone {
		st.mu.Unlock()
		return
	}
	st.finished = true
	local, onClose, err := st.local, st.onClose, st.err
	st.mu.Unlock()
	st.s.remove(st)
	if err == nil && local != nil {
		local.Close()
	}
	if onClose != nil {
		if err != nil {
			onClose(err)
		} else {
			onClose(nil)
		}
	}
}

// deliver queues received data (on the session's reader goroutine).
func (st *Stream) deliver(b []byte) error {
	st.mu.Lock()
	if st.err != nil || st.finRecv {
		st.mu.Unlock()
		st.s.release(len(b))
		putBuf(b)
		return nil
	}
	if st.queued+st.owed+len(b) > initialWindow {
		st.mu.Unlock()
		putBuf(b)
		return fmt.Errorf("peerlink: peer overran the window of stream %d", st.id)
	}
	if st.queued == 0 && st.writing == 0 {
		st.waitSince = time.Now()
	}
	if n := len(st.queue); n > 0 && len(b) <= coalesceMax && cap(st.queue[n-1])-len(st.queue[n-1]) >= len(b) {
		// A small frame joins the one queued before it, in that buffer's
		// spare room: many small frames waiting for a slow application
		// fill buffers, rather than pin one each.
		st.queue[n-1] = append(st.queue[n-1], b...)
		putBuf(b)
	} else {
		st.queue = append(st.queue, b)
	}
	st.queued += len(b)
	start := st.local != nil && !st.draining
	if start {
		st.draining = true
	}
	st.mu.Unlock()
	switch {
	case !start:
	case len(b) <= directWriteMax:
		// Nobody is writing: try the local socket at once from here,
		// sparing the hand-off to a writer goroutine (the common case for
		// interactive traffic).
		st.drain(false)
	default:
		go st.drain(true)
	}
	return nil
}

// coalesceMax is the largest received frame that is copied into the
// spare room of the buffer queued before it.
const coalesceMax = 4 << 10

// directWriteMax is the largest frame the link's reader tries to write to
// the local socket itself; larger ones go to a drain goroutine at once,
// so that bulk transfers decrypt and write in parallel.
const directWriteMax = 16 << 10

// maxIovecs bounds one writev (the kernel's IOV_MAX is 1024).
const maxIovecs = 1024

// writevNow writes what the socket takes of bufs without waiting: one
// attempt, which may be short.
func writevNow(rc syscall.RawConn, bufs [][]byte) (int, error) {
	var n int
	var werr error
	err := rc.Write(func(fd uintptr) bool {
		for {
			m, e := unix.Writev(int(fd), bufs)
			switch {
			case e == unix.EINTR:
				continue
			case e == unix.EAGAIN:
			case e != nil:
				werr = os.NewSyscallError("writev", e)
			default:
				n = m
			}
			return true
		}
	})
	if err == nil {
		err = werr
	}
	return n, err
}

// takeOwed returns the credit to grant back now, if any: only once a
// quarter of the window has been written locally, so that small messages
// cost no window frame each (the sender still has three quarters of the
// window, so it can never wait on credit held back here), or at once when
// the link is tight (the sender may be sending on the stream's reserve
// alone). st.mu is held.
func (st *Stream) takeOwed() int {
	if st.owed == 0 || st.owed < initialWindow/4 && !st.s.tight() {
		return 0
	}
	owed := st.owed
	st.owed = 0
	return owed
}

func (st *Stream) recvFin() {
	st.mu.Lock()
	if st.err != nil {
		st.mu.Unlock()
		return
	}
	st.finRecv = true
	start := st.local != nil && !st.draining
	if start {
		st.draining = true
	}
	st.mu.Unlock()
	if start {
		st.drain(false)
	}
}

func (st *Stream) addCredit(n int) {
	st.mu.Lock()
	st.credit += n
	st.mu.Unlock()
	st.wake()
}

// wake tells the stream's pump that its credit, or the link's, changed.
func (st *Stream) wake() {
	select {
	case st.creditCh <- struct{}{}:
	default:
	}
}

// dead reports whether the stream can send no more.
func (st *Stream) dead() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.err != nil || st.sendDone
}

// drain writes queued data to the local socket, and after a received FIN
// closes its write side; it returns when the queue is empty, so an idle
// stream has no writer goroutine. The caller has set draining.
//
// With wait false it runs on a goroutine that must not block (the link's
// reader, or one about to pump): it writes only what the socket takes at
// once, hands the rest to a drain goroutine, and leaves link writes
// (window, RST) to other goroutines, since the link's reader blocking on
// the link could deadlock two peers that both send.
func (st *Stream) drain(wait bool) {
	if !wait && st.rc == nil { // no way to try without waiting
		go st.drain(true)
		return
	}
	for {
		st.mu.Lock()
		if st.err != nil {
			st.draining = false
			st.mu.Unlock()
			return
		}
		if len(st.queue) == 0 {
			st.draining = false
			fin := st.finRecv && !st.recvDone
			if fin {
				st.recvDone = true
			}
			local := st.local
			owed := 0
			if !fin {
				owed = st.takeOwed()
			}
			st.mu.Unlock()
			if owed > 0 {
				st.sendGrant(owed)
			}
			if fin {
				closeWrite(local)
				st.finish()
			}
			return
		}
		bufs := st.queue
		if !wait && len(bufs) > maxIovecs {
			bufs = bufs[:maxIovecs]
		}
		st.queue = st.queue[len(bufs):]
		total := 0
		for _, b := range bufs {
			total += len(b)
		}
		st.queued -= total
		st.writing = total
		local, rc := st.local, st.rc
		st.mu.Unlock()
		var n int
		var err error
		st.lmu.Lock()
		if wait {
			// Everything queued at once (writev): one system call for
			// several frames when the application reads slower than we
			// receive.
			toFree := append([][]byte(nil), bufs...)
			_, err = (*net.Buffers)(&bufs).WriteTo(local)
			bufs = toFree
			n = total
		} else {
			n, err = writevNow(rc, bufs)
		}
		st.broken = err != nil
		st.lmu.Unlock()
		if err != nil {
			for _, b := range bufs {
				putBuf(b)
			}
			st.s.release(total) // dropped with the stream
			e := &ResetError{Code: CodeCancelled, Message: "the local connection closed before all data was delivered"}
			if r := localReset(err); r.Code == CodeRefused {
				e = r
			}
			if wait {
				st.abort(e, true)
			} else {
				go st.abort(e, true)
			}
			return
		}
		rest := consumed(bufs, n)
		st.s.release(n)
		st.mu.Lock()
		st.writing = 0
		if n > 0 {
			st.waitSince = time.Now()
		}
		st.owed += n
		if st.err != nil { // aborted meanwhile: what is left goes with the stream
			st.mu.Unlock()
			for _, b := range rest {
				putBuf(b)
			}
			st.s.release(total - n)
			return
		}
		if len(rest) > 0 {
			st.queue = append(rest, st.queue...)
			st.queued += total - n
		}
		owed := st.takeOwed()
		st.mu.Unlock()
		if owed > 0 {
			st.sendGrant(owed)
		}
		if n < total { // the socket is full: wait for it elsewhere
			go st.drain(true)
			return
		}
	}
}

// consumed returns the unwritten rest of bufs after n bytes were written,
// giving fully written buffers back to their pool.
func consumed(bufs [][]byte, n int) [][]byte {
	for i, b := range bufs {
		if n < len(b) {
			return append([][]byte{b[n:]}, bufs[i+1:]...)
		}
		n -= len(b)
		putBuf(b)
	}
	return nil
}

// sendGrant gives credit back to the peer, from another goroutine when
// the caller may not block on the link.
// sendGrant leaves a grant for the flusher: a stream's drain never waits
// on the link (a peer that reads nothing would hold one goroutine per
// stream).
func (st *Stream) sendGrant(n int) { st.s.queueGrant(st.id, n) }

// pump moves bytes from the local socket to the peer.
func (st *Stream) pump() {
	st.mu.Lock()
	local, rc := st.local, st.rc
	st.mu.Unlock()
	for {
		credit := st.waitCredit()
		if credit <= 0 {
			return
		}
		limit := min(credit, maxData)
		var buf []byte
		var n int
		var err error
		if rc != nil {
			buf, n, err = readLocal(rc, limit)
		} else {
			buf = getBuf(limit + frameRoom) // no bigger than what may be sent: a stream waiting for credit holds little
			n, err = local.Read(buf[recHeaderLen : recHeaderLen+limit])
		}
		if n > 0 {
			st.mu.Lock()
			dead := st.err != nil
			st.credit -= n
			reserve := initialWindow-st.credit <= streamReserve
			st.mu.Unlock()
			if dead || !st.s.takeCredit(st, n, reserve) {
				putBuf(buf)
				return
			}
			if st.s.writeFrame(buf, n, frameData, st.id) != nil {
				putBuf(buf)
				return
			}
		}
		if buf != nil {
			putBuf(buf)
		}
		if err == nil {
			continue
		}
		st.mu.Lock()
		dead := st.err != nil
		st.mu.Unlock()
		if dead {
			return
		}
		if errors.Is(err, io.EOF) {
			st.lmu.Lock()
			broken := st.broken
			st.lmu.Unlock()
			if broken { // a reset, which the writer is reporting (RST)
				return
			}
			st.mu.Lock()
			st.sendDone = true
			st.mu.Unlock()
			st.s.writeSmall(frameFin, st.id, nil)
			st.finish()
			return
		}
		st.abort(localReset(err), true)
		return
	}
}

// localReset is how a stream ends when its local socket fails: Cancelled,
// or Refused when the error says the service never took the connection
// (a service started on demand that failed at once).
func localReset(err error) *ResetError {
	var r interface{ Refused() bool }
	if errors.As(err, &r) && r.Refused() {
		return &ResetError{Code: CodeRefused, Message: "the service did not take the connection", Err: err}
	}
	return &ResetError{Code: CodeCancelled, Message: "the local connection was reset", Err: err}
}

// waitCredit blocks until the peer has granted credit on the stream and
// on the link (or the stream has less than its reserve in flight), or the
// stream is reset, returning the smaller of the two (0 when reset). What it returns is not taken: another stream may take
// the link's meanwhile (takeCredit waits for it again).
func (st *Stream) waitCredit() int {
	for {
		st.mu.Lock()
		if st.err != nil || st.sendDone {
			st.mu.Unlock()
			return 0
		}
		c := st.credit
		st.mu.Unlock()
		if c > 0 {
			if lc := st.s.linkCredit(st); lc > 0 {
				return min(c, lc)
			}
			if r := streamReserve - (initialWindow - c); r > 0 {
				return min(c, r)
			}
		}
		<-st.creditCh
	}
}

// readLocal reads up to limit bytes from the local socket into a pooled
// frame buffer (at recHeaderLen: a record is sealed around it in place). It takes the buffer only
// when the socket is readable and gives it back before waiting, so an idle
// connection holds no buffer, and a busy one costs one system call per
// read. A nil buffer comes back only with an error.
func readLocal(rc syscall.RawConn, limit int) ([]byte, int, error) {
	var buf []byte
	var n int
	var rerr error
	err := rc.Read(func(fd uintptr) bool {
		if buf == nil {
			buf = getBuf(limit + frameRoom) // no bigger than what may be sent: a stream waiting for credit holds little
		}
		for {
			m, e := unix.Read(int(fd), buf[recHeaderLen:recHeaderLen+limit])
			switch {
			case e == unix.EINTR:
				continue
			case e == unix.EAGAIN:
				putBuf(buf)
				buf = nil
				return false // wait for readability, holding nothing
			case e != nil:
				rerr = &net.OpError{Op: "read", Net: "local", Err: os.NewSyscallError("read", e)}
			case m == 0:
				rerr = io.EOF
			default:
				n = m
			}
			return true
		}
	})
	if err == nil {
		err = rerr
	}
	if err != nil && n == 0 && buf != nil {
		putBuf(buf)
		buf = nil
	}
	return buf, n, err
}

// abortConn closes a local socket so that its peer sees a reset: for TCP,
// SO_LINGER 0 makes close send RST. Unix sockets have no reset; their peer
// sees ECONNRESET only if unread data remains.
func abortConn(c net.Conn) {
	if l, ok := c.(interface{ SetLinger(int) error }); ok {
		l.SetLinger(0)
	}
	c.Close()
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
		return
	}
	c.Close()
}
