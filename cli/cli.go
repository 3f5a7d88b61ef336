// Package cli is the tube command: one file per command group. Client
// commands talk to the daemon only through localclient; server commands
// (relay, daemon, demo) start the parts through internal/node.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/tubes-dev/tubes/localclient"
	"github.com/tubes-dev/tubes/tperr"
)

// Exit codes of the tube command.
const (
	ExitOK      = 0
	ExitFailure = 1 // the operation failed
	ExitUsage   = 2 // the command line was wrong
)

// usageError marks a wrong command line.
type usageError struct{ error }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

// env is what every command sees: where to write, which daemon to talk to.
type env struct {
	stdout, stderr io.Writer
	socket         string // --socket
	account        string // --account
	jsonOut        bool   // --json
}

func (e *env) client() *localclient.Client {
	return localclient.New(e.socket)
}

func (e *env) printJSON(v any) error {
	enc := json.NewEncoder(e.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func (e *env) table() *tabwriter.Writer { return newTable(e.stdout) }

func newTable(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 4, 2, ' ', 0) }

// Run runs the tube command with args (without the program name) and
// returns its exit code.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	e := &env{stdout: stdout, stderr: stderr}
	root := newRoot(e)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return ExitOK
	}
	fmt.Fprintln(stderr, "tube: "+describe(err))
	var ue usageError
	// A Telepathy-named error came from the daemon or the relay: however
	// it is worded, it is an operational failure, not a usage error.
	if errors.As(err, &ue) || tperr.Name(err) == "" && isCobraUsage(err) {
		fmt.Fprintln(stderr, "Run 'tube --help' for usage.")
		return ExitUsage
	}
	return ExitFailure
}

// describe renders an error as one sentence, with the Telepathy error name
// (short form) for scripts and searches.
func describe(err error) string {
	msg := err.Error()
	if name := tperr.Name(err); name != "" {
		msg += " (" + tperr.Short(name) + ")"
	}
	return msg
}

func isCobraUsage(err error) bool {
	m := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand flag", "flag needs an argument", "invalid argument", "accepts ", "requires at least", "requires at most", "required flag"} {
		if strings.Contains(m, p) {
			return true
		}
	}
	return false
}

func newRoot(e *env) *cobra.Command {
	root := &cobra.Command{
		Use:   "tube",
		Short: "Share local network services with the people you choose, through any NAT, end-to-end encrypted",
		Long: `tube shares a local TCP or Unix service with chosen contacts, or with a room,
through any NAT, end-to-end encrypted.

Servers:                 tube relay, tube daemon
Accounts and connection: tube account, tube connect, tube disconnect, tube status
Contacts and rooms:      tube contact, tube room, tube message
Tubes:                   tube export, unexport, exports, offer, accept, handle,
                         open, tube tubes, connections, whois, close
Services:                tube services add, remove, list, find, default,
                         defaults, publish, unpublish, publications, browse,
                         activations, grant, revoke, grants
Try it:                  tube demo`,
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.PersistentFlags().StringVar(&e.socket, "socket", "", "daemon socket (default $TUBE_SOCKET, else $XDG_RUNTIME_DIR/tube/daemon.sock)")
	root.AddCommand(
		relayCmd(e), daemonCmd(e),
		accountCmd(e), connectCmd(e), disconnectCmd(e), statusCmd(e),
		contactCmd(e), roomCmd(e), messageCmd(e),
		exportCmd(e), unexportCmd(e), exportsCmd(e), offerCmd(e), acceptCmd(e), handleCmd(e), openCmd(e),
		tubesCmd(e), connectionsCmd(e), whoisCmd(e), closeCmd(e),
		servicesCmd(e),
		demoCmd(e), versionCmd(e),
	)
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	groupsNeedSubcommands(root)
	helpNeedsACommand(root)
	return root
}

// helpNeedsACommand makes "tube help NOSUCH" a usage error (cobra prints
// the root's help and exits 0).
func helpNeedsACommand(root *cobra.Command) {
	for _, h := range root.Commands() {
		if h.Name() != "help" || h.Run == nil {
			continue
		}
		run := h.Run
		h.Run = nil
		h.RunE = func(c *cobra.Command, args []string) error {
			if len(args) > 0 {
				if found, rest, err := c.Root().Find(args); err != nil || len(rest) > 0 || found == c.Root() {
					return usagef("tube help: there is no command %q", strings.Join(args, " "))
				}
			}
			run(c, args)
			return nil
		}
	}
}

// groupsNeedSubcommands makes every command group without an action of its
// own a usage error when run bare or with a subcommand it does not have
// (cobra would print the group's help and exit 0, so a script's typo
// would pass as success); a group with an action takes no stray
// arguments. It walks the whole tree.
func groupsNeedSubcommands(c *cobra.Command) {
	for _, sub := range c.Commands() {
		groupsNeedSubcommands(sub)
	}
	if !c.HasSubCommands() {
		return
	}
	if c.Runnable() {
		if c.Args == nil {
			c.Args = exactArgs(0)
		}
		return
	}
	c.Args = cobra.ArbitraryArgs
	c.Annotations = map[string]string{groupAnnotation: "true"}
	c.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return usagef("%s needs a subcommand: %s", cmd.CommandPath(), strings.Join(subcommands(cmd), ", "))
		}
		return unknownSubcommand(cmd, args[0])
	}
}

// unknownSubcommand is the usage error for a subcommand c does not have.
func unknownSubcommand(c *cobra.Command, name string) error {
	if s := c.SuggestionsFor(name); len(s) > 0 {
		return usagef("%s has no subcommand %q; did you mean %s?", c.CommandPath(), name, strings.Join(s, " or "))
	}
	return usagef("%s has no subcommand %q (it has %s)", c.CommandPath(), name, strings.Join(subcommands(c), ", "))
}

// groupAnnotation marks a command group that has no action of its own.
const groupAnnotation = "tube:group"

// subcommands names c's visible subcommands.
func subcommands(c *cobra.Command) []string {
	var names []string
	for _, sub := range c.Commands() {
		if sub.IsAvailableCommand() {
			names = append(names, sub.Name())
		}
	}
	return names
}

func jsonFlag(cmd *cobra.Command, e *env) {
	cmd.Flags().BoolVar(&e.jsonOut, "json", false, "print JSON (stable field names)")
}

// exactArgs is cobra.ExactArgs with a usage error naming what is missing.
func exactArgs(n int, what ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		switch {
		case len(args) == n:
			return nil
		case n == 0 && cmd.HasSubCommands():
			return unknownSubcommand(cmd, args[0])
		case n == 0:
			return usagef("%s takes no arguments (got %q)", cmd.CommandPath(), strings.Join(args, " "))
		}
		return usagef("%s needs %s", cmd.CommandPath(), strings.Join(what, " and "))
	}
}

func maxArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) > n {
			return usagef("%s takes at most %d argument(s), got %d", cmd.CommandPath(), n, len(args))
		}
		return nil
	}
}

// newLogger returns the slog logger of a server command.
func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, usagef("--log-level %q: use debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, usagef("--log-format %q: use text or json", format)
}

func logFlags(cmd *cobra.Command, level, format *string) {
	cmd.Flags().StringVar(level, "log-level", "info", "log level: debug, info, warn, error")
	cmd.Flags().StringVar(format, "log-format", "text", "log format: text or json")
}

func versionCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			fmt.Fprintln(e.stdout, "tube", version())
			return nil
		},
	}
}
