package localapi

import (
	"net/http"

	"github.com/tubes-dev/tubes/api"
)

// serviceRoutes serves the service registry.
func (s *Server) serviceRoutes() {
	d := s.d
	s.handle("GET /v1/services", func(r *http.Request) (any, error) {
		return d.Services(r.URL.Query().Get("scope"))
	})
	s.handle("POST /v1/services", func(r *http.Request) (any, error) {
		var req api.AddServiceRequest
		// An empty file is the parser's to refuse, naming the file.
		if err := decodeRequired(r, &req, "xml", func() bool { return req.XML != "" || req.File != "" }); err != nil {
			return nil, err
		}
		return d.AddService(req)
	})
	s.handle("DELETE /v1/services/{service}", func(r *http.Request) (any, error) {
		return nil, d.RemoveService(r.PathValue("service"), r.URL.Query().Get("scope"))
	})
	s.handle("POST /v1/services/find", func(r *http.Request) (any, error) {
		var req api.FindServicesRequest
		if err := decodeOptional(r, &req); err != nil {
			return nil, err
		}
		return d.FindServices(req)
	})
	s.handle("GET /v1/services/activations", func(r *http.Request) (any, error) { return d.Activations(), nil })
	s.handle("GET /v1/services/defaults", func(r *http.Request) (any, error) {
		return d.DefaultRules(r.URL.Query().Get("scope"))
	})
	s.handle("DELETE /v1/services/defaults/{interface}", func(r *http.Request) (any, error) {
		return nil, d.ClearDefaultService(r.PathValue("interface"), r.URL.Query().Get("scope"))
	})
	s.handle("GET /v1/services/defaults/{interface}", func(r *http.Request) (any, error) {
		return d.DefaultService(r.PathValue("interface"), r.URL.Query().Get("scope"))
	})
	s.handle("GET /v1/accounts/{name}/publications", func(r *http.Request) (any, error) {
		return d.Publications(r.PathValue("name"))
	})
	s.handle("POST /v1/accounts/{name}/publications", func(r *http.Request) (any, error) {
		var p api.Publication
		if err := decodeRequired(r, &p, "service", func() bool { return p.Service != "" }); err != nil {
			return nil, err
		}
		return d.Publish(r.Context(), r.PathValue("name"), p)
	})
	s.handle("POST /v1/accounts/{name}/publications/withdraw", func(r *http.Request) (any, error) {
		var p api.Publication
		if err := decodeRequired(r, &p, "service", func() bool { return p.Service != "" }); err != nil {
			return nil, err
		}
		return nil, d.Unpublish(r.Context(), r.PathValue("name"), p)
	})
	s.handle("GET /v1/accounts/{name}/grants", func(r *http.Request) (any, error) { return d.Grants(r.PathValue("name")) })
	for path, revoke := range map[string]bool{"POST /v1/accounts/{name}/grants": false, "POST /v1/accounts/{name}/grants/revoke": true} {
		s.handle(path, func(r *http.Request) (any, error) {
			var g api.Grant
			if err := decodeRequired(r, &g, "contact", func() bool { return g.Contact != "" }); err != nil {
				return nil, err
			}
			return d.Grant(r.PathValue("name"), g, revoke)
		})
	}
	s.handle("POST /v1/accounts/{name}/browse", func(r *http.Request) (any, error) {
		var req api.BrowseRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		return d.Browse(r.Context(), r.PathValue("name"), req)
	})
	s.handle("PUT /v1/services/defaults/{interface}", func(r *http.Request) (any, error) {
		var req api.SetDefaultRequest
		if err := decodeRequired(r, &req, "service", func() bool { return req.Service != "" }); err != nil {
			return nil, err
		}
		return d.SetDefaultService(r.PathValue("interface"), req)
	})
}
