package rendezvous

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tubes-dev/tubes/tperr"
)

// Guests (service side): registration and whois, for connections that
// hold a key but no account yet.

func (s *Service) handleGuest(ctx context.Context, m *nats.Msg) {
	tok := strings.Split(m.Subject, ".") // tube.guest.<nkey>.<op>
	if len(tok) != 4 || !strings.HasPrefix(m.Reply, guestReplyInbox(tok[2])+".") {
		return
	}
	nkey, op := tok[2], tok[3]
	var result any
	var err error
	switch op {
	case opRegister:
		err = s.register(ctx, nkey, m.Data)
	case opWhois:
		result, err = s.whois(nkey, m.Data)
	}
	s.m.request(op, err)
	m.Respond(encodeReply(result, err))
}

func (s *Service) register(ctx context.Context, nkey string, data []byte) error {
	var req registerReq
	if err := decodeRequest(data, &req); err != nil {
		return err
	}
	name, err := NormalizeName("account", req.Name)
	if err != nil {
		return err
	}
	if isServiceUser(name) {
		// The relay's own NATS users: an account of that name could
		// never log in (the server takes it for the service user).
		return tperr.New(tperr.RegistrationExists, "the name %s is reserved on this relay", name)
	}
	if acct, ok := s.store.view.account(name); ok {
		if acct.Key == nkey {
			return nil // already ours: registering again is harmless
		}
		return tperr.New(tperr.RegistrationExists, "the name %s is already registered on this relay", name)
	}
	if other, ok := s.store.view.accountWithKey(nkey); ok {
		// One key, one account: a key registers a name once, so that
		// registrations count per login, and so per source.
		return tperr.New(tperr.RegistrationExists, "this key is registered already, as %s; each account has a key of its own", other)
	}
	inv, invited := s.store.view.invite(name)
	if s.cfg.Registration == RegistrationClosed || invited {
		if !invited {
			return tperr.New(tperr.PermissionDenied, "registration on this relay is closed; ask its operator for an invitation to %s", name)
		}
		if !inv.matches(req.Invite) {
			return tperr.New(tperr.AuthenticationFailed, "the invitation code for %s is wrong", name)
		}
	}
	if !invited {
		if limit, err := s.regs.take(nkey); err != nil {
			s.m.refused(limit)
			return err
		}
	}
	rec := accountRecord{Name: name, Key: nkey, Created: time.Now().UTC()}
	if err := s.store.create(ctx, "acct."+name, rec); errors.Is(err, errConflict) {
		return tperr.New(tperr.RegistrationExists, "the name %s is already registered on this relay", name)
	} else if err != nil {
		return err
	}
	if invited {
		if err := s.store.delete(ctx, "invite."+name); err != nil {
			s.log.Warn("invitation not removed", "account", name, "err", err)
		}
	}
	s.log.Info("account registered", "account", name, "key", nkey)
	return nil
}

func (s *Service) whois(nkey string, data []byte) (any, error) {
	var req nameReq
	if err := decodeRequest(data, &req); err != nil {
		return nil, err
	}
	acct, ok := s.store.view.account(req.Name)
	mine := ok && acct.Key == nkey
	return whoisResp{Exists: ok, KeyMatches: mine, ShutOut: mine && s.acct.isBanned(acct.Name)}, nil
}
