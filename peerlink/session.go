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

// Session is a multiplexed link over one TLS connection.
type Session struct {
	conn   net.Conn   // the TLS connection
	bc     *batchConn // under the TLS connection
	client bool
	h      Handler
	log    *slog.Logger

	wmu  sync.Mutex // serializes frame writes; guards werr
	werr error

	mu      sync.Mutex // guards the fields below
	streams map[uint32]*Stream
	nextID  uint32
	err     error // why the session ended

	lastRecv atomic.Int64 // unix nanoseconds of the last frame received
	done     chan struct{}
	wg       sync.WaitGroup
}

// newSession starts a session on an established TLS connection.
func newSession(conn net.Conn, bc *batchConn, client bool, h Handler, log *slog.Logger) *Session {
	s := &Session{conn: conn, bc: bc, client: client, h: h, log: log,
		streams: map[uint32]*Stream{}, done: make(chan struct{})}
	if client {
		s.nextID = 1
	} else {
		s.nextID = 2
	}
	s.lastRecv.Store(time.Now().UnixNano())
	s.wg.Add(2)
	go s.readLoop()
	go s.keepalive()
	return s
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

// writeFrame writes one complete frame (header and payload in b). The
// TLS records it produces leave in one write to the network.
func (s *Session) writeFrame(b []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.werr != nil {
		return s.werr
	}
	s.bc.begin()
	_, err := s.conn.Write(b)
	if ferr := s.bc.flush(); err == nil {
		err = ferr
	}
	if err != nil {
		s.werr = err
		go s.fail(fmt.Errorf("peerlink: write: %w", err), CodeLost)
	}
	return err
}

func (s *Session) writeSmall(typ byte, stream uint32, payload []byte) error {
	b := make([]byte, headerLen+len(payload))
	putHeader(b, typ, stream, len(payload))
	copy(b[headerLen:], payload)
	return s.writeFrame(b)
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
		st.abort(&ResetError{Code: code, Message: "the link to the peer ended: " + err.Error(), Remote: false}, false)
	}
	close(s.done)
}

// Wait waits for the session's goroutines after it ended.
func (s *Session) Wait() { s.wg.Wait() }

func (s *Session) stream(id uint32) *Stream {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.streams[id]
}

func (s *Session) remove(st *Stream) {
	s.mu.Lock()
	delete(s.streams, st.id)
	s.mu.Unlock()
}

func (s *Session) readLoop() {
	defer s.wg.Done()
	// Smaller than a data frame, so that frame payloads are read straight
	// into their buffers rather than copied through this one.
	br := bufio.NewReaderSize(s.conn, 16<<10)
	hdr := make([]byte, headerLen)
	err := s.read(br, hdr)
	code := CodeLost
	if errors.Is(err, errGoAway) {
		code = CodeCancelled
	}
	s.fail(err, code)
}

var errGoAway = errors.New("peerlink: the peer closed the link")

func (s *Session) read(br *bufio.Reader, hdr []byte) error {
	for {
		h, err := readHeader(br, hdr)
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return fmt.Errorf("peerlink: the peer closed the connection")
			}
			return err
		}
		s.lastRecv.Store(time.Now().UnixNano())
		switch h.typ {
		case frameData:
			st := s.stream(h.stream)
			if st == nil {
				// Data for a stream that was reset meanwhile.
				if _, err := br.Discard(int(h.length)); err != nil {
					return err
				}
				continue
			}
			buf := getBuf(int(h.length))
			if _, err := io.ReadFull(br, buf); err != nil {
				putBuf(buf)
				return err
			}
			if err := st.deliver(buf); err != nil {
				return err
			}
			continue
		}
		payload := make([]byte, h.length)
		if _, err := io.ReadFull(br, payload); err != nil {
			return err
		}
		switch h.typ {
		case frameOpen:
			if h.stream == 0 || (h.stream%2 == 1) != !s.client {
				return fmt.Errorf("peerlink: peer opened stream %d with the wrong parity", h.stream)
			}
			s.mu.Lock()
			if _, dup := s.streams[h.stream]; dup || s.err != nil {
				s.mu.Unlock()
				return fmt.Errorf("peerlink: peer reopened stream %d", h.stream)
			}
			st := newStream(s, h.stream)
			s.streams[h.stream] = st
			hd := s.h
			s.mu.Unlock()
			hd.Open(st, payload)
		case frameFin:
			if st := s.stream(h.stream); st != nil {
				st.recvFin()
			}
		case frameRst:
			if st := s.stream(h.stream); st != nil {
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
			if st := s.stream(h.stream); st != nil {
				st.addCredit(int(binary.BigEndian.Uint32(payload)))
			}
		case framePing:
			go s.writeSmall(framePong, 0, payload)
		case framePong:
		case frameCtrl:
			s.handler().Ctrl(payload)
		case frameGoAway:
			return errGoAway
		}
	}
}

func (s *Session) keepalive() {
	defer s.wg.Done()
	t := time.NewTicker(pingInterval)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
			if time.Since(time.Unix(0, s.lastRecv.Load())) > deadAfter {
				s.fail(fmt.Errorf("peerlink: no word from the peer for %s", deadAfter), CodeLost)
				return
			}
			s.writeSmall(framePing, 0, make([]byte, 8))
		}
	}
}

// batchConn sits under the TLS connection and, between begin and flush,
// gathers what TLS writes so that the several records of one frame leave
// in one system call.
type batchConn struct {
	net.Conn
	mu       sync.Mutex // guards batching and buf (TLS may write from its read path)
	batching bool
	buf      []byte
}

func (b *batchConn) begin() {
	b.mu.Lock()
	b.batching = true
	b.mu.Unlock()
}

func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	if b.batching {
		b.buf = append(b.buf, p...)
		b.mu.Unlock()
		return len(p), nil
	}
	b.mu.Unlock()
	return b.Conn.Write(p)
}

func (b *batchConn) flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.batching = false
	if len(b.buf) == 0 {
		return nil
	}
	_, err := b.Conn.Write(b.buf)
	if cap(b.buf) > 4*(maxData+headerLen) {
		b.buf = nil // do not keep a large buffer after a burst
	} else {
		b.buf = b.buf[:0]
	}
	return err
}

// Buffers for stream data, in size classes: a frame's buffer is the
// smallest class that holds it, so a small message queued at a receiver
// does not pin a megabyte.
var bufClasses = [...]int{16 << 10, 64 << 10, 256 << 10, headerLen + maxData}

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
