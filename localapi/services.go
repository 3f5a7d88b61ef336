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
		if err := decodeRequired(r, &req, "xml", func() bool { return req.XML != "" }); err != nil {
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
	s.handle("GET /v1/services/defaults/{interface}", func(r *http.Request) (any, error) {
		return d.DefaultService(r.PathValue("interface"), r.URL.Query().Get("scope"))
	})
	s.handle("PUT /v1/services/defaults/{interface}", func(r *http.Request) (any, error) {
		var req api.SetDefaultRequest
		if err := decodeRequired(r, &req, "service", func() bool { return req.Service != "" }); err != nil {
			return nil, err
		}
		return d.SetDefaultService(r.PathValue("interface"), req)
	})
}
