package cli

import (
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/connection"
	"github.com/tubes-dev/tubes/identity"
	"github.com/tubes-dev/tubes/tperr"
)

func accountCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "account", Short: "Add, list, remove and export accounts"}
	var req api.AddAccountRequest
	var caFile, keyFile string
	add := &cobra.Command{
		Use:   "add NAME --server HOST:PORT",
		Short: "Create the account's key, register it when asked (--register), and connect",
		Args:  exactArgs(1, "an account NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if req.Server == "" {
				return usagef("tube account add needs --server HOST:PORT (the relay)")
			}
			if req.Invite != "" && !req.Register {
				return usagef("--invite goes with --register")
			}
			if caFile != "" {
				b, err := os.ReadFile(caFile)
				if err != nil {
					return fmt.Errorf("cannot read --ca: %v", err)
				}
				req.CA = string(b)
			}
			if keyFile != "" {
				if req.Register {
					return usagef("--key brings an account registered already; it does not go with --register")
				}
				k, err := identity.Load(keyFile) // refuses a key file others can read
				if err != nil {
					return fmt.Errorf("cannot use --key %s: %v", keyFile, tperr.Reason(err))
				}
				b, err := k.PEM()
				if err != nil {
					return err
				}
				req.Key = string(b)
			}
			req.Name = args[0]
			a, err := e.client().AddAccount(cmd.Context(), req)
			if err != nil {
				return err
			}
			if e.jsonOut {
				if err := e.printJSON(a); err != nil {
					return err
				}
			} else {
				fmt.Fprintf(e.stdout, "%s\t%s\t%s\n", a.Name, a.Status, a.Key)
			}
			// The same exit status with --json as without: 1 when the
			// account did not connect.
			if a.StatusCode != uint32(connection.Connected) {
				return fmt.Errorf("%s was added but is not connected: %s; it keeps retrying if the relay was unreachable (tube status shows why)", a.Name, orReason(a))
			}
			return nil
		},
	}
	add.Flags().StringVar(&req.Server, "server", "", "the relay, HOST:PORT (or tls://HOST:PORT)")
	add.Flags().BoolVar(&req.Register, "register", false, "register the account on the relay")
	add.Flags().StringVar(&req.Invite, "invite", "", "invitation code from the relay's operator (closed registration)")
	add.Flags().StringVar(&caFile, "ca", "", "PEM file of the CA (or self-signed certificate) of a TLS relay")
	add.Flags().StringVar(&keyFile, "key", "", "bring the account from another machine: the key file tube account export wrote there")
	jsonFlag(add, e)

	list := &cobra.Command{
		Use:   "list",
		Short: "List accounts with their status",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			as, err := e.client().Accounts(cmd.Context())
			if err != nil {
				return err
			}
			if e.jsonOut {
				return e.printJSON(as)
			}
			tw := e.table()
			fmt.Fprintln(tw, "NAME\tSERVER\tSTATUS\tREASON\tKEY")
			for _, a := range as {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", a.Name, a.Server, a.Status, a.Reason, a.Key)
			}
			return tw.Flush()
		},
	}
	jsonFlag(list, e)
	remove := &cobra.Command{
		Use:   "remove NAME",
		Short: "Disconnect an account and delete it and its key from this daemon",
		Args:  exactArgs(1, "an account NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return e.client().RemoveAccount(cmd.Context(), args[0])
		},
	}
	var out string
	export := &cobra.Command{
		Use:   "export NAME --out FILE",
		Short: "Write the account's private key to FILE (mode 0600), to move the account with tube account add --key",
		Args:  exactArgs(1, "an account NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if out == "" {
				return usagef("tube account export needs --out FILE: the key is the account, and is not printed")
			}
			k, err := e.client().ExportKey(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			// A new file only: an export must not replace another key.
			f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return fmt.Errorf("cannot create %s: %v (an export never overwrites a file)", out, tperr.Reason(err))
			}
			if _, err := f.WriteString(k.Key); err != nil {
				f.Close()
				os.Remove(out)
				return fmt.Errorf("cannot write %s: %v", out, tperr.Reason(err))
			}
			if err := f.Close(); err != nil {
				os.Remove(out)
				return fmt.Errorf("cannot write %s: %v", out, tperr.Reason(err))
			}
			fmt.Fprintf(e.stderr, "wrote %s's key to %s: anyone with this file is %s; move it, then remove the account here (tube account remove %s)\n", args[0], out, args[0], args[0])
			return nil
		},
	}
	export.Flags().StringVar(&out, "out", "", "the file to write (created with mode 0600)")
	cmd.AddCommand(add, list, remove, export)
	return cmd
}

func orReason(a api.Account) string {
	if a.Message != "" {
		return a.Message
	}
	return a.Status + " (" + a.Reason + ")"
}

func connectCmd(e *env) *cobra.Command {
	var nowait bool
	cmd := &cobra.Command{
		Use:   "connect [ACCOUNT]",
		Short: "Connect an account (the only one if not named) and wait for the outcome",
		Args:  maxArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := ""
			if len(args) == 1 {
				name = args[0]
			}
			c := e.client()
			var a api.Account
			var err error
			if nowait {
				a, err = c.Connect(cmd.Context(), name)
			} else {
				a, err = c.ConnectWait(cmd.Context(), name)
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "%s\t%s\n", a.Name, a.Status)
			if !nowait && a.StatusCode != uint32(connection.Connected) {
				return fmt.Errorf("%s is not connected: %s", a.Name, orReason(a))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&nowait, "no-wait", false, "return at once instead of waiting for the attempt")
	return cmd
}

func disconnectCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "disconnect [ACCOUNT]",
		Short: "Disconnect an account and stop it reconnecting",
		Args:  maxArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := ""
			if len(args) == 1 {
				name = args[0]
			}
			a, err := e.client().Disconnect(cmd.Context(), name)
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "%s\t%s\n", a.Name, a.Status)
			return nil
		},
	}
}

// retryIn renders when an account retries.
func retryIn(a api.Account) string {
	if a.NextRetry == "" {
		return ""
	}
	t, err := time.Parse(time.RFC3339, a.NextRetry)
	if err != nil {
		return ""
	}
	d := time.Until(t).Round(time.Second)
	if d < 0 {
		d = 0
	}
	return fmt.Sprintf("retrying in %s", d)
}
