package daemon

import (
	"context"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/connection"
	"github.com/tubes-dev/tubes/rendezvous"
	"github.com/tubes-dev/tubes/tperr"
	"github.com/tubes-dev/tubes/tube"
)

// Contacts, rooms, presence and messages: thin calls to the rendezvous on
// behalf of a connected account, with handles attached.

func (d *Daemon) live(name string) (*account, *rendezvous.Client, error) {
	a, err := d.account(name)
	if err != nil {
		return nil, nil, err
	}
	c, err := a.conn()
	return a, c, err
}

func (a *account) handle(t connection.HandleType, id string) uint32 {
	return uint32(a.handles.Lookup(t, id))
}

func (a *account) contact(c rendezvous.Contact) api.Contact {
	out := api.Contact{Name: c.Name, State: string(c.State), Online: c.Online, Handle: a.handle(connection.HandleContact, c.Name)}
	if cur, ok := a.pins.get(c.Name); ok {
		k := keyInfo(cur, ok)
		out.Pinned = &k
	}
	return out
}

// Contact shows one contact, or a room co-member whose key is pinned,
// with the pinned key's safety number.
func (d *Daemon) Contact(ctx context.Context, name, contact string) (api.Contact, error) {
	a, c, err := d.live(name)
	if err != nil {
		return api.Contact{}, err
	}
	contact, err = rendezvous.NormalizeName("account", contact)
	if err != nil {
		return api.Contact{}, tperr.Wrap(err, tperr.InvalidHandle, "%s", tperr.Message(err))
	}
	cs, err := c.Contacts(ctx)
	if err != nil {
		return api.Contact{}, err
	}
	for _, x := range cs {
		if x.Name == contact {
			return a.contact(x), nil
		}
	}
	if _, ok := a.pins.get(contact); ok {
		return a.contact(rendezvous.Contact{Name: contact, State: "none"}), nil
	}
	return api.Contact{}, tperr.New(tperr.NotFound, "%s is neither a contact of %s nor anyone whose key it pinned", contact, a.name)
}

// VerifyContact marks a contact's pinned key verified when fp is its
// safety number; a fingerprint of a changed key makes that key the
// pinned one. A mismatch is Cert.FingerprintMismatch.
func (d *Daemon) VerifyContact(ctx context.Context, name, contact, fp string) (api.Contact, error) {
	a, err := d.account(name)
	if err != nil {
		return api.Contact{}, err
	}
	contact, err = rendezvous.NormalizeName("account", contact)
	if err != nil {
		return api.Contact{}, tperr.Wrap(err, tperr.InvalidHandle, "%s", tperr.Message(err))
	}
	cur, err := a.pins.verify(contact, fp)
	if err != nil {
		return api.Contact{}, err
	}
	a.log.Info("contact's key verified", "contact", contact, "key", cur.Key)
	k := keyInfo(cur, true)
	return api.Contact{Name: contact, Pinned: &k}, nil
}

// keyChanges lists the account's contacts whose key changed.
func (a *account) keyChanges() []api.KeyChange {
	var out []api.KeyChange
	for _, n := range a.pins.changes() {
		cur, ok := a.pins.get(n)
		info := keyInfo(cur, ok)
		out = append(out, api.KeyChange{Account: a.name, Contact: n, Pinned: info.SafetyNumber, ChangedTo: info.ChangedTo})
	}
	return out
}

// Contacts lists an account's contacts.
func (d *Daemon) Contacts(ctx context.Context, name string) ([]api.Contact, error) {
	a, c, err := d.live(name)
	if err != nil {
		return nil, err
	}
	cs, err := c.Contacts(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]api.Contact, 0, len(cs))
	for _, x := range cs {
		out = append(out, a.contact(x))
	}
	return out, nil
}

// AddContact asks another account to be a contact (approving theirs if
// they asked first).
func (d *Daemon) AddContact(ctx context.Context, name, contact string) (api.Contact, error) {
	a, c, err := d.live(name)
	if err != nil {
		return api.Contact{}, err
	}
	x, err := c.ContactRequest(ctx, contact)
	return a.contact(x), err
}

// ApproveContact approves a pending request.
func (d *Daemon) ApproveContact(ctx context.Context, name, contact string) (api.Contact, error) {
	a, c, err := d.live(name)
	if err != nil {
		return api.Contact{}, err
	}
	x, err := c.ContactApprove(ctx, contact)
	return a.contact(x), err
}

// RemoveContact removes a contact, or cancels or refuses a request.
func (d *Daemon) RemoveContact(ctx context.Context, name, contact string) error {
	_, c, err := d.live(name)
	if err != nil {
		return err
	}
	return c.ContactRemove(ctx, contact)
}

func (a *account) room(r rendezvous.Room) api.Room {
	return api.Room{Name: r.Name, Owner: r.Owner, Members: r.Members, Handle: a.handle(connection.HandleRoom, r.Name), Open: r.Open, Role: r.Role}
}

func member(m rendezvous.Member) api.Member {
	return api.Member{Name: m.Name, Owner: m.Owner, Admin: m.Admin, Online: m.Online}
}

// Rooms lists the rooms an account belongs to.
func (d *Daemon) Rooms(ctx context.Context, name string) ([]api.Room, error) {
	a, c, err := d.live(name)
	if err != nil {
		return nil, err
	}
	rs, err := c.Rooms(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]api.Room, 0, len(rs))
	for _, r := range rs {
		out = append(out, a.room(r))
	}
	return out, nil
}

// CreateRoom creates a room the account owns: invite-only, or open to
// anyone.
func (d *Daemon) CreateRoom(ctx context.Context, name string, req api.RoomRequest) (api.Room, error) {
	a, c, err := d.live(name)
	if err != nil {
		return api.Room{}, err
	}
	r, err := c.RoomCreate(ctx, req.Room, req.Open)
	return a.room(r), err
}

// InviteToRoom invites a contact to a room the account owns or
// administers.
func (d *Daemon) InviteToRoom(ctx context.Context, name, room, contact string) (api.Invitation, error) {
	_, c, err := d.live(name)
	if err != nil {
		return api.Invitation{}, err
	}
	inv, err := c.RoomInvite(ctx, room, contact)
	return api.Invitation{Room: inv.Room, By: inv.By, Created: inv.Created}, err
}

// Invitations lists the rooms the account is invited to.
func (d *Daemon) Invitations(ctx context.Context, name string) ([]api.Invitation, error) {
	_, c, err := d.live(name)
	if err != nil {
		return nil, err
	}
	invs, err := c.Invitations(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]api.Invitation, 0, len(invs))
	for _, inv := range invs {
		out = append(out, api.Invitation{Room: inv.Room, By: inv.By, Created: inv.Created})
	}
	return out, nil
}

// JoinRoom joins a room the account is invited to, or an open room.
func (d *Daemon) JoinRoom(ctx context.Context, name, room string) (api.Room, error) {
	a, c, err := d.live(name)
	if err != nil {
		return api.Room{}, err
	}
	r, err := c.RoomJoin(ctx, room)
	return a.room(r), err
}

// DeclineRoom turns down an invitation.
func (d *Daemon) DeclineRoom(ctx context.Context, name, room string) error {
	_, c, err := d.live(name)
	if err != nil {
		return err
	}
	return c.RoomDecline(ctx, room)
}

// LeaveRoom leaves a room (its owner leaving deletes it). The account's
// room tubes there end at once, before the relay's event says so.
func (d *Daemon) LeaveRoom(ctx context.Context, name, room string) error {
	a, c, err := d.live(name)
	if err != nil {
		return err
	}
	if err := c.RoomLeave(ctx, room); err != nil {
		return err
	}
	if n, err := rendezvous.NormalizeName("room", room); err == nil {
		a.tubes.OnRoomEvent(n, a.name, false, false, false)
	}
	return nil
}

// RemoveFromRoom removes a member (or withdraws an invitation).
func (d *Daemon) RemoveFromRoom(ctx context.Context, name, room, member string) error {
	_, c, err := d.live(name)
	if err != nil {
		return err
	}
	return c.RoomRemove(ctx, room, member)
}

// SetRoomAdmin makes a member an admin, or a plain member again.
func (d *Daemon) SetRoomAdmin(ctx context.Context, name, room string, req api.AdminRequest) (api.Member, error) {
	_, c, err := d.live(name)
	if err != nil {
		return api.Member{}, err
	}
	m, err := c.RoomAdmin(ctx, room, req.Name, req.Revoke)
	return member(m), err
}

// RoomMembers lists a room's members.
func (d *Daemon) RoomMembers(ctx context.Context, name, room string) ([]api.Member, error) {
	_, c, err := d.live(name)
	if err != nil {
		return nil, err
	}
	ms, err := c.RoomMembers(ctx, room)
	if err != nil {
		return nil, err
	}
	out := make([]api.Member, 0, len(ms))
	for _, m := range ms {
		out = append(out, member(m))
	}
	return out, nil
}

// Presence lists the presence of contacts and room co-members.
func (d *Daemon) Presence(ctx context.Context, name string) ([]api.Presence, error) {
	_, c, err := d.live(name)
	if err != nil {
		return nil, err
	}
	ps, err := c.Presence(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]api.Presence, 0, len(ps))
	for _, p := range ps {
		out = append(out, api.Presence{Name: p.Name, Online: p.Online})
	}
	return out, nil
}

// Send delivers a message through the rendezvous.
func (d *Daemon) Send(ctx context.Context, name string, req api.SendRequest) (api.SendResponse, error) {
	a, _, err := d.live(name)
	if err != nil {
		return api.SendResponse{}, err
	}
	if tube.IsTubeKind(req.Kind) || isServiceKind(req.Kind) {
		return api.SendResponse{}, tperr.New(tperr.InvalidArgument, "message kind %q is reserved for tubes and the service framework; pick another", req.Kind)
	}
	// Signed like tube messages, so the relay cannot put words in anyone's
	// mouth.
	got, err := a.tubes.SendSigned(ctx, req.To, req.Room, req.Kind, req.Body)
	if got == nil {
		got = []string{}
	}
	return api.SendResponse{Delivered: got}, err
}
