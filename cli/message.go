package cli

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/tubes-dev/tubes/api"
)

func messageCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "message", Short: "Send a short message to a contact or a room through the relay (for testing reachability)"}
	var to, room, kind string
	send := &cobra.Command{
		Use:   "send (--to CONTACT | --room ROOM) TEXT...",
		Short: "Deliver TEXT to a contact or to a room's online members; prints who received it",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef("tube message send needs the TEXT to send")
			}
			if (to == "") == (room == "") {
				return usagef("tube message send needs exactly one of --to CONTACT or --room ROOM")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := e.client().Send(cmd.Context(), e.account, api.SendRequest{To: to, Room: room, Kind: kind, Body: []byte(strings.Join(args, " "))})
			if err != nil {
				return err
			}
			if e.jsonOut {
				return e.printJSON(r)
			}
			for _, n := range r.Delivered {
				fmt.Fprintln(e.stdout, n)
			}
			return nil
		},
	}
	send.Flags().StringVar(&to, "to", "", "a contact")
	send.Flags().StringVar(&room, "room", "", "a room you belong to")
	send.Flags().StringVar(&kind, "kind", "text", "message kind")
	send.Flags().StringVar(&e.account, "account", "", "account to act as (default: the daemon's only account)")
	jsonFlag(send, e)
	cmd.AddCommand(send)
	return cmd
}
