package cli

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/tubes-dev/tubes/api"
)

// acceptFlags are the local-socket flags of accept, handle and open.
func acceptFlags(cmd *cobra.Command, req *api.AcceptRequest, uids *[]uint) {
	f := cmd.Flags()
	f.StringVar(&req.Listen, "listen", "", "local TCP HOST:PORT (default 127.0.0.1 and a free port)")
	f.StringVar(&req.Unix, "unix", "", "local Unix socket PATH instead (\"auto\": a private one)")
	f.StringVar(&req.Access, "access", "", "access control: localhost, port, credentials, credentials-byte (default: localhost for TCP, credentials for Unix)")
	f.StringVar(&req.Source, "source", "", "with --access port: the only source HOST:PORT let in")
	f.UintSliceVar(uids, "uid", nil, "with --access credentials: uids let in (default: yours)")
}

func applyUIDs(req *api.AcceptRequest, uids []uint) {
	for _, u := range uids {
		req.UIDs = append(req.UIDs, uint32(u))
	}
}

// parseParam parses KEY=VALUE or KEY:TYPE=VALUE.
func parseParam(s string) (string, api.Value, error) {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return "", api.Value{}, usagef("--param %q: use KEY=VALUE or KEY:TYPE=VALUE (TYPE: string, bytes, uint, int, bool)", s)
	}
	typ := ""
	if name, t, ok := strings.Cut(k, ":"); ok {
		k, typ = name, t
	}
	val, err := api.ParseValue(typ, v)
	if err != nil {
		return "", api.Value{}, usagef("--param %s: %v", k, err)
	}
	return k, val, nil
}

func exportCmd(e *env) *cobra.Command {
	var (
		ex       api.Export
		params   []string
		monitor  bool
		tcp, uds string
	)
	cmd := &cobra.Command{
		Use:   "export SERVICE (--tcp HOST:PORT | --unix PATH)",
		Short: "Export a local TCP or Unix service so it can be offered in tubes (the StreamTubeServer side)",
		Long: `Export a local service under a name (vnc, rsync, x-myapp, com.example.Editor).
Parameters (--param, or --params-exec CMD printing a JSON object, run for each
offer with TUBE_ACCOUNT, TUBE_ID, TUBE_SERVICE, TUBE_CONTACT, TUBE_ROOM set) go
with every offer, sealed to its recipients. --allow and --allow-room let those
contacts or room members ask for the service themselves (tube open).
--monitor stays in the foreground and prints each connection's source address
and contact.`,
		Args: exactArgs(1, "a SERVICE name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ex.Service = args[0]
			if (tcp == "") == (uds == "") {
				return usagef("tube export needs exactly one of --tcp HOST:PORT or --unix PATH")
			}
			ex.TCP, ex.Unix = tcp, uds
			for _, p := range params {
				k, v, err := parseParam(p)
				if err != nil {
					return err
				}
				if ex.Parameters == nil {
					ex.Parameters = map[string]api.Value{}
				}
				ex.Parameters[k] = v
			}
			c := e.client()
			defer c.Close()
			var stream interface{ Close() error }
			ctx := cmd.Context()
			if monitor {
				var cancel context.CancelFunc
				ctx, cancel = signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
				defer cancel()
				s, err := c.Events(ctx, e.account)
				if err != nil {
					return err
				}
				stream = s
				defer stream.Close()
				got, err := c.Export(ctx, e.account, ex)
				if err != nil {
					return err
				}
				fmt.Fprintf(e.stderr, "exported %s (%s); showing connections, Ctrl-C to stop\n", got.Service, orStr(got.TCP, got.Unix))
				tubes := map[string]bool{}
				for {
					select {
					case <-ctx.Done():
						return nil
					case ev, ok := <-s.C():
						if !ok {
							return fmt.Errorf("the daemon closed the event stream")
						}
						switch {
						case ev.Type == api.EventNewTube && ev.Service == ex.Service && ev.Direction == "outgoing":
							tubes[ev.TubeID] = true
						case ev.Type == api.EventNewRemoteConnection && tubes[ev.TubeID]:
							fmt.Fprintf(e.stdout, "connect\t%s\t%s\t%s\t%d\n", ev.Source, ev.Contact, ev.TubeID, *ev.ConnectionID)
						case ev.Type == api.EventConnectionClosed && tubes[ev.TubeID]:
							fmt.Fprintf(e.stdout, "close\t%s\t%s\t%d\t%s\n", ev.Contact, ev.TubeID, *ev.ConnectionID, ev.Error)
						}
					}
				}
			}
			got, err := c.Export(ctx, e.account, ex)
			if err != nil {
				return err
			}
			if e.jsonOut {
				return e.printJSON(got)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&tcp, "tcp", "", "the service's TCP HOST:PORT (numeric)")
	f.StringVar(&uds, "unix", "", "the service's Unix socket path")
	f.StringArrayVar(&params, "param", nil, "parameter KEY=VALUE or KEY:TYPE=VALUE, sent with every offer (repeatable)")
	f.StringVar(&ex.ParamsExec, "params-exec", "", "command printing the parameters of each offer as a JSON object")
	f.BoolVar(&monitor, "monitor", false, "stay in the foreground and print each connection's source and contact")
	f.BoolVar(&ex.ProxyProtocol, "proxy-protocol", false, "send a PROXY protocol v2 header naming the contact, account, room and tube")
	f.StringArrayVar(&ex.Allow, "allow", nil, "contact allowed to ask for this service with tube open (repeatable)")
	f.StringArrayVar(&ex.AllowRooms, "allow-room", nil, "room whose members may ask for this service (repeatable)")
	f.StringVar(&e.account, "account", "", "account to act as (default: the daemon's only account)")
	jsonFlag(cmd, e)
	return cmd
}

func orStr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func unexportCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "unexport SERVICE",
		Short: "Stop exporting a service (tubes already offered keep working)",
		Args:  exactArgs(1, "a SERVICE name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return e.client().Unexport(cmd.Context(), e.account, args[0])
		},
	}
	cmd.Flags().StringVar(&e.account, "account", "", "account to act as")
	return cmd
}

func exportsCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "exports",
		Short: "List the exported services of every account (kept across daemon restarts)",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			xs, err := e.client().Exports(cmd.Context())
			if err != nil {
				return err
			}
			if e.jsonOut {
				return e.printJSON(xs)
			}
			tw := e.table()
			fmt.Fprintln(tw, "ACCOUNT\tSERVICE\tTARGET\tPARAMETERS\tALLOW")
			for _, x := range xs {
				params := "-"
				switch {
				case x.ParamsGenerator:
					params = "generator"
				case x.ParamsExec != "":
					params = "exec"
				case len(x.Parameters) > 0:
					params = fmt.Sprint(len(x.Parameters))
				}
				allow := slices.Clone(x.Allow)
				for _, r := range x.AllowRooms {
					allow = append(allow, "room:"+r)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", x.Account, x.Service, orStr(x.TCP, x.Unix), params, orStr(strings.Join(allow, ","), "-"))
			}
			return tw.Flush()
		},
	}
	jsonFlag(cmd, e)
	return cmd
}

func offerCmd(e *env) *cobra.Command {
	var req api.OfferRequest
	var yes bool
	cmd := &cobra.Command{
		Use:   "offer SERVICE (--to CONTACT | --room ROOM)",
		Short: "Offer an exported service to a contact or a room; prints the tube id",
		Args:  exactArgs(1, "a SERVICE name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if (req.To == "") == (req.Room == "") {
				return usagef("tube offer needs exactly one of --to CONTACT or --room ROOM")
			}
			req.Service = args[0]
			if req.LaterMembers && req.Room == "" {
				return usagef("--later-members is for a room tube (--room ROOM)")
			}
			if req.Room != "" && !yes {
				has, err := hasParameters(cmd.Context(), e, req.Service)
				if err != nil {
					return err
				}
				if has {
					if err := confirmOpenRoom(cmd.Context(), e.client(), e.account, req.Room, "the tube's parameters", false); err != nil {
						return err
					}
				}
			}
			t, err := e.client().Offer(cmd.Context(), e.account, req)
			if err != nil {
				return err
			}
			if e.jsonOut {
				return e.printJSON(t)
			}
			fmt.Fprintln(e.stdout, t.ID)
			return nil
		},
	}
	cmd.Flags().StringVar(&req.To, "to", "", "a contact")
	cmd.Flags().StringVar(&req.Room, "room", "", "a room you belong to")
	cmd.Flags().StringVar(&req.Path, "path", "auto", "peer-link path: auto (direct when reachable), direct, relay")
	cmd.Flags().BoolVar(&req.LaterMembers, "later-members", false, "a room tube: offer it to members who join later too, each with parameters of their own")
	cmd.Flags().BoolVar(&yes, "yes", false, "offer a tube with parameters to an open room (anyone may join it)")
	cmd.Flags().StringVar(&e.account, "account", "", "account to act as")
	jsonFlag(cmd, e)
	return cmd
}

// hasParameters reports whether the export of service gives offers
// parameters.
func hasParameters(ctx context.Context, e *env, service string) (bool, error) {
	xs, err := e.client().Exports(ctx)
	if err != nil {
		return false, err
	}
	for _, x := range xs {
		if x.Service == service && (e.account == "" || x.Account == e.account || x.Account == "") {
			return len(x.Parameters) > 0 || x.ParamsExec != "" || x.ParamsGenerator, nil
		}
	}
	return false, nil
}

func acceptCmd(e *env) *cobra.Command {
	var req api.AcceptRequest
	var uids []uint
	cmd := &cobra.Command{
		Use:   "accept TUBE-ID",
		Short: "Accept an offered tube; prints the local address to connect to once it accepts connections",
		Args:  exactArgs(1, "a TUBE-ID (tube tubes lists them)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			applyUIDs(&req, uids)
			t, err := e.client().Accept(cmd.Context(), args[0], req)
			if err != nil {
				return err
			}
			if e.jsonOut {
				return e.printJSON(t)
			}
			fmt.Fprintln(e.stdout, t.Address)
			return nil
		},
	}
	acceptFlags(cmd, &req, &uids)
	jsonFlag(cmd, e)
	return cmd
}

func handleCmd(e *env) *cobra.Command {
	var req api.HandleRequest
	var uids []uint
	cmd := &cobra.Command{
		Use:   "handle SERVICE [--from CONTACT | --room ROOM]",
		Short: "Accept matching offers automatically while this runs; prints TUBE-ID ADDRESS for each (the StreamTubeClient side)",
		Args:  exactArgs(1, "a SERVICE name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Service = args[0]
			applyUIDs(&req.AcceptRequest, uids)
			ctx, cancel := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer cancel()
			c := e.client()
			defer c.Close()
			events, err := c.Events(ctx, e.account)
			if err != nil {
				return err
			}
			defer events.Close()
			if _, err := c.Handle(ctx, e.account, req); err != nil {
				return err
			}
			session, _ := c.SessionID(ctx)
			fmt.Fprintf(e.stderr, "handling %s; Ctrl-C to stop\n", req.Service)
			for {
				select {
				case <-ctx.Done():
					return nil
				case ev, ok := <-events.C():
					if !ok {
						return fmt.Errorf("the daemon closed the event stream")
					}
					if ev.Type == api.EventTubeStateChanged && ev.Handler == session && ev.Address != "" {
						fmt.Fprintf(e.stdout, "%s\t%s\n", ev.TubeID, ev.Address)
					}
				}
			}
		},
	}
	cmd.Flags().StringVar(&req.From, "from", "", "only tubes from this contact")
	cmd.Flags().StringVar(&req.Room, "room", "", "only tubes offered in this room")
	cmd.Flags().StringVar(&e.account, "account", "", "account to act as")
	acceptFlags(cmd, &req.AcceptRequest, &uids)
	return cmd
}

func openCmd(e *env) *cobra.Command {
	var req api.OpenRequest
	var uids []uint
	cmd := &cobra.Command{
		Use:   "open CONTACT/SERVICE | CONTACT/INTERFACE[@M.m]",
		Short: "Ask a contact for a tube to a service it exported or published for you (a reverse tube); prints the local address",
		Long: `Ask a contact for a tube to one of its services (a reverse tube) and print the
local address to connect to. SERVICE is a name the contact exported for you
(tube export --allow). INTERFACE[@M.m] looks through what the contact
publishes to you (tube services publish) and opens the service with the
highest version of that interface, at least M.m. With --room, the request
goes through a room you both belong to, for services the contact publishes
to that room (the contact need not be yours).`,
		Args: exactArgs(1, "CONTACT/SERVICE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			contact, service, ok := strings.Cut(args[0], "/")
			if !ok || contact == "" || service == "" {
				return usagef("tube open takes CONTACT/SERVICE, e.g. alice/vnc")
			}
			req.Contact, req.Service = contact, service
			applyUIDs(&req.AcceptRequest, uids)
			t, err := e.client().Open(cmd.Context(), e.account, req)
			if err != nil {
				return err
			}
			if e.jsonOut {
				return e.printJSON(t)
			}
			fmt.Fprintln(e.stdout, t.Address)
			return nil
		},
	}
	cmd.Flags().StringVar(&e.account, "account", "", "account to act as")
	cmd.Flags().StringVar(&req.Room, "room", "", "ask through this ROOM, for a service published to it")
	acceptFlags(cmd, &req.AcceptRequest, &uids)
	jsonFlag(cmd, e)
	return cmd
}

func tubesCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "tubes",
		Short: "List tubes (both directions) with state, peer and path",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			ts, err := e.client().Tubes(cmd.Context())
			if err != nil {
				return err
			}
			if e.jsonOut {
				return e.printJSON(ts)
			}
			tw := e.table()
			fmt.Fprintln(tw, "TUBE\tACCOUNT\tSERVICE\tSTATE\tPEER\tDIRECTION\tPATH\tADDRESS")
			for _, t := range ts {
				peer := t.Peer
				if t.Room != "" {
					peer = strings.TrimPrefix(peer+"@", "@") + "room " + t.Room
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.Account, t.Service, t.State, peer, t.Direction, t.Path, t.Address)
			}
			return tw.Flush()
		},
	}
	jsonFlag(cmd, e)
	return cmd
}

func connectionsCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "connections",
		Short: "List live tube connections: tube, id, source address, contact",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			cs, err := e.client().Connections(cmd.Context())
			if err != nil {
				return err
			}
			if e.jsonOut {
				return e.printJSON(cs)
			}
			tw := e.table()
			fmt.Fprintln(tw, "TUBE\tID\tSOURCE\tCONTACT\tROOM")
			for _, c := range cs {
				fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\n", c.Tube, c.ID, c.Source, c.Contact, c.Room)
			}
			return tw.Flush()
		},
	}
	jsonFlag(cmd, e)
	return cmd
}

func whoisCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "whois HOST:PORT",
		Short: "Tell which contact a connection to an exported service comes from, by its source address",
		Args:  exactArgs(1, "the connection's source HOST:PORT"),
		RunE: func(cmd *cobra.Command, args []string) error {
			w, err := e.client().Whois(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if e.jsonOut {
				return e.printJSON(w)
			}
			room := ""
			if w.Room != "" {
				room = " in room " + w.Room
			}
			fmt.Fprintf(e.stdout, "%s (tube %s, %s%s, connection %d)\n", w.Contact, w.Tube.ID, w.Tube.Service, room, w.ID)
			return nil
		},
	}
	jsonFlag(cmd, e)
	return cmd
}

func closeCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "close TUBE-ID",
		Short: "Close a tube; its connections end (Cancelled) and the other side is told",
		Args:  exactArgs(1, "a TUBE-ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return e.client().CloseTube(cmd.Context(), args[0])
		},
	}
}
