package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nkeys"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/tubes-dev/tubes/internal/atomicfile"
	"github.com/tubes-dev/tubes/internal/node"
	"github.com/tubes-dev/tubes/relay"
	"github.com/tubes-dev/tubes/rendezvous"
)

func version() string { return node.Version }

type relayOpts struct {
	cfg                 rendezvous.Config
	http                string
	pprof               bool
	logLevel, logFormat string

	turnListen, turnExternal, turnRealm, turnSecret string
	turnUsers, allowPeers                           []string
	turnOnly                                        bool
	turnBandwidth                                   string
	turnMaxConns                                    int
	turnAuthDeadline                                time.Duration
	turnUnauthPerSource, turnUnauthTotal            int
	turnAllocsPerUser, turnAllocs                   int
}

func relayCmd(e *env) *cobra.Command {
	var o relayOpts
	cmd := &cobra.Command{
		Use:   "relay",
		Short: "Run a relay: the rendezvous network and a TURN server for NATed peers",
		Long: `Run a relay: the rendezvous (an embedded NATS server with the account
service, or the account service alone against an existing NATS cluster with
--nats) and a TURN server with TCP allocations (RFC 6062) that tubes fall back
to when peers cannot reach each other directly. Daemons connect to --listen
and get short-lived TURN credentials from the relay. State is kept under
--data (in memory without it). Prints the addresses it listens on, then runs
until interrupted.

The TURN server listens on --turn-listen, UDP and TCP (default: the host of
--listen, port 3478; "off" runs none). Its peer filter refuses loopback,
private, link-local (cloud metadata) and other non-public peers; --allow-peer
widens it (e.g. --allow-peer 127.0.0.0/8 on a single machine). --turn-secret is
the TURN REST shared secret (coturn's static-auth-secret), generated and kept
under --data when not given; --turn-user adds static credentials;
--turn-only runs the TURN server alone.`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error { return runRelay(cmd.Context(), e, o) },
	}
	f := cmd.Flags()
	f.StringVar(&o.cfg.Listen, "listen", "127.0.0.1:4222", "HOST:PORT daemons connect to")
	f.StringVar(&o.cfg.DataDir, "data", "", "directory for durable state (memory when empty)")
	f.StringVar(&o.cfg.Registration, "registration", rendezvous.RegistrationOpen, "open (anyone may register) or closed (tube relay user add)")
	f.StringVar(&o.cfg.NATS, "nats", "", "URL (with credentials) of an existing NATS cluster to use instead of the embedded server")
	f.StringVar(&o.cfg.NATSSystem, "nats-system", "", "with --nats: URL (with credentials) of a system-account user")
	f.StringVar(&o.cfg.NATSAccount, "nats-account", "TUBES", "with --nats: the account that holds Tubes users")
	f.StringVar(&o.cfg.IssuerSeed, "nats-issuer", "", "with --nats: file with the auth_callout issuer account seed (default <data>/issuer.nk)")
	f.IntVar(&o.cfg.Replicas, "replicas", 1, "with --nats: replicas of the state bucket")
	f.StringVar(&o.cfg.TLSCert, "tls-cert", "", "certificate file (PEM) for TLS on --listen")
	f.StringVar(&o.cfg.TLSKey, "tls-key", "", "key file (PEM) for TLS on --listen")
	f.StringVar(&o.http, "http", "", "HOST:PORT to serve Prometheus metrics on (/metrics)")
	f.BoolVar(&o.pprof, "pprof", false, "with --http: serve Go profiles too (/debug/pprof/)")
	f.StringVar(&o.turnListen, "turn-listen", "", `HOST:PORT of the TURN server, UDP and TCP (default: --listen's host, port 3478; "off": none)`)
	f.StringVar(&o.turnExternal, "turn-external", "", "IP address clients reach the TURN server at, when it is behind a 1:1 NAT or listens on every address")
	f.StringVar(&o.turnRealm, "turn-realm", relay.DefaultRealm, "realm of TURN long-term credentials")
	f.StringVar(&o.turnSecret, "turn-secret", "", "TURN REST shared secret (default: generated, kept under --data)")
	f.StringArrayVar(&o.turnUsers, "turn-user", nil, "static TURN credential USER:PASSWORD (repeatable)")
	f.StringArrayVar(&o.allowPeers, "allow-peer", nil, "CIDR the TURN peer filter lets through although it is not public (repeatable)")
	f.BoolVar(&o.turnOnly, "turn-only", false, "run the TURN server alone, without the rendezvous")
	f.StringVar(&o.turnBandwidth, "turn-bandwidth", "", "cap on each TURN user's relayed bytes per second, e.g. 20M (default: none)")
	f.IntVar(&o.turnMaxConns, "turn-max-connections", relay.DefaultMaxConnections, "most peer connections one TURN TCP allocation holds at once")
	f.DurationVar(&o.turnAuthDeadline, "turn-auth-deadline", relay.DefaultAuthDeadline, "how long a TCP connection to the TURN port may stay unauthenticated")
	f.IntVar(&o.turnUnauthPerSource, "turn-unauth-per-source", relay.DefaultUnauthPerSource, "most unauthenticated TCP connections to the TURN port from one IPv4 address or IPv6 /64")
	f.IntVar(&o.turnUnauthTotal, "turn-unauth-total", 0, "most unauthenticated TCP connections to the TURN port from all sources (default 4096, or a quarter of the descriptor limit when less)")
	f.IntVar(&o.turnAllocsPerUser, "turn-allocations-per-user", relay.DefaultMaxAllocations, "most TURN allocations one user (an account, or a --turn-user) holds at once")
	f.IntVar(&o.turnAllocs, "turn-allocations", relay.DefaultTotalAllocations, "most TURN allocations of all users together")
	l := &o.cfg.Limits
	f.IntVar(&l.InFlight, "account-requests-in-flight", rendezvous.DefaultInFlight, "most requests one account may have waiting for an answer")
	f.Float64Var(&l.Rate, "account-request-rate", rendezvous.DefaultRate, "requests per second one account may make, sustained (twice that in a burst)")
	f.Float64Var(&l.Messages, "account-message-rate", rendezvous.DefaultMessages, "messages per second one account may send, sustained (twice that in a burst)")
	f.IntVar(&l.Rooms, "account-rooms", rendezvous.DefaultRooms, "most rooms one account may own")
	f.IntVar(&l.ContactRequests, "account-contact-requests", rendezvous.DefaultContactRequests, "most unanswered contact requests one account may have")
	f.IntVar(&l.Invitations, "account-invitations", rendezvous.DefaultInvitations, "most unanswered room invitations one account may have sent")
	f.IntVar(&l.RegisterPerSource, "register-per-source", rendezvous.DefaultRegisterPerSource, "most accounts one IPv4 address or IPv6 /64 may register per hour")
	f.IntVar(&l.RegisterPerMinute, "register-per-minute", rendezvous.DefaultRegisterPerMinute, "most accounts all sources together may register per minute")
	logFlags(cmd, &o.logLevel, &o.logFormat)
	cmd.AddCommand(relayUserCmd(e), relayNATSConfigCmd(e))
	return cmd
}

func runRelay(ctx context.Context, e *env, o relayOpts) error {
	if o.cfg.Registration != rendezvous.RegistrationOpen && o.cfg.Registration != rendezvous.RegistrationClosed {
		return usagef("--registration must be open or closed, not %q", o.cfg.Registration)
	}
	if (o.cfg.TLSCert == "") != (o.cfg.TLSKey == "") {
		return usagef("--tls-cert and --tls-key go together")
	}
	l := o.cfg.Limits
	for flag, v := range map[string]float64{
		"account-requests-in-flight": float64(l.InFlight), "account-request-rate": l.Rate, "account-message-rate": l.Messages,
		"account-rooms": float64(l.Rooms), "account-contact-requests": float64(l.ContactRequests), "account-invitations": float64(l.Invitations),
		"register-per-source": float64(l.RegisterPerSource), "register-per-minute": float64(l.RegisterPerMinute),
	} {
		if v <= 0 {
			return usagef("--%s must be positive, not %g", flag, v)
		}
	}
	log, err := newLogger(e.stderr, o.logLevel, o.logFormat)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	reg := node.NewRegistry()
	turnSrv, err := startTURN(o, log, reg)
	if err != nil {
		return err
	}
	if turnSrv != nil {
		defer turnSrv.Close()
		fmt.Fprintf(e.stdout, "turn: %s\n", turnSrv.Addr())
		o.cfg.TURN = node.TURNIssuer(turnSrv)
	}
	if o.turnOnly {
		if turnSrv == nil {
			return usagef("--turn-only needs a TURN server: drop --turn-listen off")
		}
		if o.http != "" {
			addr, err := node.Metrics(ctx, o.http, reg, o.pprof, log)
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "metrics: http://%s/metrics\n", addr)
		}
		log.Info("TURN relay ready", "startup", time.Since(start).Round(time.Microsecond))
		<-ctx.Done()
		return nil
	}
	o.cfg.Logger = log
	o.cfg.Registerer = reg
	srv, err := node.StartRelay(ctx, o.cfg)
	if err != nil {
		return err
	}
	defer srv.Close()
	if turnSrv != nil {
		node.LinkTURN(srv, turnSrv)
	}
	if o.cfg.NATS != "" {
		fmt.Fprintf(e.stdout, "rendezvous: account service on NATS %s\n", srv.URL())
	} else {
		fmt.Fprintf(e.stdout, "rendezvous: %s\n", srv.URL())
	}
	if o.http != "" {
		addr, err := node.Metrics(ctx, o.http, reg, o.pprof, log)
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "metrics: http://%s/metrics\n", addr)
	}
	log.Info("relay ready", "startup", time.Since(start).Round(time.Microsecond), "instance", srv.Service().Instance())
	select {
	case <-ctx.Done():
		return nil
	case <-srv.Done():
		return fmt.Errorf("the relay stopped: %w", srv.Err())
	}
}

// startTURN starts the relay's TURN server unless --turn-listen is off.
func startTURN(o relayOpts, log *slog.Logger, reg prometheus.Registerer) (*relay.Server, error) {
	listen := o.turnListen
	if listen == "off" {
		return nil, nil
	}
	if listen == "" {
		host, port, err := net.SplitHostPort(o.cfg.Listen)
		if err != nil {
			return nil, usagef("--listen %q is not HOST:PORT", o.cfg.Listen)
		}
		if port != "0" {
			port = "3478"
		}
		listen = net.JoinHostPort(host, port)
	}
	if _, err := relay.NewPeerFilter(o.allowPeers); err != nil {
		return nil, usageError{err}
	}
	if o.turnExternal != "" {
		if _, err := netip.ParseAddr(o.turnExternal); err != nil {
			return nil, usagef("--turn-external %q is not an IP address", o.turnExternal)
		}
	}
	if _, _, err := net.SplitHostPort(listen); err != nil {
		return nil, usagef("--turn-listen %q is not HOST:PORT (or off)", listen)
	}
	users := map[string]string{}
	for _, u := range o.turnUsers {
		name, pass, err := relay.ParseUser(u)
		if err != nil {
			return nil, usageError{err}
		}
		users[name] = pass
	}
	secret := o.turnSecret
	if secret == "" {
		var err error
		if secret, err = turnSecret(o.cfg.DataDir); err != nil {
			return nil, err
		}
	}
	bw, err := parseRate(o.turnBandwidth)
	if err != nil {
		return nil, err
	}
	if o.turnAuthDeadline <= 0 {
		return nil, usagef("--turn-auth-deadline must be positive, not %s", o.turnAuthDeadline)
	}
	if o.turnUnauthPerSource < 1 || o.turnUnauthTotal < 0 {
		return nil, usagef("--turn-unauth-per-source must be at least 1, and --turn-unauth-total not negative")
	}
	if o.turnMaxConns < 1 {
		return nil, usagef("--turn-max-connections must be at least 1, not %d", o.turnMaxConns)
	}
	if o.turnAllocsPerUser < 1 || o.turnAllocs < 1 {
		return nil, usagef("--turn-allocations-per-user and --turn-allocations must be at least 1")
	}
	return node.StartTURN(node.TURNConfig{Listen: listen, External: o.turnExternal, Realm: o.turnRealm,
		Secret: secret, Users: users, AllowPeers: o.allowPeers, Bandwidth: bw, MaxConnections: o.turnMaxConns, AuthDeadline: o.turnAuthDeadline,
		UnauthPerSource: o.turnUnauthPerSource, UnauthTotal: o.turnUnauthTotal,
		MaxAllocations: o.turnAllocsPerUser, TotalAllocations: o.turnAllocs,
		Logger: log, Registerer: reg})
}

// parseRate parses bytes per second with an optional k, M or G suffix
// (powers of 1000); "" is no cap.
func parseRate(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	mult := int64(1)
	switch s[len(s)-1] {
	case 'k', 'K':
		mult = 1e3
	case 'M':
		mult = 1e6
	case 'G':
		mult = 1e9
	}
	num := s
	if mult > 1 {
		num = s[:len(s)-1]
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 || n > (1<<62)/mult {
		return 0, usagef("--turn-bandwidth %q is not a byte rate such as 500k, 20M or 1G", s)
	}
	return n * mult, nil
}

// turnSecret returns the TURN REST secret kept under dir (made on first
// use), or a fresh one when there is no dir.
func turnSecret(dir string) (string, error) {
	fresh := func() string {
		b := make([]byte, 32)
		rand.Read(b)
		return hex.EncodeToString(b)
	}
	if dir == "" {
		return fresh(), nil
	}
	path := filepath.Join(dir, "turn-secret")
	if b, err := os.ReadFile(path); err == nil {
		if s := strings.TrimSpace(string(b)); s != "" {
			return s, nil
		}
		return "", fmt.Errorf("%s is empty; delete it to have a new TURN secret made", path)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	s := fresh()
	if err := atomicfile.WriteFile(path, []byte(s+"\n"), 0o600); err != nil {
		return "", err
	}
	return s, nil
}

// ---- relay user ----

func relayUserCmd(e *env) *cobra.Command {
	var dataDir string
	cmd := &cobra.Command{
		Use:   "user",
		Short: "Manage accounts of a running relay (for closed registration)",
	}
	cmd.PersistentFlags().StringVar(&dataDir, "data", "", "the relay's --data directory (where it keeps relay-admin.json)")
	withAdmin := func(ctx context.Context, f func(*rendezvous.Admin) error) error {
		path := rendezvous.AdminFile(dataDir)
		b, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("cannot find a running relay: %s is missing (pass the relay's --data directory)", path)
		}
		var info rendezvous.AdminInfo
		if err := json.Unmarshal(b, &info); err != nil {
			return fmt.Errorf("%s is corrupt: %v", path, err)
		}
		ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		adm, err := rendezvous.DialAdmin(ctx, info)
		if err != nil {
			return err
		}
		defer adm.Close()
		return f(adm)
	}
	var key string
	add := &cobra.Command{
		Use:   "add NAME",
		Short: "Allow NAME to register (prints an invitation code), or bind NAME to a public key with --key",
		Args:  exactArgs(1, "an account NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withAdmin(cmd.Context(), func(adm *rendezvous.Admin) error {
				code, err := adm.UserAdd(cmd.Context(), args[0], key)
				if err != nil {
					return err
				}
				if code != "" {
					fmt.Fprintln(e.stdout, code)
					fmt.Fprintf(e.stderr, "Give %s this invitation: tube account add %s --server RELAY --register --invite %s\n", args[0], args[0], code)
				}
				return nil
			})
		},
	}
	add.Flags().StringVar(&key, "key", "", "bind the account to this public key (U…, from tube account list) instead of inviting")
	var jsonOut bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List accounts and outstanding invitations",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withAdmin(cmd.Context(), func(adm *rendezvous.Admin) error {
				users, err := adm.UserList(cmd.Context())
				if err != nil {
					return err
				}
				if jsonOut {
					if users == nil {
						users = []rendezvous.User{}
					}
					return e.printJSON(users)
				}
				tw := e.table()
				fmt.Fprintln(tw, "NAME\tSTATE\tONLINE\tKEY")
				for _, u := range users {
					state := "registered"
					if u.Invited {
						state = "invited"
					}
					fmt.Fprintf(tw, "%s\t%s\t%v\t%s\n", u.Name, state, u.Online, u.Key)
				}
				return tw.Flush()
			})
		},
	}
	list.Flags().BoolVar(&jsonOut, "json", false, "print JSON")
	remove := &cobra.Command{
		Use:   "remove NAME",
		Short: "Remove an account (its contacts, the rooms it owns, its live connections) or an invitation",
		Args:  exactArgs(1, "an account NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withAdmin(cmd.Context(), func(adm *rendezvous.Admin) error { return adm.UserRemove(cmd.Context(), args[0]) })
		},
	}
	cmd.AddCommand(add, list, remove)
	return cmd
}

// ---- relay nats-config ----

func relayNATSConfigCmd(e *env) *cobra.Command {
	var dataDir string
	cmd := &cobra.Command{
		Use:   "nats-config",
		Short: "Print the nats-server configuration a NATS cluster needs to host Tubes (--nats)",
		Long: `Creates the auth_callout issuer key under --data (once) and prints the
nats-server configuration block that delegates Tubes logins to the relays'
account service. Add it to every server of the cluster, set the passwords,
then run: tube relay --nats nats://tube-svc:PASSWORD@HOST:4222
--nats-system nats://tube-sys:PASSWORD@HOST:4222 --data DIR`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			if dataDir == "" {
				return usagef("nats-config needs --data, where the issuer key is kept")
			}
			if err := os.MkdirAll(dataDir, 0o700); err != nil {
				return err
			}
			path := dataDir + "/issuer.nk"
			var kp nkeys.KeyPair
			if b, err := os.ReadFile(path); err == nil {
				if kp, err = nkeys.FromSeed(trimNL(b)); err != nil {
					return fmt.Errorf("%s: %v", path, err)
				}
			} else {
				if kp, err = nkeys.CreateAccount(); err != nil {
					return err
				}
				seed, _ := kp.Seed()
				if err := atomicfile.WriteFile(path, append(seed, '\n'), 0o600); err != nil {
					return err
				}
			}
			pub, _ := kp.PublicKey()
			// A user key nobody holds: configuring any nkey user makes the
			// servers send the login nonce that Tubes clients sign.
			nonceUser, err := nkeys.CreateUser()
			if err != nil {
				return err
			}
			noncePub, _ := nonceUser.PublicKey()
			fmt.Fprint(e.stdout, natsConfig(pub, noncePub))
			return nil
		},
	}
	cmd.Flags().StringVar(&dataDir, "data", "", "the relay's data directory (holds issuer.nk)")
	return cmd
}

func natsConfig(issuer, nonceUser string) string {
	return fmt.Sprintf(`# Tubes: delegate logins of the TUBES account to the relays' account service.
# The relays hold the issuer seed; keep the passwords secret.
jetstream: enabled
accounts {
  TUBES: {
    jetstream: enabled
    users: [
      { user: tube-svc, password: "CHANGE-ME-SVC" }
      # A key nobody holds: it makes the servers send the login nonce.
      { nkey: %s }
    ]
  }
  SYS: { users: [ { user: tube-sys, password: "CHANGE-ME-SYS" } ] }
}
system_account: SYS
authorization {
  auth_callout {
    issuer: %s
    account: TUBES
    auth_users: [ tube-svc, tube-sys ]
  }
}
`, nonceUser, issuer)
}

func trimNL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}
