// Package peerlink carries tube connections between two daemons: one
// link per pair of accounts, TLS 1.3 with both sides' ed25519 account
// keys pinned from the rendezvous, and many streams multiplexed over it in
// records keyed from that handshake (record.go).
//
// # Flow
//
//	accepter daemon                                  offerer daemon
//	  dial candidates (direct first, relay after a delay; first TLS
//	  handshake to complete wins) ------------------> listener
//	  TLS 1.3, client cert = bob's key   <========>   server cert = alice's key
//	  each side checks the other's key against the rendezvous
//	  OPEN(stream, {tube, …}) DATA… --------------->  checks bob may use the tube,
//	                                                   connects the service, splices
//	  <----------------------------------------- DATA / WINDOW / FIN / RST
//
// A new connection costs no round trip: OPEN is followed at once by DATA,
// which the offerer queues (within the stream's window) while it connects
// to its service. Flow control is per stream (credit granted as the
// receiver writes to its local socket), so one slow application never
// stalls the others, and buffers are bounded. FIN is carried through as a
// half-close; RST, or the link dying, reaches the local socket as a reset.
// The wire layout is in frame.go.
package peerlink

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tubes-dev/tubes/identity"
)

// ALPN protocol of Tubes links: tube/3 added the link's window (a
// receive budget for all streams together), tube/4 each stream's reserve
// past it (a tube/3 receiver would end the link on it, so the two do not
// link).
const alpn = "tube/4"

// Identity is the local account a link speaks for, and the limits its
// links hold peers to.
type Identity struct {
	Name   string
	Key    *identity.Key
	Limits Limits

	once sync.Once
	cert tls.Certificate
	err  error

	held    atomic.Int64  // DATA bytes received on all links, not yet credited back
	refused atomic.Uint64 // streams refused for being over Limits.Streams
	stalled atomic.Uint64 // streams reset for not being read while the link was full
}

// Limits bound what a peer can make this side hold. The receive budget
// of a link is fixed by the protocol (linkWindow, 16 MiB).
type Limits struct {
	// Streams is the most streams a peer may have open on one link at
	// once; a stream it opens over that is reset (Refused). Zero means
	// DefaultStreams.
	Streams int
	// Handshake bounds a link's TLS handshake, the account check after
	// it included. Zero means DefaultHandshake.
	Handshake time.Duration
	// Stall is how long a stream's local socket may take none of the
	// data waiting for it while the link's receive budget is more than
	// half held: then the stream is reset, so that one application that
	// does not read cannot hold every other connection of the link up
	// for longer. Zero means DefaultStall.
	Stall time.Duration
}

// Defaults of Limits.
const (
	DefaultStreams   = 256
	DefaultHandshake = 10 * time.Second
	DefaultStall     = 30 * time.Second
	// ReceiveBudget is what one link may make its receiver hold: DATA in
	// flight on all its streams together (the protocol's link window).
	ReceiveBudget = linkWindow
	// StreamReserve is what every stream may have in flight past the
	// link's budget.
	StreamReserve = streamReserve
)

func (l Limits) stall() time.Duration {
	if l.Stall > 0 {
		return l.Stall
	}
	return DefaultStall
}

func (l Limits) streams() int {
	if l.Streams > 0 {
		return l.Streams
	}
	return DefaultStreams
}

func (l Limits) handshake() time.Duration {
	if l.Handshake > 0 {
		return l.Handshake
	}
	return DefaultHandshake
}

// HeldBytes is what the peers of this identity's links have sent and the
// local sockets have not taken yet (at most ReceiveBudget per link, and
// StreamReserve per stream).
func (id *Identity) HeldBytes() int64 { return id.held.Load() }

// StalledStreams counts streams reset for taking none of their data for
// Limits.Stall while their link was more than half full.
func (id *Identity) StalledStreams() uint64 { return id.stalled.Load() }

// RefusedStreams counts streams refused for being over Limits.Streams.
func (id *Identity) RefusedStreams() uint64 { return id.refused.Load() }

// certificate is a self-signed certificate for the account key; peers pin
// the key, not the certificate, so it is made fresh at start.
func (id *Identity) certificate() (tls.Certificate, error) {
	id.once.Do(func() {
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(1),
			Subject:      pkix.Name{CommonName: id.Name},
			NotBefore:    time.Now().Add(-time.Hour),
			NotAfter:     time.Now().Add(10 * 365 * 24 * time.Hour),
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, id.Key.Private().Public(), id.Key.Private())
		if err != nil {
			id.err = fmt.Errorf("peerlink: certificate: %w", err)
			return
		}
		id.cert = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: id.Key.Private()}
	})
	return id.cert, id.err
}

// peerOf returns the account name and key a peer's certificate claims.
func peerOf(cs tls.ConnectionState) (string, identity.PublicKey, error) {
	if len(cs.PeerCertificates) == 0 {
		return "", nil, errors.New("peerlink: the peer sent no certificate")
	}
	c := cs.PeerCertificates[0]
	pub, ok := c.PublicKey.(ed25519.PublicKey)
	if !ok {
		return "", nil, fmt.Errorf("peerlink: the peer's key is %T, not ed25519", c.PublicKey)
	}
	return c.Subject.CommonName, identity.PublicKey(pub), nil
}

// ErrKeyMismatch means the peer's key is not the one the rendezvous
// knows for it (Cert_Fingerprint_Mismatch in Telepathy's terms).
var ErrKeyMismatch = errors.New("peerlink: the peer's key does not match its account")

// Client runs the TLS client handshake on raw, as self, expecting the
// account peer with key peerKey, and starts a session.
func Client(ctx context.Context, raw net.Conn, self *Identity, peer string, peerKey identity.PublicKey, h Handler, log *slog.Logger) (*Session, error) {
	cert, err := self.certificate()
	if err != nil {
		return nil, err
	}
	conn := tls.Client(&handshakeConn{Conn: raw}, &tls.Config{
		MinVersion:             tls.VersionTLS13,
		Certificates:           []tls.Certificate{cert},
		InsecureSkipVerify:     true, // the key is pinned in VerifyConnection instead
		NextProtos:             []string{alpn},
		SessionTicketsDisabled: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			name, key, err := peerOf(cs)
			if err != nil {
				return err
			}
			if name != peer || !key.Equal(peerKey) {
				return fmt.Errorf("%w: expected %s (%s), got %q (%s)", ErrKeyMismatch, peer, peerKey.Fingerprint(), name, key.Fingerprint())
			}
			return nil
		},
	})
	out, in, err := handshake(ctx, conn, true, self.Limits.handshake())
	if err != nil {
		return nil, err
	}
	return newSession(raw, out, in, true, self, h, log), nil
}

// Verifier decides whether an account with a key may open a link to us.
type Verifier func(ctx context.Context, name string, key identity.PublicKey) error

// Server runs the TLS server handshake on raw, as self; verify checks the
// client's account and key, and handlerFor gives the handler of a link
// with that peer (installed before any frame is read). It returns the
// session and the peer's name.
func Server(ctx context.Context, raw net.Conn, self *Identity, verify Verifier, handlerFor func(peer string) Handler, log *slog.Logger) (*Session, string, error) {
	cert, err := self.certificate()
	if err != nil {
		return nil, "", err
	}
	var (
		peer    string
		peerKey identity.PublicKey
	)
	conn := tls.Server(&handshakeConn{Conn: raw}, &tls.Config{
		MinVersion:             tls.VersionTLS13,
		Certificates:           []tls.Certificate{cert},
		ClientAuth:             tls.RequireAnyClientCert,
		NextProtos:             []string{alpn},
		SessionTicketsDisabled: true,
		// Only the certificate's form is checked here: Go's TLS 1.3
		// server runs VerifyConnection before it checks the client's
		// CertificateVerify, so a client that merely knows a public key
		// would get us to look the name up, and learn from the answer
		// whether it is a contact.
		VerifyConnection: func(cs tls.ConnectionState) error {
			name, key, err := peerOf(cs)
			peer, peerKey = name, key
			return err
		},
	})
	ctx, cancel := context.WithTimeout(ctx, self.Limits.handshake())
	defer cancel()
	out, in, err := handshake(ctx, conn, false, self.Limits.handshake())
	if err != nil {
		return nil, "", err
	}
	// The handshake is over: the client proved it holds the key. Only now
	// is the account asked about; a refusal ends the connection the same
	// way for a stranger as for a contact's name with another key.
	if err := verify(ctx, peer, peerKey); err != nil {
		conn.Close() // a close_notify alert, then the end: the client reads a refusal
		return nil, "", err
	}
	return newSession(raw, out, in, false, self, handlerFor(peer), log), peer, nil
}

// handshake runs the TLS handshake and returns the record states for
// this side's writes and reads. The TLS connection is not used after it:
// the link's records go over the raw connection under it.
func handshake(ctx context.Context, conn *tls.Conn, client bool, limit time.Duration) (out, in *cipherState, err error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	if err := conn.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("peerlink: TLS handshake: %w", err)
	}
	cs := conn.ConnectionState()
	if cs.NegotiatedProtocol != alpn {
		conn.Close()
		return nil, nil, errors.New("peerlink: the peer does not speak " + alpn)
	}
	c, s, err := keySchedule(cs)
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	if client {
		return c, s, nil
	}
	return s, c, nil
}
