package peerlink

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tubes-dev/tubes/identity"
)

func ident(t testing.TB, name string) *Identity {
	k, err := identity.Generate()
	if err != nil {
		t.Fatal(err)
	}
	return &Identity{Name: name, Key: k}
}

// tcpPair returns the two ends of a real loopback TCP connection.
func tcpPair(t testing.TB) (net.Conn, net.Conn) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		ch <- c
	}()
	a, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	return a, <-ch
}

// funcHandler adapts functions to Handler.
type funcHandler struct {
	open func(*Stream, []byte)
	ctrl func([]byte)
}

func (h funcHandler) Open(st *Stream, meta []byte) {
	if h.open != nil {
		h.open(st, meta)
	} else {
		st.Reset(CodeDenied, "no handler")
	}
}

func (h funcHandler) Ctrl(m []byte) {
	if h.ctrl != nil {
		h.ctrl(m)
	}
}

// testServerLimits are the limits of the accepting side of the next
// newLink (newLimitedLink sets them).
var testServerLimits Limits

// link is a client and a server session over loopback TCP.
type link struct {
	client, server *Session
	raw            net.Conn // the client's raw TCP connection
}

func newLink(t testing.TB, serverHandler Handler) link {
	t.Helper()
	return newLinkVia(t, serverHandler, nil)
}

// newLinkVia is newLink with the client dialing via(the server's
// address) instead, when via is not nil: a man in the middle.
func newLinkVia(t testing.TB, serverHandler Handler, via func(addr string) string) link {
	t.Helper()
	alice, bob := ident(t, "alice"), ident(t, "bob")
	alice.Limits = testServerLimits
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	type res struct {
		s    *Session
		peer string
		err  error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			ch <- res{err: err}
			return
		}
		s, peer, err := Server(context.Background(), c, alice, func(_ context.Context, name string, key identity.PublicKey) error {
			if name != "bob" || !key.Equal(bob.Key.Public()) {
				return errors.New("unknown peer")
			}
			return nil
		}, func(string) Handler { return serverHandler }, discardLog)
		ch <- res{s, peer, err}
	}()
	addr := l.Addr().String()
	if via != nil {
		addr = via(addr)
	}
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := Client(context.Background(), raw, bob, "alice", alice.Key.Public(), funcHandler{}, discardLog)
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil || r.peer != "bob" {
		t.Fatalf("server: %v %q", r.err, r.peer)
	}
	t.Cleanup(func() {
		cs.Close(CodeCancelled)
		r.s.Close(CodeCancelled)
		cs.Wait()
		r.s.Wait()
	})
	return link{client: cs, server: r.s, raw: raw}
}

// echoHandler splices each incoming stream to a fresh loopback "service"
// that echoes (or runs serve on its end).
func serviceHandler(t testing.TB, serve func(net.Conn)) Handler {
	return funcHandler{open: func(st *Stream, meta []byte) {
		app, local := tcpPair(t)
		go serve(app)
		st.Splice(local, nil)
	}}
}

func echo(c net.Conn) {
	io.Copy(c, c)
	c.(*net.TCPConn).CloseWrite()
}

// openConn opens a stream and returns the application end of a local
// socket spliced to it, and a channel with the stream's close error.
func openConn(t testing.TB, s *Session, meta string) (net.Conn, chan error) {
	st, err := s.OpenStream([]byte(meta))
	if err != nil {
		t.Fatal(err)
	}
	app, local := tcpPair(t)
	done := make(chan error, 1)
	st.Splice(local, func(err error) { done <- err })
	return app, done
}

func TestParallelStreamsEveryByteChecked(t *testing.T) {
	l := newLink(t, serviceHandler(t, echo))
	const streams, size = 40, 2 << 20
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	for i := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			app, done := openConn(t, l.client, fmt.Sprint(i))
			defer app.Close()
			data := make([]byte, size)
			rand.Read(data)
			go func() {
				app.Write(data)
				app.(*net.TCPConn).CloseWrite()
			}()
			got, err := io.ReadAll(app)
			if err != nil {
				errs <- err
				return
			}
			if sha256.Sum256(got) != sha256.Sum256(data) {
				errs <- fmt.Errorf("stream %d: %d bytes back, hash differs", i, len(got))
				return
			}
			if err := <-done; err != nil {
				errs <- fmt.Errorf("stream %d closed with %v", i, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	waitStreams(t, l.client, 0)
	waitStreams(t, l.server, 0)
}

func waitStreams(t testing.TB, s *Session, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for s.NumStreams() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d streams open, want %d", s.NumStreams(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestHalfClose: the client sends a request and half-closes; the service
// reads to end of file, then answers and closes.
func TestHalfClose(t *testing.T) {
	l := newLink(t, serviceHandler(t, func(c net.Conn) {
		req, _ := io.ReadAll(c) // returns at the client's FIN
		fmt.Fprintf(c, "got %d bytes: %s", len(req), req)
		c.Close()
	}))
	app, done := openConn(t, l.client, "")
	app.Write([]byte("request"))
	app.(*net.TCPConn).CloseWrite()
	resp, err := io.ReadAll(app)
	if err != nil || string(resp) != "got 7 bytes: request" {
		t.Fatalf("response %q, %v", resp, err)
	}
	if err := <-done; err != nil {
		t.Fatalf("stream ended with %v", err)
	}
}

func isReset(err error) bool { return errors.Is(err, syscall.ECONNRESET) }

// readToError reads until an error and returns it (and the bytes read).
func readToError(c net.Conn) ([]byte, error) {
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var buf bytes.Buffer
	_, err := io.Copy(&buf, c)
	if err == nil {
		err = io.EOF
	}
	return buf.Bytes(), err
}

// TestServiceAbortReachesClientAsReset: the service resets its connection
// mid-stream; the client application sees a reset, not end of file.
func TestServiceAbortReachesClientAsReset(t *testing.T) {
	l := newLink(t, serviceHandler(t, func(c net.Conn) {
		c.Write([]byte("partial"))
		time.Sleep(50 * time.Millisecond)
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}))
	app, done := openConn(t, l.client, "")
	got, err := readToError(app)
	if !isReset(err) {
		t.Fatalf("client saw %v after %q, want a reset", err, got)
	}
	var re *ResetError
	if err := <-done; !errors.As(err, &re) || !re.Remote {
		t.Fatalf("stream error %v", err)
	}
}

// TestRefusedOpen: the offerer resets a stream it will not serve; the
// client's socket is reset and the code travels.
func TestRefusedOpen(t *testing.T) {
	l := newLink(t, funcHandler{open: func(st *Stream, _ []byte) { st.Reset(CodeRefused, "the service is down") }})
	app, done := openConn(t, l.client, "")
	// The kernel reports a reset once, to whichever call comes first.
	_, werr := app.Write([]byte("hello?"))
	if _, rerr := readToError(app); !isReset(werr) && !isReset(rerr) {
		t.Fatalf("client saw write %v, read %v; want a reset", werr, rerr)
	}
	var re *ResetError
	if err := <-done; !errors.As(err, &re) || re.Code != CodeRefused || re.Message != "the service is down" {
		t.Fatalf("stream error %#v", err)
	}
}

// TestLinkDeathResetsStreams: the TCP connection under the link dies; the
// applications on both sides see resets, and the streams report CodeLost.
func TestLinkDeathResetsStreams(t *testing.T) {
	serverApps := make(chan net.Conn, 1)
	l := newLink(t, serviceHandler(t, func(c net.Conn) { serverApps <- c }))
	app, done := openConn(t, l.client, "")
	app.Write([]byte("x"))
	svc := <-serverApps
	one := make([]byte, 1)
	svc.Read(one)
	l.raw.Close() // the network path breaks under the client
	if _, err := readToError(app); !isReset(err) {
		t.Fatalf("client app saw %v, want a reset", err)
	}
	var re *ResetError
	if err := <-done; !errors.As(err, &re) || re.Code != CodeLost {
		t.Fatalf("stream error %v", err)
	}
	if _, err := readToError(svc); !isReset(err) {
		t.Fatalf("service saw %v, want a reset", err)
	}
}

// TestBackpressure: a stream whose receiving application does not read
// stops its sender at the window, while another stream on the same link
// keeps flowing.
func TestBackpressure(t *testing.T) {
	stuck := make(chan net.Conn, 1)
	var first sync.Once
	l := newLink(t, funcHandler{open: func(st *Stream, meta []byte) {
		app, local := tcpPair(t)
		if string(meta) == "stuck" {
			first.Do(func() { stuck <- app })
		} else {
			go echo(app)
		}
		st.Splice(local, nil)
	}})
	slow, _ := openConn(t, l.client, "stuck")
	written := make(chan int64, 1)
	go func() {
		n, _ := io.Copy(slow, io.LimitReader(zeroReader{}, 64<<20))
		written <- n
	}()
	stuckApp := <-stuck // keep it referenced (and unread) for the test
	defer stuckApp.Close()
	// Flowing stream, meanwhile.
	fast, _ := openConn(t, l.client, "echo")
	data := make([]byte, 4<<20)
	rand.Read(data)
	go func() { fast.Write(data); fast.(*net.TCPConn).CloseWrite() }()
	got, err := io.ReadAll(fast)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("the second stream did not flow: %d bytes, %v", len(got), err)
	}
	// The stuck stream's data queued at the receiver stays within its window.
	l.server.mu.Lock()
	for _, st := range l.server.streams {
		st.mu.Lock()
		if st.queued > initialWindow {
			t.Errorf("stream %d queued %d bytes, window %d", st.id, st.queued, initialWindow)
		}
		st.mu.Unlock()
	}
	l.server.mu.Unlock()
	select {
	case n := <-written:
		t.Fatalf("the sender wrote all %d bytes to a receiver that reads nothing", n)
	default:
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func TestKeyPinning(t *testing.T) {
	alice, bob, mallory := ident(t, "alice"), ident(t, "bob"), ident(t, "mallory")
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go Server(context.Background(), c, mallory, func(context.Context, string, identity.PublicKey) error { return nil }, func(string) Handler { return funcHandler{} }, discardLog)
		}
	}()
	raw, _ := net.Dial("tcp", l.Addr().String())
	// bob expects alice's key; mallory answers.
	_, err := Client(context.Background(), raw, bob, "alice", alice.Key.Public(), funcHandler{}, discardLog)
	if !errors.Is(err, ErrKeyMismatch) {
		t.Fatalf("impostor accepted: %v", err)
	}
	// A server refuses a client its verifier does not know.
	l2, _ := net.Listen("tcp", "127.0.0.1:0")
	defer l2.Close()
	srvErr := make(chan error, 1)
	go func() {
		c, _ := l2.Accept()
		_, _, err := Server(context.Background(), c, alice, func(_ context.Context, name string, _ identity.PublicKey) error {
			return fmt.Errorf("%s is not a contact", name)
		}, func(string) Handler { return funcHandler{} }, discardLog)
		srvErr <- err
	}()
	raw2, _ := net.Dial("tcp", l2.Addr().String())
	s, err := Client(context.Background(), raw2, mallory, "alice", alice.Key.Public(), funcHandler{}, discardLog)
	if err == nil {
		// TLS 1.3: the client may finish before the server rejects it; the
		// link must then die at once.
		select {
		case <-s.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("link with a refused client stayed up")
		}
	}
	if err := <-srvErr; err == nil || !bytes.Contains([]byte(err.Error()), []byte("not a contact")) {
		t.Fatalf("server accepted an unknown client: %v", err)
	}
}

func TestRace(t *testing.T) {
	alice, bob := ident(t, "alice"), ident(t, "bob")
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go Server(context.Background(), c, alice, func(context.Context, string, identity.PublicKey) error { return nil }, func(string) Handler { return funcHandler{} }, discardLog)
		}
	}()
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	deadAddr := dead.Addr().String()
	dead.Close()
	establish := func(ctx context.Context, _ Candidate, c net.Conn) (*Session, error) {
		return Client(ctx, c, bob, "alice", alice.Key.Public(), funcHandler{}, discardLog)
	}
	relayDialed := make(chan struct{}, 1)
	relay := Candidate{Path: PathRelay, Addr: "relay", Dial: func(ctx context.Context) (net.Conn, error) {
		relayDialed <- struct{}{}
		return (&net.Dialer{}).DialContext(ctx, "tcp", l.Addr().String())
	}}
	s, c, err := Race(context.Background(), []Candidate{{Path: PathDirect, Addr: deadAddr}, {Path: PathDirect, Addr: l.Addr().String()}, relay}, establish)
	if err != nil || c.Path != PathDirect || c.Addr != l.Addr().String() {
		t.Fatalf("race: %v %+v", err, c)
	}
	s.Close(CodeCancelled)
	// Only dead direct candidates: the relay is tried and wins.
	s, c, err = Race(context.Background(), []Candidate{{Path: PathDirect, Addr: deadAddr}, relay}, establish)
	if err != nil || c.Path != PathRelay {
		t.Fatalf("race to relay: %v %+v", err, c)
	}
	s.Close(CodeCancelled)
	// Nothing works: the error names every attempt.
	_, _, err = Race(context.Background(), []Candidate{{Path: PathDirect, Addr: deadAddr}}, establish)
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte(deadAddr)) {
		t.Fatalf("race with no path: %v", err)
	}
}

func TestCtrl(t *testing.T) {
	got := make(chan string, 1)
	l := newLink(t, funcHandler{ctrl: func(m []byte) { got <- string(m) }})
	if err := l.client.SendCtrl([]byte("accept t1")); err != nil {
		t.Fatal(err)
	}
	if m := <-got; m != "accept t1" {
		t.Fatalf("ctrl %q", m)
	}
}

// A client that presents a contact's certificate without holding its
// private key (it cannot sign CertificateVerify) fails the handshake
// before the server asks anyone about the name: no lookup, and so no
// answer that would tell whether the name is a contact. (Go's TLS 1.3
// server runs VerifyConnection before checking CertificateVerify; the
// lookup used to run there.)
func TestNoLookupForAnUnprovenClient(t *testing.T) {
	alice, bob := ident(t, "alice"), ident(t, "bob")
	bobCert, err := bob.certificate()
	if err != nil {
		t.Fatal(err)
	}
	thief, err := identity.Generate()
	if err != nil {
		t.Fatal(err)
	}
	forged := tls.Certificate{Certificate: bobCert.Certificate, PrivateKey: thief.Private()} // bob's public key, not his private one
	var lookups atomic.Int32
	srvErr := make(chan error, 1)
	cli, srv := tcpPair(t)
	go func() {
		_, _, err := Server(context.Background(), srv, alice, func(context.Context, string, identity.PublicKey) error {
			lookups.Add(1)
			return nil
		}, func(string) Handler { return funcHandler{} }, discardLog)
		srvErr <- err
	}()
	conn := tls.Client(cli, &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{forged},
		InsecureSkipVerify: true, NextProtos: []string{alpn}})
	conn.Handshake()
	conn.Read(make([]byte, 1)) // the server's verdict arrives after the client's Finished
	if err := <-srvErr; err == nil {
		t.Fatal("the server took a client that does not hold the key it presented")
	}
	if n := lookups.Load(); n != 0 {
		t.Fatalf("the server looked the name up %d times for a client that proved nothing", n)
	}
}
