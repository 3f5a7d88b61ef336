package relay

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/stun/v4"
	"github.com/pion/turn/v5"

	"github.com/tubes-dev/tubes/internal/stunframe"
)

// The guard sees every TURN message before pion/turn does, and answers
// the requests RFC 8656 and RFC 6062 say to refuse that pion would
// otherwise accept, answer wrongly or leave unanswered:
//   - Allocate for TCP over UDP (400), or with DONT-FRAGMENT,
//     RESERVATION-TOKEN or EVEN-PORT (400);
//   - Connect without an allocation on this 5-tuple (437), over UDP or
//     on a UDP allocation (400);
//   - Refresh, CreatePermission and ChannelBind without an allocation
//     (437; pion does not answer);
//   - ChannelBind to a peer the filter refuses (403; pion says 401).
// It answers only authenticated requests (pion answers the rest with
// 401), with MESSAGE-INTEGRITY like pion's own answers.
//
// It also rewrites the LIFETIME of Allocate and Refresh requests (see
// withLifetime) so that pion applies RFC 8656's lifetime rule.

const (
	stunHeader     = stunframe.HeaderSize
	attrReqTrans   = stun.AttrRequestedTransport
	protoTCP       = 6
	methodConnect  = stun.MethodConnect
	methodBind     = stun.MethodConnectionBind
	methodAllocate = stun.MethodAllocate
)

// refusal is an error response the guard sends instead of pion.
type refusal struct {
	code   stun.ErrorCode
	reason string
}

// check decides what becomes of f, a whole frame from the client: an
// answer sent instead of pion's (a refusal), or the frame pion gets (f
// itself or a rewritten request). tuple identifies the control
// connection; tcp tells its transport.
func (s *Server) check(f []byte, tuple string, tcp bool) (answer, req []byte) {
	if len(f) < stunHeader || !stun.IsMessage(f) {
		return nil, f
	}
	m := &stun.Message{Raw: append([]byte(nil), f...)}
	if err := m.Decode(); err != nil || m.Type.Class != stun.ClassRequest {
		return nil, f
	}
	var r *refusal
	switch m.Type.Method {
	case methodAllocate:
		var rt [4]byte
		if v, err := m.Get(attrReqTrans); err == nil && len(v) >= 1 {
			copy(rt[:], v)
		}
		if rt[0] != protoTCP {
			break
		}
		switch {
		case !tcp:
			r = &refusal{stun.CodeBadRequest, "a TCP allocation needs a TCP or TLS control connection"}
		case m.Contains(stun.AttrDontFragment):
			r = &refusal{stun.CodeBadRequest, "DONT-FRAGMENT is meaningless for a TCP allocation"}
		case m.Contains(stun.AttrReservationToken):
			r = &refusal{stun.CodeBadRequest, "RESERVATION-TOKEN is meaningless for a TCP allocation"}
		case m.Contains(stun.AttrEvenPort):
			r = &refusal{stun.CodeBadRequest, "EVEN-PORT is meaningless for a TCP allocation"}
		}
	case methodConnect:
		kind, ok := s.allocationKind(tuple)
		switch {
		case !tcp:
			r = &refusal{stun.CodeBadRequest, "Connect needs a TCP control connection"}
		case !ok:
			r = &refusal{stun.CodeAllocMismatch, "no allocation on this connection"}
		case kind != "tcp":
			r = &refusal{stun.CodeBadRequest, "Connect needs a TCP allocation"}
		default:
			// pion leaves a Connect to port 0 unanswered.
			var peer stun.XORMappedAddress
			if peer.GetFromAs(m, stun.AttrXORPeerAddress) == nil && peer.Port == 0 {
				r = &refusal{stun.CodeBadRequest, "peer port 0"}
			}
		}
	case stun.MethodRefresh, stun.MethodCreatePermission, stun.MethodChannelBind:
		if _, ok := s.allocationKind(tuple); !ok {
			r = &refusal{stun.CodeAllocMismatch, "no allocation on this connection"}
			break
		}
		var peer stun.XORMappedAddress
		if m.Type.Method == stun.MethodChannelBind &&
			peer.GetFromAs(m, stun.AttrXORPeerAddress) == nil && !s.filter.AllowedIP(peer.IP) {
			r = &refusal{stun.CodeForbidden, "peer refused by the peer filter"}
		}
	}
	if r == nil && m.Type.Method != methodAllocate && m.Type.Method != stun.MethodRefresh {
		return nil, f
	}
	integrity, ok := s.integrity(m)
	if !ok {
		return nil, f // let pion ask for credentials
	}
	if r == nil {
		return nil, s.withLifetime(m, integrity)
	}
	resp, err := stun.Build(
		stun.NewTransactionIDSetter(m.TransactionID),
		stun.NewType(m.Type.Method, stun.ClassErrorResponse),
		&stun.ErrorCodeAttribute{Code: r.code, Reason: []byte(r.reason)},
		integrity,
		stun.Fingerprint,
	)
	if err != nil {
		return nil, f
	}
	if r.code == stun.CodeForbidden {
		s.metrics.refused.Inc()
	}
	s.log.Debug("TURN request refused", "method", m.Type.Method.String(), "code", int(r.code), "why", r.reason, "from", tuple)
	return resp.Raw, nil
}

// withLifetime returns the Allocate or Refresh request m rewritten so that
// pion applies RFC 8656's lifetime rule: the lifetime asked for, capped at
// MaxLifetime, and never below the default (Refresh may ask 0 to delete).
// Pion honours a LIFETIME only below one hour, and uses its configured
// lifetime, set to MaxLifetime, otherwise; so the request carries the
// lifetime pion must use, or no LIFETIME for the maximum, and is signed
// again.
func (s *Server) withLifetime(m *stun.Message, integrity stun.MessageIntegrity) []byte {
	want := s.cfg.Lifetime
	if v, err := m.Get(stun.AttrLifetime); err == nil && len(v) == 4 {
		asked := time.Duration(binary.BigEndian.Uint32(v)) * time.Second
		if asked == 0 && m.Type.Method == stun.MethodRefresh {
			return m.Raw
		}
		want = max(want, min(asked, MaxLifetime))
	}
	setters := []stun.Setter{stun.NewTransactionIDSetter(m.TransactionID), m.Type}
	for _, a := range m.Attributes {
		if a.Type == stun.AttrMessageIntegrity {
			break // what follows is not covered by the integrity check
		}
		if a.Type != stun.AttrLifetime {
			setters = append(setters, a)
		}
	}
	if want < MaxLifetime {
		var v [4]byte
		binary.BigEndian.PutUint32(v[:], uint32(want/time.Second))
		setters = append(setters, stun.RawAttribute{Type: stun.AttrLifetime, Value: v[:]})
	}
	setters = append(setters, integrity)
	if m.Contains(stun.AttrFingerprint) {
		setters = append(setters, stun.Fingerprint)
	}
	out, err := stun.Build(setters...)
	if err != nil {
		return m.Raw
	}
	return out.Raw
}

// integrity returns the MESSAGE-INTEGRITY key of an authenticated request.
func (s *Server) integrity(m *stun.Message) (stun.MessageIntegrity, bool) {
	var user stun.Username
	var realm stun.Realm
	if user.GetFrom(m) != nil || realm.GetFrom(m) != nil || realm.String() != s.cfg.Realm {
		return nil, false
	}
	_, password, err := s.auth.lookup(user.String())
	if err != nil {
		return nil, false
	}
	key := stun.MessageIntegrity(turn.GenerateAuthKey(user.String(), realm.String(), password))
	if key.Check(m) != nil {
		return nil, false
	}
	return key, true
}

// guardListener hands pion guarded control connections.
type guardListener struct {
	net.Listener
	s *Server
}

func (l *guardListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		tc, ok := c.(*net.TCPConn)
		if !ok {
			return c, nil
		}
		// A source at its limit of unauthenticated connections loses
		// this one at once (a reset: nothing is kept for it); the
		// listener goes on for everyone else.
		// At the total, a newcomer takes the place of the oldest of
		// the source holding most, so sources at their own limit cannot
		// shut everyone else out.
		release, ok := l.s.unauth.TakeOr(c.RemoteAddr(), func() {
			tc.SetLinger(0)
			tc.Close()
		})
		if !ok {
			tc.SetLinger(0)
			tc.Close()
			continue
		}
		tc.SetNoDelay(true)
		// Until an authenticated Allocate or ConnectionBind succeeds (Write
		// sees pion's answer), reads end at the deadline, and pion closes the
		// connection.
		tc.SetReadDeadline(time.Now().Add(l.s.cfg.AuthDeadline))
		return &guardConn{TCPConn: tc, s: l.s, tuple: tupleKey(c.RemoteAddr(), c.LocalAddr()), unauth: release}, nil
	}
}

// guardConn gives pion one whole frame per Read until pion accepts a
// ConnectionBind; after that it is a plain TCP connection (WriteTo keeps
// splice(2)).
type guardConn struct {
	*net.TCPConn
	s     *Server
	tuple string
	raw   atomic.Bool // a data connection now
	// unauth gives back the connection's place among its source's
	// unauthenticated ones (once it authenticates, or closes).
	unauth func()

	mu      sync.Mutex
	pending []byte
	hdr     [4]byte

	cmu      sync.Mutex // guards the pairing fields (see pair.go)
	connects map[[stun.TransactionIDSize]byte]netip.AddrPort
	bindCID  uint32
	binding  bool
	peer     *relayConn // the peer connection, once bound
}

func (c *guardConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	if c.raw.Load() {
		return c.TCPConn.Read(p)
	}
	for {
		f, err := stunframe.Read(c.TCPConn, c.hdr[:])
		if err != nil {
			return 0, err
		}
		answer, req := c.s.check(f, c.tuple, true)
		if answer != nil {
			if _, err := c.TCPConn.Write(answer); err != nil {
				return 0, err
			}
			continue
		}
		c.noteIncoming(req)
		n := copy(p, req)
		c.pending = req[n:]
		return n, nil
	}
}

// Write notes pion's success answer to a ConnectionBind: the bytes that
// follow it on the connection are the peer's, not TURN frames. (Pion
// sends that answer before it starts relaying, and reads no frame while
// it handles the request.)
func (c *guardConn) Write(p []byte) (int, error) {
	if !c.raw.Load() && len(p) >= stunHeader && stun.IsMessage(p) {
		switch binary.BigEndian.Uint16(p[0:2]) {
		case stun.NewType(methodBind, stun.ClassSuccessResponse).Value():
			c.TCPConn.SetReadDeadline(time.Time{})
			c.authenticated()
			c.bound()
			c.raw.Store(true)
		case stun.NewType(methodAllocate, stun.ClassSuccessResponse).Value():
			c.TCPConn.SetReadDeadline(time.Time{}) // authenticated: a control connection now
			c.authenticated()
			c.noteOutgoing(p)
		default:
			c.noteOutgoing(p)
		}
	}
	return c.TCPConn.Write(p)
}

// ReadFrom copies r's bytes to the connection (pion's relay loop, peer →
// client): with splice(2) from the peer's socket when paired.
func (c *guardConn) ReadFrom(r io.Reader) (int64, error) {
	if peer := c.peerConn(); peer != nil {
		peer.bind()
		n, err := c.s.copyPair(c.TCPConn, peer.TCPConn, peer.user)
		c.s.metrics.bytes.WithLabelValues("from_peer").Add(float64(n))
		return n, err
	}
	return c.TCPConn.ReadFrom(r)
}

// WriteTo copies the connection's bytes to w (pion's relay loop after
// ConnectionBind), handing over anything already read first.
func (c *guardConn) WriteTo(w io.Writer) (int64, error) {
	c.mu.Lock()
	rest := c.pending
	c.pending = nil
	c.mu.Unlock()
	peer := c.peerConn()
	if peer != nil {
		peer.bind()
		w = peer.TCPConn // splice(2) to the peer's socket, below
	}
	var n int64
	if len(rest) > 0 {
		m, err := w.Write(rest)
		n += int64(m)
		if err != nil {
			return n, err
		}
	}
	var m int64
	var err error
	if peer != nil {
		m, err = c.s.copyPair(peer.TCPConn, c.TCPConn, peer.user)
		c.s.metrics.bytes.WithLabelValues("to_peer").Add(float64(n + m))
	} else {
		m, err = c.TCPConn.WriteTo(w)
	}
	return n + m, err
}

// guardPacketConn guards the UDP listener.
type guardPacketConn struct {
	net.PacketConn
	s *Server
}

func (c *guardPacketConn) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		n, addr, err := c.PacketConn.ReadFrom(p)
		if err != nil {
			return n, addr, err
		}
		answer, req := c.s.check(p[:n], tupleKey(addr, c.PacketConn.LocalAddr()), false)
		if answer != nil {
			c.PacketConn.WriteTo(answer, addr)
			continue
		}
		if len(req) >= len(p) {
			continue // too large for pion's buffer once rewritten
		}
		return copy(p, req), addr, nil
	}
}

// tupleKey names a 5-tuple; a UDP and a TCP client may share addresses.
func tupleKey(src, dst net.Addr) string {
	return fmt.Sprintf("%s:%s>%s", src.Network(), src, dst)
}

// authenticated gives back the connection's unauthenticated place.
func (c *guardConn) authenticated() {
	if c.unauth != nil {
		c.unauth()
	}
}

// Close closes the connection and gives back its unauthenticated place.
func (c *guardConn) Close() error {
	c.authenticated()
	return c.TCPConn.Close()
}
