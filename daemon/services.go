package daemon

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"time"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/registry"
	"github.com/tubes-dev/tubes/tperr"
)

// DefaultSystemServices is the system scope's registry file.
const DefaultSystemServices = "/var/lib/tube/services.json"

func (d *Daemon) openServices() error {
	sys := d.cfg.SystemServices
	if sys == "" {
		sys = DefaultSystemServices
	}
	r, err := registry.Open(registry.Config{
		UserFile:   filepath.Join(d.cfg.StateDir, "services.json"),
		SystemFile: sys,
		Warn:       func(msg string) { d.log.Warn(msg) },
		Notify: func(e registry.Event) {
			d.bus.Publish(api.Event{Type: e.Type, Service: e.Service, Scope: string(e.Scope)})
			d.registryChanged(e)
			go d.syncActivations()
		},
	})
	if err != nil {
		return err
	}
	d.services = r
	d.syncActivations()
	return nil
}

// systemPoll is how often the daemon looks for changes other daemons
// (root's) made to the system scope, to tell its clients.
const systemPoll = time.Second

// watchSystemServices takes in changes to the system scope's file until
// ctx ends: lookups see them at once; this makes their events come
// without one.
func (d *Daemon) watchSystemServices(ctx context.Context) {
	defer d.loops.Done()
	t := time.NewTicker(systemPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			d.services.Refresh()
		}
	}
}

// scopeOf reads a scope parameter ("" is the user scope).
func scopeOf(s string) (registry.Scope, error) {
	switch s {
	case "", "user":
		return registry.UserScope, nil
	case "system":
		return registry.SystemScope, nil
	}
	return "", tperr.New(tperr.InvalidArgument, "scope %q is neither user nor system", s)
}

// serviceErr gives a registry error its Telepathy name, keeping the Qt
// error in the message.
func serviceErr(err error) error {
	if err == nil {
		return nil
	}
	name := tperr.InvalidArgument
	switch registry.CodeOf(err) {
	case registry.ServiceAlreadyExists, registry.ImplementationAlreadyExists:
		name = tperr.NotAvailable
	case registry.ComponentNotFound:
		name = tperr.NotFound
	case registry.PermissionDenied:
		name = tperr.PermissionDenied
	case registry.InvalidFilter, registry.InvalidServiceXML:
	default:
		var pe *registry.ParseError
		if !asParseError(err, &pe) {
			return err
		}
	}
	return tperr.Wrap(err, name, "%s", err.Error())
}

// AddService registers a descriptor.
func (d *Daemon) AddService(req api.AddServiceRequest) (*api.ServiceDescriptor, error) {
	scope, err := scopeOf(req.Scope)
	if err != nil {
		return nil, err
	}
	file := req.File
	if file == "" {
		file = "descriptor.xml"
	}
	desc, err := registry.Parse(file, strings.NewReader(req.XML))
	if err != nil {
		return nil, serviceErr(err)
	}
	if err := d.services.Add(desc, scope); err != nil {
		return nil, serviceErr(err)
	}
	d.syncActivations() // its units are ready when it returns
	d.log.Info("service registered", "service", desc.Name, "scope", scope, "interfaces", len(desc.Interfaces),
		"location", desc.Location())
	if w := registry.StartWarning(desc); w != "" {
		d.log.Warn(w)
	}
	return desc, nil
}

// RemoveService unregisters a service.
func (d *Daemon) RemoveService(name, scope string) error {
	s, err := scopeOf(scope)
	if err != nil {
		return err
	}
	if err := d.services.Remove(name, s); err != nil {
		return serviceErr(err)
	}
	d.log.Info("service unregistered", "service", name, "scope", s)
	d.syncActivations() // its units are gone when it returns
	return nil
}

// Services lists registered services (user scope: the user's, then the
// system's).
func (d *Daemon) Services(scope string) ([]*api.ServiceDescriptor, error) {
	s, err := scopeOf(scope)
	if err != nil {
		return nil, err
	}
	out, err := d.services.Services(s)
	if out == nil {
		out = []*api.ServiceDescriptor{}
	}
	return out, serviceErr(err)
}

// FindServices lists the implementations a filter selects.
func (d *Daemon) FindServices(req api.FindServicesRequest) ([]*api.Implementation, error) {
	s, err := scopeOf(req.Scope)
	if err != nil {
		return nil, err
	}
	out, err := d.services.Find(req.Filter, s)
	if out == nil {
		out = []*api.Implementation{}
	}
	return out, serviceErr(err)
}

// DefaultService returns the default implementation of an interface.
func (d *Daemon) DefaultService(iface, scope string) (api.Implementation, error) {
	s, err := scopeOf(scope)
	if err != nil {
		return api.Implementation{}, err
	}
	impl, err := d.services.Default(iface, s)
	return impl, serviceErr(err)
}

// DefaultRules lists the default rules lookups in scope follow.
func (d *Daemon) DefaultRules(scope string) ([]api.DefaultRule, error) {
	s, err := scopeOf(scope)
	if err != nil {
		return nil, err
	}
	rules, err := d.services.Defaults(s)
	if rules == nil {
		rules = []api.DefaultRule{}
	}
	return rules, serviceErr(err)
}

// ClearDefaultService drops the default rule scope keeps for iface.
func (d *Daemon) ClearDefaultService(iface, scope string) error {
	s, err := scopeOf(scope)
	if err != nil {
		return err
	}
	return serviceErr(d.services.ClearDefault(iface, s))
}

// SetDefaultService makes a service the default for an interface.
func (d *Daemon) SetDefaultService(iface string, req api.SetDefaultRequest) (api.Implementation, error) {
	s, err := scopeOf(req.Scope)
	if err != nil {
		return api.Implementation{}, err
	}
	var v *registry.Version
	if req.Version != "" {
		pv, err := registry.ParseVersion(req.Version)
		if err != nil {
			return api.Implementation{}, tperr.New(tperr.InvalidArgument, "version %q is not major.minor", req.Version)
		}
		v = &pv
	}
	if err := d.services.SetDefault(req.Service, iface, v, s); err != nil {
		return api.Implementation{}, serviceErr(err)
	}
	return d.DefaultService(iface, req.Scope)
}

func asParseError(err error, pe **registry.ParseError) bool { return errors.As(err, pe) }
