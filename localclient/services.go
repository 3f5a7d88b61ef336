package localclient

import (
	"context"
	"net/url"

	"github.com/tubes-dev/tubes/api"
)

func scopeQuery(scope string) string {
	if scope == "" {
		return ""
	}
	return "?scope=" + url.QueryEscape(scope)
}

// AddService registers a Qt Service Framework XML descriptor (file names
// it in errors) in scope ("user" or "system"; "" is user).
func (c *Client) AddService(ctx context.Context, xml, file, scope string) (*api.ServiceDescriptor, error) {
	out, err := fetch[api.ServiceDescriptor](ctx, c, "POST", "/v1/services", nil, api.AddServiceRequest{XML: xml, File: file, Scope: scope})
	return &out, err
}

// RemoveService unregisters a service from scope.
func (c *Client) RemoveService(ctx context.Context, name, scope string) error {
	return c.do(ctx, "DELETE", "/v1/services/"+url.PathEscape(name)+scopeQuery(scope), nil, nil, nil)
}

// Services lists the registered services of scope (user: the user's, then
// the system's).
func (c *Client) Services(ctx context.Context, scope string) ([]*api.ServiceDescriptor, error) {
	return fetch[[]*api.ServiceDescriptor](ctx, c, "GET", "/v1/services"+scopeQuery(scope), nil, nil)
}

// FindServices lists the implementations f selects in scope.
func (c *Client) FindServices(ctx context.Context, f api.ServiceFilter, scope string) ([]api.Implementation, error) {
	return fetch[[]api.Implementation](ctx, c, "POST", "/v1/services/find", nil, api.FindServicesRequest{Filter: f, Scope: scope})
}

// DefaultService returns the default implementation of iface.
func (c *Client) DefaultService(ctx context.Context, iface, scope string) (api.Implementation, error) {
	return fetch[api.Implementation](ctx, c, "GET", "/v1/services/defaults/"+url.PathEscape(iface)+scopeQuery(scope), nil, nil)
}

// DefaultRules lists the default rules lookups in scope follow ("" the
// user's, then the system's).
func (c *Client) DefaultRules(ctx context.Context, scope string) ([]api.DefaultRule, error) {
	return fetch[[]api.DefaultRule](ctx, c, "GET", "/v1/services/defaults"+scopeQuery(scope), nil, nil)
}

// ClearDefaultService drops the default rule scope keeps for iface: its
// default goes back to the newest implementation of the scope.
func (c *Client) ClearDefaultService(ctx context.Context, iface, scope string) error {
	return c.do(ctx, "DELETE", "/v1/services/defaults/"+url.PathEscape(iface)+scopeQuery(scope), nil, nil, nil)
}

// SetDefaultService makes service the default for iface (its newest
// version, or exactly version when not "").
func (c *Client) SetDefaultService(ctx context.Context, iface, service, version, scope string) (api.Implementation, error) {
	return fetch[api.Implementation](ctx, c, "PUT", "/v1/services/defaults/"+url.PathEscape(iface), nil,
		api.SetDefaultRequest{Service: service, Version: version, Scope: scope})
}

func accountPath(account string) string { return "/v1/accounts/" + acct(account) }

// Publish makes a registered service visible to a contact (p.To) or a
// room (p.Room); account "" is the daemon's only account.
func (c *Client) Publish(ctx context.Context, account string, p api.Publication) (api.Publication, error) {
	return fetch[api.Publication](ctx, c, "POST", accountPath(account)+"/publications", nil, p)
}

// Unpublish withdraws a publication.
func (c *Client) Unpublish(ctx context.Context, account string, p api.Publication) error {
	return c.do(ctx, "POST", accountPath(account)+"/publications/withdraw", nil, p, nil)
}

// Publications lists an account's publications.
func (c *Client) Publications(ctx context.Context, account string) ([]api.Publication, error) {
	return fetch[[]api.Publication](ctx, c, "GET", accountPath(account)+"/publications", nil, nil)
}

// Browse asks a contact, or a room's members, what they publish to us,
// through a filter.
func (c *Client) Browse(ctx context.Context, account string, req api.BrowseRequest) ([]api.RemoteImplementation, error) {
	return fetch[[]api.RemoteImplementation](ctx, c, "POST", accountPath(account)+"/browse", nil, req)
}

// Activations reports the services started on demand (by name).
func (c *Client) Activations(ctx context.Context) (map[string]api.ActivationStatus, error) {
	return fetch[map[string]api.ActivationStatus](ctx, c, "GET", "/v1/services/activations", nil, nil)
}

// Grant gives a contact capabilities (revoke takes them back); it
// returns what the contact holds now.
func (c *Client) Grant(ctx context.Context, account string, g api.Grant, revoke bool) (api.Grant, error) {
	path := accountPath(account) + "/grants"
	if revoke {
		path += "/revoke"
	}
	return fetch[api.Grant](ctx, c, "POST", path, nil, g)
}

// Grants lists an account's grants.
func (c *Client) Grants(ctx context.Context, account string) ([]api.Grant, error) {
	return fetch[[]api.Grant](ctx, c, "GET", accountPath(account)+"/grants", nil, nil)
}
