package tube

import (
	"context"
	"sort"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/tperr"
)

// Exports (the offerer's side): services made available for tubes, and
// the parameters an offer carries.

// export is a service exported for tubes.
type export struct {
	api.Export
	client string // the generator's local-API client, for ParamsGenerator
}

// Export exports a local service; client is the calling local-API client
// ("" if none), which owns a generator export.
func (m *Manager) Export(client string, e api.Export) (api.Export, error) {
	x, err := m.newExport(client, e)
	if err != nil {
		return api.Export{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return api.Export{}, tperr.New(tperr.Disconnected, "account %s is being removed", m.cfg.Account)
	}
	if m.exports[e.Service] == nil && len(m.exports) >= MaxExports {
		return api.Export{}, tperr.New(tperr.NotAvailable, "%s has %d exports, the most an account may have; unexport one first", m.cfg.Account, MaxExports)
	}
	m.exports[e.Service] = x
	m.log.Info("exported", "service", e.Service, "tcp", e.TCP, "unix", e.Unix)
	return x.Export, nil
}

// newExport checks e and makes the export, without registering it.
func (m *Manager) newExport(client string, e api.Export) (*export, error) {
	if err := checkService(e.Service); err != nil {
		return nil, err
	}
	if err := checkExportAddr(&e); err != nil {
		return nil, err
	}
	if err := checkParams(e.Parameters); err != nil {
		return nil, err
	}
	sources := 0
	for _, on := range []bool{len(e.Parameters) > 0, e.ParamsExec != "", e.ParamsGenerator} {
		if on {
			sources++
		}
	}
	if sources > 1 {
		return nil, tperr.New(tperr.InvalidArgument, "an export takes fixed parameters, params_exec or a params_generator, only one of them")
	}
	if e.ParamsGenerator && client == "" {
		return nil, tperr.New(tperr.InvalidArgument, "a parameters generator is a local-API client: open /v1/events and send its client_id in the %s header", api.ClientHeader)
	}
	for _, n := range e.Allow {
		if n == "" || n == m.cfg.Account {
			return nil, tperr.New(tperr.InvalidArgument, "allow %q is not a contact name", n)
		}
	}
	e.Account = m.cfg.Account
	x := &export{Export: e}
	if e.ParamsGenerator {
		x.client = client
	}
	return x, nil
}

// MaxExports bounds the exports of one account.
const MaxExports = 1024

// KeepExport returns a function that puts the export of service back as
// it is now (none: no export): a caller undoes an Export or Unexport
// that it could not make last (saved).
func (m *Manager) KeepExport(service string) (undo func()) {
	m.mu.Lock()
	defer m.mu.Unlock()
	prev := m.exports[service]
	return func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		if prev == nil {
			delete(m.exports, service)
		} else {
			m.exports[service] = prev
		}
	}
}

// Unexport removes an export; tubes already offered keep working.
func (m *Manager) Unexport(service string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.exports[service] == nil {
		return tperr.New(tperr.NotFound, "%s has no export %q (tube exports lists them)", m.cfg.Account, service)
	}
	delete(m.exports, service)
	return nil
}

// Exports lists the exports, by service name.
func (m *Manager) Exports() []api.Export {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]api.Export, 0, len(m.exports))
	for _, e := range m.exports {
		out = append(out, e.Export)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Service < out[j].Service })
	return out
}

// params makes an offer's parameters from its export.
func (m *Manager) params(ctx context.Context, e *export, req ParamsRequest) (map[string]api.Value, error) {
	switch {
	case e.ParamsGenerator:
		if m.cfg.Generate == nil {
			return nil, tperr.New(tperr.NotImplemented, "this daemon has no parameters generators")
		}
		p, err := m.cfg.Generate(ctx, e.client, req)
		if err != nil {
			return nil, err
		}
		return p, checkParams(p)
	case e.ParamsExec != "":
		return execParams(ctx, e.ParamsExec, m.cfg.Account, req)
	}
	return e.Parameters, nil
}
