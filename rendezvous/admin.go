package rendezvous

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/tubes-dev/tubes/tperr"
)

// Operator requests (service side): users added, listed and removed on a
// relay with closed registration, over the service credentials.

func (s *Service) handleAdmin(ctx context.Context, m *nats.Msg) {
	op := strings.TrimPrefix(m.Subject, adminPrefix)
	var result any
	var err error
	switch op {
	case opUserAdd:
		result, err = s.userAdd(ctx, m.Data)
	case opUserList:
		result, err = s.userList()
	case opUserRemove:
		err = s.userRemove(ctx, m.Data)
	default:
		err = tperr.New(tperr.NotImplemented, "the relay does not know the operation %q", op)
	}
	s.m.request(op, err)
	m.Respond(encodeReply(result, err))
}

func (s *Service) userAdd(ctx context.Context, data []byte) (any, error) {
	var req userAddReq
	if err := decodeRequest(data, &req); err != nil {
		return nil, err
	}
	name, err := NormalizeName("account", req.Name)
	if err != nil {
		return nil, err
	}
	if isServiceUser(name) {
		return nil, tperr.New(tperr.RegistrationExists, "the name %s is reserved for the relay itself", name)
	}
	if _, ok := s.store.view.account(name); ok {
		return nil, tperr.New(tperr.RegistrationExists, "the name %s is already registered", name)
	}
	if req.Key != "" {
		if !nkeys.IsValidPublicUserKey(req.Key) {
			return nil, tperr.New(tperr.InvalidArgument, "%q is not an account public key (it starts with U)", req.Key)
		}
		rec := accountRecord{Name: name, Key: req.Key, Created: time.Now().UTC()}
		if err := s.store.create(ctx, "acct."+name, rec); errors.Is(err, errConflict) {
			return nil, tperr.New(tperr.RegistrationExists, "the name %s is already registered", name)
		} else if err != nil {
			return nil, err
		}
		return userAddResp{}, nil
	}
	token := randomID() + randomID()
	if err := s.store.put(ctx, "invite."+name, inviteRecord{Name: name, Hash: hashToken(token), Created: time.Now().UTC()}); err != nil {
		return nil, err
	}
	return userAddResp{Invite: token}, nil
}

func (s *Service) userList() (any, error) {
	var out []User
	seen := map[string]bool{}
	for _, a := range s.store.view.accountNames() {
		out = append(out, User{Name: a.Name, Key: a.Key, Created: a.Created.Format(time.RFC3339), Online: s.pres.online(a.Name)})
		seen[a.Name] = true
	}
	for _, n := range s.store.view.inviteNames() {
		if !seen[n] {
			out = append(out, User{Name: n, Invited: true})
		}
	}
	sortBy(out, func(u User) string { return u.Name })
	return out, nil
}

func (s *Service) userRemove(ctx context.Context, data []byte) error {
	var req nameReq
	if err := decodeRequest(data, &req); err != nil {
		return err
	}
	name := req.Name
	_, hasAcct := s.store.view.account(name)
	_, hasInvite := s.store.view.invite(name)
	if !hasAcct && !hasInvite {
		return tperr.New(tperr.DoesNotExist, "there is no account or invitation named %q", name)
	}
	var errs []error
	if hasInvite {
		errs = append(errs, s.store.delete(ctx, "invite."+name))
	}
	if hasAcct {
		// The account goes first so that it can no longer log in; then its
		// relations, then its live connections.
		errs = append(errs, s.store.delete(ctx, "acct."+name))
		for _, p := range s.store.view.contactsOf(name) {
			other := p.other(name)
			key, _, _ := pairKey(name, other)
			errs = append(errs, s.store.delete(ctx, key))
			s.publish(other, KindContacts, ContactEvent{Name: name, State: ContactNone})
			s.publish(other, KindPresence, PresenceEvent{Name: name, Online: false})
		}
		for _, r := range s.store.view.roomsOfAccount(name) {
			members := s.store.view.memberNames(r.Name)
			if r.Owner == name {
				errs = append(errs, s.deleteRoom(ctx, r.Name, members))
				continue
			}
			errs = append(errs, s.store.delete(ctx, "member."+r.Name+"."+name))
			for _, m := range members {
				if m != name {
					s.publish(m, KindRooms, RoomEvent{Room: r.Name, Member: name, Joined: false})
				}
			}
		}
		// Invitations to the name and by it: a later account of the same
		// name must not inherit them.
		for _, inv := range s.store.view.invitationsOf(name) {
			errs = append(errs, s.store.delete(ctx, "invitation."+inv.Room+"."+name))
		}
		for room, invitees := range s.store.view.invitationsBy(name) {
			for _, n := range invitees {
				errs = append(errs, s.store.delete(ctx, "invitation."+room+"."+n))
			}
		}
		for _, id := range s.pres.connsOf(name) {
			s.kick(id)
		}
		s.log.Info("account removed", "account", name)
	}
	return errors.Join(errs...)
}
