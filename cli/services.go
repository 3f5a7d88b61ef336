package cli

import (
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/registry"
)

func servicesCmd(e *env) *cobra.Command {
	var scope string
	cmd := &cobra.Command{
		Use:   "services",
		Short: "The service registry: Qt Service Framework descriptors, filters and defaults",
		Long: `The service registry. Services are described by Qt Service Framework XML
descriptors (SFW 1.0 and 1.1, accepted unchanged, with or without the <SFW>
wrapper): a name, a <filepath> or an
<ipcaddress>, and interfaces with major.minor versions, capabilities and custom
properties. As in Qt, one service may come from several locations (plugins):
a descriptor of a registered name at another location adds its
implementations, and remove takes every location. The user scope (default) is
yours; the system scope is shared and only root may change it. Lookups in the
user scope list your services first, then the system's.`,
	}
	cmd.PersistentFlags().StringVar(&scope, "scope", "", "user (default) or system")
	cmd.PersistentPreRunE = func(cmd *cobra.Command, args []string) error {
		if scope != "" && scope != "user" && scope != "system" {
			return usagef("--scope is user or system, not %q", scope)
		}
		if scope != "" && cmd.Annotations[scoped] == "" {
			return usagef("%s has no scope: --scope goes with add, remove, list, find, default and defaults", cmd.CommandPath())
		}
		return nil
	}

	add := &cobra.Command{
		Annotations: map[string]string{scoped: "yes"},
		Use:         "add FILE.xml",
		Short:       "Register the service a descriptor describes, or one more location of it",
		Args:        exactArgs(1, "a descriptor FILE.xml"),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			d, err := e.client().AddService(cmd.Context(), string(b), args[0], scope)
			if err != nil {
				return err
			}
			if w := registry.StartWarning(d); w != "" {
				fmt.Fprintln(e.stderr, "tube: warning:", w)
			}
			if e.jsonOut {
				return e.printJSON(d)
			}
			fmt.Fprintf(e.stdout, "registered %s (%d interface implementations)\n", d.Name, len(d.Interfaces))
			return nil
		},
	}
	jsonFlag(add, e)

	remove := &cobra.Command{
		Annotations: map[string]string{scoped: "yes"},
		Use:         "remove NAME",
		Short:       "Unregister a service, at every location",
		Args:        exactArgs(1, "a service NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return e.client().RemoveService(cmd.Context(), args[0], scope)
		},
	}

	list := &cobra.Command{
		Annotations: map[string]string{scoped: "yes"},
		Use:         "list",
		Short:       "List registered services",
		Args:        exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			ds, err := e.client().Services(cmd.Context(), scope)
			if err != nil {
				return err
			}
			if e.jsonOut {
				return e.printJSON(ds)
			}
			tw := e.table()
			fmt.Fprintln(tw, "SERVICE\tLOCATION\tINTERFACES")
			for _, d := range ds {
				var ifs []string
				for _, in := range d.Interfaces {
					ifs = append(ifs, in.Name+" "+in.Version.String())
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\n", d.Name, d.Location(), strings.Join(ifs, ", "))
			}
			return tw.Flush()
		},
	}
	jsonFlag(list, e)

	var ff filterFlags
	find := &cobra.Command{
		Annotations: map[string]string{scoped: "yes"},
		Use:         "find",
		Short:       "List the interface implementations a filter selects (all criteria must hold)",
		Args:        exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := ff.filter()
			if err != nil {
				return err
			}
			impls, err := e.client().FindServices(cmd.Context(), f, scope)
			if err != nil {
				return err
			}
			return e.printImpls(impls)
		},
	}
	ff.add(find)
	jsonFlag(find, e)

	var version string
	var clear bool
	def := &cobra.Command{
		Annotations: map[string]string{scoped: "yes"},
		Use:         "default INTERFACE [SERVICE | --clear]",
		Short:       "Show the default implementation of an interface, make SERVICE its default, or clear the rule",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 1 || len(args) > 2 {
				return usagef("%s needs an INTERFACE and, to set it, a SERVICE", cmd.CommandPath())
			}
			for i, what := range []string{"INTERFACE", "SERVICE"}[:len(args)] {
				if strings.TrimSpace(args[i]) == "" {
					return usagef("%s: the %s is empty", cmd.CommandPath(), what)
				}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			var impl api.Implementation
			var err error
			if clear {
				if len(args) == 2 || version != "" {
					return usagef("--clear takes an INTERFACE alone")
				}
				return e.client().ClearDefaultService(cmd.Context(), args[0], scope)
			}
			if len(args) == 2 {
				impl, err = e.client().SetDefaultService(cmd.Context(), args[0], args[1], version, scope)
			} else {
				if version != "" {
					return usagef("--version goes with a SERVICE to make the default")
				}
				impl, err = e.client().DefaultService(cmd.Context(), args[0], scope)
			}
			if err != nil {
				return err
			}
			return e.printImpls([]api.Implementation{impl})
		},
	}
	def.Flags().StringVar(&version, "version", "", "with SERVICE: that exact version, not its newest")
	def.Flags().BoolVar(&clear, "clear", false, "drop the scope's rule: the default goes back to the scope's newest implementation")
	jsonFlag(def, e)

	defs := &cobra.Command{
		Annotations: map[string]string{scoped: "yes"},
		Use:         "defaults",
		Short:       "List the default rules: the user's, then the system's (--scope system: the system's)",
		Args:        exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			rules, err := e.client().DefaultRules(cmd.Context(), scope)
			if err != nil {
				return err
			}
			if e.jsonOut {
				return e.printJSON(rules)
			}
			tw := e.table()
			fmt.Fprintln(tw, "RULE\tINTERFACE\tSERVICE\tVERSION\tSCOPE")
			for _, r := range rules {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Scope, r.Interface, r.Implementation.Service, r.Implementation.Version, r.Implementation.Scope)
			}
			return tw.Flush()
		},
	}
	jsonFlag(defs, e)

	acts := &cobra.Command{
		Use:   "activations",
		Short: "Services started on demand: running or not, clients, starts, last failure",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			as, err := e.client().Activations(cmd.Context())
			if err != nil {
				return err
			}
			if e.jsonOut {
				return e.printJSON(as)
			}
			tw := e.table()
			fmt.Fprintln(tw, "SERVICE\tRUNNING\tPID\tCLIENTS\tSTARTS\tLAST ERROR")
			for _, name := range slices.Sorted(maps.Keys(as)) { // the same order every time
				s := as[name]
				fmt.Fprintf(tw, "%s\t%v\t%d\t%d\t%d\t%s\n", name, s.Running, s.PID, s.Clients, s.Starts, s.LastError)
			}
			return tw.Flush()
		},
	}
	jsonFlag(acts, e)
	cmd.AddCommand(add, remove, list, find, def, defs, acts)
	cmd.AddCommand(publishCmds(e)...)
	return cmd
}

// scoped marks the services commands --scope applies to (the registry's
// own); publications, browsing, grants and activations have no scope.
const scoped = "scoped"

// filterFlags are the criteria of find and browse.
type filterFlags struct {
	f     api.ServiceFilter
	props []string
}

func (ff *filterFlags) add(cmd *cobra.Command) {
	fs := cmd.Flags()
	fs.StringVar(&ff.f.Service, "service", "", "service name (exact, any case)")
	fs.StringVar(&ff.f.Interface, "interface", "", "interface name (exact, any case)")
	fs.StringVar(&ff.f.Version, "version", "", "with --interface: this major.minor or later (a higher major matches too; --exact for exactly)")
	fs.BoolVar(&ff.f.Exact, "exact", false, "with --version: exactly that version")
	fs.StringArrayVar(&ff.f.Capabilities, "capability", nil, "the interface must have this capability (repeatable)")
	fs.BoolVar(&ff.f.Loadable, "loadable", false, "instead: the interface may need only the --capability ones")
	fs.StringArrayVar(&ff.props, "property", nil, "custom property KEY=VALUE the interface must have (repeatable)")
}

func (ff *filterFlags) filter() (api.ServiceFilter, error) {
	f := ff.f
	for _, p := range ff.props {
		k, v, ok := strings.Cut(p, "=")
		if !ok || k == "" {
			return f, usagef("--property %q is not KEY=VALUE", p)
		}
		if f.Properties == nil {
			f.Properties = map[string]string{}
		}
		f.Properties[k] = v
	}
	if f.Version != "" && f.Interface == "" {
		return f, usagef("--version needs --interface (versions belong to interfaces)")
	}
	return f, nil
}

// publishCmds are publish, unpublish, publications and browse.
func publishCmds(e *env) []*cobra.Command {
	var to, room string
	var yes bool
	target := func(cmd *cobra.Command) {
		cmd.Flags().StringVar(&to, "to", "", "a CONTACT")
		cmd.Flags().StringVar(&room, "room", "", "a ROOM (its members)")
		cmd.Flags().StringVar(&e.account, "account", "", "account to act as (default: the daemon's only account)")
	}
	one := func(cmd *cobra.Command) error {
		if (to == "") == (room == "") {
			return usagef("%s needs --to CONTACT or --room ROOM, exactly one", cmd.CommandPath())
		}
		return nil
	}
	publish := &cobra.Command{
		Use:   "publish NAME (--to CONTACT | --room ROOM)",
		Short: "Let a contact or a room's members discover a registered service",
		Args:  exactArgs(1, "a service NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := one(cmd); err != nil {
				return err
			}
			if err := confirmOpenRoom(cmd.Context(), e.client(), e.account, room, "the service", yes); err != nil {
				return err
			}
			_, err := e.client().Publish(cmd.Context(), e.account, api.Publication{Service: args[0], To: to, Room: room})
			return err
		},
	}
	target(publish)
	publish.Flags().BoolVar(&yes, "yes", false, "publish to an open room (anyone may join it)")
	unpublish := &cobra.Command{
		Use:   "unpublish NAME (--to CONTACT | --room ROOM)",
		Short: "Withdraw a publication",
		Args:  exactArgs(1, "a service NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := one(cmd); err != nil {
				return err
			}
			return e.client().Unpublish(cmd.Context(), e.account, api.Publication{Service: args[0], To: to, Room: room})
		},
	}
	target(unpublish)
	pubs := &cobra.Command{
		Use:   "publications",
		Short: "List what you publish, to whom",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			ps, err := e.client().Publications(cmd.Context(), e.account)
			if err != nil {
				return err
			}
			if e.jsonOut {
				return e.printJSON(ps)
			}
			tw := e.table()
			fmt.Fprintln(tw, "SERVICE\tTO\tROOM")
			for _, p := range ps {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", p.Service, p.To, p.Room)
			}
			return tw.Flush()
		},
	}
	pubs.Flags().StringVar(&e.account, "account", "", "account to act as")
	jsonFlag(pubs, e)
	var ff filterFlags
	browse := &cobra.Command{
		Use:   "browse (CONTACT | --room ROOM | CONTACT --room ROOM)",
		Short: "List what a contact, or a room's members, publish to you, through a filter",
		Long: `List what a contact publishes to you, what the members of a room publish to
the room, or, with both, what one member publishes to the room (the member
need not be your contact). The filter flags are those of tube services find.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 1 || (len(args) == 0 && room == "") {
				return usagef("%s needs a CONTACT, --room ROOM, or both", cmd.CommandPath())
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := ff.filter()
			if err != nil {
				return err
			}
			req := api.BrowseRequest{Room: room, Filter: f}
			if len(args) == 1 {
				req.Contact = args[0]
			}
			impls, err := e.client().Browse(cmd.Context(), e.account, req)
			if err != nil {
				return err
			}
			if e.jsonOut {
				return e.printJSON(impls)
			}
			tw := e.table()
			fmt.Fprintln(tw, "PUBLISHER\tROOM\tSERVICE\tINTERFACE\tVERSION\tCAPABILITIES")
			for _, i := range impls {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", i.Publisher, i.Room, i.Service, i.Interface, i.Version, strings.Join(i.Capabilities, ","))
			}
			return tw.Flush()
		},
	}
	browse.Flags().StringVar(&room, "room", "", "a ROOM: ask its members")
	browse.Flags().StringVar(&e.account, "account", "", "account to act as")
	ff.add(browse)
	jsonFlag(browse, e)
	grantCmd := func(revoke bool) *cobra.Command {
		use, short := "grant CONTACT CAPABILITY...", "Grant a contact capabilities the services you publish may require"
		if revoke {
			use, short = "revoke CONTACT CAPABILITY...", "Take capabilities back from a contact"
		}
		c := &cobra.Command{
			Use:   use,
			Short: short,
			Args: func(cmd *cobra.Command, args []string) error {
				if len(args) < 2 {
					return usagef("%s needs a CONTACT and at least one CAPABILITY", cmd.CommandPath())
				}
				return nil
			},
			RunE: func(cmd *cobra.Command, args []string) error {
				g, err := e.client().Grant(cmd.Context(), e.account, api.Grant{Contact: args[0], Capabilities: args[1:]}, revoke)
				if err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "%s\t%s\n", g.Contact, strings.Join(g.Capabilities, ","))
				return nil
			},
		}
		c.Flags().StringVar(&e.account, "account", "", "account to act as")
		return c
	}
	grants := &cobra.Command{
		Use:   "grants",
		Short: "List the capabilities granted to contacts",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			gs, err := e.client().Grants(cmd.Context(), e.account)
			if err != nil {
				return err
			}
			if e.jsonOut {
				return e.printJSON(gs)
			}
			tw := e.table()
			fmt.Fprintln(tw, "CONTACT\tCAPABILITIES")
			for _, g := range gs {
				fmt.Fprintf(tw, "%s\t%s\n", g.Contact, strings.Join(g.Capabilities, ","))
			}
			return tw.Flush()
		},
	}
	grants.Flags().StringVar(&e.account, "account", "", "account to act as")
	jsonFlag(grants, e)
	return []*cobra.Command{publish, unpublish, pubs, browse, grantCmd(false), grantCmd(true), grants}
}

func (e *env) printImpls(impls []api.Implementation) error {
	if e.jsonOut {
		return e.printJSON(impls)
	}
	tw := e.table()
	fmt.Fprintln(tw, "SERVICE\tINTERFACE\tVERSION\tSCOPE\tCAPABILITIES\tLOCATION")
	for _, i := range impls {
		loc := i.FilePath
		if loc == "" {
			loc = i.IPCAddress
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", i.Service, i.Interface, i.Version, i.Scope, strings.Join(i.Capabilities, ","), loc)
	}
	return tw.Flush()
}
