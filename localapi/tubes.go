package localapi

import (
	"net/http"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/tperr"
)

// tubeRoutes serves exports, tubes, connections, handlers and reverse
// tubes.
func (s *Server) tubeRoutes() {
	d := s.d
	s.handle("GET /v1/exports", func(r *http.Request) (any, error) { return d.Exports(), nil })
	s.handle("POST /v1/accounts/{name}/exports", func(r *http.Request) (any, error) {
		var e api.Export
		if err := decodeRequired(r, &e, "service", func() bool { return e.Service != "" }); err != nil {
			return nil, err
		}
		client := r.Header.Get(api.ClientHeader)
		if client != "" && !s.live(client) {
			return nil, tperr.New(tperr.InvalidArgument, "client %q has no live event stream", client)
		}
		return d.Export(r.PathValue("name"), client, e)
	})
	s.handle("POST /v1/params/{request}", func(r *http.Request) (any, error) {
		var a api.ParamsAnswer
		if err := decode(r, &a); err != nil {
			return nil, err
		}
		return nil, d.AnswerParams(r.Header.Get(api.ClientHeader), r.PathValue("request"), a)
	})
	s.handle("DELETE /v1/accounts/{name}/exports/{service}", func(r *http.Request) (any, error) {
		return nil, d.Unexport(r.PathValue("name"), r.PathValue("service"))
	})
	s.handle("POST /v1/accounts/{name}/tubes", func(r *http.Request) (any, error) {
		var req api.OfferRequest
		if err := decodeRequired(r, &req, "service", func() bool { return req.Service != "" }); err != nil {
			return nil, err
		}
		return d.Offer(r.Context(), r.PathValue("name"), req)
	})
	s.handle("GET /v1/tubes", func(r *http.Request) (any, error) { return d.Tubes(), nil })
	s.handle("GET /v1/tubes/{id}", func(r *http.Request) (any, error) { return d.Tube(r.PathValue("id")) })
	s.handle("POST /v1/tubes/{id}/accept", func(r *http.Request) (any, error) {
		var req api.AcceptRequest
		if err := decodeOptional(r, &req); err != nil {
			return nil, err
		}
		return d.Accept(r.Context(), r.PathValue("id"), req)
	})
	s.handle("POST /v1/tubes/{id}/close", func(r *http.Request) (any, error) {
		return nil, d.CloseTube(r.PathValue("id"))
	})
	s.handle("GET /v1/connections", func(r *http.Request) (any, error) { return d.Connections(), nil })
	s.handle("GET /v1/whois", func(r *http.Request) (any, error) {
		src := r.URL.Query().Get("source")
		if src == "" {
			return nil, tperr.New(tperr.InvalidArgument, "whois needs ?source=HOST:PORT")
		}
		return d.Whois(src)
	})
	s.handle("POST /v1/accounts/{name}/handlers", func(r *http.Request) (any, error) {
		client := r.Header.Get(api.ClientHeader)
		if !s.live(client) {
			return nil, tperr.New(tperr.InvalidArgument, "a handler lives as long as its client: open /v1/events and send its client_id in the %s header", api.ClientHeader)
		}
		var req api.HandleRequest
		if err := decodeRequired(r, &req, "service", func() bool { return req.Service != "" }); err != nil {
			return nil, err
		}
		id, err := d.AddHandler(r.PathValue("name"), client, req)
		if err != nil {
			return nil, err
		}
		return map[string]string{"handler": id}, nil
	})
	s.handle("POST /v1/accounts/{name}/open", func(r *http.Request) (any, error) {
		var req api.OpenRequest
		if err := decodeRequired(r, &req, "contact and service", func() bool { return req.Contact != "" && req.Service != "" }); err != nil {
			return nil, err
		}
		return d.Open(r.Context(), r.PathValue("name"), req)
	})
}

// decodeOptional decodes a body that may be empty.
func decodeOptional(r *http.Request, v any) error {
	if r.ContentLength == 0 {
		return nil
	}
	return decode(r, v)
}

func (s *Server) live(client string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.clients[client]
}
