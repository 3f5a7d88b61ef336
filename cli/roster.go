package cli

import (
	"fmt"

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
	cmd.AddCommand(add, approve, remove, list)
	return cmd
}
