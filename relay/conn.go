package relay

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// relayConn is the relay's side of a peer data connection. It counts as
// pending until pion starts relaying it (after ConnectionBind), and
// counts the bytes relayed. Its ReadFrom and WriteTo hand the copy to the
// kernel's splice(2), as a bare *net.TCPConn would.
type relayConn struct {
	*net.TCPConn
	s     *Server
	user  string
	port  int // the relayed port of its allocation
	bound atomic.Bool
	once  sync.Once

	// pairing (pair.go), guarded by s.mu
	key    string
	cid    uint32
	hasCID bool
}

func (s *Server) newRelayConn(c *net.TCPConn, user string, port int) *relayConn {
	c.SetNoDelay(true)
	s.metrics.pending.Inc()
	rc := &relayConn{TCPConn: c, s: s, user: user, port: port}
	s.track(rc)
	return rc
}

func (c *relayConn) bind() {
	if c.bound.CompareAndSwap(false, true) {
		c.s.releasePending(c.user)
		c.s.metrics.pending.Dec()
		c.s.metrics.relayed.Inc()
		c.s.metrics.relayedTotal.Inc()
	}
}

// ReadFrom copies client → peer.
func (c *relayConn) ReadFrom(r io.Reader) (int64, error) {
	c.bind()
	n, err := c.TCPConn.ReadFrom(r)
	c.s.metrics.bytes.WithLabelValues("to_peer").Add(float64(n))
	return n, err
}

// WriteTo copies peer → client.
func (c *relayConn) WriteTo(w io.Writer) (int64, error) {
	c.bind()
	n, err := c.TCPConn.WriteTo(w)
	c.s.metrics.bytes.WithLabelValues("from_peer").Add(float64(n))
	return n, err
}

func (c *relayConn) Read(p []byte) (int, error) {
	c.bind()
	n, err := c.TCPConn.Read(p)
	c.s.metrics.bytes.WithLabelValues("from_peer").Add(float64(n))
	return n, err
}

func (c *relayConn) Write(p []byte) (int, error) {
	n, err := c.TCPConn.Write(p)
	c.s.metrics.bytes.WithLabelValues("to_peer").Add(float64(n))
	return n, err
}

func (c *relayConn) Close() error {
	c.once.Do(func() {
		c.s.untrack(c)
		c.s.releaseConn(c.port)
		if c.bound.Load() {
			c.s.metrics.relayed.Dec()
		} else if c.bound.CompareAndSwap(false, true) {
			c.s.releasePending(c.user)
			c.s.metrics.pending.Dec()
		}
	})
	return c.TCPConn.Close()
}

var _ net.Conn = (*relayConn)(nil)
