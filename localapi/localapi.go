// Package localapi serves the daemon's local API: HTTP+JSON under /v1/ on
// a Unix socket. The socket is mode 0600 in a 0700 directory, and every
// connection's peer uid is read with SO_PEERCRED: a caller running as
// another user gets 403 even if the file mode lets it connect. Errors are
// {code, message} with Telepathy error names; /v1/events is a
// Server-Sent Events stream of the daemon's signals.
package localapi

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/connection"
	"github.com/tubes-dev/tubes/daemon"
	"github.com/tubes-dev/tubes/internal/ucred"
	"github.com/tubes-dev/tubes/tperr"
)

// Server serves the local API of one daemon.
type Server struct {
	d   *daemon.Daemon
	log *slog.Logger
	uid int // the only uid allowed in
	mux *http.ServeMux

	mu      sync.Mutex // guards clients
	clients map[string]bool
}

// New returns a server for d. Only processes of the daemon's own uid are
// let in.
func New(d *daemon.Daemon, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{d: d, log: log.With("component", "localapi"), uid: os.Geteuid(), mux: http.NewServeMux(), clients: map[string]bool{}}
	s.routes()
	return s
}

// Listen creates the daemon socket at path: its directory is created 0700
// if missing, a stale socket left by a dead daemon is replaced, and a live
// one is an error.
func Listen(path string) (net.Listener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("localapi: socket directory: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, tperr.New(tperr.NotAvailable, "a daemon is already listening on %s; stop it, or give this one --socket of its own", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("localapi: remove stale socket: %w", err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("localapi: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("localapi: %w", err)
	}
	return ln, nil
}

type credKey struct{}

// Serve serves on ln until ctx ends.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	hs := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute, // a kept-alive connection between calls
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			uc, ok := c.(*net.UnixConn)
			if !ok {
				s.log.Warn("local API connection is not on a Unix socket; its calls are refused")
				return ctx
			}
			cred, err := ucred.Peer(uc)
			if err != nil {
				s.log.Warn("cannot read peer credentials", "err", err)
				return ctx
			}
			return context.WithValue(ctx, credKey{}, cred)
		},
		BaseContext: func(net.Listener) context.Context { return ctx },
		ErrorLog:    slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	done := make(chan error, 1)
	go func() { done <- hs.Serve(ln) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	hs.Shutdown(sctx)
	hs.Close()
	<-done
	return nil
}

// ServeHTTP checks the caller's uid, then routes.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	cred, ok := r.Context().Value(credKey{}).(ucred.Cred)
	if !ok || int(cred.UID) != s.uid {
		uid := -1
		if ok {
			uid = int(cred.UID)
		}
		s.log.Warn("local API call from another user refused", "uid", uid, "path", r.URL.Path)
		s.writeError(w, r, tperr.New(tperr.PermissionDenied, "this daemon belongs to uid %d; uid %d may not use it", s.uid, uid))
		return
	}
	s.mux.ServeHTTP(w, r)
}

func (s *Server) routes() {
	d := s.d
	s.handle("GET /v1/status", func(r *http.Request) (any, error) { return d.Status(), nil })
	s.mux.HandleFunc("GET /v1/events", s.events)

	s.handle("GET /v1/accounts", func(r *http.Request) (any, error) { return d.Accounts(), nil })
	s.handle("POST /v1/accounts", func(r *http.Request) (any, error) {
		var req api.AddAccountRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		if req.Name == "" {
			return nil, tperr.New(tperr.InvalidArgument, "field \"name\" is required")
		}
		return d.AddAccount(r.Context(), req)
	})
	s.handle("GET /v1/accounts/{name}", func(r *http.Request) (any, error) { return d.Account(r.PathValue("name")) })
	s.handle("DELETE /v1/accounts/{name}", func(r *http.Request) (any, error) {
		return nil, d.RemoveAccount(r.PathValue("name"))
	})
	s.handle("POST /v1/accounts/{name}/connect", func(r *http.Request) (any, error) {
		name := r.PathValue("name")
		if err := d.Connect(name); err != nil {
			return nil, err
		}
		if r.URL.Query().Get("wait") != "" {
			return d.WaitSettled(r.Context(), name)
		}
		return d.Account(name)
	})
	s.handle("POST /v1/accounts/{name}/disconnect", func(r *http.Request) (any, error) {
		name := r.PathValue("name")
		if err := d.Disconnect(name); err != nil {
			return nil, err
		}
		return d.WaitDisconnected(r.Context(), name)
	})
	s.handle("POST /v1/accounts/{name}/handles/request", func(r *http.Request) (any, error) {
		var req api.HandlesRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		hs, err := d.RequestHandles(r.Context(), r.PathValue("name"), connection.HandleType(req.Type), req.Identifiers)
		if err != nil {
			return nil, err
		}
		out := api.HandlesResponse{Handles: make([]uint32, len(hs))}
		for i, h := range hs {
			out.Handles[i] = uint32(h)
		}
		return out, nil
	})
	s.handle("POST /v1/accounts/{name}/handles/inspect", func(r *http.Request) (any, error) {
		var req api.InspectRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		hs := make([]connection.Handle, len(req.Handles))
		for i, h := range req.Handles {
			hs[i] = connection.Handle(h)
		}
		ids, err := d.InspectHandles(r.PathValue("name"), connection.HandleType(req.Type), hs)
		return api.InspectResponse{Identifiers: ids}, err
	})
	s.handle("POST /v1/accounts/{name}/interest/add", func(r *http.Request) (any, error) {
		client, tokens, err := s.interest(r)
		if err != nil {
			return nil, err
		}
		return nil, d.AddClientInterest(r.PathValue("name"), client, tokens)
	})
	s.handle("POST /v1/accounts/{name}/interest/remove", func(r *http.Request) (any, error) {
		client, tokens, err := s.interest(r)
		if err != nil {
			return nil, err
		}
		return nil, d.RemoveClientInterest(r.PathValue("name"), client, tokens)
	})

	s.handle("GET /v1/accounts/{name}/contacts", func(r *http.Request) (any, error) {
		return d.Contacts(r.Context(), r.PathValue("name"))
	})
	s.handle("POST /v1/accounts/{name}/contacts", func(r *http.Request) (any, error) {
		var req api.NameRequest
		if err := decodeRequired(r, &req, "name", func() bool { return req.Name != "" }); err != nil {
			return nil, err
		}
		return d.AddContact(r.Context(), r.PathValue("name"), req.Name)
	})
	s.handle("POST /v1/accounts/{name}/contacts/{contact}/approve", func(r *http.Request) (any, error) {
		return d.ApproveContact(r.Context(), r.PathValue("name"), r.PathValue("contact"))
	})
	s.handle("GET /v1/accounts/{name}/contacts/{contact}", func(r *http.Request) (any, error) {
		return d.Contact(r.Context(), r.PathValue("name"), r.PathValue("contact"))
	})
	s.handle("POST /v1/accounts/{name}/contacts/{contact}/verify", func(r *http.Request) (any, error) {
		var req api.VerifyRequest
		if err := decodeRequired(r, &req, "fingerprint", func() bool { return req.Fingerprint != "" }); err != nil {
			return nil, err
		}
		return d.VerifyContact(r.Context(), r.PathValue("name"), r.PathValue("contact"), req.Fingerprint)
	})
	s.handle("DELETE /v1/accounts/{name}/contacts/{contact}", func(r *http.Request) (any, error) {
		return nil, d.RemoveContact(r.Context(), r.PathValue("name"), r.PathValue("contact"))
	})
	s.handle("GET /v1/accounts/{name}/presence", func(r *http.Request) (any, error) {
		return d.Presence(r.Context(), r.PathValue("name"))
	})
	s.handle("GET /v1/accounts/{name}/key", func(r *http.Request) (any, error) {
		return d.ExportKey(r.PathValue("name"))
	})
	s.handle("GET /v1/accounts/{name}/rooms", func(r *http.Request) (any, error) {
		return d.Rooms(r.Context(), r.PathValue("name"))
	})
	s.handle("POST /v1/accounts/{name}/rooms", func(r *http.Request) (any, error) {
		var req api.RoomRequest
		if err := decodeRequired(r, &req, "room", func() bool { return req.Room != "" }); err != nil {
			return nil, err
		}
		return d.CreateRoom(r.Context(), r.PathValue("name"), req)
	})
	s.handle("GET /v1/accounts/{name}/invitations", func(r *http.Request) (any, error) {
		return d.Invitations(r.Context(), r.PathValue("name"))
	})
	s.handle("POST /v1/accounts/{name}/rooms/{room}/invitations", func(r *http.Request) (any, error) {
		var req api.NameRequest
		if err := decodeRequired(r, &req, "name", func() bool { return req.Name != "" }); err != nil {
			return nil, err
		}
		return d.InviteToRoom(r.Context(), r.PathValue("name"), r.PathValue("room"), req.Name)
	})
	s.handle("POST /v1/accounts/{name}/rooms/{room}/decline", func(r *http.Request) (any, error) {
		return nil, d.DeclineRoom(r.Context(), r.PathValue("name"), r.PathValue("room"))
	})
	s.handle("DELETE /v1/accounts/{name}/rooms/{room}/members/{member}", func(r *http.Request) (any, error) {
		return nil, d.RemoveFromRoom(r.Context(), r.PathValue("name"), r.PathValue("room"), r.PathValue("member"))
	})
	s.handle("POST /v1/accounts/{name}/rooms/{room}/admins", func(r *http.Request) (any, error) {
		var req api.AdminRequest
		if err := decodeRequired(r, &req, "name", func() bool { return req.Name != "" }); err != nil {
			return nil, err
		}
		return d.SetRoomAdmin(r.Context(), r.PathValue("name"), r.PathValue("room"), req)
	})
	s.handle("POST /v1/accounts/{name}/rooms/{room}/join", func(r *http.Request) (any, error) {
		return d.JoinRoom(r.Context(), r.PathValue("name"), r.PathValue("room"))
	})
	s.handle("POST /v1/accounts/{name}/rooms/{room}/leave", func(r *http.Request) (any, error) {
		return nil, d.LeaveRoom(r.Context(), r.PathValue("name"), r.PathValue("room"))
	})
	s.handle("GET /v1/accounts/{name}/rooms/{room}/members", func(r *http.Request) (any, error) {
		return d.RoomMembers(r.Context(), r.PathValue("name"), r.PathValue("room"))
	})
	s.handle("POST /v1/accounts/{name}/messages", func(r *http.Request) (any, error) {
		var req api.SendRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		return d.Send(r.Context(), r.PathValue("name"), req)
	})
	s.tubeRoutes()
	s.serviceRoutes()
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.writeError(w, r, tperr.New(tperr.NotImplemented, "the local API has no %s %s", r.Method, r.URL.Path))
	})
}

// "_" stands for the daemon's only account in paths, so simple clients
// need not know its name.
func accountParam(r *http.Request) string {
	if n := r.PathValue("name"); n != "_" {
		return n
	}
	return ""
}

// handle registers a JSON handler. A nil result with no error is 204.
func (s *Server) handle(pattern string, h func(*http.Request) (any, error)) {
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("name") == "_" {
			r.SetPathValue("name", accountParam(r))
		}
		v, err := h(r)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		if v == nil {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		writeJSON(w, http.StatusOK, v)
	})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// httpStatus maps Telepathy error names to HTTP statuses.
func httpStatus(name string) int {
	switch name {
	case tperr.InvalidArgument, tperr.InvalidHandle:
		return http.StatusBadRequest
	case tperr.PermissionDenied, tperr.NotYours, tperr.AuthenticationFailed:
		return http.StatusForbidden
	case tperr.NotFound, tperr.DoesNotExist:
		return http.StatusNotFound
	case tperr.NotAvailable, tperr.RegistrationExists, tperr.AlreadyConnected, tperr.Disconnected, tperr.Offline:
		return http.StatusConflict
	case tperr.NotImplemented:
		return http.StatusNotImplemented
	case tperr.Timeout:
		return http.StatusGatewayTimeout
	case tperr.ServiceBusy:
		return http.StatusServiceUnavailable
	case "":
		return http.StatusInternalServerError
	}
	return http.StatusBadGateway // the relay or the network failed
}

// writeError answers with err's name and message. An error with no
// Telepathy name is the daemon's own failure: its text is internal
// (tperr's policy), so the client is told that and the log gets it.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	name := tperr.Name(err)
	msg := tperr.Message(err)
	code := httpStatus(name)
	if name == "" {
		s.log.Error("local API call failed inside the daemon", "method", r.Method, "path", r.URL.Path, "err", err)
		name, msg = tperr.NotAvailable, "internal error in the daemon (its log says more)"
	} else {
		s.log.Debug("local API call refused", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	writeJSON(w, code, api.Error{Code: name, Message: msg})
}

const maxBody = 1 << 20

// decode reads a JSON body strictly: unknown fields and wrong types are
// 400 errors naming the field.
func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	var (
		syn *json.SyntaxError
		typ *json.UnmarshalTypeError
	)
	switch {
	case err == nil:
		if dec.More() {
			return tperr.New(tperr.InvalidArgument, "the request body holds more than one JSON value")
		}
		return nil
	case errors.Is(err, io.EOF):
		return tperr.New(tperr.InvalidArgument, "the request body is empty; a JSON object is expected")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return tperr.New(tperr.InvalidArgument, "the request body is not valid JSON: it ends too early")
	case errors.As(err, &syn):
		return tperr.New(tperr.InvalidArgument, "the request body is not valid JSON (at byte %d): %v", syn.Offset, err)
	case errors.As(err, &typ):
		field := typ.Field
		if field == "" {
			return tperr.New(tperr.InvalidArgument, "the request body must be a JSON object, not %s", typ.Value)
		}
		return tperr.New(tperr.InvalidArgument, "field %q must be %s, not %s", field, jsonType(typ.Type.String()), typ.Value)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return tperr.New(tperr.InvalidArgument, "unknown field %s in the request body", strings.TrimPrefix(err.Error(), "json: unknown field "))
	}
	return tperr.New(tperr.InvalidArgument, "the request body could not be read: %v", err)
}

func decodeRequired(r *http.Request, v any, field string, present func() bool) error {
	if err := decode(r, v); err != nil {
		return err
	}
	if !present() {
		return tperr.New(tperr.InvalidArgument, "field %q is required", field)
	}
	return nil
}

func jsonType(goType string) string {
	switch {
	case strings.HasPrefix(goType, "[]uint8"):
		return "a base64 string"
	case strings.HasPrefix(goType, "[]"):
		return "an array"
	case strings.HasPrefix(goType, "uint"), strings.HasPrefix(goType, "int"), strings.HasPrefix(goType, "float"):
		return "a number"
	case goType == "string":
		return "a string"
	case goType == "bool":
		return "true or false"
	}
	return "an object"
}

// interest reads an interest request and checks its client.
func (s *Server) interest(r *http.Request) (string, []string, error) {
	client := r.Header.Get(api.ClientHeader)
	s.mu.Lock()
	live := s.clients[client]
	s.mu.Unlock()
	if !live {
		return "", nil, tperr.New(tperr.InvalidArgument, "client interest needs a live event stream: open /v1/events and send its client_id in the %s header", api.ClientHeader)
	}
	var req api.InterestRequest
	if err := decode(r, &req); err != nil {
		return "", nil, err
	}
	return client, req.Tokens, nil
}

// events streams the daemon's signals. Each stream is a local-API client
// in the spec's sense: its client interests last as long as the stream.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	fl, ok := w.(http.Flusher)
	if !ok {
		s.writeError(w, r, tperr.New(tperr.NotImplemented, "streaming is not supported here"))
		return
	}
	account := r.URL.Query().Get("account")
	// A system-scope watcher sees service changes of the system scope
	// only (Qt's rule); everything else is unaffected.
	systemOnly := r.URL.Query().Get("scope") == "system"
	wanted := func(e api.Event) bool {
		if account != "" && e.Account != "" && e.Account != account {
			return false
		}
		return !systemOnly || e.Scope == "" || e.Scope == "system"
	}
	sub := s.d.Events()
	defer sub.Close()
	id := newClientID()
	s.mu.Lock()
	s.clients[id] = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.clients, id)
		s.mu.Unlock()
		s.d.ClientGone(id)
	}()

	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	writeEvent(w, api.Event{Type: api.EventHello, ClientID: id, Time: time.Now().UTC()})
	fl.Flush()
	keepalive := time.NewTicker(15 * time.Second)
	defer keepalive.Stop()
	// Each write has a deadline: a client that stops reading is dropped
	// once its socket stays full that long, and its events stop being
	// queued for it (the bus cuts it off) long before.
	rc := http.NewResponseController(w)
	timeout := s.d.Limits().EventWriteTimeout
	flush := func() bool { return rc.Flush() == nil }
	deadline := func() { rc.SetWriteDeadline(time.Now().Add(timeout)) }
	for {
		select {
		case <-r.Context().Done():
			return
		case <-keepalive.C:
			deadline()
			io.WriteString(w, ": keepalive\n\n")
			if !flush() {
				return
			}
		case <-sub.Ready():
			events, open := sub.Take()
			deadline()
			for _, e := range events {
				if wanted(e.Event) {
					fmt.Fprintf(w, "event: %s\ndata: %s\n\n", e.Type, e.JSON)
				}
			}
			if !open && sub.Overflowed() {
				// The last word, where it still fits in the socket.
				io.WriteString(w, "event: Overflow\ndata: {\"message\":\"this client fell too far behind; reconnect\"}\n\n")
			}
			if !flush() || !open {
				return
			}
		}
	}
}

func writeEvent(w io.Writer, e api.Event) {
	b, _ := json.Marshal(e)
	fmt.Fprintf(w, "event: %s\ndata: %s\n\n", e.Type, b)
}

func newClientID() string {
	b := make([]byte, 12)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}
