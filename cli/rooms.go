package cli

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/localclient"
)

// tube room: rooms are invite-only unless created with --open. The owner
// and admins invite their contacts; an invitee joins or declines.
func roomCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "room", Short: "Rooms: create, invite, join, remove members, list (invite-only unless --open)"}
	cmd.PersistentFlags().StringVar(&e.account, "account", "", "account to act as (default: the daemon's only account)")
	withRoom := func(use, short string, what []string, f func(cmd *cobra.Command, args []string) error) *cobra.Command {
		return &cobra.Command{
			Use:   use,
			Short: short,
			Args:  exactArgs(len(what), what...),
			RunE:  f,
		}
	}
	var open bool
	create := withRoom("create ROOM", "Create a room you own (invite-only; --open lets anyone join)", []string{"a ROOM name"},
		func(cmd *cobra.Command, args []string) error {
			r, err := e.client().CreateRoomWith(cmd.Context(), e.account, api.RoomRequest{Room: args[0], Open: open})
			if err == nil {
				fmt.Fprintln(e.stdout, r.Name)
			}
			return err
		})
	create.Flags().BoolVar(&open, "open", false, "anyone who knows the name may join (no invitation needed)")
	invite := withRoom("invite ROOM CONTACT", "Invite a contact of yours (you own the room or are its admin)", []string{"a ROOM", "a CONTACT"},
		func(cmd *cobra.Command, args []string) error {
			inv, err := e.client().InviteToRoom(cmd.Context(), e.account, args[0], args[1])
			if err != nil {
				return err
			}
			if e.jsonOut {
				return e.printJSON(inv)
			}
			fmt.Fprintf(e.stdout, "%s invited to %s\n", args[1], inv.Room)
			return nil
		})
	jsonFlag(invite, e)
	invitations := withRoom("invitations", "List the rooms you are invited to", nil,
		func(cmd *cobra.Command, args []string) error {
			invs, err := e.client().Invitations(cmd.Context(), e.account)
			if err != nil {
				return err
			}
			if e.jsonOut {
				return e.printJSON(invs)
			}
			tw := e.table()
			fmt.Fprintln(tw, "ROOM\tBY\tSINCE")
			for _, inv := range invs {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", inv.Room, inv.By, inv.Created.Local().Format(time.DateTime))
			}
			return tw.Flush()
		})
	jsonFlag(invitations, e)
	join := withRoom("join ROOM", "Join a room you are invited to (or an open room)", []string{"a ROOM name"},
		func(cmd *cobra.Command, args []string) error {
			r, err := e.client().JoinRoom(cmd.Context(), e.account, args[0])
			if err == nil {
				fmt.Fprintln(e.stdout, r.Name)
			}
			return err
		})
	decline := withRoom("decline ROOM", "Turn down an invitation to a room", []string{"a ROOM name"},
		func(cmd *cobra.Command, args []string) error {
			return e.client().DeclineRoom(cmd.Context(), e.account, args[0])
		})
	remove := withRoom("remove ROOM MEMBER", "Remove a member, ending their room tubes (owner: anyone; admin: plain members), or withdraw an invitation", []string{"a ROOM", "a MEMBER"},
		func(cmd *cobra.Command, args []string) error {
			return e.client().RemoveFromRoom(cmd.Context(), e.account, args[0], args[1])
		})
	var revoke bool
	admin := withRoom("admin ROOM MEMBER", "Make a member an admin, who may invite and remove plain members (owner only; --revoke undoes it)", []string{"a ROOM", "a MEMBER"},
		func(cmd *cobra.Command, args []string) error {
			m, err := e.client().SetRoomAdmin(cmd.Context(), e.account, args[0], args[1], revoke)
			if err != nil {
				return err
			}
			if e.jsonOut {
				return e.printJSON(m)
			}
			fmt.Fprintf(e.stdout, "%s is %s of %s\n", m.Name, map[bool]string{true: "an admin", false: "a plain member"}[m.Admin], args[0])
			return nil
		})
	admin.Flags().BoolVar(&revoke, "revoke", false, "make the admin a plain member again")
	jsonFlag(admin, e)
	leave := withRoom("leave ROOM", "Leave a room (its owner leaving deletes it)", []string{"a ROOM name"},
		func(cmd *cobra.Command, args []string) error {
			return e.client().LeaveRoom(cmd.Context(), e.account, args[0])
		})
	members := withRoom("members ROOM", "List a room's members with their roles and presence", []string{"a ROOM name"},
		func(cmd *cobra.Command, args []string) error {
			ms, err := e.client().RoomMembers(cmd.Context(), e.account, args[0])
			if err != nil {
				return err
			}
			if e.jsonOut {
				return e.printJSON(ms)
			}
			tw := e.table()
			fmt.Fprintln(tw, "MEMBER\tROLE\tONLINE")
			for _, m := range ms {
				fmt.Fprintf(tw, "%s\t%s\t%v\n", m.Name, memberRole(m), m.Online)
			}
			return tw.Flush()
		})
	jsonFlag(members, e)
	list := withRoom("list", "List the rooms you belong to", nil,
		func(cmd *cobra.Command, args []string) error {
			rs, err := e.client().Rooms(cmd.Context(), e.account)
			if err != nil {
				return err
			}
			if e.jsonOut {
				return e.printJSON(rs)
			}
			tw := e.table()
			fmt.Fprintln(tw, "ROOM\tOWNER\tMEMBERS\tYOU\tJOIN\tHANDLE")
			for _, r := range rs {
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%d\n", r.Name, r.Owner, r.Members, r.Role, map[bool]string{true: "open", false: "invitation"}[r.Open], r.Handle)
			}
			return tw.Flush()
		})
	jsonFlag(list, e)
	cmd.AddCommand(create, invite, invitations, join, decline, remove, admin, leave, members, list)
	return cmd
}

func memberRole(m api.Member) string {
	switch {
	case m.Owner:
		return "owner"
	case m.Admin:
		return "admin"
	}
	return "member"
}

// confirmOpenRoom refuses, as a usage error naming --yes, to share with
// an open room (which anyone who knows its name may join) what would
// reach strangers: a tube's parameters, a published service. It never
// prompts.
func confirmOpenRoom(ctx context.Context, c *localclient.Client, account, room, what string, yes bool) error {
	if yes || room == "" {
		return nil
	}
	rs, err := c.Rooms(ctx, account)
	if err != nil {
		return err
	}
	for _, r := range rs {
		if strings.EqualFold(r.Name, strings.TrimSpace(room)) && r.Open {
			return usagef("room %s is open: anyone who knows its name may join and get %s; pass --yes if that is what you want", room, what)
		}
	}
	return nil
}
