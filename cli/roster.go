package cli

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"
)

func contactCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "contact", Short: "Manage contacts: both sides approve before anything else is allowed"}
	cmd.PersistentFlags().StringVar(&e.account, "account", "", "account to act as (default: the daemon's only account)")
	add := &cobra.Command{
		Use:   "add ID",
		Short: "Ask ID to be your contact (or approve them, if they asked first)",
		Args:  exactArgs(1, "a contact ID (account name)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client().AddContact(cmd.Context(), e.account, args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "%s\t%s\n", c.Name, c.State)
			return nil
		},
	}
	approve := &cobra.Command{
		Use:   "approve ID",
		Short: "Approve ID's request to be your contact",
		Args:  exactArgs(1, "a contact ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client().ApproveContact(cmd.Context(), e.account, args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "%s\t%s\n", c.Name, c.State)
			return nil
		},
	}
	remove := &cobra.Command{
		Use:   "remove ID",
		Short: "Remove a contact, or cancel or refuse a request",
		Args:  exactArgs(1, "a contact ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return e.client().RemoveContact(cmd.Context(), e.account, args[0])
		},
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "List contacts and requests, with presence",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			cs, err := e.client().Contacts(cmd.Context(), e.account)
			if err != nil {
				return err
			}
			if e.jsonOut {
				return e.printJSON(cs)
			}
			tw := e.table()
			fmt.Fprintln(tw, "CONTACT\tSTATE\tONLINE\tHANDLE")
			for _, c := range cs {
				fmt.Fprintf(tw, "%s\t%s\t%v\t%d\n", c.Name, c.State, c.Online, c.Handle)
			}
			return tw.Flush()
		},
	}
	jsonFlag(list, e)
	show := &cobra.Command{
		Use:   "show ID",
		Short: "Show a contact and the safety number of the key pinned for them",
		Args:  exactArgs(1, "a contact ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client().Contact(cmd.Context(), e.account, args[0])
			if err != nil {
				return err
			}
			if e.jsonOut {
				return e.printJSON(c)
			}
			fmt.Fprintf(e.stdout, "contact:       %s (%s, online %v)\n", c.Name, c.State, c.Online)
			if c.Pinned == nil {
				fmt.Fprintln(e.stdout, "key:           none pinned yet (it is pinned when you first use it)")
				return nil
			}
			state := "not verified: compare it with the number " + c.Name + " reads you, then tube contact verify " + c.Name + " NUMBER"
			if c.Pinned.Verified {
				state = "verified"
			}
			fmt.Fprintf(e.stdout, "safety number: %s\n", c.Pinned.SafetyNumber)
			fmt.Fprintf(e.stdout, "fingerprint:   %s\n", c.Pinned.Fingerprint)
			fmt.Fprintf(e.stdout, "key:           %s\n", state)
			if c.Pinned.ChangedTo != "" {
				fmt.Fprintf(e.stdout, "WARNING:       the relay now gives another key for %s (safety number %s); it is refused until you verify it\n", c.Name, c.Pinned.ChangedTo)
			}
			return nil
		},
	}
	jsonFlag(show, e)
	verify := &cobra.Command{
		Use:   "verify ID FINGERPRINT",
		Short: "Mark a contact's key verified: FINGERPRINT is the safety number they read you (or SHA256:...)",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			// A safety number may come as eight words: take them together.
			c, err := e.client().VerifyContact(cmd.Context(), e.account, args[0], strings.Join(args[1:], " "))
			if err != nil {
				return err
			}
			if e.jsonOut {
				return e.printJSON(c)
			}
			fmt.Fprintf(e.stdout, "%s's key is verified (safety number %s)\n", c.Name, c.Pinned.SafetyNumber)
			return nil
		},
	}
	verify.Args = func(cmd *cobra.Command, args []string) error {
		if len(args) < 2 {
			return usagef("%s needs a contact ID and the FINGERPRINT they read you", cmd.CommandPath())
		}
		return nil
	}
	jsonFlag(verify, e)
	cmd.AddCommand(add, approve, remove, list, show, verify)
	return cmd
}
