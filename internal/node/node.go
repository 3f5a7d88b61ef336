// Package node assembles the running parts of Tubes: a relay (rendezvous,
// metrics) and a daemon (connection manager, local API on its socket). The
// tube command, the demo and the end-to-end tests all start them here, so
// they run the same code.
package node

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tubes-dev/tubes/daemon"
	"github.com/tubes-dev/tubes/localapi"
	"github.com/tubes-dev/tubes/localclient"
	"github.com/tubes-dev/tubes/relay"
	"github.com/tubes-dev/tubes/rendezvous"
)

// Version is the software version, set at build time.
var Version = "dev"

// NewRegistry returns a Prometheus registry with the Go and process
// collectors.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Metrics serves /metrics on addr until ctx ends, and with profiles
// /debug/pprof/ too (for operators investigating memory or CPU: a CPU
// profile costs the process, so they are off unless asked for). It
// returns the bound address once listening.
func Metrics(ctx context.Context, addr string, reg *prometheus.Registry, profiles bool, log *slog.Logger) (string, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("metrics listener: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	if profiles {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	}
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	go hs.Serve(ln)
	context.AfterFunc(ctx, func() { hs.Close() })
	return ln.Addr().String(), nil
}

// DaemonConfig configures StartDaemon.
type DaemonConfig struct {
	StateDir   string
	Socket     string // default: <StateDir>/daemon.sock
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	MinBackoff time.Duration
	MaxBackoff time.Duration
	PeerListen string             // where peer links are accepted (default ":0")
	SocketDir  string             // parent of automatic tube sockets (default <StateDir>/sockets)
	TURN       *daemon.TURNServer // an external TURN server (default: the relay's)
	// SystemServices is the system scope's registry file (default
	// daemon.DefaultSystemServices).
	SystemServices string
	Limits         daemon.Limits
}

// Daemon is a running daemon serving its local API.
type Daemon struct {
	*daemon.Daemon
	Socket string

	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

// StartDaemon loads the state, listens on the socket and runs the daemon
// until Close or ctx ends.
func StartDaemon(ctx context.Context, cfg DaemonConfig) (*Daemon, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Socket == "" {
		cfg.Socket = cfg.StateDir + "/daemon.sock"
	}
	d, err := daemon.New(daemon.Config{
		StateDir:   cfg.StateDir,
		Logger:     cfg.Logger,
		Registerer: cfg.Registerer,
		MinBackoff: cfg.MinBackoff,
		MaxBackoff: cfg.MaxBackoff,
		PeerListen: cfg.PeerListen,
		SocketDir:  cfg.SocketDir,
		TURN:       cfg.TURN,

		SystemServices: cfg.SystemServices,
		Limits:         cfg.Limits,
	})
	if err != nil {
		return nil, err
	}
	ln, err := localapi.Listen(cfg.Socket)
	if err != nil {
		d.Wait() // gives the state directory up
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	n := &Daemon{Daemon: d, Socket: cfg.Socket, cancel: cancel, done: make(chan struct{})}
	srv := localapi.New(d, cfg.Logger)
	d.Start(ctx)
	go func() {
		defer close(n.done)
		n.err = srv.Serve(ctx, ln)
		cancel()
		d.Wait()
		os.Remove(cfg.Socket)
	}()
	return n, nil
}

// Client returns a local-API client of the daemon.
func (n *Daemon) Client() *localclient.Client { return localclient.New(n.Socket) }

// Done is closed when the daemon has stopped.
func (n *Daemon) Done() <-chan struct{} { return n.done }

// Close stops the daemon and waits for it.
func (n *Daemon) Close() error {
	n.cancel()
	<-n.done
	return n.err
}

// RelayConfig configures StartRelay.
type RelayConfig = rendezvous.Config

// StartRelay starts a relay's rendezvous.
func StartRelay(ctx context.Context, cfg RelayConfig) (*rendezvous.Server, error) {
	if cfg.Version == "" {
		cfg.Version = Version
	}
	return rendezvous.Start(ctx, cfg)
}

// TURNConfig configures StartTURN.
type TURNConfig = relay.Config

// StartTURN starts a relay's TURN server.
func StartTURN(cfg TURNConfig) (*relay.Server, error) { return relay.Start(cfg) }

// TURNCredentialTTL is how long the TURN credentials a relay hands to
// daemons stay valid (an allocation outliving them is made anew).
const TURNCredentialTTL = 12 * time.Hour

// LinkTURN makes the rendezvous rv hand out credentials of the TURN
// server ts to its accounts, and ts relay for those only where rv sees
// one of the account's contacts or room co-members connected from. Call
// it before rv serves (cfg.TURN = TURNIssuer(ts)) and once it runs.
func LinkTURN(rv *rendezvous.Server, ts *relay.Server) { ts.SetAccountPeers(rv.PeerConnectedFrom) }

// TURNIssuer lets the rendezvous hand out account credentials for s.
func TURNIssuer(s *relay.Server) rendezvous.TURNIssuer {
	return func(account string) (rendezvous.TURNCredential, error) {
		u, p, err := s.AccountCredentials(account, TURNCredentialTTL)
		if err != nil {
			return rendezvous.TURNCredential{}, err
		}
		return rendezvous.TURNCredential{Addr: s.PublicAddr(), Username: u, Password: p, Expires: time.Now().Add(TURNCredentialTTL)}, nil
	}
}
