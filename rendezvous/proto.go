package rendezvous

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/tubes-dev/tubes/tperr"
)

// Subject layout. Every subject an account may use carries its own name,
// and the NATS server enforces that (see permissionsFor); the account
// service reads the caller's name from the subject, never from a payload.
const (
	svcPrefix   = "tube.svc."   // tube.svc.<account>.<op>: requests to the account service
	replyPrefix = "tube.reply." // tube.reply.<account>.…: replies to an account's requests
	inboxPrefix = "tube.inbox." // tube.inbox.<account>.<kind>: only the service publishes here
	guestPrefix = "tube.guest." // tube.guest.<nkey>.<op>: registration before an account exists
	adminPrefix = "tube.admin." // tube.admin.<op>: operator requests (service credentials only)
)

// Inbox kinds delivered by the account service.
const (
	KindControl  = "ctl"      // connection control (replaced); always subscribed
	KindMessage  = "msg"      // messages delivered by Send; always subscribed
	KindPresence = "presence" // contacts and room members going on/offline
	KindContacts = "contacts" // contact requests, approvals, removals
	KindRooms    = "rooms"    // room membership changes
)

func svcSubject(account, op string) string     { return svcPrefix + account + "." + op }
func inboxSubject(account, kind string) string { return inboxPrefix + account + "." + kind }
func replyInbox(account string) string         { return replyPrefix + account }
func guestSubject(nkey, op string) string      { return guestPrefix + nkey + "." + op }
func guestReplyInbox(nkey string) string       { return guestPrefix + nkey + ".reply" }

var nameRE = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,31}$`)

// ValidName checks an account or room name: 1 to 32 characters, lowercase
// ASCII letters, digits, '-' and '_', starting with a letter. Names are
// NATS subject tokens, so nothing else is allowed.
func ValidName(kind, s string) error {
	if nameRE.MatchString(s) {
		return nil
	}
	return tperr.New(tperr.InvalidArgument, "%s name %q is not valid: use 1 to 32 lowercase letters, digits, '-' or '_', starting with a letter", kind, s)
}

// NormalizeName lowercases a name and validates it.
func NormalizeName(kind, s string) (string, error) {
	n := strings.ToLower(strings.TrimSpace(s))
	return n, ValidName(kind, n)
}

// wireError is an error on the wire: a Telepathy name and a message.
type wireError struct {
	Name    string `json:"name"`
	Message string `json:"message"`
}

// reply is the envelope of every response from the account service.
type reply struct {
	Error  *wireError      `json:"error,omitempty"`
	Result json.RawMessage `json:"result,omitempty"`
}

func encodeReply(result any, err error) []byte {
	var r reply
	if err != nil {
		name := tperr.Name(err)
		msg := err.Error()
		if name == "" {
			// Internal errors are not shown to clients in detail.
			name, msg = tperr.ServiceBusy, "the relay could not complete the request; try again"
		}
		r.Error = &wireError{Name: name, Message: msg}
	} else if result != nil {
		b, mErr := json.Marshal(result)
		if mErr != nil {
			r.Error = &wireError{Name: tperr.ServiceBusy, Message: "the relay could not encode its reply"}
		} else {
			r.Result = b
		}
	}
	b, _ := json.Marshal(r)
	return b
}

func decodeReply(data []byte, out any) error {
	var r reply
	if err := json.Unmarshal(data, &r); err != nil {
		return fmt.Errorf("rendezvous: malformed reply from relay: %w", err)
	}
	if r.Error != nil {
		name := r.Error.Name
		if !strings.HasPrefix(name, tperr.Prefix) {
			name = tperr.ServiceBusy
		}
		return &tperr.Error{Name: name, Message: r.Error.Message}
	}
	if out == nil || len(r.Result) == 0 {
		return nil
	}
	if err := json.Unmarshal(r.Result, out); err != nil {
		return fmt.Errorf("rendezvous: malformed reply from relay: %w", err)
	}
	return nil
}

// decodeRequest decodes a request body strictly, so that a mistyped field
// is an InvalidArgument error naming it rather than silently ignored.
func decodeRequest(data []byte, v any) error {
	if len(data) == 0 {
		data = []byte("{}")
	}
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var ute *json.UnmarshalTypeError
		if errors.As(err, &ute) {
			return tperr.New(tperr.InvalidArgument, "field %q has the wrong type: %s expected", ute.Field, ute.Type)
		}
		return tperr.New(tperr.InvalidArgument, "malformed request: %v", err)
	}
	return nil
}

// Operations of the account service (the <op> of tube.svc.<account>.<op>).
const (
	opHello          = "hello"
	opLookup         = "lookup"
	opContacts       = "contacts"
	opContactRequest = "contact_request"
	opContactApprove = "contact_approve"
	opContactRemove  = "contact_remove"
	opRooms          = "rooms"
	opRoomCreate     = "room_create"
	opRoomJoin       = "room_join"
	opRoomLeave      = "room_leave"
	opRoomMembers    = "room_members"
	opRoomInvite     = "room_invite"
	opInvitations    = "room_invitations"
	opRoomDecline    = "room_decline"
	opRoomRemove     = "room_remove"
	opRoomAdmin      = "room_admin"
	opPresence       = "presence"
	opSend           = "send"
	opKeys           = "keys"
	opTURN           = "turn"

	opRegister = "register" // guest
	opWhois    = "whois"    // guest

	opUserAdd    = "user_add"    // admin
	opUserList   = "user_list"   // admin
	opUserRemove = "user_remove" // admin
)

// ContactState is where a contact relation stands, seen from one side.
type ContactState string

// Contact states. Only mutual contacts ("contact") may exchange messages
// or tubes.
const (
	ContactMutual    ContactState = "contact"   // both approved
	ContactRequested ContactState = "requested" // I asked, they have not approved
	ContactPending   ContactState = "pending"   // they asked, I have not approved
	ContactNone      ContactState = "none"
)

// Hello is the answer to hello: who the relay thinks we are.
type Hello struct {
	Account string `json:"account"`
	Key     string `json:"key"`
	Relay   string `json:"relay"`   // relay instance id
	Version string `json:"version"` // relay software version
}

// TURNCredential is a short-lived credential for the relay's TURN server
// (TURN REST scheme), issued to an account that asks (op "turn").
type TURNCredential struct {
	Addr     string    `json:"addr"` // HOST:PORT, UDP and TCP
	Username string    `json:"username"`
	Password string    `json:"password"`
	Expires  time.Time `json:"expires"`
}

// TURNIssuer issues TURN credentials for an account.
type TURNIssuer func(account string) (TURNCredential, error)

// Contact is one entry of a contact list.
type Contact struct {
	Name   string       `json:"name"`
	State  ContactState `json:"state"`
	Online bool         `json:"online"`
}

// Room is a room the account belongs to.
type Room struct {
	Name    string `json:"name"`
	Owner   string `json:"owner"`
	Members int    `json:"members"`
	Open    bool   `json:"open,omitempty"` // anyone may join; else by invitation only
	Role    string `json:"role,omitempty"` // the caller's: RoleOwner, RoleAdmin or RoleMember
}

// Member is a room member.
type Member struct {
	Name   string `json:"name"`
	Owner  bool   `json:"owner"`
	Admin  bool   `json:"admin,omitempty"`
	Online bool   `json:"online"`
	// Joined is when the member joined (the relay's clock): a member who
	// left and joined again has a new one.
	Joined time.Time `json:"joined,omitzero"`
}

// Roles in a room. The owner created it (and its leaving deletes it);
// admins, named by the owner, invite and remove plain members too.
const (
	RoleOwner  = "owner"
	RoleAdmin  = "admin"
	RoleMember = "member"
)

// Invitation is an invitation to a room, waiting for the invitee.
type Invitation struct {
	Room    string    `json:"room"`
	By      string    `json:"by"`
	Created time.Time `json:"created"`
}

// Message is what Send delivers into a recipient's inbox. From and Room
// are set by the account service, so recipients can trust them.
type Message struct {
	From string `json:"from"`
	Room string `json:"room,omitempty"`
	Kind string `json:"kind"`
	Body []byte `json:"body,omitempty"`
}

// PresenceEvent says a contact or room member went on- or offline.
type PresenceEvent struct {
	Name   string `json:"name"`
	Online bool   `json:"online"`
}

// ContactEvent says a contact relation changed.
type ContactEvent struct {
	Name  string       `json:"name"`
	State ContactState `json:"state"`
}

// RoomEvent says a room's membership changed. Change says how (one of
// the Room… constants); Joined and Deleted say it too, for daemons that
// predate Change.
type RoomEvent struct {
	Room    string `json:"room"`
	Member  string `json:"member,omitempty"`
	Joined  bool   `json:"joined"`
	Deleted bool   `json:"deleted,omitempty"`
	Change  string `json:"change,omitempty"`
	By      string `json:"by,omitempty"`   // who invited, removed or changed the role
	Role    string `json:"role,omitempty"` // RoomRole: the member's new role
}

// How a room changed (RoomEvent.Change).
const (
	RoomJoined   = "joined"   // Member joined
	RoomLeft     = "left"     // Member left
	RoomRemoved  = "removed"  // Member was removed By an owner or admin
	RoomDeleted  = "deleted"  // the owner left: the room is gone
	RoomInvited  = "invited"  // to the invitee: By invites you
	RoomDeclined = "declined" // to the inviter: Member declined
	RoomRole     = "role"     // Member's Role changed
)

// Membership reports whether the event changes who is in the room.
func (e RoomEvent) Membership() bool {
	switch e.Change {
	case "", RoomJoined, RoomLeft, RoomRemoved, RoomDeleted:
		return true
	}
	return false
}

// controlMsg is delivered on the ctl inbox.
type controlMsg struct {
	Type   string `json:"type"`   // "replaced"
	Server string `json:"server"` // NATS server id of the connection concerned
	CID    uint64 `json:"cid"`    // its client id on that server
}

// User is an account as the operator sees it.
type User struct {
	Name    string `json:"name"`
	Key     string `json:"key,omitempty"`
	Created string `json:"created,omitempty"`
	Invited bool   `json:"invited,omitempty"` // an invitation is outstanding
	Online  bool   `json:"online"`
}

type helloReq struct {
	Server string `json:"server,omitempty"` // NATS server id of the caller's connection
	CID    uint64 `json:"cid,omitempty"`    // its client id there
}

type nameReq struct {
	Name string `json:"name"`
}

type roomReq struct {
	Room string `json:"room"`
	Open bool   `json:"open,omitempty"` // room_create
}

// roomMemberReq names a room and one account: the invitee, the member to
// remove, or the member whose role changes.
type roomMemberReq struct {
	Room   string `json:"room"`
	Name   string `json:"name"`
	Revoke bool   `json:"revoke,omitempty"` // room_admin: back to a plain member
}

type lookupReq struct {
	Contacts []string `json:"contacts,omitempty"`
	Rooms    []string `json:"rooms,omitempty"`
}

type lookupResp struct {
	Contacts map[string]bool `json:"contacts,omitempty"`
	Rooms    map[string]bool `json:"rooms,omitempty"`
}

type sendReq struct {
	To   string `json:"to,omitempty"`
	Room string `json:"room,omitempty"`
	Kind string `json:"kind"`
	Body []byte `json:"body,omitempty"`
}

type keysReq struct {
	Names []string `json:"names"`
}

type sendResp struct {
	Delivered []string `json:"delivered"`
}

type registerReq struct {
	Name   string `json:"name"`
	Invite string `json:"invite,omitempty"`
}

type whoisResp struct {
	Exists     bool `json:"exists"`
	KeyMatches bool `json:"key_matches"`
	ShutOut    bool `json:"shut_out,omitempty"` // told to the key's holder only
}

type userAddReq struct {
	Name string `json:"name"`
	Key  string `json:"key,omitempty"`
}

type userAddResp struct {
	Invite string `json:"invite,omitempty"`
}
