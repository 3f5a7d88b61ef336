package relay

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"

	"github.com/pion/stun/v4"
	"github.com/pion/turn/v5"

	"github.com/tubes-dev/tubes/internal/stunframe"
)

// The guard sees every TURN message before pion/turn does, and answers
// the requests RFC 6062 says to refuse that pion would otherwise accept
// or leave unanswered:
//   - Allocate for TCP over UDP (400), or with DONT-FRAGMENT,
//     RESERVATION-TOKEN or EVEN-PORT (400);
//   - Connect without an allocation on this 5-tuple (437), over UDP or
//     on a UDP allocation (400).
// It answers only authenticated requests (pion answers the rest with
// 401), with MESSAGE-INTEGRITY like pion's own answers.

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

// check decides whether req (a whole STUN message) must be refused.
// tuple identifies the control connection; tcp tells its transport.
func (s *Server) check(raw []byte, tuple string, tcp bool) []byte {
	if len(raw) < stunHeader || !stun.IsMessage(raw) {
		return nil
	}
	m := &stun.Message{Raw: append([]byte(nil), raw...)}
	if err := m.Decode(); err != nil || m.Type.Class != stun.ClassRequest {
		return nil
	}
	var r *refusal
	switch m.Type.Method {
	case methodAllocate:
		var rt [4]byte
		v, err := m.Get(attrReqTrans)
		if err != nil || len(v) < 1 {
			return nil
		}
		copy(rt[:], v)
		if rt[0] != protoTCP {
			return nil
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
		}
	}
	if r == nil {
		return nil
	}
	integrity, ok := s.integrity(m)
	if !ok {
		return nil // let pion ask for credentials
	}
	resp, err := stun.Build(
		stun.NewTransactionIDSetter(m.TransactionID),
		stun.NewType(m.Type.Method, stun.ClassErrorResponse),
		&stun.ErrorCodeAttribute{Code: r.code, Reason: []byte(r.reason)},
		integrity,
		stun.Fingerprint,
	)
	if err != nil {
		return nil
	}
	s.log.Debug("TURN request refused", "method", m.Type.Method.String(), "code", int(r.code), "why", r.reason, "from", tuple)
	return resp.Raw
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
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c, nil
	}
	tc.SetNoDelay(true)
	return &guardConn{TCPConn: tc, s: l.s, tuple: tupleKey(c.RemoteAddr(), c.LocalAddr())}, nil
}

// guardConn gives pion one whole frame per Read until ConnectionBind;
// after that it is a plain TCP connection (WriteTo keeps splice(2)).
type guardConn struct {
	*net.TCPConn
	s     *Server
	tuple string

	mu      sync.Mutex
	raw     bool
	pending []byte
	hdr     [4]byte
}

func (c *guardConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	if c.raw {
		return c.TCPConn.Read(p)
	}
	for {
		f, err := stunframe.Read(c.TCPConn, c.hdr[:])
		if err != nil {
			return 0, err
		}
		if resp := c.s.check(f, c.tuple, true); resp != nil {
			if _, err := c.TCPConn.Write(resp); err != nil {
				return 0, err
			}
			continue
		}
		if len(f) >= stunHeader && stun.IsMessage(f) && binary.BigEndian.Uint16(f[0:2]) == uint16(stun.NewType(methodBind, stun.ClassRequest).Value()) {
			c.raw = true
		}
		n := copy(p, f)
		c.pending = f[n:]
		return n, nil
	}
}

// WriteTo copies the connection's bytes to w (pion's relay loop after
// ConnectionBind), handing over anything already read first.
func (c *guardConn) WriteTo(w io.Writer) (int64, error) {
	c.mu.Lock()
	rest := c.pending
	c.pending = nil
	c.mu.Unlock()
	var n int64
	if len(rest) > 0 {
		m, err := w.Write(rest)
		n += int64(m)
		if err != nil {
			return n, err
		}
	}
	m, err := c.TCPConn.WriteTo(w)
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
		if resp := c.s.check(p[:n], tupleKey(addr, c.PacketConn.LocalAddr()), false); resp != nil {
			c.PacketConn.WriteTo(resp, addr)
			continue
		}
		return n, addr, nil
	}
}

func tupleKey(src, dst net.Addr) string {
	return fmt.Sprintf("%s>%s", src, dst)
}
