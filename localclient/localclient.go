// Package localclient is the Go client of the daemon's local API: what the
// tube CLI and applications use to drive their connection manager. Every
// method maps to one request under /v1/; errors are *tperr.Error values
// carrying the Telepathy error name the daemon sent.
package localclient

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/tperr"
)

// DefaultSocket is where the daemon listens unless told otherwise:
// $TUBE_SOCKET, else $XDG_RUNTIME_DIR/tube/daemon.sock, else
// daemon.sock in the default state directory.
func DefaultSocket() string {
	if s := os.Getenv("TUBE_SOCKET"); s != "" {
		return s
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "tube", "daemon.sock")
	}
	return filepath.Join(DefaultStateDir(), "daemon.sock")
}

// DefaultStateDir is $XDG_STATE_HOME/tube, else ~/.local/state/tube.
func DefaultStateDir() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "tube")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		home = os.TempDir()
	}
	return filepath.Join(home, ".local", "state", "tube")
}

// Client talks to one daemon.
type Client struct {
	socket string
	hc     *http.Client

	mu      sync.Mutex // guards session
	session *session
}

// New returns a client for the daemon listening on socket ("" means
// DefaultSocket()).
func New(socket string) *Client {
	if socket == "" {
		socket = DefaultSocket()
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConns:    4,
		IdleConnTimeout: 0,
	}
	return &Client{socket: socket, hc: &http.Client{Transport: tr}}
}

// Socket returns the socket path the client uses.
func (c *Client) Socket() string { return c.socket }

// Close ends the client's session: its client interests are dropped.
func (c *Client) Close() error {
	c.mu.Lock()
	s := c.session
	c.session = nil
	c.mu.Unlock()
	if s != nil {
		s.stream.Close()
	}
	c.hc.CloseIdleConnections()
	return nil
}

func (c *Client) do(ctx context.Context, method, path string, header http.Header, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://tube"+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return c.dialError(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return decodeError(resp)
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("localclient: malformed answer from daemon: %w", err)
	}
	return nil
}

// fetch makes a request of the daemon and decodes its answer into a T.
// (Not "return out, c.do(…, &out)": the order in which a return
// statement evaluates out and the call is not specified.)
func fetch[T any](ctx context.Context, c *Client, method, path string, header http.Header, body any) (T, error) {
	var out T
	err := c.do(ctx, method, path, header, body, &out)
	return out, err
}

func (c *Client) dialError(err error) error {
	switch {
	case errors.Is(err, os.ErrNotExist) || strings.Contains(err.Error(), "no such file"):
		return tperr.Wrap(err, tperr.NotAvailable, "no daemon is listening on %s; start one with tube daemon", c.socket)
	case errors.Is(err, os.ErrPermission) || strings.Contains(err.Error(), "permission denied"):
		return tperr.Wrap(err, tperr.PermissionDenied, "permission denied on %s: the daemon belongs to another user", c.socket)
	case strings.Contains(err.Error(), "connection refused"):
		return tperr.Wrap(err, tperr.NotAvailable, "the daemon socket %s is stale (no daemon running); start one with tube daemon", c.socket)
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		return err
	}
	return tperr.Wrap(err, tperr.NetworkError, "cannot reach the daemon on %s (%s)", c.socket, tperr.Reason(err))
}

func decodeError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var e api.Error
	if err := json.Unmarshal(b, &e); err != nil || e.Code == "" {
		return tperr.New(tperr.NotAvailable, "the daemon answered %s", resp.Status)
	}
	return &tperr.Error{Name: e.Code, Message: e.Message}
}

func acct(name string) string {
	if name == "" {
		return "_"
	}
	return url.PathEscape(name)
}

// Status returns accounts, tubes and connections.
func (c *Client) Status(ctx context.Context) (api.Status, error) {
	return fetch[api.Status](ctx, c, "GET", "/v1/status", nil, nil)
}

// Accounts lists the daemon's accounts.
func (c *Client) Accounts(ctx context.Context) ([]api.Account, error) {
	return fetch[[]api.Account](ctx, c, "GET", "/v1/accounts", nil, nil)
}

// Account returns one account ("" means the only one).
func (c *Client) Account(ctx context.Context, name string) (api.Account, error) {
	return fetch[api.Account](ctx, c, "GET", "/v1/accounts/"+acct(name), nil, nil)
}

// AddAccount creates an account (registering it when asked) and returns it
// after its first connection attempt.
func (c *Client) AddAccount(ctx context.Context, req api.AddAccountRequest) (api.Account, error) {
	return fetch[api.Account](ctx, c, "POST", "/v1/accounts", nil, req)
}

// ExportKey returns an account's private key (PEM): with it, AddAccount
// (Key) moves the account to another daemon. It is the account's
// identity: keep it secret.
func (c *Client) ExportKey(ctx context.Context, name string) (api.AccountKey, error) {
	return fetch[api.AccountKey](ctx, c, "GET", "/v1/accounts/"+acct(name)+"/key", nil, nil)
}

// RemoveAccount deletes an account and its key from the daemon.
func (c *Client) RemoveAccount(ctx context.Context, name string) error {
	return c.do(ctx, "DELETE", "/v1/accounts/"+acct(name), nil, nil, nil)
}

// Connect asks an account to connect and returns at once.
func (c *Client) Connect(ctx context.Context, name string) (api.Account, error) {
	return fetch[api.Account](ctx, c, "POST", "/v1/accounts/"+acct(name)+"/connect", nil, nil)
}

// ConnectWait asks an account to connect and returns after the attempt.
func (c *Client) ConnectWait(ctx context.Context, name string) (api.Account, error) {
	return fetch[api.Account](ctx, c, "POST", "/v1/accounts/"+acct(name)+"/connect?wait=1", nil, nil)
}

// Disconnect disconnects an account.
func (c *Client) Disconnect(ctx context.Context, name string) (api.Account, error) {
	return fetch[api.Account](ctx, c, "POST", "/v1/accounts/"+acct(name)+"/disconnect", nil, nil)
}

// RequestHandles is the spec's RequestHandles.
func (c *Client) RequestHandles(ctx context.Context, account string, typ uint32, ids ...string) ([]uint32, error) {
	var out api.HandlesResponse
	err := c.do(ctx, "POST", "/v1/accounts/"+acct(account)+"/handles/request", nil, api.HandlesRequest{Type: typ, Identifiers: ids}, &out)
	return out.Handles, err
}

// InspectHandles is the spec's InspectHandles.
func (c *Client) InspectHandles(ctx context.Context, account string, typ uint32, handles ...uint32) ([]string, error) {
	var out api.InspectResponse
	err := c.do(ctx, "POST", "/v1/accounts/"+acct(account)+"/handles/inspect", nil, api.InspectRequest{Type: typ, Handles: handles}, &out)
	return out.Identifiers, err
}

// AddClientInterest registers this client's interest in tokens. The
// interest lasts until RemoveClientInterest or Close, or until this
// process exits: the daemon counts it per client, as the spec asks.
func (c *Client) AddClientInterest(ctx context.Context, account string, tokens ...string) error {
	return c.interest(ctx, account, "add", tokens)
}

// RemoveClientInterest releases interest registered by AddClientInterest.
func (c *Client) RemoveClientInterest(ctx context.Context, account string, tokens ...string) error {
	return c.interest(ctx, account, "remove", tokens)
}

func (c *Client) interest(ctx context.Context, account, op string, tokens []string) error {
	s, err := c.ensureSession(ctx)
	if err != nil {
		return err
	}
	h := http.Header{api.ClientHeader: {s.id}}
	return c.do(ctx, "POST", "/v1/accounts/"+acct(account)+"/interest/"+op, h, api.InterestRequest{Tokens: tokens}, nil)
}

// Contacts lists an account's contacts.
func (c *Client) Contacts(ctx context.Context, account string) ([]api.Contact, error) {
	return fetch[[]api.Contact](ctx, c, "GET", "/v1/accounts/"+acct(account)+"/contacts", nil, nil)
}

// AddContact asks name to be a contact (approving their request if they
// asked first).
func (c *Client) AddContact(ctx context.Context, account, name string) (api.Contact, error) {
	return fetch[api.Contact](ctx, c, "POST", "/v1/accounts/"+acct(account)+"/contacts", nil, api.NameRequest{Name: name})
}

// ApproveContact approves name's request.
func (c *Client) ApproveContact(ctx context.Context, account, name string) (api.Contact, error) {
	return fetch[api.Contact](ctx, c, "POST", "/v1/accounts/"+acct(account)+"/contacts/"+url.PathEscape(name)+"/approve", nil, nil)
}

// Contact shows one contact with the key pinned for them (its safety
// number, whether it is verified, and a refused change).
func (c *Client) Contact(ctx context.Context, account, contact string) (api.Contact, error) {
	return fetch[api.Contact](ctx, c, "GET", "/v1/accounts/"+acct(account)+"/contacts/"+url.PathEscape(contact), nil, nil)
}

// VerifyContact marks a contact's pinned key verified when fingerprint
// (a safety number, or SHA256:…) is its own, or trusts a changed key
// whose fingerprint it is; a mismatch is Cert.FingerprintMismatch.
func (c *Client) VerifyContact(ctx context.Context, account, contact, fingerprint string) (api.Contact, error) {
	return fetch[api.Contact](ctx, c, "POST", "/v1/accounts/"+acct(account)+"/contacts/"+url.PathEscape(contact)+"/verify", nil, api.VerifyRequest{Fingerprint: fingerprint})
}

// RemoveContact removes a contact or a request.
func (c *Client) RemoveContact(ctx context.Context, account, name string) error {
	return c.do(ctx, "DELETE", "/v1/accounts/"+acct(account)+"/contacts/"+url.PathEscape(name), nil, nil, nil)
}

// Presence lists contacts' and room members' presence.
func (c *Client) Presence(ctx context.Context, account string) ([]api.Presence, error) {
	return fetch[[]api.Presence](ctx, c, "GET", "/v1/accounts/"+acct(account)+"/presence", nil, nil)
}

// Rooms lists the rooms an account belongs to.
func (c *Client) Rooms(ctx context.Context, account string) ([]api.Room, error) {
	return fetch[[]api.Room](ctx, c, "GET", "/v1/accounts/"+acct(account)+"/rooms", nil, nil)
}

// CreateRoom creates an invite-only room.
func (c *Client) CreateRoom(ctx context.Context, account, room string) (api.Room, error) {
	return c.CreateRoomWith(ctx, account, api.RoomRequest{Room: room})
}

// CreateRoomWith creates a room as req says (Open: anyone may join).
func (c *Client) CreateRoomWith(ctx context.Context, account string, req api.RoomRequest) (api.Room, error) {
	return fetch[api.Room](ctx, c, "POST", "/v1/accounts/"+acct(account)+"/rooms", nil, req)
}

// InviteToRoom invites a contact to a room the account owns or
// administers.
func (c *Client) InviteToRoom(ctx context.Context, account, room, contact string) (api.Invitation, error) {
	return fetch[api.Invitation](ctx, c, "POST", roomPath(account, room)+"/invitations", nil, api.NameRequest{Name: contact})
}

// Invitations lists the rooms the account is invited to.
func (c *Client) Invitations(ctx context.Context, account string) ([]api.Invitation, error) {
	return fetch[[]api.Invitation](ctx, c, "GET", "/v1/accounts/"+acct(account)+"/invitations", nil, nil)
}

// DeclineRoom turns down an invitation to a room.
func (c *Client) DeclineRoom(ctx context.Context, account, room string) error {
	return c.do(ctx, "POST", roomPath(account, room)+"/decline", nil, nil, nil)
}

// RemoveFromRoom removes a member from a room (the owner: anyone; an
// admin: plain members), or withdraws an invitation.
func (c *Client) RemoveFromRoom(ctx context.Context, account, room, member string) error {
	return c.do(ctx, "DELETE", roomPath(account, room)+"/members/"+url.PathEscape(member), nil, nil, nil)
}

// SetRoomAdmin makes a member an admin (the owner only), or with revoke a
// plain member again.
func (c *Client) SetRoomAdmin(ctx context.Context, account, room, member string, revoke bool) (api.Member, error) {
	return fetch[api.Member](ctx, c, "POST", roomPath(account, room)+"/admins", nil, api.AdminRequest{Name: member, Revoke: revoke})
}

func roomPath(account, room string) string {
	return "/v1/accounts/" + acct(account) + "/rooms/" + url.PathEscape(room)
}

// JoinRoom joins a room the account is invited to, or an open room.
func (c *Client) JoinRoom(ctx context.Context, account, room string) (api.Room, error) {
	return fetch[api.Room](ctx, c, "POST", "/v1/accounts/"+acct(account)+"/rooms/"+url.PathEscape(room)+"/join", nil, nil)
}

// LeaveRoom leaves a room.
func (c *Client) LeaveRoom(ctx context.Context, account, room string) error {
	return c.do(ctx, "POST", "/v1/accounts/"+acct(account)+"/rooms/"+url.PathEscape(room)+"/leave", nil, nil, nil)
}

// RoomMembers lists a room's members.
func (c *Client) RoomMembers(ctx context.Context, account, room string) ([]api.Member, error) {
	return fetch[[]api.Member](ctx, c, "GET", "/v1/accounts/"+acct(account)+"/rooms/"+url.PathEscape(room)+"/members", nil, nil)
}

// Send delivers a message to a contact or a room through the rendezvous.
func (c *Client) Send(ctx context.Context, account string, req api.SendRequest) (api.SendResponse, error) {
	return fetch[api.SendResponse](ctx, c, "POST", "/v1/accounts/"+acct(account)+"/messages", nil, req)
}

// ---- events ----

// Stream is an open /v1/events stream.
type Stream struct {
	ID     string // the client_id the daemon gave this stream
	body   io.ReadCloser
	events chan api.Event
	done   chan struct{}
	err    error
}

// Events opens an event stream (of one account, or all if account is "").
// The stream is its own local-API client: interests registered under its
// ID end when it closes.
func (c *Client) Events(ctx context.Context, account string) (*Stream, error) {
	return c.EventsIn(ctx, account, "")
}

// EventsIn is Events for a watcher of a service scope: with "system" it
// sees service changes of the system scope only.
func (c *Client) EventsIn(ctx context.Context, account, scope string) (*Stream, error) {
	q := url.Values{}
	if account != "" {
		q.Set("account", account)
	}
	if scope != "" {
		q.Set("scope", scope)
	}
	path := "/v1/events"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, "GET", "http://tube"+path, nil)
	if err != nil {
		return nil, err
	}
	// The stream outlives ordinary requests: no client timeout applies.
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, c.dialError(err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, decodeError(resp)
	}
	s := &Stream{body: resp.Body, events: make(chan api.Event, 256), done: make(chan struct{})}
	br := bufio.NewReader(resp.Body)
	first, err := readEvent(br)
	if err != nil || first.Type != api.EventHello {
		resp.Body.Close()
		return nil, fmt.Errorf("localclient: event stream did not start with Hello: %v", err)
	}
	s.ID = first.ClientID
	go s.read(br)
	return s, nil
}

func (s *Stream) read(br *bufio.Reader) {
	defer close(s.events)
	defer close(s.done)
	for {
		e, err := readEvent(br)
		if err != nil {
			s.err = err
			return
		}
		s.events <- e
	}
}

// readEvent reads one SSE event (event:/data: lines up to a blank line).
func readEvent(br *bufio.Reader) (api.Event, error) {
	var data []byte
	var typ string
	for {
		line, err := br.ReadBytes('\n')
		if err != nil {
			return api.Event{}, err
		}
		line = bytes.TrimRight(line, "\r\n")
		switch {
		case len(line) == 0:
			if data == nil {
				continue // keepalive or stray blank line
			}
			var e api.Event
			if err := json.Unmarshal(data, &e); err != nil {
				return api.Event{}, fmt.Errorf("localclient: bad event: %w", err)
			}
			if typ == "Overflow" {
				return api.Event{}, errors.New("localclient: the daemon cut this event stream off because it fell behind")
			}
			return e, nil
		case bytes.HasPrefix(line, []byte(":")):
		case bytes.HasPrefix(line, []byte("event:")):
			typ = strings.TrimSpace(string(line[6:]))
		case bytes.HasPrefix(line, []byte("data:")):
			data = append(data, bytes.TrimSpace(line[5:])...)
		}
	}
}

// C delivers events; it is closed when the stream ends (then Err says why).
func (s *Stream) C() <-chan api.Event { return s.events }

// Err is why the stream ended.
func (s *Stream) Err() error {
	select {
	case <-s.done:
		return s.err
	default:
		return nil
	}
}

// Close ends the stream.
func (s *Stream) Close() error {
	err := s.body.Close()
	go func() {
		for range s.events {
		}
	}()
	return err
}

// session is the client's own event stream, opened on first need. It
// identifies the client to the daemon (client interests, handlers,
// parameter generators live as long as it) and fans its events out to
// the library's listeners.
type session struct {
	id     string
	stream *Stream

	mu        sync.Mutex // guards listeners
	listeners map[int]func(api.Event)
	next      int
}

func (c *Client) ensureSession(ctx context.Context) (*session, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.session != nil && c.session.stream.Err() == nil {
		return c.session, nil
	}
	st, err := c.Events(context.Background(), "")
	if err != nil {
		return nil, err
	}
	s := &session{id: st.ID, stream: st, listeners: map[int]func(api.Event){}}
	go func() {
		for ev := range st.C() {
			s.mu.Lock()
			fs := make([]func(api.Event), 0, len(s.listeners))
			for _, f := range s.listeners {
				fs = append(fs, f)
			}
			s.mu.Unlock()
			for _, f := range fs {
				f(ev)
			}
		}
	}()
	c.session = s
	return s, nil
}

// listen calls f with every event of the client's session until the
// returned function is called. f must not block.
func (c *Client) listen(ctx context.Context, f func(api.Event)) (string, func(), error) {
	s, err := c.ensureSession(ctx)
	if err != nil {
		return "", nil, err
	}
	s.mu.Lock()
	id := s.next
	s.next++
	s.listeners[id] = f
	s.mu.Unlock()
	return s.id, func() {
		s.mu.Lock()
		delete(s.listeners, id)
		s.mu.Unlock()
	}, nil
}
