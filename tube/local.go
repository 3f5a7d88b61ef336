package tube

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/internal/serve"
	"github.com/tubes-dev/tubes/internal/ucred"
	"github.com/tubes-dev/tubes/tperr"
)

// Access controls of a tube's local socket (Telepathy's
// Socket_Access_Control, without Netmask, which nobody implemented).
const (
	AccessLocalhost       = "localhost"        // any local process
	AccessPort            = "port"             // TCP: only the stated source HOST:PORT
	AccessCredentials     = "credentials"      // Unix: peer uid checked with SO_PEERCRED
	AccessCredentialsByte = "credentials-byte" // Unix: Telepathy's one-byte SCM_CREDENTIALS handshake
)

// handshakeTimeout bounds the credentials-byte handshake.
const handshakeTimeout = 5 * time.Second

// localSocket is the accepting side's listener of one tube, with its
// access control. Refused connections are aborted and logged; they never
// open a stream.
type localSocket struct {
	l      net.Listener
	addr   string   // what clients connect to
	access string   // one of the Access constants
	source string   // AccessPort: the only source let in
	uids   []uint32 // AccessCredentials*: the uids let in
	dir    string   // private directory to remove on close ("" if none)
	path   string   // Unix socket path to remove on close
}

// listenLocal creates the local socket of an accepted tube. uid is the
// daemon's own uid (the default for credentials controls); socketDir is
// where "auto" Unix sockets get their private directory.
func listenLocal(req api.AcceptRequest, uid int, socketDir string) (*localSocket, error) {
	if req.Listen != "" && req.Unix != "" {
		return nil, tperr.New(tperr.InvalidArgument, "accept as TCP (listen) or as Unix (unix), not both")
	}
	if req.Unix == "" {
		return listenTCP(req)
	}
	return listenUnix(req, uid, socketDir)
}

func listenTCP(req api.AcceptRequest) (*localSocket, error) {
	access := req.Access
	if access == "" {
		access = AccessLocalhost
		if req.Source != "" {
			access = AccessPort
		}
	}
	s := &localSocket{access: access}
	switch access {
	case AccessLocalhost:
		if req.Source != "" {
			return nil, tperr.New(tperr.InvalidArgument, "source is only for access port")
		}
	case AccessPort:
		src, err := netip.ParseAddrPort(req.Source)
		if err != nil || src.Port() == 0 {
			return nil, tperr.New(tperr.InvalidArgument, "access port needs source: the numeric HOST:PORT your client will connect from")
		}
		s.source = src.String()
	case AccessCredentials, AccessCredentialsByte:
		return nil, tperr.New(tperr.NotImplemented, "access %s needs a Unix socket: the kernel reports no credentials on TCP", access)
	default:
		return nil, tperr.New(tperr.InvalidArgument, "access %q is not one of localhost, port, credentials, credentials-byte", access)
	}
	if len(req.UIDs) > 0 {
		return nil, tperr.New(tperr.InvalidArgument, "uids are only for access credentials on a Unix socket")
	}
	listen := req.Listen
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	ap, err := netip.ParseAddrPort(listen)
	if err != nil {
		return nil, tperr.New(tperr.InvalidArgument, "listen %q is not a numeric HOST:PORT", listen)
	}
	if !ap.Addr().IsLoopback() {
		return nil, tperr.New(tperr.PermissionDenied, "listen %s is not a loopback address: a tube's local socket is for this machine only", listen)
	}
	// No TCP keepalive on loopback: a local peer that dies is reset by the
	// kernel at once, and probes would only cost system calls per accept.
	lc := net.ListenConfig{KeepAlive: -1}
	l, err := lc.Listen(context.Background(), "tcp", ap.String())
	if err != nil {
		return nil, tperr.Wrap(err, tperr.NotAvailable, "cannot listen on %s: %s", listen, tperr.Reason(err))
	}
	s.l, s.addr = l, l.Addr().String()
	return s, nil
}

func listenUnix(req api.AcceptRequest, uid int, socketDir string) (*localSocket, error) {
	access := req.Access
	if access == "" {
		access = AccessCredentials
	}
	s := &localSocket{access: access}
	switch access {
	case AccessLocalhost:
		if len(req.UIDs) > 0 {
			return nil, tperr.New(tperr.InvalidArgument, "uids are only for access credentials")
		}
	case AccessCredentials, AccessCredentialsByte:
		s.uids = req.UIDs
		if len(s.uids) == 0 {
			s.uids = []uint32{uint32(uid)}
		}
	case AccessPort:
		return nil, tperr.New(tperr.NotImplemented, "access port needs a TCP socket: Unix sockets have no source port")
	default:
		return nil, tperr.New(tperr.InvalidArgument, "access %q is not one of localhost, port, credentials, credentials-byte", access)
	}
	if req.Source != "" {
		return nil, tperr.New(tperr.InvalidArgument, "source is only for access port")
	}
	path := req.Unix
	if path == "auto" {
		dir, err := privateDir(socketDir)
		if err != nil {
			return nil, err
		}
		s.dir, path = dir, filepath.Join(dir, "tube.sock")
	} else if !filepath.IsAbs(path) {
		return nil, tperr.New(tperr.InvalidArgument, "unix %q is not an absolute path (or \"auto\")", path)
	}
	lc := &net.ListenConfig{}
	if access == AccessCredentialsByte {
		lc = ucred.ListenConfig()
	}
	l, err := lc.Listen(context.Background(), "unix", path)
	if err != nil {
		if s.dir != "" {
			os.RemoveAll(s.dir)
		}
		return nil, tperr.Wrap(err, tperr.NotAvailable, "cannot listen on %s: %s", path, tperr.Reason(err))
	}
	l.(*net.UnixListener).SetUnlinkOnClose(true)
	s.l, s.addr, s.path = l, path, path
	return s, nil
}

// privateDir makes a new directory only the daemon's user can enter.
func privateDir(parent string) (string, error) {
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return "", tperr.Wrap(err, tperr.NotAvailable, "cannot create %s: %s", parent, tperr.Reason(err))
	}
	b := make([]byte, 8)
	rand.Read(b)
	dir := filepath.Join(parent, "t-"+hex.EncodeToString(b))
	if err := os.Mkdir(dir, 0o700); err != nil {
		return "", tperr.Wrap(err, tperr.NotAvailable, "cannot create %s: %s", dir, tperr.Reason(err))
	}
	return dir, nil
}

// admit applies the access control to a new local connection; a refused
// connection is aborted by the caller.
func (s *localSocket) admit(c net.Conn) error {
	switch s.access {
	case AccessPort:
		if got := c.RemoteAddr().String(); got != s.source {
			return fmt.Errorf("connection from %s, but access port lets in only %s", got, s.source)
		}
	case AccessCredentials:
		cr, err := ucred.Peer(c.(*net.UnixConn))
		if err != nil {
			return err
		}
		if !ucred.Allowed(cr, s.uids) {
			return fmt.Errorf("connection from uid %d (pid %d), but access credentials lets in only uids %v", cr.UID, cr.PID, s.uids)
		}
	case AccessCredentialsByte:
		cr, err := ucred.ReadHandshake(c.(*net.UnixConn), handshakeTimeout)
		if err != nil {
			return err
		}
		if !ucred.Allowed(cr, s.uids) {
			return fmt.Errorf("connection from uid %d (pid %d), but access credentials lets in only uids %v", cr.UID, cr.PID, s.uids)
		}
	}
	return nil
}

// serve accepts connections until the socket closes, handing admitted
// ones to open.
func (s *localSocket) serve(log *slog.Logger, open func(net.Conn), onError func(error)) {
	ln := serve.Resilient{Listener: s.l, OnError: onError}
	for {
		c, err := ln.Accept()
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			return
		}
		go func() {
			if err := s.admit(c); err != nil {
				log.Warn("refused a local connection to a tube", "addr", s.addr, "why", err)
				abort(c)
				return
			}
			open(c)
		}()
	}
}

func (s *localSocket) close() {
	s.l.Close()
	if s.path != "" {
		os.Remove(s.path)
	}
	if s.dir != "" {
		os.RemoveAll(s.dir)
	}
}

// abort closes a local socket so its peer sees a reset, not a clean end
// of file: SO_LINGER 0 on TCP. (A Unix stream socket has no reset; its
// peer sees ECONNRESET only if it had unread data.)
func abort(c net.Conn) {
	if l, ok := c.(interface{ SetLinger(int) error }); ok {
		l.SetLinger(0)
	}
	c.Close()
}

// dialService connects to an exported service.
func dialService(ctx context.Context, e *export) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var d net.Dialer
	if e.TCP != "" {
		if ap, err := netip.ParseAddrPort(e.TCP); err == nil && ap.Addr().IsLoopback() {
			d.KeepAlive = -1 // as for the local socket: nothing to detect on loopback
		}
		return d.DialContext(ctx, "tcp", e.TCP)
	}
	return d.DialContext(ctx, "unix", e.Unix)
}

// checkExportAddr validates an export's socket and rewrites a wildcard
// bind address to loopback, as telepathy-qt does.
func checkExportAddr(e *api.Export) error {
	if (e.TCP == "") == (e.Unix == "") {
		return tperr.New(tperr.InvalidArgument, "an export needs exactly one of tcp HOST:PORT or unix PATH")
	}
	if e.Unix != "" {
		if !filepath.IsAbs(e.Unix) && e.Unix[0] != '@' {
			return tperr.New(tperr.InvalidArgument, "unix %q is not an absolute path", e.Unix)
		}
		return nil
	}
	ap, err := netip.ParseAddrPort(e.TCP)
	if err != nil || ap.Port() == 0 {
		return tperr.New(tperr.InvalidArgument, "tcp %q is not a numeric HOST:PORT (names are not resolved)", e.TCP)
	}
	if ap.Addr().IsUnspecified() {
		lo := netip.MustParseAddr("127.0.0.1")
		if ap.Addr().Is6() {
			lo = netip.IPv6Loopback()
		}
		ap = netip.AddrPortFrom(lo, ap.Port())
	}
	e.TCP = ap.String()
	return nil
}
