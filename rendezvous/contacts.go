package rendezvous

import (
	"context"

	"github.com/tubes-dev/tubes/tperr"
)

// Contacts (service side): contact requests, approvals and removals.

func (s *Service) contactEntry(me string, p pairRecord) Contact {
	other := p.other(me)
	st := p.state(me)
	return Contact{Name: other, State: st, Online: st == ContactMutual && s.pres.online(other)}
}

func (s *Service) opContacts(ctx context.Context, me string, _ []byte) (any, error) {
	pairs := s.store.view.contactsOf(me)
	out := make([]Contact, 0, len(pairs))
	for _, p := range pairs {
		out = append(out, s.contactEntry(me, p))
	}
	sortBy(out, func(c Contact) string { return c.Name })
	return out, nil
}

// contactName validates a request naming another existing account.
func (s *Service) contactName(me string, data []byte) (string, error) {
	var req nameReq
	if err := decodeRequest(data, &req); err != nil {
		return "", err
	}
	name, err := NormalizeName("contact", req.Name)
	if err != nil {
		return "", err
	}
	if name == me {
		return "", tperr.New(tperr.InvalidArgument, "you cannot be your own contact")
	}
	if _, ok := s.store.view.account(name); !ok {
		return "", tperr.New(tperr.DoesNotExist, "there is no account named %s on this relay", name)
	}
	return name, nil
}

func (s *Service) opContactRequest(ctx context.Context, me string, data []byte) (any, error) {
	other, err := s.contactName(me, data)
	if err != nil {
		return nil, err
	}
	before := s.store.view.pair(me, other).state(me)
	if before == ContactNone {
		if n := s.store.view.requestsBy(me); n >= s.cfg.Limits.ContactRequests {
			s.m.refused("contact_requests")
			return nil, tperr.New(tperr.PermissionDenied, "you have %d contact requests waiting for an answer, the most this relay allows; remove some first", n)
		}
	}
	p, err := s.store.modifyPair(ctx, me, other, func(p *pairRecord) error { p.set(me, true); return nil })
	if err != nil {
		return nil, err
	}
	s.contactChanged(me, other, before, p)
	return s.contactEntry(me, p), nil
}

func (s *Service) opContactApprove(ctx context.Context, me string, data []byte) (any, error) {
	other, err := s.contactName(me, data)
	if err != nil {
		return nil, err
	}
	before := s.store.view.pair(me, other).state(me)
	p, err := s.store.modifyPair(ctx, me, other, func(p *pairRecord) error {
		switch p.state(me) {
		case ContactPending, ContactMutual:
			p.set(me, true)
			return nil
		}
		return tperr.New(tperr.NotAvailable, "%s has not asked to be your contact; use contact add to ask them", other)
	})
	if err != nil {
		return nil, err
	}
	s.contactChanged(me, other, before, p)
	return s.contactEntry(me, p), nil
}

func (s *Service) opContactRemove(ctx context.Context, me string, data []byte) (any, error) {
	other, err := s.contactName(me, data)
	if err != nil {
		return nil, err
	}
	before := s.store.view.pair(me, other).state(me)
	p, err := s.store.modifyPair(ctx, me, other, func(p *pairRecord) error {
		if p.state(me) == ContactNone {
			return tperr.New(tperr.DoesNotExist, "%s is not in your contact list", other)
		}
		p.AWants, p.BWants = false, false
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.contactChanged(me, other, before, p)
	return s.contactEntry(me, p), nil
}

// contactChanged tells the other side about a changed relation, and both
// sides about each other's presence when they become or stop being
// mutual contacts.
func (s *Service) contactChanged(me, other string, before ContactState, p pairRecord) {
	s.publish(other, KindContacts, ContactEvent{Name: me, State: p.state(other)})
	now := p.state(me)
	if (before == ContactMutual) != (now == ContactMutual) {
		mutual := now == ContactMutual
		s.publish(other, KindPresence, PresenceEvent{Name: me, Online: mutual && s.pres.online(me)})
		s.publish(me, KindPresence, PresenceEvent{Name: other, Online: mutual && s.pres.online(other)})
	}
}
