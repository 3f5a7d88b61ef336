package rendezvous

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
)

// Operators (client side): an operator's connection to a running relay.

// Admin is an operator's connection to a running relay.
type Admin struct{ nc *nats.Conn }

// DialAdmin connects with the service credentials in info.
func DialAdmin(ctx context.Context, info AdminInfo) (*Admin, error) {
	opts := []nats.Option{nats.NoReconnect(), nats.Timeout(5 * time.Second), nats.CustomInboxPrefix(adminPrefix + "reply"), nats.Name("tube-relay-admin")}
	if info.CA != "" {
		opts = append(opts, nats.RootCAs(info.CA))
	}
	nc, err := connectCtx(ctx, info.URL, opts, nil)
	if err != nil {
		return nil, fmt.Errorf("rendezvous: cannot reach the relay at %s: %w", redact(info.URL), err)
	}
	return &Admin{nc: nc}, nil
}

// Close closes the connection.
func (a *Admin) Close() { a.nc.Close() }

// UserAdd adds an account bound to key, or, without a key, an invitation
// and returns its code.
func (a *Admin) UserAdd(ctx context.Context, name, key string) (invite string, err error) {
	var r userAddResp
	err = request(ctx, a.nc, adminPrefix+opUserAdd, userAddReq{Name: name, Key: key}, &r)
	return r.Invite, err
}

// UserList lists accounts and outstanding invitations.
func (a *Admin) UserList(ctx context.Context) ([]User, error) {
	return requestAs[[]User](ctx, a.nc, adminPrefix+opUserList, nil)
}

// UserRemove removes an account (its contacts, rooms it owns, live
// connections) or an invitation.
func (a *Admin) UserRemove(ctx context.Context, name string) error {
	return request(ctx, a.nc, adminPrefix+opUserRemove, nameReq{Name: name}, nil)
}
