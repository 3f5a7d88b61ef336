package peerlink

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var suites = []uint16{tls.TLS_AES_128_GCM_SHA256, tls.TLS_AES_256_GCM_SHA384, tls.TLS_CHACHA20_POLY1305_SHA256}

// directionStates returns a sender's and a receiver's state for one
// direction, from the same secret.
func directionStates(t testing.TB, suite uint16) (*cipherState, *cipherState) {
	t.Helper()
	secret := make([]byte, 32)
	rand.Read(secret)
	out, err := newCipherState(suite, bytes.Clone(secret))
	if err != nil {
		t.Fatal(err)
	}
	in, err := newCipherState(suite, bytes.Clone(secret))
	if err != nil {
		t.Fatal(err)
	}
	return out, in
}

// sealed returns the record of one frame.
func sealed(t testing.TB, c *cipherState, typ byte, stream uint32, payload []byte) []byte {
	t.Helper()
	buf := make([]byte, len(payload)+frameRoom)
	copy(buf[recHeaderLen:], payload)
	rec, err := c.seal(buf, len(payload), typ, stream)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// discardConn takes whatever a session writes (pongs, resets).
type discardConn struct{ net.Conn }

func (discardConn) Write(p []byte) (int, error) { return len(p), nil }
func (discardConn) Close() error                { return nil }

// ctrlRecorder records the ctrl messages a session receives; opened
// streams are kept (their data queues) when the metadata's first byte is
// even, and reset otherwise.
type ctrlRecorder struct {
	mu   sync.Mutex
	msgs []string
}

func (r *ctrlRecorder) Open(st *Stream, meta []byte) {
	if len(meta) > 0 && meta[0]%2 == 1 {
		st.Reset(CodeDenied, "odd")
	}
}

func (r *ctrlRecorder) Ctrl(m []byte) {
	r.mu.Lock()
	r.msgs = append(r.msgs, string(m))
	r.mu.Unlock()
}

// readRecords runs a session's reader over input (as if the accepting
// side), and returns why it stopped and the ctrl messages it delivered.
func readRecords(in *cipherState, input []byte) ([]string, error) {
	out, _ := newCipherState(in.suite, make([]byte, 32))
	h := &ctrlRecorder{}
	s := newSessionForRead(in, out, h)
	err := s.read(bufio.NewReader(bytes.NewReader(input)))
	s.fail(err, CodeLost)
	return h.msgs, err
}

// newSessionForRead is a session with no reader or keepalive running, for
// driving read directly.
func newSessionForRead(in, out *cipherState, h Handler) *Session {
	return &Session{conn: discardConn{}, in: in, out: out, h: h, log: discardLog,
		streams: map[uint32]*Stream{}, done: make(chan struct{}), nextID: 2,
		credit: linkWindow, wait: map[*Stream]struct{}{}, grants: map[uint32]int{}}
}

func TestRecordRoundTrip(t *testing.T) {
	for _, suite := range suites {
		t.Run(tls.CipherSuiteName(suite), func(t *testing.T) {
			out, in := directionStates(t, suite)
			marker := bytes.Repeat([]byte("plaintext marker "), 100)
			for _, size := range []int{0, 1, len(marker), maxData} {
				payload := make([]byte, size)
				copy(payload, marker)
				rec := sealed(t, out, frameData, 7, payload)
				if bytes.Contains(rec, []byte("plaintext marker")) {
					t.Fatalf("a sealed record of %d bytes shows its plaintext", size)
				}
				n, err := recordLength(rec)
				if err != nil || n != len(rec)-recHeaderLen || n != size+trailerLen+tagLen {
					t.Fatalf("record of %d bytes: length header %d, %v", len(rec), n, err)
				}
				typ, stream, got, err := in.open(rec[recHeaderLen:], rec[:recHeaderLen])
				if err != nil || typ != frameData || stream != 7 || !bytes.Equal(got, payload) {
					t.Fatalf("payload of %d bytes opened as type %d stream %d, %d bytes, %v", size, typ, stream, len(got), err)
				}
			}
		})
	}
}

// A record altered, replayed, reordered, dropped, cut short, or sealed
// with another key ends the link; the frames before it were delivered,
// none after.
func TestRecordRejects(t *testing.T) {
	out, in := directionStates(t, tls.TLS_AES_128_GCM_SHA256)
	r := [3][]byte{}
	for i := range r {
		r[i] = sealed(t, out, frameCtrl, 0, []byte{'m', byte('0' + i)})
	}
	other, _ := directionStates(t, tls.TLS_AES_128_GCM_SHA256)
	foreign := sealed(t, other, frameCtrl, 0, []byte("m0"))
	flip := func(b []byte, i int) []byte {
		b = bytes.Clone(b)
		b[i] ^= 0x40
		return b
	}
	shorter := bytes.Clone(r[1])
	binary.BigEndian.PutUint32(shorter, uint32(len(r[1])-recHeaderLen-1))
	cat := func(rs ...[]byte) []byte { return bytes.Join(rs, nil) }
	// fresh seals from record 0 again, with the same key.
	fresh := func(frames ...func(c *cipherState) []byte) []byte {
		c, err := newCipherState(in.suite, bytes.Clone(in.secret))
		if err != nil {
			t.Fatal(err)
		}
		var b []byte
		for _, f := range frames {
			b = append(b, f(c)...)
		}
		return b
	}
	frame := func(typ byte, stream uint32, p string) func(c *cipherState) []byte {
		return func(c *cipherState) []byte { return sealed(t, c, typ, stream, []byte(p)) }
	}
	tooLong := binary.BigEndian.AppendUint32(nil, maxRecord+1)
	for _, c := range []struct {
		name  string
		input []byte
		err   string // in the error
		got   string // ctrl messages delivered
	}{
		{"intact, then end of stream", cat(r[0], r[1], r[2]), "the peer closed the connection", "m0 m1 m2"},
		{"body altered", cat(r[0], flip(r[1], recHeaderLen), r[2]), "failed authentication", "m0"},
		{"tag altered", cat(r[0], flip(r[1], len(r[1])-1), r[2]), "failed authentication", "m0"},
		{"length altered", cat(r[0], shorter, r[2]), "failed authentication", "m0"},
		{"replayed", cat(r[0], r[0], r[1]), "failed authentication", "m0"},
		{"reordered", cat(r[1], r[0]), "failed authentication", ""},
		{"dropped", cat(r[0], r[2]), "failed authentication", "m0"},
		{"cut short", cat(r[0], r[1][:len(r[1])-3]), "in the middle of a record", "m0"},
		{"another key", foreign, "failed authentication", ""},
		{"length too large", cat(r[0], []byte{0xff, 0xff, 0xff, 0xff}), "a record of 4294967295 bytes", "m0"},
		{"length too small", []byte{0, 0, 0, 3, 1, 2, 3}, "a record of 3 bytes", ""},
		{"length one byte over", cat(r[0], tooLong), "a record of 1048598 bytes", "m0"},
		{"a TLS alert", []byte{21, 3, 3, 0, 19, 1, 2, 3}, "refused the link's TLS handshake", ""},
		{"empty data frame", fresh(frame(frameCtrl, 0, "m0"), frame(frameData, 1, "")), "an empty data frame on stream 1", "m0"},
		{"malformed ping", fresh(frame(frameCtrl, 0, "m0"), frame(framePing, 0, "abc")), "malformed ping frame", "m0"},
		{"malformed window", fresh(frame(frameWindow, 1, "abc")), "malformed window frame", ""},
		{"unknown type", fresh(frame(frameCtrl, 0, "m0"), frame(frameRetire+1, 0, "")), "unknown frame type 10", "m0"},
		{"open with the wrong parity", fresh(frame(frameOpen, 2, "\x00")), "wrong parity", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			in := *in // each case starts at record 0
			got, err := readRecords(&in, c.input)
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("the reader stopped with %v, want %q", err, c.err)
			}
			if g := strings.Join(got, " "); g != c.got {
				t.Errorf("delivered %q, want %q", g, c.got)
			}
		})
	}
}

// After recordsPerKey records each direction moves to a new key: the
// record after that is not sealed with the old one.
func TestRecordKeyUpdate(t *testing.T) {
	out, in := directionStates(t, tls.TLS_AES_128_GCM_SHA256)
	first := bytes.Clone(out.secret)
	old := *out
	for i := range recordsPerKey + 2 {
		rec := sealed(t, out, frameCtrl, 0, binary.BigEndian.AppendUint32(nil, uint32(i)))
		if i == recordsPerKey {
			if bytes.Equal(out.secret, first) {
				t.Fatal("the secret did not change after recordsPerKey records")
			}
			// Under the old key and IV this record does not open.
			nonce := old.iv
			var seq [8]byte
			binary.BigEndian.PutUint64(seq[:], recordsPerKey)
			for j, b := range seq {
				nonce[4+j] ^= b
			}
			if _, err := old.aead.Open(nil, nonce[:], rec[recHeaderLen:], rec[:recHeaderLen]); err == nil {
				t.Fatal("the record after the key update opens with the old key")
			}
		}
		_, _, p, err := in.open(rec[recHeaderLen:], rec[:recHeaderLen])
		if err != nil || binary.BigEndian.Uint32(p) != uint32(i) {
			t.Fatalf("record %d: %v", i, err)
		}
	}
}

// The handshake's reader never hands crypto/tls more than the rest of
// one TLS record, so the bytes after the last handshake record stay in
// the socket for the link's own reader.
func TestHandshakeConnStopsAtRecords(t *testing.T) {
	a, b := tcpPair(t)
	defer a.Close()
	defer b.Close()
	rec := func(n int) []byte {
		r := []byte{22, 3, 3, byte(n >> 8), byte(n)}
		return append(r, bytes.Repeat([]byte{'x'}, n)...)
	}
	a.Write(bytes.Join([][]byte{rec(10), rec(300), []byte("link bytes")}, nil))
	hc := &handshakeConn{Conn: b}
	var got []int
	total := 0
	for total < 5+10+5+300 {
		n, err := hc.Read(make([]byte, 4096))
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, n)
		total += n
	}
	if total != 320 {
		t.Fatalf("the handshake reader returned %v (%d bytes), past the second record", got, total)
	}
	b.SetReadDeadline(time.Now().Add(5 * time.Second))
	rest, err := io.ReadAll(io.LimitReader(b, 10))
	if err != nil || string(rest) != "link bytes" {
		t.Fatalf("after the handshake records the socket held %q, %v", rest, err)
	}
}

// A bit flipped on the wire by a man in the middle ends the link: both
// applications see a reset (not end of file, not altered bytes), the
// streams report CodeLost, and the receiver says why.
func TestTamperedLinkEnds(t *testing.T) {
	var armed atomic.Bool
	via := func(server string) string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		go func() {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", server)
			if err != nil {
				c.Close()
				return
			}
			go func() { io.Copy(c, s); c.Close() }()
			buf := make([]byte, 64<<10)
			for {
				n, err := c.Read(buf)
				if n > 20 && armed.CompareAndSwap(true, false) {
					buf[20] ^= 1
				}
				if _, werr := s.Write(buf[:n]); err != nil || werr != nil {
					s.Close()
					return
				}
			}
		}()
		return l.Addr().String()
	}
	svc := make(chan net.Conn, 1)
	l := newLinkVia(t, serviceHandler(t, func(c net.Conn) { svc <- c }), via)
	app, done := openConn(t, l.client, "")
	app.Write([]byte("before"))
	service := <-svc
	if _, err := io.ReadFull(service, make([]byte, 6)); err != nil {
		t.Fatal(err)
	}
	armed.Store(true)
	app.Write(bytes.Repeat([]byte("after the tampering "), 100))
	if got, err := readToError(app); !isReset(err) {
		t.Fatalf("the client application read %q and then %v, want a reset", got, err)
	}
	var re *ResetError
	if err := <-done; !errors.As(err, &re) || re.Code != CodeLost {
		t.Fatalf("the client's stream ended with %v, want lost", err)
	}
	<-l.server.Done()
	if err := l.server.Err(); !errors.Is(err, errRecordAuth) {
		t.Fatalf("the server's link ended with %v", err)
	}
	if got, err := readToError(service); bytes.Contains(got, []byte("tampering")) || !isReset(err) {
		t.Fatalf("the service read %q, then %v; want a reset and nothing of the altered record", got, err)
	}
}

// A record is sealed for one direction only: one a side sealed does not
// open on that same side (a reflection), and does on the other.
func TestRecordNotReflected(t *testing.T) {
	l := newLink(t, funcHandler{})
	// No frame has crossed the new link yet: every state is at record 0.
	l.client.wmu.Lock()
	out := *l.client.out
	l.client.wmu.Unlock()
	rec := sealed(t, &out, frameCtrl, 0, []byte("to the server"))
	own, other := *l.client.in, *l.server.in
	if _, _, _, err := own.open(bytes.Clone(rec[recHeaderLen:]), rec[:recHeaderLen]); err == nil {
		t.Fatal("the client opens a record it sealed itself")
	}
	if _, _, p, err := other.open(bytes.Clone(rec[recHeaderLen:]), rec[:recHeaderLen]); err != nil || string(p) != "to the server" {
		t.Fatalf("the server opened the client's record as %q, %v", p, err)
	}
}

// A received record of a 16, 32, ... 512 KiB payload (common local read
// sizes) or of a full frame fits the class of its payload size, not the
// next one up; one just over a class takes less than twice its size.
func TestBufferClasses(t *testing.T) {
	prev := 0
	for class, payload := range []int{16 << 10, 32 << 10, 64 << 10, 128 << 10, 256 << 10, 512 << 10, maxData} {
		for _, n := range []int{prev + 100, payload} {
			if b := getBuf(n + trailerLen + tagLen); cap(b) != bufClasses[class] {
				t.Errorf("the record of a %d-byte payload takes a buffer of %d, want %d", n, cap(b), bufClasses[class])
			}
		}
		prev = payload
	}
}

// Tiny frames waiting for a slow (here: not yet attached) application
// share buffers: 10,000 one-byte frames hold one buffer, not 10,000.
func TestTinyFramesShareBuffers(t *testing.T) {
	out, in := directionStates(t, tls.TLS_AES_128_GCM_SHA256)
	wire := sealed(t, out, frameOpen, 1, []byte{0}) // kept, not attached
	const frames = 10000
	for i := range frames {
		wire = append(wire, sealed(t, out, frameData, 1, []byte{byte(i)})...)
	}
	s := newSessionForRead(in, out, &ctrlRecorder{})
	if err := s.read(bufio.NewReader(bytes.NewReader(wire))); err == nil || !strings.Contains(err.Error(), "closed the connection") {
		t.Fatalf("the reader stopped with %v", err)
	}
	st := s.stream(1)
	st.mu.Lock()
	queue, queued := len(st.queue), st.queued
	var got []byte
	for _, b := range st.queue {
		got = append(got, b...)
	}
	st.mu.Unlock()
	if queued != frames || len(got) != frames || queue > 1 {
		t.Fatalf("%d one-byte frames queued as %d bytes in %d buffers", frames, queued, queue)
	}
	for i, b := range got {
		if b != byte(i) {
			t.Fatalf("byte %d is %d, out of order", i, b)
		}
	}
	s.fail(errors.New("done"), CodeCancelled)
}
