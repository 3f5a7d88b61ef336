package turnclient

import (
	"context"
	"log/slog"

	"github.com/pion/stun/v4"
)

// DecodeForFuzz runs every decoder the client applies to a server message.
func DecodeForFuzz(b []byte) {
	m := &stun.Message{Raw: append([]byte(nil), b...)}
	if m.Decode() != nil {
		return
	}
	errorOf(m)
	lifetimeOf(m, 0)
	var a stun.XORMappedAddress
	if a.GetFromAs(m, stun.AttrXORRelayedAddress) == nil {
		addrPort(a.IP, a.Port)
	}
	c := &Client{log: slog.New(slog.DiscardHandler), notify: make(chan struct{}, 1)}
	c.onAttempt(m)
}

// RefreshPerms runs the permission refresh now.
func (c *Client) RefreshPerms(ctx context.Context) error { return c.refreshPerms(ctx) }
