package rendezvous

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/bcrypt"
	"golang.org/x/time/rate"

	"github.com/tubes-dev/tubes/internal/atomicfile"
)

// Config configures a rendezvous server: an embedded NATS server with the
// account service on it, or the account service alone against an existing
// NATS cluster.
type Config struct {
	// Listen is the HOST:PORT daemons connect to (embedded mode). Port 0
	// picks a free port.
	Listen string
	// DataDir holds the durable state (JetStream file store) and the
	// relay's operator credentials. Empty keeps state in memory.
	DataDir string
	// NATS, when set, is the URL of an existing cluster, with the
	// credentials of a user listed in the cluster's auth_callout
	// auth_users. No server is embedded then.
	NATS string
	// NATSSystem is the URL, with credentials, of a system-account user of
	// that cluster (connection events, kicks). Required with NATS.
	NATSSystem string
	// NATSAccount is the account that holds Tubes users in that cluster.
	NATSAccount string
	// IssuerSeed is the file with the account nkey seed that the
	// cluster's auth_callout names as issuer. Default <DataDir>/issuer.nk.
	IssuerSeed string
	// Replicas of the state bucket in a cluster.
	Replicas int
	// Registration is "open" (default) or "closed".
	Registration string
	// TLSCert and TLSKey enable TLS on the listener.
	TLSCert, TLSKey string
	// TURN issues credentials for the relay's TURN server (nil: none).
	TURN       TURNIssuer
	Limits     Limits // what one account or source can make the service do
	Instance   string
	Version    string
	Logger     *slog.Logger
	Registerer prometheus.Registerer // may be nil

	// Set by Start.
	issuer  nkeys.KeyPair
	storage jetstream.StorageType
	servers int
}

// Server is a running rendezvous: NATS (embedded or not) plus the account
// service.
type Server struct {
	cfg     Config
	log     *slog.Logger
	ns      *server.Server // nil with an external cluster
	nc, sys *nats.Conn
	auth    *nats.Conn // the service user again: logins on a connection of their own
	svc     *Service
	url     string
	tmpDir  string
	svcPass string // the embedded server's service user's password

	cancel context.CancelFunc
	done   chan struct{}
	runErr error

	closeOnce sync.Once
}

// Names of the built-in users of the embedded server.
const (
	embeddedAccount = "TUBES"
	serviceUser     = "tube-svc"
	systemUser      = "tube-sys"
)

// PeerConnectedFrom reports whether one of account's contacts or room
// co-members is connected from ip, as the NATS servers saw it: where a
// TURN allocation of account's may relay to.
func (s *Server) PeerConnectedFrom(account string, ip netip.Addr) bool {
	return s.svc.peerConnectedFrom(account, ip)
}

// Start starts the rendezvous and returns once it accepts daemons.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Instance == "" {
		cfg.Instance = randomID()
	}
	s := &Server{cfg: cfg, log: cfg.Logger.With("component", "rendezvous"), done: make(chan struct{})}
	var err error
	if cfg.NATS != "" {
		err = s.startExternal(ctx)
	} else {
		err = s.startEmbedded()
	}
	if err != nil {
		s.shutdown()
		return nil, err
	}
	if err := s.startService(ctx); err != nil {
		s.shutdown()
		return nil, err
	}
	if s.ns != nil {
		if err := s.listen(); err != nil {
			s.shutdown()
			return nil, err
		}
	}
	return s, nil
}

func (s *Server) startEmbedded() error {
	cfg := s.cfg
	host, port, err := splitListen(cfg.Listen)
	if err != nil {
		return err
	}
	issuer, err := nkeys.CreateAccount()
	if err != nil {
		return err
	}
	issuerPub, _ := issuer.PublicKey()
	svcPass, sysPass := randomPassword(), randomPassword()

	storeDir := ""
	storage := jetstream.MemoryStorage
	if cfg.DataDir != "" {
		if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
			return fmt.Errorf("rendezvous: data directory: %w", err)
		}
		storeDir = filepath.Join(cfg.DataDir, "jetstream")
		storage = jetstream.FileStorage
	} else {
		// JetStream needs a directory even when every stream is in memory.
		if s.tmpDir, err = os.MkdirTemp("", "tube-relay-"); err != nil {
			return err
		}
		storeDir = s.tmpDir
	}
	tubes := server.NewAccount(embeddedAccount)
	sys := server.NewAccount("SYS")
	opts := &server.Options{
		ServerName:        "tube-relay-" + cfg.Instance,
		Host:              host,
		Port:              port,
		NoSigs:            true,
		AlwaysEnableNonce: true, // clients sign it with their account key
		JetStream:         true,
		StoreDir:          storeDir,
		Accounts:          []*server.Account{tubes, sys},
		SystemAccount:     "SYS",
		Users: []*server.User{
			{Username: serviceUser, Password: bcryptOf(svcPass), Account: tubes},
			{Username: systemUser, Password: bcryptOf(sysPass), Account: sys},
		},
		AuthCallout: &server.AuthCallout{
			Issuer:    issuerPub,
			Account:   embeddedAccount,
			AuthUsers: []string{serviceUser, systemUser},
		},
		MaxPayload: MaxPayload + 4096,
		// Records of closed connections are for monitoring only; every
		// registration closes a guest connection, so keep few.
		MaxClosedClients: 64,
		PingInterval:     20 * time.Second,
		MaxPingsOut:      3,
		// Daemons are let in only once the account service answers the
		// auth callout (listen, after startService): a login that came
		// first would be refused, and a refusal is not retried.
		DontListen: true,
	}
	if cfg.TLSCert != "" || cfg.TLSKey != "" {
		tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: cfg.TLSCert, KeyFile: cfg.TLSKey})
		if err != nil {
			return fmt.Errorf("rendezvous: TLS certificate: %w", err)
		}
		opts.TLSConfig = tc
		opts.TLS = true
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return fmt.Errorf("rendezvous: %w", err)
	}
	ns.SetLoggerV2(natsLogger{l: s.cfg.Logger.With("component", "nats"), some: &rate.Sometimes{First: 10, Interval: 100 * time.Millisecond}}, false, false, false)
	s.ns = ns
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		return fmt.Errorf("rendezvous: NATS server did not start")
	}
	if acc, err := ns.LookupAccount(embeddedAccount); err == nil && !acc.JetStreamEnabled() {
		if err := acc.EnableJetStream(nil, nil); err != nil {
			return fmt.Errorf("rendezvous: enable JetStream: %w", err)
		}
	}
	s.nc, err = nats.Connect("", nats.InProcessServer(ns), nats.UserInfo(serviceUser, svcPass),
		nats.Name(relayConnPrefix+cfg.Instance), nats.MaxReconnects(-1))
	if err != nil {
		return fmt.Errorf("rendezvous: service connection: %w", err)
	}
	s.sys, err = nats.Connect("", nats.InProcessServer(ns), nats.UserInfo(systemUser, sysPass), nats.MaxReconnects(-1))
	if err != nil {
		return fmt.Errorf("rendezvous: system connection: %w", err)
	}
	s.auth, err = nats.Connect("", nats.InProcessServer(ns), nats.UserInfo(serviceUser, svcPass),
		nats.Name(authConnPrefix+cfg.Instance), nats.MaxReconnects(-1))
	if err != nil {
		return fmt.Errorf("rendezvous: login connection: %w", err)
	}
	s.cfg.issuer = issuer
	s.cfg.storage = storage
	s.cfg.servers = 1
	s.svcPass = svcPass
	return nil
}

// listen opens the embedded server's client listener (once the account
// service is ready) and writes the admin file.
func (s *Server) listen() error {
	ready := make(chan struct{})
	go s.ns.AcceptLoop(ready)
	<-ready
	addr := s.ns.Addr()
	if addr == nil {
		return fmt.Errorf("rendezvous: cannot listen on %s (the log says why)", s.cfg.Listen)
	}
	scheme, tls := "nats", s.cfg.TLSCert != "" || s.cfg.TLSKey != ""
	if tls {
		scheme = "tls"
	}
	s.url = fmt.Sprintf("%s://%s", scheme, addr)
	if host, _, _ := splitListen(s.cfg.Listen); !tls && !isLoopback(host) {
		s.log.Warn("THE RELAY LISTENER IS NOT ENCRYPTED: logins and contact lists cross the network in clear; give --tls-cert and --tls-key", "listen", addr.String())
	}
	adminURL := fmt.Sprintf("%s://%s:%s@%s", scheme, serviceUser, s.svcPass, addr)
	return s.writeAdminFile(AdminInfo{URL: adminURL, CA: s.cfg.TLSCert})
}

func (s *Server) startExternal(ctx context.Context) error {
	cfg := s.cfg
	if cfg.NATSSystem == "" {
		return errors.New("rendezvous: --nats needs --nats-system (a system-account user) for presence")
	}
	seedFile := cfg.IssuerSeed
	if seedFile == "" {
		if cfg.DataDir == "" {
			return errors.New("rendezvous: --nats needs the issuer seed of the cluster's auth_callout (--nats-issuer or <data>/issuer.nk)")
		}
		seedFile = filepath.Join(cfg.DataDir, "issuer.nk")
	}
	seed, err := os.ReadFile(seedFile)
	if err != nil {
		return fmt.Errorf("rendezvous: issuer seed: %w", err)
	}
	issuer, err := nkeys.FromSeed(trimSpace(seed))
	if err != nil {
		return fmt.Errorf("rendezvous: issuer seed %s: %w", seedFile, err)
	}
	if _, err := issuer.Seed(); err != nil || !isAccountKey(issuer) {
		return fmt.Errorf("rendezvous: issuer seed %s is not an account seed (SA…)", seedFile)
	}
	connect := func(url, name string) (*nats.Conn, error) {
		return nats.Connect(url, nats.Name(name), nats.MaxReconnects(-1), nats.ReconnectWait(time.Second))
	}
	if s.nc, err = connect(cfg.NATS, relayConnPrefix+cfg.Instance); err != nil {
		return fmt.Errorf("rendezvous: connect to NATS %s: %w", redact(cfg.NATS), err)
	}
	if s.sys, err = connect(cfg.NATSSystem, "tube-relay-sys:"+cfg.Instance); err != nil {
		return fmt.Errorf("rendezvous: connect to NATS system account: %w", err)
	}
	if s.auth, err = connect(cfg.NATS, authConnPrefix+cfg.Instance); err != nil {
		return fmt.Errorf("rendezvous: connect to NATS %s: %w", redact(cfg.NATS), err)
	}
	s.url = s.nc.ConnectedUrlRedacted()
	s.cfg.issuer = issuer
	s.cfg.storage = jetstream.FileStorage
	if cfg.NATSAccount == "" {
		s.cfg.NATSAccount = "TUBES"
	}
	if cfg.DataDir != "" {
		if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
			return fmt.Errorf("rendezvous: data directory: %w", err)
		}
	}
	return s.writeAdminFile(AdminInfo{URL: cfg.NATS})
}

func (s *Server) startService(ctx context.Context) error {
	var m *Metrics
	if s.cfg.Registerer != nil {
		m = NewMetrics(s.cfg.Registerer)
	}
	account := s.cfg.NATSAccount
	if s.ns != nil {
		account = embeddedAccount
	}
	svc, err := NewService(ctx, ServiceConfig{
		Instance:     s.cfg.Instance,
		Registration: s.cfg.Registration,
		Account:      account,
		Issuer:       s.cfg.issuer,
		Storage:      s.cfg.storage,
		Replicas:     s.cfg.Replicas,
		Servers:      s.cfg.servers,
		Version:      s.cfg.Version,
		Logger:       s.cfg.Logger,
		Metrics:      m,
		TURN:         s.cfg.TURN,
		Limits:       s.cfg.Limits,
	}, s.nc, s.sys, s.auth)
	if err != nil {
		return err
	}
	s.svc = svc
	runCtx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	ready := make(chan struct{})
	go func() {
		defer close(s.done)
		s.runErr = svc.Run(runCtx, func() { close(ready) })
	}()
	select {
	case <-ready:
		return nil
	case <-s.done:
		if s.runErr == nil {
			s.runErr = errors.New("rendezvous: service stopped")
		}
		return s.runErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

// URL is the address daemons connect to (nats://HOST:PORT or tls://…).
// With an external cluster it is the cluster URL the service uses,
// without credentials.
func (s *Server) URL() string { return s.url }

// Addr is the listener's HOST:PORT (embedded mode), else "".
func (s *Server) Addr() string {
	if s.ns == nil {
		return ""
	}
	return s.ns.Addr().String()
}

// Service returns the account service.
func (s *Server) Service() *Service { return s.svc }

// Done is closed when the service stops on its own (a fatal error).
func (s *Server) Done() <-chan struct{} { return s.done }

// Err is why the service stopped, after Done.
func (s *Server) Err() error { return s.runErr }

// Close stops the service and the embedded server. Live daemons see
// their connection drop.
func (s *Server) Close() error {
	s.closeOnce.Do(s.shutdown)
	return nil
}

func (s *Server) shutdown() {
	if s.cancel != nil {
		s.cancel()
		<-s.done
	}
	if s.auth != nil {
		s.auth.Close()
	}
	if s.nc != nil {
		s.nc.Close()
	}
	if s.sys != nil {
		s.sys.Close()
	}
	if s.ns != nil {
		s.ns.Shutdown()
		s.ns.WaitForShutdown()
	}
	if s.tmpDir != "" {
		os.RemoveAll(s.tmpDir)
	}
	if s.cfg.DataDir == "" && s.adminPath() != "" {
		os.Remove(s.adminPath())
	}
}

// AdminInfo is how `tube relay user …` reaches a running relay: a NATS URL
// with the service credentials. It is written 0600 under the data
// directory (or the runtime directory when there is none).
type AdminInfo struct {
	URL string `json:"url"`
	CA  string `json:"ca,omitempty"` // certificate to trust for tls:// URLs
}

// AdminFile returns where a relay with the given data directory keeps its
// AdminInfo.
func AdminFile(dataDir string) string {
	if dataDir != "" {
		return filepath.Join(dataDir, "relay-admin.json")
	}
	dir := os.Getenv("XDG_RUNTIME_DIR")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), fmt.Sprintf("tube-%d", os.Getuid()))
	} else {
		dir = filepath.Join(dir, "tube")
	}
	return filepath.Join(dir, "relay-admin.json")
}

func (s *Server) adminPath() string { return AdminFile(s.cfg.DataDir) }

func (s *Server) writeAdminFile(info AdminInfo) error {
	path := s.adminPath()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("rendezvous: %w", err)
	}
	b, _ := json.MarshalIndent(info, "", "  ")
	return atomicfile.WriteFile(path, b, 0o600)
}

func splitListen(listen string) (string, int, error) {
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	host, p, err := net.SplitHostPort(listen)
	if err != nil {
		return "", 0, fmt.Errorf("rendezvous: listen address %q: %w", listen, err)
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("rendezvous: listen address %q has a bad port", listen)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	if host == "" {
		host = "0.0.0.0"
	}
	return host, port, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

func isAccountKey(kp nkeys.KeyPair) bool {
	pub, err := kp.PublicKey()
	return err == nil && nkeys.IsValidPublicAccountKey(pub)
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}

// redact hides the password of a URL for messages.
func redact(u string) string {
	if p, err := url.Parse(u); err == nil {
		return p.Redacted()
	}
	return "(unparseable URL)"
}

// natsLogger sends the NATS server's log to slog. Notices (the start-up
// banner) are debug; client errors such as permission violations are
// warnings, so impersonation attempts show up in the relay's log.
// Warnings and errors come from clients, so a flood of bad logins would
// be a flood of lines: they are sampled (some sometimes), as the
// service's own refusal logs are.
type natsLogger struct {
	l    *slog.Logger
	some *rate.Sometimes
}

func (n natsLogger) Noticef(f string, a ...any) { n.l.Debug(fmt.Sprintf(f, a...)) }
func (n natsLogger) Warnf(f string, a ...any) {
	n.some.Do(func() { n.l.Warn(fmt.Sprintf(f, a...)) })
}
func (n natsLogger) Fatalf(f string, a ...any) { n.l.Error(fmt.Sprintf(f, a...)) }
func (n natsLogger) Errorf(f string, a ...any) {
	n.some.Do(func() { n.l.Warn(fmt.Sprintf(f, a...)) })
}
func (n natsLogger) Debugf(f string, a ...any) { n.l.Debug(fmt.Sprintf(f, a...)) }
func (n natsLogger) Tracef(f string, a ...any) {}

var _ server.Logger = natsLogger{}

// randomPassword is 192 random bits, base64url.
// bcryptOf is how the NATS server keeps an internal user's password: as a
// hash, not the secret itself. The passwords are 192 random bits, so the
// cheapest cost is as safe as any and keeps connecting fast.
func bcryptOf(password string) string {
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		panic(err) // only for passwords over 72 bytes
	}
	return string(h)
}

func randomPassword() string {
	b := make([]byte, 24)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}
