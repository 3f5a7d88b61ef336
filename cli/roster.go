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

func roomCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "room", Short: "Create, join, leave and list rooms"}
	cmd.PersistentFlags().StringVar(&e.account, "account", "", "account to act as (default: the daemon's only account)")
	simple := func(use, short string, f func(cmd *cobra.Command, room string) error) *cobra.Command {
		return &cobra.Command{
			Use:   use + " ROOM",
			Short: short,
			Args:  exactArgs(1, "a ROOM name"),
			RunE:  func(cmd *cobra.Command, args []string) error { return f(cmd, args[0]) },
		}
	}
	create := simple("create", "Create a room you own", func(cmd *cobra.Command, room string) error {
		r, err := e.client().CreateRoom(cmd.Context(), e.account, room)
		if err == nil {
			fmt.Fprintln(e.stdout, r.Name)
		}
		return err
	})
	join := simple("join", "Join a room", func(cmd *cobra.Command, room string) error {
		r, err := e.client().JoinRoom(cmd.Context(), e.account, room)
		if err == nil {
			fmt.Fprintln(e.stdout, r.Name)
		}
		return err
	})
	leave := simple("leave", "Leave a room (its owner leaving deletes it)", func(cmd *cobra.Command, room string) error {
		return e.client().LeaveRoom(cmd.Context(), e.account, room)
	})
	members := simple("members", "List a room's members with presence", func(cmd *cobra.Command, room string) error {
		ms, err := e.client().RoomMembers(cmd.Context(), e.account, room)
		if err != nil {
			return err
		}
		if e.jsonOut {
			return e.printJSON(ms)
		}
		tw := e.table()
		fmt.Fprintln(tw, "MEMBER\tOWNER\tONLINE")
		for _, m := range ms {
			fmt.Fprintf(tw, "%s\t%v\t%v\n", m.Name, m.Owner, m.Online)
		}
		return tw.Flush()
	})
	jsonFlag(members, e)
	list := &cobra.Command{
		Use:   "list",
		Short: "List the rooms you belong to",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			rs, err := e.client().Rooms(cmd.Context(), e.account)
			if err != nil {
				return err
			}
			if e.jsonOut {
				return e.printJSON(rs)
			}
			tw := e.table()
			fmt.Fprintln(tw, "ROOM\tOWNER\tMEMBERS\tHANDLE")
			for _, r := range rs {
				fmt.Fprintf(tw, "%s\t%s\t%d\t%d\n", r.Name, r.Owner, r.Members, r.Handle)
			}
			return tw.Flush()
		},
	}
	jsonFlag(list, e)
	cmd.AddCommand(create, join, leave, members, list)
	return cmd
}
