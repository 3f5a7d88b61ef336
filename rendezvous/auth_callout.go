package rendezvous

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// Authorization (service side): the NATS auth callout that checks each
// new connection's signed nonce and name→key binding and grants its
// permissions.

// handleAuth answers the server's authorization request for a new client
// connection. Every client must sign the server's nonce with an nkey. A
// client that names an account gets that account's permissions if the
// key is the account's; a client that names none is a guest that may only
// register or ask about a name.
func (s *Service) handleAuth(_ context.Context, m *nats.Msg) {
	rc, err := jwt.DecodeAuthorizationRequestClaims(string(m.Data))
	if err != nil {
		s.log.Warn("malformed authorization request", "err", err)
		return
	}
	user, authErr := s.authorize(rc)
	resp := jwt.NewAuthorizationResponseClaims(rc.UserNkey)
	resp.Audience = rc.Server.ID
	if authErr != nil {
		resp.Error = authErr.Error()
		s.logSome.Do(func() {
			s.log.Info("connection refused", "user", rc.ConnectOptions.Username, "host", rc.ClientInformation.Host, "why", authErr)
		})
		s.m.auth("refused")
	} else {
		ujwt, err := user.Encode(s.cfg.Issuer)
		if err != nil {
			s.log.Error("encode user claims", "err", err)
			return
		}
		resp.Jwt = ujwt
		s.m.auth("ok")
	}
	out, err := resp.Encode(s.cfg.Issuer)
	if err != nil {
		s.log.Error("encode authorization response", "err", err)
		return
	}
	m.Respond([]byte(out))
}

func (s *Service) authorize(rc *jwt.AuthorizationRequestClaims) (*jwt.UserClaims, error) {
	co := rc.ConnectOptions
	if co.Nkey == "" || co.SignedNonce == "" {
		return nil, errors.New("no nkey signature")
	}
	pub, err := nkeys.FromPublicKey(co.Nkey)
	if err != nil || !nkeys.IsValidPublicUserKey(co.Nkey) {
		return nil, errors.New("not a user nkey")
	}
	sig, err := base64.RawURLEncoding.DecodeString(co.SignedNonce)
	if err != nil {
		sig, err = base64.StdEncoding.DecodeString(co.SignedNonce)
	}
	if err != nil || rc.ClientInformation.Nonce == "" || pub.Verify([]byte(rc.ClientInformation.Nonce), sig) != nil {
		return nil, errors.New("bad nonce signature")
	}
	uc := jwt.NewUserClaims(rc.UserNkey)
	uc.Audience = s.cfg.Account
	if co.Username == "" {
		if err := s.regs.guest(co.Nkey, rc.ClientInformation.Host); err != nil {
			s.m.refused("guest_logins")
			return nil, err
		}
		uc.Name = "guest:" + co.Nkey
		uc.Pub.Allow.Add(guestSubject(co.Nkey, opRegister), guestSubject(co.Nkey, opWhois))
		uc.Sub.Allow.Add(guestReplyInbox(co.Nkey) + ".>")
		uc.Limits.Subs = 4
		uc.Limits.Payload = 4096
		return uc, nil
	}
	acct, ok := s.store.view.account(co.Username)
	if !ok {
		return nil, fmt.Errorf("no account %q", co.Username)
	}
	if acct.Key != co.Nkey {
		return nil, fmt.Errorf("wrong key for %q", co.Username)
	}
	if s.acct.isBanned(acct.Name) {
		return nil, fmt.Errorf("%q is shut out for a while: it kept sending past its limits", acct.Name)
	}
	uc.Name = acct.Name
	permissionsFor(uc, acct.Name)
	return uc, nil
}

// permissionsFor sets an account's permissions: it may publish only
// requests that carry its own name, and subscribe only to its own inbox
// and reply subjects. Only the service publishes into inboxes.
func permissionsFor(uc *jwt.UserClaims, name string) {
	uc.Pub.Allow.Add(svcPrefix + name + ".*")
	uc.Sub.Allow.Add(inboxPrefix+name+".>", replyInbox(name)+".>")
	uc.Limits.Subs = 256
	uc.Limits.Payload = MaxPayload
}

// MaxPayload bounds one message from an account (a request or a Send):
// room for the largest signed envelope a daemon sends (64 KiB, in base64
// inside the request) and its other fields. Every byte of it is what one
// request can make the service's connection buffer, so it is no larger.
const MaxPayload = 96 << 10
