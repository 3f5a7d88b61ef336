package localclient

import (
	"context"
	"net/http"
	"net/url"

	"github.com/tubes-dev/tubes/api"
)

// Export makes a local service available for tubes (tube export).
func (c *Client) Export(ctx context.Context, account string, e api.Export) (api.Export, error) {
	var h http.Header
	if e.ParamsGenerator {
		s, err := c.ensureSession(ctx)
		if err != nil {
			return api.Export{}, err
		}
		h = http.Header{api.ClientHeader: {s.id}}
	}
	return fetch[api.Export](ctx, c, "POST", "/v1/accounts/"+acct(account)+"/exports", h, e)
}

// Unexport removes an export.
func (c *Client) Unexport(ctx context.Context, account, service string) error {
	return c.do(ctx, "DELETE", "/v1/accounts/"+acct(account)+"/exports/"+url.PathEscape(service), nil, nil, nil)
}

// Exports lists the exports of every account.
func (c *Client) Exports(ctx context.Context) ([]api.Export, error) {
	return fetch[[]api.Export](ctx, c, "GET", "/v1/exports", nil, nil)
}

// Offer offers an exported service to a contact or a room; the returned
// tube's ID is the same on both sides.
func (c *Client) Offer(ctx context.Context, account string, req api.OfferRequest) (api.Tube, error) {
	return fetch[api.Tube](ctx, c, "POST", "/v1/accounts/"+acct(account)+"/tubes", nil, req)
}

// Tubes lists the tubes of every account.
func (c *Client) Tubes(ctx context.Context) ([]api.Tube, error) {
	return fetch[[]api.Tube](ctx, c, "GET", "/v1/tubes", nil, nil)
}

// Tube returns one tube.
func (c *Client) Tube(ctx context.Context, id string) (api.Tube, error) {
	return fetch[api.Tube](ctx, c, "GET", "/v1/tubes/"+url.PathEscape(id), nil, nil)
}

// Accept accepts an incoming tube; it returns once the tube's local
// socket (Address) accepts connections.
func (c *Client) Accept(ctx context.Context, id string, req api.AcceptRequest) (api.Tube, error) {
	return fetch[api.Tube](ctx, c, "POST", "/v1/tubes/"+url.PathEscape(id)+"/accept", nil, req)
}

// CloseTube closes a tube; its connections end with Cancelled.
func (c *Client) CloseTube(ctx context.Context, id string) error {
	return c.do(ctx, "POST", "/v1/tubes/"+url.PathEscape(id)+"/close", nil, nil, nil)
}

// Connections lists live tube connections.
func (c *Client) Connections(ctx context.Context) ([]api.Connection, error) {
	return fetch[[]api.Connection](ctx, c, "GET", "/v1/connections", nil, nil)
}

// Whois tells which contact a connection to an exported service comes
// from, by its source address.
func (c *Client) Whois(ctx context.Context, source string) (api.Whois, error) {
	return fetch[api.Whois](ctx, c, "GET", "/v1/whois?source="+url.QueryEscape(source), nil, nil)
}

// Handle accepts matching offers automatically for as long as this
// client is open (its session event stream carries the handler's life).
func (c *Client) Handle(ctx context.Context, account string, req api.HandleRequest) (string, error) {
	s, err := c.ensureSession(ctx)
	if err != nil {
		return "", err
	}
	var out struct{ Handler string }
	err = c.do(ctx, "POST", "/v1/accounts/"+acct(account)+"/handlers", http.Header{api.ClientHeader: {s.id}}, req, &out)
	return out.Handler, err
}

// SessionID is the client id the daemon knows this client by (its
// session event stream), opening the session if needed.
func (c *Client) SessionID(ctx context.Context) (string, error) {
	s, err := c.ensureSession(ctx)
	if err != nil {
		return "", err
	}
	return s.id, nil
}

// Open asks a contact for a tube to a service it exported for us (a
// reverse tube) and accepts it.
func (c *Client) Open(ctx context.Context, account string, req api.OpenRequest) (api.Tube, error) {
	return fetch[api.Tube](ctx, c, "POST", "/v1/accounts/"+acct(account)+"/open", nil, req)
}

// AnswerParams answers a ParametersRequested event addressed to this
// client.
func (c *Client) AnswerParams(ctx context.Context, request string, a api.ParamsAnswer) error {
	s, err := c.ensureSession(ctx)
	if err != nil {
		return err
	}
	return c.do(ctx, "POST", "/v1/params/"+url.PathEscape(request), http.Header{api.ClientHeader: {s.id}}, a, nil)
}
