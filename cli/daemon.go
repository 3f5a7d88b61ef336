package cli

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/tubes-dev/tubes/internal/node"
	"github.com/tubes-dev/tubes/localclient"
)

func daemonCmd(e *env) *cobra.Command {
	var (
		state, http, peerListen string
		logLevel, logFormat     string
	)
	cmd := &cobra.Command{
		Use:   "daemon",
		Short: "Run the per-user connection manager (accounts, tubes) with its local API",
		Long: `Run the connection manager: it keeps your accounts connected to their
relays and serves the local API (HTTP+JSON on a Unix socket, mode 0600, for
your user only) that the other tube commands use.`,
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
			reg := node.NewRegistry()
			d, err := node.StartDaemon(ctx, node.DaemonConfig{StateDir: state, Socket: socket, Logger: log, Registerer: reg, PeerListen: peerListen})
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "daemon: %s\n", d.Socket)
			if http != "" {
				addr, err := node.Metrics(ctx, http, reg, log)
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
	cmd.Flags().StringVar(&peerListen, "peer-listen", "", "HOST:PORT where contacts' daemons reach this one directly for tubes (default: every address, a free port per account)")
	logFlags(cmd, &logLevel, &logFormat)
	return cmd
}
