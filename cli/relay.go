package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nkeys"
	"github.com/spf13/cobra"

	"github.com/tubes-dev/tubes/internal/atomicfile"
	"github.com/tubes-dev/tubes/internal/node"
	"github.com/tubes-dev/tubes/rendezvous"
)

func version() string { return node.Version }

type relayOpts struct {
	cfg                 rendezvous.Config
	http                string
	logLevel, logFormat string
}

func relayCmd(e *env) *cobra.Command {
	var o relayOpts
	cmd := &cobra.Command{
		Use:   "relay",
		Short: "Run a relay: the rendezvous network (accounts, contacts, rooms, presence, delivery)",
		Long: `Run a relay: the rendezvous (an embedded NATS server with the account
service, or the account service alone against an existing NATS cluster with
--nats). Daemons connect to --listen. State is kept under --data (in memory
without it). Prints the addresses it listens on, then runs until interrupted.`,
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
	log, err := newLogger(e.stderr, o.logLevel, o.logFormat)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	reg := node.NewRegistry()
	o.cfg.Logger = log
	o.cfg.Registerer = reg
	srv, err := node.StartRelay(ctx, o.cfg)
	if err != nil {
		return err
	}
	defer srv.Close()
	if o.cfg.NATS != "" {
		fmt.Fprintf(e.stdout, "rendezvous: account service on NATS %s\n", srv.URL())
	} else {
		fmt.Fprintf(e.stdout, "rendezvous: %s\n", srv.URL())
	}
	if o.http != "" {
		addr, err := node.Metrics(ctx, o.http, reg, log)
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
