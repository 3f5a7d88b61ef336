package cli

import (
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/tubes-dev/tubes/api"
)

func statusCmd(e *env) *cobra.Command {
	var watch bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show accounts (status and last reason), tubes and connections",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := e.client()
			defer c.Close()
			if !watch {
				st, err := c.Status(cmd.Context())
				if err != nil {
					return err
				}
				if e.jsonOut {
					return e.printJSON(st)
				}
				return writeStatus(e.stdout, st)
			}
			return watchStatus(cmd.Context(), e)
		},
	}
	cmd.Flags().BoolVar(&watch, "watch", false, "keep showing the status as it changes (Ctrl-C to stop)")
	jsonFlag(cmd, e)
	return cmd
}

func writeStatus(w io.Writer, st api.Status) error {
	tw := newTable(w)
	fmt.Fprintln(tw, "ACCOUNT\tSERVER\tSTATUS\tREASON\tSELF\tDETAIL")
	if len(st.Accounts) == 0 {
		fmt.Fprintln(tw, "(no accounts: tube account add NAME --server HOST:PORT --register)")
	}
	for _, a := range st.Accounts {
		detail := a.Message
		if r := retryIn(a); r != "" {
			detail = strings.TrimSpace(detail + "; " + r)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", a.Name, a.Server, a.Status, a.Reason, a.SelfHandle, detail)
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "TUBE\tSERVICE\tSTATE\tPEER\tDIRECTION\tPATH")
	if len(st.Tubes) == 0 {
		fmt.Fprintln(tw, "(no tubes)")
	}
	for _, t := range st.Tubes {
		peer := t.Peer
		if t.Room != "" {
			peer = "room " + t.Room
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.Service, t.State, peer, t.Direction, t.Path)
	}
	if len(st.Connections) > 0 {
		fmt.Fprintln(tw)
		fmt.Fprintln(tw, "TUBE\tCONNECTION\tSOURCE\tCONTACT")
		for _, c := range st.Connections {
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", c.Tube, c.ID, c.Source, c.Contact)
		}
	}
	for _, k := range st.KeyChanges {
		fmt.Fprintln(tw)
		fmt.Fprintf(tw, "WARNING: %s's key changed (%s sees %s, pinned %s); nothing is sent to it until you compare safety numbers with %s and run tube contact verify %s NUMBER\n",
			k.Contact, k.Account, k.ChangedTo, k.Pinned, k.Contact, k.Contact)
	}
	if len(st.Activations) > 0 {
		fmt.Fprintln(tw)
		fmt.Fprintln(tw, "ON-DEMAND SERVICE\tRUNNING\tCLIENTS\tSTARTS\tLAST ERROR")
		names := slices.Sorted(maps.Keys(st.Activations))
		for _, n := range names {
			a := st.Activations[n]
			fmt.Fprintf(tw, "%s\t%v\t%d\t%d\t%s\n", n, a.Running, a.Clients, a.Starts, a.LastError)
		}
	}
	return tw.Flush()
}

// watchStatus redraws the status on every event. On a terminal it clears
// the screen; otherwise it prints each event and the new status, which
// reads well in a log.
func watchStatus(ctx context.Context, e *env) error {
	c := e.client()
	defer c.Close()
	stream, err := c.Events(ctx, "")
	if err != nil {
		return err
	}
	defer stream.Close()
	tty := false
	if f, ok := e.stdout.(*os.File); ok {
		tty = term.IsTerminal(int(f.Fd()))
	}
	draw := func(ev *api.Event) error {
		st, err := c.Status(ctx)
		if err != nil {
			return err
		}
		if e.jsonOut {
			return e.printJSON(st)
		}
		if tty {
			fmt.Fprint(e.stdout, "\x1b[H\x1b[2J")
		} else if ev != nil {
			fmt.Fprintf(e.stdout, "-- %s %s\n", ev.Time.Format("15:04:05.000"), describeEvent(*ev))
		}
		return writeStatus(e.stdout, st)
	}
	if err := draw(nil); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-stream.C():
			if !ok {
				if err := stream.Err(); err != nil && ctx.Err() == nil {
					return fmt.Errorf("the daemon closed the event stream: %v", err)
				}
				return nil
			}
			if err := draw(&ev); err != nil {
				return err
			}
		}
	}
}

// describeEvent renders one event on one line.
func describeEvent(ev api.Event) string {
	switch ev.Type {
	case api.EventStatusChanged:
		return fmt.Sprintf("%s: %s (%s)", ev.Account, ev.Status, ev.Reason)
	case api.EventConnectionError:
		msg, _ := ev.Details["server-message"].(string)
		if msg == "" {
			msg, _ = ev.Details["debug-message"].(string)
		}
		return fmt.Sprintf("%s: ConnectionError %s: %s", ev.Account, ev.Error, msg)
	case api.EventPresenceChanged:
		state := "offline"
		if ev.Online != nil && *ev.Online {
			state = "online"
		}
		return fmt.Sprintf("%s: %s is %s", ev.Account, ev.Contact, state)
	case api.EventContactsChanged:
		return fmt.Sprintf("%s: contact %s is now %s", ev.Account, ev.Contact, ev.State)
	case api.EventRoomsChanged:
		switch {
		case ev.Deleted:
			return fmt.Sprintf("%s: room %s was deleted", ev.Account, ev.Room)
		case ev.Joined != nil && *ev.Joined:
			return fmt.Sprintf("%s: %s joined room %s", ev.Account, ev.Member, ev.Room)
		}
		return fmt.Sprintf("%s: %s left room %s", ev.Account, ev.Member, ev.Room)
	case api.EventSelfHandleChanged:
		return fmt.Sprintf("%s: self handle %d", ev.Account, ev.SelfHandle)
	case api.EventMessageReceived:
		return fmt.Sprintf("%s: message %q from %s", ev.Account, ev.Kind, ev.From)
	}
	return fmt.Sprintf("%s %s", ev.Type, ev.Account)
}
