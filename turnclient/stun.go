package turnclient

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/pion/stun/v4"

	"github.com/tubes-dev/tubes/internal/stunframe"
)

// request performs one authenticated transaction on the control
// connection, answering the server's 401 (realm and nonce) and 438 (stale
// nonce) challenges.
func (c *Client) request(ctx context.Context, method stun.Method, attrs ...stun.Setter) (*stun.Message, error) {
	for try := 0; ; try++ {
		req, err := c.build(method, attrs...)
		if err != nil {
			return nil, err
		}
		res, err := c.roundTrip(ctx, req)
		if err != nil {
			return nil, err
		}
		if res.Type.Class != stun.ClassErrorResponse {
			return res, nil
		}
		e := errorOf(res)
		code := stun.ErrorCode(Code(e))
		if (code == stun.CodeUnauthorized || code == stun.CodeStaleNonce) && try < 2 {
			var realm stun.Realm
			var nonce stun.Nonce
			if nonce.GetFrom(res) == nil {
				c.mu.Lock()
				if realm.GetFrom(res) == nil {
					c.realm = realm.String()
				}
				c.nonce = nonce.String()
				c.mu.Unlock()
				if code == stun.CodeStaleNonce || try == 0 {
					continue
				}
			}
		}
		return nil, e
	}
}

// build makes a request, with credentials once the realm is known.
func (c *Client) build(method stun.Method, attrs ...stun.Setter) (*stun.Message, error) {
	setters := []stun.Setter{stun.TransactionID, stun.NewType(method, stun.ClassRequest)}
	setters = append(setters, attrs...)
	c.mu.Lock()
	realm, nonce := c.realm, c.nonce
	c.mu.Unlock()
	if realm != "" {
		setters = append(setters, stun.NewUsername(c.cfg.Username), stun.NewRealm(realm), stun.NewNonce(nonce),
			stun.NewLongTermIntegrity(c.cfg.Username, realm, c.cfg.Password))
	}
	setters = append(setters, stun.Fingerprint)
	return stun.Build(setters...)
}

func (c *Client) roundTrip(ctx context.Context, req *stun.Message) (*stun.Message, error) {
	ch := make(chan *stun.Message, 1)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, ErrClosed
	}
	c.txs[req.TransactionID] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.txs, req.TransactionID)
		c.mu.Unlock()
	}()
	c.wmu.Lock()
	c.ctrl.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, err := c.ctrl.Write(req.Raw)
	c.wmu.Unlock()
	if err != nil {
		c.shut(fmt.Errorf("turn: control connection lost: %w", err))
		return nil, c.closedErr()
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 40*time.Second) // beyond the server's 30 s Connect timeout
		defer cancel()
	}
	select {
	case res := <-ch:
		return res, nil
	case <-c.done:
		return nil, c.closedErr()
	case <-ctx.Done():
		return nil, fmt.Errorf("turn: %s: no answer: %w", req.Type.Method, ctx.Err())
	}
}

func errorOf(m *stun.Message) error {
	var ec stun.ErrorCodeAttribute
	if err := ec.GetFrom(m); err != nil {
		return &Error{Method: m.Type.Method.String(), Reason: "error response without ERROR-CODE"}
	}
	return &Error{Method: m.Type.Method.String(), Code: int(ec.Code), Reason: string(ec.Reason)}
}

func lifetimeAttr(d time.Duration) stun.Setter {
	v := make([]byte, 4)
	binary.BigEndian.PutUint32(v, uint32(d/time.Second))
	return stun.RawAttribute{Type: stun.AttrLifetime, Value: v}
}

func lifetimeOf(m *stun.Message, def time.Duration) time.Duration {
	v, err := m.Get(stun.AttrLifetime)
	if err != nil || len(v) != 4 {
		return def
	}
	return time.Duration(binary.BigEndian.Uint32(v)) * time.Second
}

func peerAttr(p netip.AddrPort) stun.Setter {
	return &xorAddr{a: stun.XORMappedAddress{IP: net.IP(p.Addr().Unmap().AsSlice()), Port: int(p.Port())}, t: stun.AttrXORPeerAddress}
}

type xorAddr struct {
	a stun.XORMappedAddress
	t stun.AttrType
}

func (x *xorAddr) AddTo(m *stun.Message) error { return x.a.AddToAs(m, x.t) }

func connIDAttr(id uint32) stun.Setter {
	v := make([]byte, 4)
	binary.BigEndian.PutUint32(v, id)
	return stun.RawAttribute{Type: stun.AttrConnectionID, Value: v}
}

func beUint32(b []byte) uint32 { return binary.BigEndian.Uint32(b) }

func addrPort(ip net.IP, port int) netip.AddrPort {
	a, _ := netip.AddrFromSlice(ip)
	return netip.AddrPortFrom(a.Unmap(), uint16(port))
}

// Reflexive asks a STUN/TURN server (TCP) which address it sees this host
// connect from (a Binding request; no credentials needed).
func Reflexive(ctx context.Context, server string) (netip.AddrPort, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", server)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("turn: cannot reach %s: %w", server, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	} else {
		conn.SetDeadline(time.Now().Add(10 * time.Second))
	}
	req, err := stun.Build(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	if err != nil {
		return netip.AddrPort{}, err
	}
	if _, err := conn.Write(req.Raw); err != nil {
		return netip.AddrPort{}, fmt.Errorf("turn: Binding: %w", err)
	}
	var hdr [4]byte
	for {
		f, err := stunframe.Read(conn, hdr[:])
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("turn: Binding answer: %w", err)
		}
		res := &stun.Message{Raw: f}
		if res.Decode() != nil || res.TransactionID != req.TransactionID {
			continue
		}
		var xa stun.XORMappedAddress
		if err := xa.GetFrom(res); err != nil {
			return netip.AddrPort{}, errors.New("turn: Binding answer has no XOR-MAPPED-ADDRESS")
		}
		return addrPort(xa.IP, xa.Port), nil
	}
}

// closedErr is ErrClosed with why the client closed, when it was not
// closed by its user.
func (c *Client) closedErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil && !errors.Is(c.err, ErrClosed) {
		return fmt.Errorf("%w: %v", ErrClosed, c.err)
	}
	return ErrClosed
}
