package daemon

import (
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tubes-dev/tubes/activation"
	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/registry"
)

// Services with a <filepath> start on demand: the daemon listens for
// them on loopback, and the first connection (through a tube) starts the
// executable with the socket passed systemd-style. A custom property of
// any of its interfaces chooses the instance mode ("instance": shared or
// per-client) and the idle stop of a shared one ("idle": seconds).

type activated struct {
	unit *activation.Unit
	ln   net.Listener
	path string
}

type activations struct {
	mu    sync.Mutex
	units map[string]*activated // service (lower case) → unit
}

// activated returns the loopback address of service d, started on
// demand, making its unit on first use.
func (d *Daemon) activated(desc *registry.Descriptor) (string, error) {
	d.acts.mu.Lock()
	defer d.acts.mu.Unlock()
	key := strings.ToLower(desc.Name)
	if a := d.acts.units[key]; a != nil && a.path == desc.FilePath {
		return a.ln.Addr().String(), nil
	} else if a != nil {
		a.ln.Close()
		a.unit.Close()
	}
	cfg := activation.Config{Name: desc.Name, Path: desc.FilePath, Logger: d.log}
	for _, in := range desc.Interfaces {
		if m := in.Properties["instance"]; m == activation.PerClient || m == activation.Shared {
			cfg.Mode = m
		}
		if s, err := strconv.Atoi(in.Properties["idle"]); err == nil && s > 0 {
			cfg.Idle = time.Duration(s) * time.Second
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	u := activation.New(cfg)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go u.Serve(c)
		}
	}()
	if d.acts.units == nil {
		d.acts.units = map[string]*activated{}
	}
	d.acts.units[key] = &activated{unit: u, ln: ln, path: desc.FilePath}
	return ln.Addr().String(), nil
}

// connectActivated connects a tube to a service started on demand, so
// that a service that does not take the connection is refused
// (ConnectionRefused), not cut after a connection seemed made.
func (d *Daemon) connectActivated(service string) (net.Conn, func(), bool, error) {
	d.acts.mu.Lock()
	a := d.acts.units[strings.ToLower(service)]
	d.acts.mu.Unlock()
	if a == nil {
		return nil, nil, false, nil
	}
	c, done, err := a.unit.Connect()
	return c, done, true, err
}

// Activations reports the on-demand services and what they are doing.
func (d *Daemon) Activations() map[string]api.ActivationStatus {
	d.acts.mu.Lock()
	defer d.acts.mu.Unlock()
	out := map[string]api.ActivationStatus{}
	for _, a := range d.acts.units {
		out[a.unit.Name()] = a.unit.Status()
	}
	return out
}

// closeActivations stops every on-demand service.
func (d *Daemon) closeActivations() {
	d.acts.mu.Lock()
	defer d.acts.mu.Unlock()
	for k, a := range d.acts.units {
		a.ln.Close()
		a.unit.Close()
		delete(d.acts.units, k)
	}
}
