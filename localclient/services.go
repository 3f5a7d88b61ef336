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
	var out api.ServiceDescriptor
	return &out, c.do(ctx, "POST", "/v1/services", nil, api.AddServiceRequest{XML: xml, File: file, Scope: scope}, &out)
}

// RemoveService unregisters a service from scope.
func (c *Client) RemoveService(ctx context.Context, name, scope string) error {
	return c.do(ctx, "DELETE", "/v1/services/"+url.PathEscape(name)+scopeQuery(scope), nil, nil, nil)
}

// Services lists the registered services of scope (user: the user's, then
// the system's).
func (c *Client) Services(ctx context.Context, scope string) ([]*api.ServiceDescriptor, error) {
	var out []*api.ServiceDescriptor
	return out, c.do(ctx, "GET", "/v1/services"+scopeQuery(scope), nil, nil, &out)
}

// FindServices lists the implementations f selects in scope.
func (c *Client) FindServices(ctx context.Context, f api.ServiceFilter, scope string) ([]api.Implementation, error) {
	var out []api.Implementation
	return out, c.do(ctx, "POST", "/v1/services/find", nil, api.FindServicesRequest{Filter: f, Scope: scope}, &out)
}

// DefaultService returns the default implementation of iface.
func (c *Client) DefaultService(ctx context.Context, iface, scope string) (api.Implementation, error) {
	var out api.Implementation
	return out, c.do(ctx, "GET", "/v1/services/defaults/"+url.PathEscape(iface)+scopeQuery(scope), nil, nil, &out)
}

// SetDefaultService makes service the default for iface (its newest
// version, or exactly version when not "").
func (c *Client) SetDefaultService(ctx context.Context, iface, service, version, scope string) (api.Implementation, error) {
	var out api.Implementation
	return out, c.do(ctx, "PUT", "/v1/services/defaults/"+url.PathEscape(iface), nil,
		api.SetDefaultRequest{Service: service, Version: version, Scope: scope}, &out)
}

func accountPath(account string) string { return "/v1/accounts/" + acct(account) }

// Publish makes a registered service visible to a contact (p.To) or a
// room (p.Room); account "" is the daemon's only account.
func (c *Client) Publish(ctx context.Context, account string, p api.Publication) (api.Publication, error) {
	var out api.Publication
	return out, c.do(ctx, "POST", accountPath(account)+"/publications", nil, p, &out)
}

// Unpublish withdraws a publication.
func (c *Client) Unpublish(ctx context.Context, account string, p api.Publication) error {
	return c.do(ctx, "POST", accountPath(account)+"/publications/withdraw", nil, p, nil)
}

// Publications lists an account's publications.
func (c *Client) Publications(ctx context.Context, account string) ([]api.Publication, error) {
	var out []api.Publication
	return out, c.do(ctx, "GET", accountPath(account)+"/publications", nil, nil, &out)
}

// Browse asks a contact, or a room's members, what they publish to us,
// through a filter.
func (c *Client) Browse(ctx context.Context, account string, req api.BrowseRequest) ([]api.RemoteImplementation, error) {
	var out []api.RemoteImplementation
	return out, c.do(ctx, "POST", accountPath(account)+"/browse", nil, req, &out)
}

// Activations reports the services started on demand (by name).
func (c *Client) Activations(ctx context.Context) (map[string]api.ActivationStatus, error) {
	var out map[string]api.ActivationStatus
	return out, c.do(ctx, "GET", "/v1/services/activations", nil, nil, &out)
}

// Grant gives a contact capabilities (revoke takes them back); it
// returns what the contact holds now.
func (c *Client) Grant(ctx context.Context, account string, g api.Grant, revoke bool) (api.Grant, error) {
	path := accountPath(account) + "/grants"
	if revoke {
		path += "/revoke"
	}
	var out api.Grant
	return out, c.do(ctx, "POST", path, nil, g, &out)
}

// Grants lists an account's grants.
func (c *Client) Grants(ctx context.Context, account string) ([]api.Grant, error) {
	var out []api.Grant
	return out, c.do(ctx, "GET", accountPath(account)+"/grants", nil, nil, &out)
}
