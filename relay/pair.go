package relay

import (
	"context"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"syscall"

	"github.com/pion/stun/v4"
	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"
)

// Pairing. After ConnectionBind, pion relays a data connection and its
// peer connection with two io.Copy calls, but it hands io.Copy the peer
// connection wrapped in a type of its own, which hides the methods that
// let Go move the bytes with splice(2): every byte would be copied
// through a 32 KiB buffer per direction, in user space. So the guard
// learns which peer connection each CONNECTION-ID names (from the
// ConnectionAttempt and Connect answers pion sends on the control
// connection) and, when pion starts relaying a bound data connection,
// moves the bytes between the two TCP sockets itself, with splice(2).

// copyPair moves src's bytes to dst until src ends. An idle connection
// holds neither a buffer nor a pipe: it waits until src is readable, then
// moves what is there, a large backlog with splice(2) (through one of
// Go's pooled pipes, given back at once), a small one through a pooled
// buffer. With a bandwidth cap every byte goes through the buffer, at
// the user's rate.
func (s *Server) copyPair(dst, src *net.TCPConn, user string) (int64, error) {
	rc, err := src.SyscallConn()
	if err != nil {
		return 0, err
	}
	var lim *rate.Limiter
	if s.cfg.Bandwidth > 0 {
		lim = s.limiter(user)
	}
	var total int64
	for {
		avail, err := waitReadable(rc)
		if err != nil {
			return total, err
		}
		var n int64
		if avail >= spliceMin && lim == nil {
			n, err = dst.ReadFrom(&io.LimitedReader{R: src, N: int64(avail)})
		} else {
			n, err = copyOnce(dst, src, lim)
		}
		total += n
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// maxPendingConnects bounds the Connect requests a control connection
// remembers until answered.
const maxPendingConnects = 16

// spliceMin is the backlog worth a splice(2) rather than a copy.
const spliceMin = 64 << 10

var copyBufs = sync.Pool{New: func() any { b := make([]byte, 16<<10); return &b }}

// copyOnce moves one read's worth of src (readable now) to dst.
func copyOnce(dst, src *net.TCPConn, lim *rate.Limiter) (int64, error) {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	if lim != nil {
		buf = buf[:min(len(buf), lim.Burst())]
	}
	m, err := src.Read(buf)
	if m > 0 {
		if lim != nil {
			if werr := lim.WaitN(context.Background(), m); werr != nil {
				return 0, werr
			}
		}
		w, werr := dst.Write(buf[:m])
		if werr != nil {
			return int64(w), werr
		}
	}
	return int64(m), err
}

// waitReadable waits, holding nothing, until the socket has bytes to
// read or has ended, and returns how many bytes wait (0 at its end or on
// an error, which the next read then reports). It peeks rather than
// trusting readiness alone: an end that arrived with the last bytes
// raises no new readiness event.
func waitReadable(rc syscall.RawConn) (int, error) {
	avail := 0
	err := rc.Read(func(fd uintptr) bool {
		// In bulk there are bytes queued: one ioctl says how many.
		if q, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ); err == nil && q > 0 {
			avail = q
			return true
		}
		var b [1]byte
		n, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		switch {
		case err == unix.EAGAIN || err == unix.EINTR:
			return false // nothing yet: wait for readability
		case err != nil || n == 0:
			return true // an error or the end: the read says which
		}
		avail = 1 // arrived since the ioctl
		return true
	})
	return avail, err
}

// limiter is user's bandwidth limiter, shared by all their connections.
func (s *Server) limiter(user string) *rate.Limiter {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.limits[user]
	if l == nil {
		l = rate.NewLimiter(rate.Limit(s.cfg.Bandwidth), int(max(s.cfg.Bandwidth/10, 16<<10)))
		s.limits[user] = l
	}
	return l
}

// peerKey names a peer connection: the relayed port it belongs to and the
// peer's address.
func peerKey(port int, peer netip.AddrPort) string {
	return strconv.Itoa(port) + "|" + netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port()).String()
}

func addrPortOf(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort()
	}
	return netip.AddrPort{}
}

// track registers a peer connection; untrack forgets it.
func (s *Server) track(c *relayConn) {
	c.key = peerKey(int(addrPortOf(c.LocalAddr()).Port()), addrPortOf(c.RemoteAddr()))
	s.mu.Lock()
	s.peers[c.key] = c
	s.mu.Unlock()
}

func (s *Server) untrack(c *relayConn) {
	s.mu.Lock()
	if s.peers[c.key] == c {
		delete(s.peers, c.key)
	}
	if c.hasCID && s.cids[c.cid] == c {
		delete(s.cids, c.cid)
	}
	s.mu.Unlock()
}

// noteCID records that cid names the connection between the allocation
// of control connection tuple and peer.
func (s *Server) noteCID(tuple string, peer netip.AddrPort, cid uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	port, ok := s.relayPorts[tuple]
	if !ok {
		return
	}
	if c := s.peers[peerKey(port, peer)]; c != nil {
		c.cid, c.hasCID = cid, true
		s.cids[cid] = c
	}
}

// takeCID returns the peer connection cid names, once.
func (s *Server) takeCID(cid uint32) *relayConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.cids[cid]
	delete(s.cids, cid)
	return c
}

// noteOutgoing learns CONNECTION-IDs from what pion sends on a control
// connection.
func (c *guardConn) noteOutgoing(p []byte) {
	m := &stun.Message{Raw: append([]byte(nil), p...)}
	if m.Decode() != nil {
		return
	}
	switch {
	case m.Type == stun.NewType(stun.MethodConnectionAttempt, stun.ClassIndication):
		var peer stun.XORMappedAddress
		if cid, ok := connectionID(m); ok && peer.GetFromAs(m, stun.AttrXORPeerAddress) == nil {
			c.s.noteCID(c.tuple, xorAddrPort(peer), cid)
		}
	case m.Type == stun.NewType(methodConnect, stun.ClassSuccessResponse):
		c.cmu.Lock()
		peer, ok := c.connects[m.TransactionID]
		delete(c.connects, m.TransactionID)
		c.cmu.Unlock()
		if cid, ok2 := connectionID(m); ok && ok2 {
			c.s.noteCID(c.tuple, peer, cid)
		}
	case m.Type == stun.NewType(methodConnect, stun.ClassErrorResponse):
		c.cmu.Lock()
		delete(c.connects, m.TransactionID)
		c.cmu.Unlock()
	}
}

// noteIncoming remembers the peer of a Connect request (its answer names
// the connection) and the id a ConnectionBind binds.
func (c *guardConn) noteIncoming(req []byte) {
	m := &stun.Message{Raw: append([]byte(nil), req...)}
	if m.Decode() != nil || m.Type.Class != stun.ClassRequest {
		return
	}
	switch m.Type.Method {
	case methodConnect:
		var peer stun.XORMappedAddress
		if peer.GetFromAs(m, stun.AttrXORPeerAddress) == nil {
			c.cmu.Lock()
			if c.connects == nil {
				c.connects = map[[stun.TransactionIDSize]byte]netip.AddrPort{}
			}
			// pion answers Connects one at a time; a few pending are
			// plenty (an unpaired connection is still relayed, by pion).
			if len(c.connects) < maxPendingConnects {
				c.connects[m.TransactionID] = xorAddrPort(peer)
			}
			c.cmu.Unlock()
		}
	case methodBind:
		if cid, ok := connectionID(m); ok {
			c.cmu.Lock()
			c.bindCID, c.binding = cid, true
			c.cmu.Unlock()
		}
	}
}

// bound pairs the data connection with its peer connection once pion
// accepted the ConnectionBind.
func (c *guardConn) bound() {
	c.cmu.Lock()
	defer c.cmu.Unlock()
	if c.binding {
		c.peer = c.s.takeCID(c.bindCID)
		c.binding = false
		if c.peer != nil {
			c.s.paired.Add(1)
		}
	}
}

func (c *guardConn) peerConn() *relayConn {
	c.cmu.Lock()
	defer c.cmu.Unlock()
	return c.peer
}

func connectionID(m *stun.Message) (uint32, bool) {
	v, err := m.Get(stun.AttrConnectionID)
	if err != nil || len(v) != 4 {
		return 0, false
	}
	return uint32(v[0])<<24 | uint32(v[1])<<16 | uint32(v[2])<<8 | uint32(v[3]), true
}

func xorAddrPort(a stun.XORMappedAddress) netip.AddrPort {
	ip, _ := netip.AddrFromSlice(a.IP)
	return netip.AddrPortFrom(ip.Unmap(), uint16(a.Port))
}
