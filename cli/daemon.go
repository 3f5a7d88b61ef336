package cli

import (
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/tubes-dev/tubes/daemon"
	"github.com/tubes-dev/tubes/internal/node"
	"github.com/tubes-dev/tubes/localclient"
	"github.com/tubes-dev/tubes/peerlink"
	"github.com/tubes-dev/tubes/relay"
	"github.com/tubes-dev/tubes/tube"
)

func daemonCmd(e *env) *cobra.Command {
	var (
		state, http, peerListen string
		pprof                   bool
		logLevel, logFormat     string
		turnAddr, turnUser      string
		turnSecret              string
		systemServices          string
		limits                  daemon.Limits
	)
	cmd := &cobra.Command{
		Use:   "daemon",
		Short: "Run the per-user connection manager (accounts, tubes) with its local API",
		Long: `Run the connection manager: it keeps your accounts connected to their
relays and serves the local API (HTTP+JSON on a Unix socket, mode 0600, for
your user only) that the other tube commands use.

Tubes between peers that cannot reach each other directly go through a TURN
relay: by default the TURN server of each account's relay, with credentials
it issues; --turn names another one (an operator's coturn, say) with
--turn-user USER:PASSWORD or --turn-secret (its TURN REST shared secret).`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := newLogger(e.stderr, logLevel, logFormat)
			if err != nil {
				return err
			}
			if state == "" {
				state = localclient.DefaultStateDir()
			}
			socket := e.socket
			if socket == "" {
				socket = localclient.DefaultSocket()
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			turn, err := turnServer(turnAddr, turnUser, turnSecret)
			if err != nil {
				return err
			}
			if limits.LinkStreams < 1 || limits.HandshakesPerSource < 1 || limits.EventBytes < 64<<10 ||
				limits.LinkHandshake <= 0 || limits.EventWriteTimeout <= 0 || limits.LinkStall <= 0 {
				return usagef("--link-streams and --link-handshakes-per-source must be at least 1, --event-buffer at least 65536, and the timeouts positive")
			}
			reg := node.NewRegistry()
			d, err := node.StartDaemon(ctx, node.DaemonConfig{StateDir: state, Socket: socket, Logger: log, Registerer: reg,
				PeerListen: peerListen, TURN: turn, SystemServices: systemServices, Limits: limits})
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "daemon: %s\n", d.Socket)
			if http != "" {
				addr, err := node.Metrics(ctx, http, reg, pprof, log)
				if err != nil {
					d.Close()
					return err
				}
				fmt.Fprintf(e.stdout, "metrics: http://%s/metrics\n", addr)
			}
			log.Info("daemon ready", "socket", d.Socket, "state", state)
			select {
			case <-ctx.Done():
			case <-d.Done():
			}
			return d.Close()
		},
	}
	cmd.Flags().StringVar(&state, "state", "", "state directory (default $XDG_STATE_HOME/tube or ~/.local/state/tube)")
	cmd.Flags().StringVar(&http, "http", "", "HOST:PORT to serve Prometheus metrics on (/metrics)")
	cmd.Flags().BoolVar(&pprof, "pprof", false, "with --http: serve Go profiles too (/debug/pprof/)")
	cmd.Flags().StringVar(&peerListen, "peer-listen", "", "HOST:PORT where contacts' daemons reach this one directly for tubes (default: every address, a free port per account)")
	cmd.Flags().StringVar(&systemServices, "system-services", "", "the system scope's service registry file (default "+daemon.DefaultSystemServices+")")
	cmd.Flags().StringVar(&turnAddr, "turn", "", "HOST:PORT of a TURN server to relay through instead of the relay's own")
	cmd.Flags().StringVar(&turnUser, "turn-user", "", "with --turn: long-term credential USER:PASSWORD")
	cmd.Flags().StringVar(&turnSecret, "turn-secret", "", "with --turn: the server's TURN REST shared secret")
	cmd.Flags().IntVar(&limits.LinkStreams, "link-streams", peerlink.DefaultStreams, "most connections a contact may have open on one peer link")
	cmd.Flags().DurationVar(&limits.LinkHandshake, "link-handshake-timeout", peerlink.DefaultHandshake, "how long a peer link's handshake may take")
	cmd.Flags().DurationVar(&limits.LinkStall, "link-stall-timeout", peerlink.DefaultStall, "how long a connection's application may take none of its data while its peer link is more than half full, before the connection is reset")
	cmd.Flags().IntVar(&limits.HandshakesPerSource, "link-handshakes-per-source", tube.DefaultHandshakesPerSource, "most peer-link handshakes in progress from one IPv4 address or IPv6 /64")
	cmd.Flags().IntVar(&limits.EventBytes, "event-buffer", daemon.DefaultEventBytes, "most bytes of events queued for one event-stream client before it is cut off")
	cmd.Flags().DurationVar(&limits.EventWriteTimeout, "event-write-timeout", daemon.DefaultEventWriteTimeout, "how long a write to an event-stream client may block before it is dropped")
	logFlags(cmd, &logLevel, &logFormat)
	return cmd
}

// turnServer checks the --turn flags.
func turnServer(addr, user, secret string) (*daemon.TURNServer, error) {
	if addr == "" {
		if user != "" || secret != "" {
			return nil, usagef("--turn-user and --turn-secret go with --turn")
		}
		return nil, nil
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, usagef("--turn %q is not HOST:PORT", addr)
	}
	if (user == "") == (secret == "") {
		return nil, usagef("--turn needs exactly one of --turn-user USER:PASSWORD and --turn-secret SECRET")
	}
	t := &daemon.TURNServer{Addr: addr, Secret: secret}
	if user != "" {
		u, p, err := relay.ParseUser(user)
		if err != nil {
			return nil, usageError{err}
		}
		t.User, t.Password = u, p
	}
	return t, nil
}
