// Package relay is the TURN server of `tube relay`: UDP and TCP allocations
// (RFC 8656, RFC 6062 for TCP) on pion/turn v5, with long-term and TURN
// REST credentials, a peer filter that refuses non-public addresses unless
// an operator allows them, per-user quotas and Prometheus metrics. It runs
// beside the rendezvous or alone (`tube relay --turn-only`).
//
// The relay only forwards bytes: tube links are TLS 1.3 end to end between
// daemons, so it never sees plaintext.
package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/logging"
	"github.com/pion/transport/v5/reuseport"
	"github.com/pion/turn/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/tubes-dev/tubes/internal/limit"
	"github.com/tubes-dev/tubes/internal/serve"
	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"
)

// Defaults.
const (
	DefaultRealm            = "tubes"
	DefaultLifetime         = 600 * time.Second
	MaxLifetime             = time.Hour        // allocations live at most this long between refreshes
	DefaultMaxAllocations   = 32               // per user
	DefaultTotalAllocations = 8192             // all users together
	DefaultMaxPending       = 64               // unbound peer connections per user
	DefaultMaxConnections   = 1024             // peer connections per TCP allocation
	DefaultAuthDeadline     = 10 * time.Second // a TCP control connection's time to authenticate
	DefaultUnauthPerSource  = 32               // unauthenticated TCP connections per source address
	DefaultUnauthTotal      = 4096             // unauthenticated TCP connections, all sources
	connectTimeout          = 30 * time.Second
)

// defaultUnauthTotal is DefaultUnauthTotal, or a quarter of the
// process's descriptor limit when that is less: unauthenticated
// connections alone must not use up the descriptors that allocations and
// their peers need.
func defaultUnauthTotal() int {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err == nil && rl.Cur/4 < DefaultUnauthTotal {
		return max(1, int(rl.Cur/4))
	}
	return DefaultUnauthTotal
}

// Config configures a TURN server.
type Config struct {
	// Listen is HOST:PORT for both UDP and TCP (port 0 picks one).
	Listen string
	// External is the address put in XOR-RELAYED-ADDRESS when clients
	// reach the relay through a 1:1 NAT; default: the listen address, or
	// when that is a wildcard, the first global interface address.
	External string
	// Realm of long-term credentials (default "tubes").
	Realm string
	// Secret enables TURN REST credentials ("<expiry>:<user>",
	// base64 HMAC-SHA1), coturn's static-auth-secret.
	Secret string
	// Users are static long-term credentials, user → password.
	Users map[string]string
	// AllowPeers widens the peer filter (CIDR prefixes or addresses).
	AllowPeers []string
	// MaxAllocations per user (default 32); MaxPending unbound peer
	// connections per user (default 64).
	MaxAllocations, MaxPending int
	// TotalAllocations is the most allocations of all users together
	// (default 8192): however many accounts a relay has, its ports and
	// descriptors stay bounded.
	TotalAllocations int
	// MaxConnections is the most peer connections one TCP allocation
	// holds at once, bound or not (default 1024). Each new connection
	// costs pion a scan of its allocation's connections under a lock all
	// allocations share, so this bounds what one user can make everyone
	// wait. (A Tubes allocation carries one connection per peer, whose
	// link multiplexes all of that peer's tube connections.)
	MaxConnections int
	// Bandwidth caps the bytes per second each user's relayed TCP
	// connections carry, both directions together (0: no cap). Capped
	// connections are copied in user space instead of with splice(2).
	Bandwidth int64
	// Lifetime is the default allocation lifetime (600 s; at most
	// MaxLifetime). Clients may ask for more, up to MaxLifetime.
	Lifetime time.Duration
	// AuthDeadline is how long a TCP connection to the TURN port may stay
	// without an authenticated Allocate or ConnectionBind succeeding
	// (default 10 s, as OpenSSH's LoginGraceTime bounds a login): idle
	// connects cannot pile up and hold the relay's descriptors.
	AuthDeadline time.Duration
	// UnauthPerSource is the most TCP connections one source (an IPv4
	// address, an IPv6 /64) may hold open before they authenticate
	// (default 32), and UnauthTotal the most for all sources together
	// (default 4096, or a quarter of the descriptor limit when less)
	// (default 4096): one more is closed at once, and only that source
	// is refused while the others' connections are taken.
	UnauthPerSource, UnauthTotal int
	Logger                       *slog.Logger
	Registerer                   prometheus.Registerer
}

// Server is a running TURN server.
type Server struct {
	cfg     Config
	log     *slog.Logger
	auth    *authenticator
	filter  *PeerFilter
	metrics *metrics
	tcp     net.Listener
	udp     net.PacketConn
	turn    *turn.Server
	bindIP  netip.Addr
	extIP   net.IP

	accountPeers atomic.Pointer[func(account string, ip netip.Addr) bool]
	// logSome bounds the logs a client's refused requests make (their
	// metrics count them all): a flood of refusals is no flood of logs.
	logSome rate.Sometimes

	mu     sync.Mutex
	allocs map[string]string // control 5-tuple → "tcp" | "udp"
	// pairing of data and peer connections (pair.go)
	relayPorts  map[string]int           // control 5-tuple → relayed port of its TCP allocation
	peers       map[string]*relayConn    // peerKey → peer connection
	cids        map[uint32]*relayConn    // CONNECTION-ID → peer connection, until bound
	paired      atomic.Int64             // data connections relayed with splice(2)
	limits      map[string]*rate.Limiter // per-user bandwidth (Config.Bandwidth)
	perUser     map[string]int           // allocations
	clientUsers map[string]string        // allocation's client address → its user
	pending     map[string]int           // unbound peer connections
	conns       map[int]int              // relayed port → its peer connections
	unauth      *limit.PerSource         // TCP connections not yet authenticated
}

// Start listens and serves until Close.
func Start(cfg Config) (*Server, error) {
	if cfg.Realm == "" {
		cfg.Realm = DefaultRealm
	}
	if cfg.Lifetime == 0 {
		cfg.Lifetime = DefaultLifetime
	}
	cfg.Lifetime = min(cfg.Lifetime, MaxLifetime)
	if cfg.TotalAllocations <= 0 {
		cfg.TotalAllocations = DefaultTotalAllocations
	}
	if cfg.MaxAllocations == 0 {
		cfg.MaxAllocations = DefaultMaxAllocations
	}
	if cfg.MaxPending == 0 {
		cfg.MaxPending = DefaultMaxPending
	}
	if cfg.MaxConnections == 0 {
		cfg.MaxConnections = DefaultMaxConnections
	}
	if cfg.AuthDeadline == 0 {
		cfg.AuthDeadline = DefaultAuthDeadline
	}
	if cfg.UnauthPerSource == 0 {
		cfg.UnauthPerSource = DefaultUnauthPerSource
	}
	if cfg.UnauthTotal == 0 {
		cfg.UnauthTotal = defaultUnauthTotal()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Secret == "" && len(cfg.Users) == 0 {
		return nil, errors.New("relay: the TURN server needs a REST secret or at least one user")
	}
	filter, err := NewPeerFilter(cfg.AllowPeers)
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg: cfg, log: cfg.Logger.With("part", "turn"), filter: filter,
		logSome:    rate.Sometimes{First: 10, Interval: time.Second},
		auth:       &authenticator{secret: cfg.Secret, users: cfg.Users, now: time.Now},
		allocs:     map[string]string{},
		relayPorts: map[string]int{}, peers: map[string]*relayConn{}, cids: map[uint32]*relayConn{},
		limits:  map[string]*rate.Limiter{},
		perUser: map[string]int{}, clientUsers: map[string]string{},
		pending: map[string]int{},
		conns:   map[int]int{},
		unauth:  limit.NewPerSource(cfg.UnauthPerSource, cfg.UnauthTotal),
	}
	s.metrics = newMetrics(s, cfg.Registerer)

	s.tcp, err = net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("relay: TURN listener: %w", err)
	}
	ap := netip.MustParseAddrPort(s.tcp.Addr().String())
	s.udp, err = net.ListenPacket("udp", net.JoinHostPort(ap.Addr().String(), strconv.Itoa(int(ap.Port()))))
	if err != nil {
		s.tcp.Close()
		return nil, fmt.Errorf("relay: TURN UDP listener on the TCP port %d: %w", ap.Port(), err)
	}
	s.bindIP = ap.Addr().Unmap()
	ext, err := externalIP(cfg.External, s.bindIP)
	if err != nil {
		s.tcp.Close()
		s.udp.Close()
		return nil, err
	}
	s.extIP = ext
	ea, _ := netip.AddrFromSlice(ext)
	s.filter.DenySelf(append(hostAddrs(), ea, s.bindIP)...)

	gen := &generator{s: s}
	perm := func(client net.Addr, peer net.IP) bool {
		ok := s.filter.AllowedIP(peer)
		if !ok {
			s.metrics.refused.Inc()
			s.logSome.Do(func() {
				s.log.Info("TURN peer refused by the peer filter", "client", client.String(), "peer", peer.String())
			})
			return false
		}
		if acct, ok := s.accountOf(client); ok && !s.accountPeer(acct, peer) {
			s.metrics.foreign.Inc()
			s.logSome.Do(func() {
				s.log.Info("TURN peer refused: not where a contact of the account is connected from", "account", acct, "client", client.String(), "peer", peer.String())
			})
			return false
		}
		return true
	}
	s.turn, err = turn.NewServer(turn.ServerConfig{
		Realm:              cfg.Realm,
		AuthHandler:        s.authHandler,
		QuotaHandler:       s.quota,
		EventHandler:       s.events(),
		AllocationLifetime: MaxLifetime, // the guard sets the lifetime of each request (withLifetime)
		LoggerFactory:      &slogFactory{log: s.log},
		PacketConnConfigs: []turn.PacketConnConfig{{
			PacketConn: &guardPacketConn{PacketConn: s.udp, s: s}, RelayAddressGenerator: gen, PermissionHandler: perm,
		}},
		ListenerConfigs: []turn.ListenerConfig{{
			Listener: &guardListener{Listener: s.resilient(s.tcp, "turn-tcp"), s: s}, RelayAddressGenerator: gen, PermissionHandler: perm,
		}},
	})
	if err != nil {
		s.tcp.Close()
		s.udp.Close()
		return nil, fmt.Errorf("relay: TURN server: %w", err)
	}
	s.log.Info("TURN server listening", "addr", s.Addr(), "relay_ip", s.extIP.String(), "realm", cfg.Realm,
		"rest", cfg.Secret != "", "users", len(cfg.Users), "allow_peers", cfg.AllowPeers)
	return s, nil
}

// externalIP picks the address relayed addresses are announced with.
func externalIP(external string, bind netip.Addr) (net.IP, error) {
	if external != "" {
		ip, err := netip.ParseAddr(external)
		if err != nil {
			return nil, fmt.Errorf("relay: --turn-external %q is not an IP address", external)
		}
		return net.IP(ip.Unmap().AsSlice()), nil
	}
	if !bind.IsUnspecified() {
		return net.IP(bind.AsSlice()), nil
	}
	addrs, err := net.InterfaceAddrs()
	if err == nil {
		for _, a := range addrs {
			p, err := netip.ParsePrefix(a.String())
			if err == nil && p.Addr().Is4() && p.Addr().IsGlobalUnicast() {
				return net.IP(p.Addr().AsSlice()), nil
			}
		}
	}
	return nil, errors.New("relay: the TURN server listens on every address; name the one clients reach it at with --turn-external")
}

// Addr is the HOST:PORT the server listens on (UDP and TCP).
func (s *Server) Addr() string { return s.tcp.Addr().String() }

// PublicAddr is the HOST:PORT clients reach the server at: the external
// address with the listening port.
func (s *Server) PublicAddr() string {
	return net.JoinHostPort(s.extIP.String(), strconv.Itoa(int(netip.MustParseAddrPort(s.Addr()).Port())))
}

// Realm is the long-term credential realm.
func (s *Server) Realm() string { return s.cfg.Realm }

// accountUser starts the TURN user of the credentials issued to a
// rendezvous account (AccountCredentials).
const accountUser = "account:"

// AccountCredentials issues a REST credential for a rendezvous account,
// valid for ttl. Its allocations relay only to peers where one of the
// account's contacts or room co-members is connected from (SetAccountPeers):
// credentials that anyone may register an account for do not make the
// relay an open one.
func (s *Server) AccountCredentials(account string, ttl time.Duration) (username, password string, err error) {
	return s.Credentials(accountUser+account, ttl)
}

// SetAccountPeers gives the server the rendezvous's answer to "may
// account's allocation relay to ip". Until it is set, account credentials
// relay to nobody.
func (s *Server) SetAccountPeers(f func(account string, ip netip.Addr) bool) {
	s.accountPeers.Store(&f)
}

// accountOf returns the account whose issued credentials made the
// allocation of client, if they did.
func (s *Server) accountOf(client net.Addr) (string, bool) {
	s.mu.Lock()
	user, known := s.clientUsers[clientKey(client)]
	s.mu.Unlock()
	if !known {
		return "", true // no allocation of ours: fail closed (no account has a peer there)
	}
	return strings.CutPrefix(user, accountUser)
}

// clientKey names an allocation's client: its transport and address (a
// UDP and a TCP allocation may share an address and port).
func clientKey(a net.Addr) string { return a.Network() + "/" + a.String() }

func (s *Server) accountPeer(account string, peer net.IP) bool {
	f := s.accountPeers.Load()
	ip, ok := netip.AddrFromSlice(peer)
	return f != nil && ok && (*f)(account, ip.Unmap())
}

// Credentials issues a REST credential for user valid for ttl.
func (s *Server) Credentials(user string, ttl time.Duration) (username, password string, err error) {
	if s.cfg.Secret == "" {
		return "", "", errors.New("relay: the TURN server has no REST secret to issue credentials with")
	}
	u, p := RESTCredentials(s.cfg.Secret, user, ttl, time.Now())
	return u, p, nil
}

// Allocations is the number of live allocations.
func (s *Server) Allocations() int { return s.turn.AllocationCount() }

// Close stops the server and ends every allocation.
func (s *Server) Close() error {
	err := s.turn.Close()
	s.tcp.Close()
	s.udp.Close()
	return err
}

func (s *Server) authHandler(ra *turn.RequestAttributes) (string, []byte, bool) {
	user, password, err := s.auth.lookup(ra.Username)
	if err != nil || ra.Realm != s.cfg.Realm {
		if err == nil {
			err = fmt.Errorf("wrong realm %q", ra.Realm)
		}
		s.metrics.authFailures.Inc()
		s.logSome.Do(func() {
			s.log.Info("TURN credentials refused", "user", ra.Username, "from", ra.SrcAddr.String(), "err", err)
		})
		return "", nil, false
	}
	return user, turn.GenerateAuthKey(ra.Username, ra.Realm, password), true
}

func (s *Server) quota(user, realm string, src net.Addr) bool {
	s.mu.Lock()
	n, total := s.perUser[user], len(s.allocs)
	s.mu.Unlock()
	if n >= s.cfg.MaxAllocations {
		s.metrics.quota.WithLabelValues("per_user").Inc()
		s.logSome.Do(func() {
			s.log.Info("TURN allocation quota reached", "user", user, "allocations", n, "from", src.String())
		})
		return false
	}
	if total >= s.cfg.TotalAllocations {
		s.metrics.quota.WithLabelValues("total").Inc()
		s.logSome.Do(func() {
			s.log.Warn("TURN allocations at the relay's limit", "allocations", total, "user", user, "from", src.String())
		})
		return false
	}
	return true
}

func (s *Server) events() turn.EventHandler {
	return turn.EventHandler{
		OnAuth: func(src, _ net.Addr, _, username, _, method string, ok bool) {
			if !ok { // a known user with the wrong password (unknown ones: authHandler)
				s.metrics.authFailures.Inc()
				s.logSome.Do(func() {
					s.log.Info("TURN credentials refused", "user", username, "from", src.String(), "method", method, "err", "wrong password")
				})
			}
		},
		OnAllocationCreated: func(src, dst net.Addr, _, user, _ string, relayAddr net.Addr, _ int) {
			kind := "udp"
			if _, ok := relayAddr.(*net.TCPAddr); ok {
				kind = "tcp"
			}
			s.mu.Lock()
			s.allocs[tupleKey(src, dst)] = kind
			if kind == "tcp" {
				s.relayPorts[tupleKey(src, dst)] = int(addrPortOf(relayAddr).Port())
			}
			s.perUser[user]++
			s.clientUsers[clientKey(src)] = user
			s.mu.Unlock()
			s.metrics.allocations.WithLabelValues(kind).Inc()
			s.log.Debug("TURN allocation", "user", user, "client", src.String(), "relayed", relayAddr.String())
		},
		OnAllocationDeleted: func(src, dst net.Addr, _, user, _ string) {
			s.mu.Lock()
			kind, ok := s.allocs[tupleKey(src, dst)]
			delete(s.allocs, tupleKey(src, dst))
			delete(s.relayPorts, tupleKey(src, dst))
			delete(s.clientUsers, clientKey(src))
			if ok {
				if s.perUser[user]--; s.perUser[user] <= 0 {
					delete(s.perUser, user)
					delete(s.limits, user)
				}
			}
			s.mu.Unlock()
			if ok {
				s.metrics.allocations.WithLabelValues(kind).Dec()
			}
		},
	}
}

func (s *Server) allocationKind(tuple string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, ok := s.allocs[tuple]
	return k, ok
}

// generator makes relayed sockets on the bind address, announced with the
// external address.
type generator struct{ s *Server }

func (g *generator) Validate() error { return nil }

func (g *generator) hostPort(port int) string {
	return net.JoinHostPort(g.s.bindIP.String(), strconv.Itoa(port))
}

func (g *generator) AllocatePacketConn(c turn.AllocateListenerConfig) (net.PacketConn, net.Addr, error) {
	pc, err := net.ListenPacket(c.Network, g.hostPort(c.RequestedPort))
	if err != nil {
		return nil, nil, err
	}
	a := *pc.LocalAddr().(*net.UDPAddr)
	a.IP = g.s.extIP
	return pc, &a, nil
}

func (g *generator) AllocateListener(c turn.AllocateListenerConfig) (net.Listener, net.Addr, error) {
	lc := net.ListenConfig{Control: reuseport.Control}
	ln, err := lc.Listen(context.Background(), c.Network, g.hostPort(c.RequestedPort))
	if err != nil {
		return nil, nil, err
	}
	a := *ln.Addr().(*net.TCPAddr)
	a.IP = g.s.extIP
	return &peerListener{Listener: g.s.resilient(ln, "turn-peer"), s: g.s, user: c.UserID, port: a.Port}, &a, nil
}

func (g *generator) AllocateConn(c turn.AllocateConnConfig) (net.Conn, error) {
	peer, ok := c.RemoteAddr.(*net.TCPAddr)
	if !ok || !g.s.filter.AllowedIP(peer.IP) {
		return nil, fmt.Errorf("relay: peer %v refused by the peer filter", c.RemoteAddr)
	}
	port := 0
	if la, ok := c.LocalAddr.(*net.TCPAddr); ok {
		port = la.Port
	}
	if !g.s.takeConn(port) {
		return nil, fmt.Errorf("relay: the allocation on port %d holds %d connections already", port, g.s.cfg.MaxConnections)
	}
	if !g.s.takePending(c.UserID) {
		g.s.releaseConn(port)
		return nil, fmt.Errorf("relay: %s has too many unbound connections", c.UserID)
	}
	local := &net.TCPAddr{Port: port} // any address (a wildcard listener) ...
	if !g.s.bindIP.IsUnspecified() {
		local.IP = net.IP(g.s.bindIP.AsSlice()) // ... or the one it listens on
	}
	d := net.Dialer{Timeout: connectTimeout, Control: reuseport.Control, LocalAddr: local}
	conn, err := d.Dial(c.Network, peer.String())
	if err != nil {
		g.s.releasePending(c.UserID)
		g.s.releaseConn(port)
		return nil, err
	}
	return g.s.newRelayConn(conn.(*net.TCPConn), c.UserID, port), nil
}

// takeConn counts a new peer connection of the allocation relayed on
// port, if it has room for one.
func (s *Server) takeConn(port int) bool { return take(s, s.conns, port, s.cfg.MaxConnections) }

func (s *Server) releaseConn(port int) { release(s, s.conns, port) }

// takePending counts a new unbound peer connection of user, if the quota
// allows.
func (s *Server) takePending(user string) bool {
	return take(s, s.pending, user, s.cfg.MaxPending)
}

func (s *Server) releasePending(user string) { release(s, s.pending, user) }

// take counts one more for key in counts (guarded by s.mu) unless max are
// counted already.
func take[K comparable](s *Server, counts map[K]int, key K, max int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if counts[key] >= max {
		return false
	}
	counts[key]++
	return true
}

// release counts one less for key, forgetting keys that reach zero.
func release[K comparable](s *Server, counts map[K]int, key K) {
	s.mu.Lock()
	if counts[key]--; counts[key] <= 0 {
		delete(counts, key)
	}
	s.mu.Unlock()
}

// peerListener filters inbound peer connections of a TCP allocation.
// Until ConnectionBind the relay never reads a peer connection, so what a
// peer sends early waits in the kernel's receive buffer (its initial
// window, tcp_rmem), not in the relay's memory.
type peerListener struct {
	net.Listener
	s    *Server
	user string
	port int // the relayed port
}

func (l *peerListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		tc := c.(*net.TCPConn)
		ra := tc.RemoteAddr().(*net.TCPAddr)
		if !l.s.filter.AllowedIP(ra.IP) {
			l.s.metrics.refused.Inc()
			abort(tc)
			continue
		}
		if !l.s.takeConn(l.port) {
			l.s.logSome.Do(func() {
				l.s.log.Info("TURN allocation connection quota reached; peer connection closed", "user", l.user, "peer", ra.String(), "max", l.s.cfg.MaxConnections)
			})
			abort(tc)
			continue
		}
		if !l.s.takePending(l.user) {
			l.s.releaseConn(l.port)
			l.s.logSome.Do(func() {
				l.s.log.Info("TURN pending-connection quota reached; peer connection closed", "user", l.user, "peer", ra.String())
			})
			abort(tc)
			continue
		}
		return l.s.newRelayConn(tc, l.user, l.port), nil
	}
}

func abort(c *net.TCPConn) {
	c.SetLinger(0)
	c.Close()
}

// slogFactory routes pion's logs to slog (its info is our debug).
type slogFactory struct{ log *slog.Logger }

func (f *slogFactory) NewLogger(scope string) logging.LeveledLogger {
	return &slogLogger{log: f.log.With("pion", scope)}
}

type slogLogger struct{ log *slog.Logger }

func (l *slogLogger) Trace(string)              {}
func (l *slogLogger) Tracef(string, ...any)     {}
func (l *slogLogger) Debug(msg string)          { l.log.Debug(msg) }
func (l *slogLogger) Debugf(f string, a ...any) { l.log.Debug(fmt.Sprintf(f, a...)) }
func (l *slogLogger) Info(msg string)           { l.log.Debug(msg) }
func (l *slogLogger) Infof(f string, a ...any)  { l.log.Debug(fmt.Sprintf(f, a...)) }
func (l *slogLogger) Warn(msg string)           { l.log.Warn(msg) }
func (l *slogLogger) Warnf(f string, a ...any)  { l.log.Warn(fmt.Sprintf(f, a...)) }
func (l *slogLogger) Error(msg string)          { l.log.Warn(msg) }
func (l *slogLogger) Errorf(f string, a ...any) { l.log.Warn(fmt.Sprintf(f, a...)) }

// resilient wraps a listener handed to pion: pion's accept loops return
// on any error, so a burst that exhausted the relay's descriptors left
// TURN over TCP (or an allocation's relayed port) dead until a restart.
func (s *Server) resilient(ln net.Listener, name string) net.Listener {
	return serve.Resilient{Listener: ln, OnError: func(err error) {
		s.metrics.acceptErrors.WithLabelValues(name).Inc()
		s.log.Warn("accept failed; trying again", "listener", name, "err", err)
	}}
}
