// Package api defines the JSON of the daemon's local API, version 1: the
// bodies of requests and responses under /v1/ and the events of
// /v1/events. The daemon (package localapi) produces them and the typed
// client (package localclient) consumes them; field names are stable and
// shared with the CLI's --json output.
package api

import "time"

// Error is the body of every failed request.
type Error struct {
	Code    string `json:"code"`    // Telepathy error name, e.g. im.telepathy1.Error.InvalidHandle
	Message string `json:"message"` // one sentence for people
}

// Account is one account of the daemon: a Telepathy Connection.
type Account struct {
	Name         string   `json:"name"`
	Server       string   `json:"server"`
	ConnectionID string   `json:"connection_id"` // opaque; do not parse
	Protocol     string   `json:"protocol"`
	Status       string   `json:"status"`      // Connected, Connecting, Disconnected
	StatusCode   uint32   `json:"status_code"` // 0, 1, 2
	Reason       string   `json:"reason"`      // Connection_Status_Reason name of the last change
	ReasonCode   uint32   `json:"reason_code"`
	Error        string   `json:"error,omitempty"`   // last ConnectionError name, while disconnected
	Message      string   `json:"message,omitempty"` // why it is not connected, for people
	SelfHandle   uint32   `json:"self_handle"`
	Interfaces   []string `json:"interfaces"`
	Key          string   `json:"key"`           // public key (U…)
	Fingerprint  string   `json:"fingerprint"`   // SHA256:…
	SafetyNumber string   `json:"safety_number"` // the key's, for contacts to compare with what they pinned
	AutoConnect  bool     `json:"auto_connect"`
	NextRetry    string   `json:"next_retry,omitempty"` // RFC 3339, while waiting to reconnect
	// Login, after a refused login: "refused" when the relay confirmed it
	// (no such account, another key: the daemon waits for the user), or
	// "unanswered" when it did not (a relay too busy to check logins
	// reports the same refusal: the daemon tries again, slowly).
	Login string `json:"login,omitempty"`
}

// Tube is one stream tube. The id is the same on both sides.
type Tube struct {
	ID         string           `json:"id"`
	Account    string           `json:"account"`
	Service    string           `json:"service"`
	State      string           `json:"state"`          // Local_Pending, Remote_Pending, Open, Not_Offered
	StateCode  uint32           `json:"state_code"`     // 0, 1, 2, 3
	Peer       string           `json:"peer,omitempty"` // the contact (p2p) or, for incoming room tubes, the offerer
	Room       string           `json:"room,omitempty"`
	Direction  string           `json:"direction"`      // outgoing or incoming
	Path       string           `json:"path,omitempty"` // direct or relay, once a link carries it
	Address    string           `json:"address,omitempty"`
	Access     string           `json:"access,omitempty"`
	Parameters map[string]Value `json:"parameters,omitempty"` // incoming tubes only
}

// Connection is one connection carried by a tube. On the offering side
// Source is the address of the daemon's own connection to the exported
// service, so the service can map it to Contact; on the accepting side it
// is the local application's address.
type Connection struct {
	Tube    string `json:"tube"`
	ID      uint32 `json:"id"`
	Source  string `json:"source,omitempty"`
	Contact string `json:"contact"`
	Account string `json:"account"`
	Room    string `json:"room,omitempty"`
}

// Export is a local service made available for tubes (the StreamTubeServer
// side).
type Export struct {
	Account       string           `json:"account"`
	Service       string           `json:"service"`
	TCP           string           `json:"tcp,omitempty"`  // HOST:PORT
	Unix          string           `json:"unix,omitempty"` // socket path
	Parameters    map[string]Value `json:"parameters,omitempty"`
	ParamsExec    string           `json:"params_exec,omitempty"` // command printing parameters as JSON, run per offer
	ProxyProtocol bool             `json:"proxy_protocol,omitempty"`
	// ParamsGenerator: the calling client generates each offer's
	// parameters (it answers ParametersRequested events); the export
	// belongs to that client and ends with it.
	ParamsGenerator bool     `json:"params_generator,omitempty"`
	Allow           []string `json:"allow,omitempty"`       // contacts who may ask for a tube (tube open)
	AllowRooms      []string `json:"allow_rooms,omitempty"` // rooms whose members may ask
	// Unit, set by the daemon on the export of a published service it
	// starts on demand, names the unit the tube was granted (never sent
	// or taken through the local API).
	Unit string `json:"-"`
}

// OfferRequest is the body of POST /v1/accounts/{name}/tubes.
type OfferRequest struct {
	Service string `json:"service"`
	To      string `json:"to,omitempty"`
	Room    string `json:"room,omitempty"`
	Path    string `json:"path,omitempty"` // auto (default), direct or relay
	// LaterMembers: a room tube is offered to members who join later
	// too, each with parameters sealed to them (fresh ones from the
	// export's generator, where it has one). Without it, only those in
	// the room when it is offered get the offer.
	LaterMembers bool `json:"later_members,omitempty"`
}

// AcceptRequest is the body of POST /v1/tubes/{id}/accept (and the local
// side of handlers and tube open).
type AcceptRequest struct {
	Listen string   `json:"listen,omitempty"` // TCP HOST:PORT (default 127.0.0.1:0)
	Unix   string   `json:"unix,omitempty"`   // Unix socket path; "auto" for a private one
	Access string   `json:"access,omitempty"` // localhost, port, credentials, credentials-byte
	Source string   `json:"source,omitempty"` // for access port: the only source HOST:PORT let in
	UIDs   []uint32 `json:"uids,omitempty"`   // for access credentials: uids let in (default: the daemon's)
}

// HandleRequest is the body of POST /v1/accounts/{name}/handlers: accept
// matching offers automatically while the calling client is connected.
type HandleRequest struct {
	Service string `json:"service"`
	From    string `json:"from,omitempty"`
	Room    string `json:"room,omitempty"`
	AcceptRequest
}

// OpenRequest is the body of POST /v1/accounts/{name}/open: ask a contact
// for a tube to a service it exported for us (a reverse tube), and accept it.
type OpenRequest struct {
	Contact string `json:"contact"`
	Service string `json:"service"`
	// Room: ask through this room, which both belong to, for a service
	// the contact publishes to the room (the contact need not be ours).
	Room string `json:"room,omitempty"`
	// Implementation, "INTERFACE@M.m", asks for that implementation of
	// the service: of a service registered at several locations, the
	// contact serves the one implementing it. The daemon sets it when
	// Service names an interface ("INTERFACE[@M.m]"), to the
	// implementation it chose.
	Implementation string `json:"implementation,omitempty"`
	AcceptRequest
}

// Whois answers GET /v1/whois?source=HOST:PORT.
type Whois struct {
	Connection
	Tube Tube `json:"tube_info"`
}

// Status is the answer of GET /v1/status and `tube status --json`.
type Status struct {
	Accounts    []Account    `json:"accounts"`
	Tubes       []Tube       `json:"tubes"`
	Connections []Connection `json:"connections"`
	// Activations are the services started on demand, by name.
	Activations map[string]ActivationStatus `json:"activations,omitempty"`
	// KeyChanges are contacts whose key changed and is refused until
	// verified.
	KeyChanges []KeyChange `json:"key_changes,omitempty"`
}

// AddAccountRequest is the body of POST /v1/accounts.
type AddAccountRequest struct {
	Name     string `json:"name"`
	Server   string `json:"server"`
	Register bool   `json:"register,omitempty"`
	Invite   string `json:"invite,omitempty"` // invitation code for closed registration
	CA       string `json:"ca,omitempty"`     // PEM of a CA (or self-signed certificate) to trust for a TLS relay
	// Key is an account key exported from another daemon (PEM, as GET
	// …/key gives it): the account moves here with its identity.
	Key string `json:"key,omitempty"`
}

// AccountKey is the body of GET /v1/accounts/{name}/key: the account's
// private key, PEM (PKCS#8). It is the account: keep it secret.
type AccountKey struct {
	Key string `json:"key"`
}

// HandlesRequest is the body of POST /v1/accounts/{name}/handles/request.
type HandlesRequest struct {
	Type        uint32   `json:"type"`
	Identifiers []string `json:"identifiers"`
}

// HandlesResponse answers it.
type HandlesResponse struct {
	Handles []uint32 `json:"handles"`
}

// InspectRequest is the body of POST /v1/accounts/{name}/handles/inspect.
type InspectRequest struct {
	Type    uint32   `json:"type"`
	Handles []uint32 `json:"handles"`
}

// InspectResponse answers it.
type InspectResponse struct {
	Identifiers []string `json:"identifiers"`
}

// InterestRequest is the body of POST /v1/accounts/{name}/interest/add and
// …/remove. The calling client is named by the Tube-Client header, the
// id its /v1/events stream announced.
type InterestRequest struct {
	Tokens []string `json:"tokens"`
}

// ClientHeader names the local-API client whose interests a request
// changes: the client_id of its event stream.
const ClientHeader = "Tube-Client"

// Client interest tokens the daemon understands.
const (
	InterestPresence    = "im.telepathy1.Connection.Interface.Presence"
	InterestContactList = "im.telepathy1.Connection.Interface.ContactList"
	InterestRooms       = "im.tubes1.Connection.Interface.Rooms"
	// InterestServices: what contacts and rooms publish (ServiceAdded and
	// ServiceRemoved of scope remote) is reported only while a client
	// holds it.
	InterestServices = "im.tubes1.ServiceFramework"
)

// Contact is one entry of the contact list.
type Contact struct {
	Name   string `json:"name"`
	State  string `json:"state"` // contact, requested, pending
	Online bool   `json:"online"`
	Handle uint32 `json:"handle"`
	// Pinned is the key this daemon pinned for the contact, once it has
	// used one (contacts: when they become mutual).
	Pinned *PinnedKey `json:"pinned,omitempty"`
}

// PinnedKey is a contact's or room member's key as this daemon pinned it
// on first sight. A later different key from the relay is refused until
// the user verifies it (POST …/contacts/{contact}/verify).
type PinnedKey struct {
	Key          string `json:"key"`           // U…
	SafetyNumber string `json:"safety_number"` // 8 groups of 5 digits, to compare with the contact's own
	Fingerprint  string `json:"fingerprint"`   // SHA256:…
	Verified     bool   `json:"verified"`      // the user compared and confirmed it
	// ChangedTo is the safety number of a different key the relay gave
	// for the contact since, refused until verified.
	ChangedTo string `json:"changed_to,omitempty"`
}

// VerifyRequest is the body of POST …/contacts/{contact}/verify.
type VerifyRequest struct {
	Fingerprint string `json:"fingerprint"` // a safety number (spaces optional) or SHA256:…
}

// KeyChange is a contact whose key the relay changed, refused until the
// user verifies the new one (in Status).
type KeyChange struct {
	Account   string `json:"account"`
	Contact   string `json:"contact"`
	Pinned    string `json:"pinned"`     // safety number of the pinned key
	ChangedTo string `json:"changed_to"` // safety number of the key the relay gives now
}

// NameRequest names a contact.
type NameRequest struct {
	Name string `json:"name"`
}

// RoomRequest names a room (POST …/rooms creates it: invite-only, or
// open to anyone with Open).
type RoomRequest struct {
	Room string `json:"room"`
	Open bool   `json:"open,omitempty"`
}

// Room is a room the account belongs to.
type Room struct {
	Name    string `json:"name"`
	Owner   string `json:"owner"`
	Members int    `json:"members"`
	Handle  uint32 `json:"handle"`
	Open    bool   `json:"open,omitempty"` // anyone may join; else by invitation only
	Role    string `json:"role,omitempty"` // the account's: owner, admin or member
}

// Member is a room member.
type Member struct {
	Name   string `json:"name"`
	Owner  bool   `json:"owner"`
	Admin  bool   `json:"admin,omitempty"`
	Online bool   `json:"online"`
}

// Invitation is an invitation to a room that the account may join or
// decline.
type Invitation struct {
	Room    string    `json:"room"`
	By      string    `json:"by"`
	Created time.Time `json:"created"`
}

// AdminRequest is the body of POST …/rooms/{room}/admins: the owner makes
// a member an admin, or (Revoke) a plain member again.
type AdminRequest struct {
	Name   string `json:"name"`
	Revoke bool   `json:"revoke,omitempty"`
}

// Presence is a contact's or room member's presence.
type Presence struct {
	Name   string `json:"name"`
	Online bool   `json:"online"`
}

// SendRequest is the body of POST /v1/accounts/{name}/messages: the
// rendezvous delivery primitive, to a contact or a room.
type SendRequest struct {
	To   string `json:"to,omitempty"`
	Room string `json:"room,omitempty"`
	Kind string `json:"kind"`
	Body []byte `json:"body,omitempty"`
}

// SendResponse says who received the message.
type SendResponse struct {
	Delivered []string `json:"delivered"`
}

// Event types of /v1/events. The first event of every stream is Hello.
const (
	EventHello             = "Hello"
	EventStatusChanged     = "StatusChanged"
	EventConnectionError   = "ConnectionError"
	EventSelfHandleChanged = "SelfHandleChanged"
	EventAccountAdded      = "AccountAdded"
	EventAccountRemoved    = "AccountRemoved"
	EventPresenceChanged   = "PresenceChanged"
	EventContactsChanged   = "ContactsChanged"
	EventRoomsChanged      = "RoomsChanged"
	EventMessageReceived   = "MessageReceived"
	EventContactKeyChanged = "ContactKeyChanged" // contact, old_fingerprint, new_fingerprint (safety numbers)

	EventNewTube             = "NewTube"                 // a tube was offered to us, or we offered one
	EventTubeStateChanged    = "TubeChannelStateChanged" // state, state_code
	EventTubeClosed          = "TubeClosed"              // error, message
	EventNewRemoteConnection = "NewRemoteConnection"     // offering side: contact, source, connection_id
	EventNewLocalConnection  = "NewLocalConnection"      // accepting side: connection_id
	EventConnectionClosed    = "ConnectionClosed"        // connection_id, error, message
	EventParametersRequested = "ParametersRequested"     // request, tube, service, contact, room; handler = the generator's client

	EventServiceAdded   = "ServiceAdded"   // service, scope
	EventServiceRemoved = "ServiceRemoved" // service, scope
)

// ParamsAnswer is the body of POST /v1/params/{request}: a generator's
// parameters for one offer, or why it refuses.
type ParamsAnswer struct {
	Parameters map[string]Value `json:"parameters,omitempty"`
	Error      string           `json:"error,omitempty"`
}

// Event is one event of the stream. Which fields are set depends on Type.
type Event struct {
	Seq     uint64    `json:"seq"`
	Type    string    `json:"type"`
	Time    time.Time `json:"time"`
	Account string    `json:"account,omitempty"`

	ClientID string `json:"client_id,omitempty"` // Hello

	Status     string  `json:"status,omitempty"` // StatusChanged
	StatusCode *uint32 `json:"status_code,omitempty"`
	Reason     string  `json:"reason,omitempty"`
	ReasonCode *uint32 `json:"reason_code,omitempty"`

	Error   string         `json:"error,omitempty"` // ConnectionError
	Details map[string]any `json:"details,omitempty"`

	SelfHandle uint32 `json:"self_handle,omitempty"` // SelfHandleChanged

	Contact string `json:"contact,omitempty"` // PresenceChanged, ContactsChanged, ContactKeyChanged
	Online  *bool  `json:"online,omitempty"`
	State   string `json:"state,omitempty"`

	OldFingerprint string `json:"old_fingerprint,omitempty"` // ContactKeyChanged: the pinned key's safety number
	NewFingerprint string `json:"new_fingerprint,omitempty"` // ContactKeyChanged: the refused key's

	Room    string `json:"room,omitempty"` // RoomsChanged, MessageReceived
	Member  string `json:"member,omitempty"`
	Joined  *bool  `json:"joined,omitempty"`
	Deleted bool   `json:"deleted,omitempty"`
	Change  string `json:"change,omitempty"` // RoomsChanged: joined, left, removed, deleted, invited, declined, role
	By      string `json:"by,omitempty"`     // RoomsChanged: who invited, removed or changed the role
	Role    string `json:"role,omitempty"`   // RoomsChanged (change role): the member's new role

	Scope string `json:"scope,omitempty"` // ServiceAdded, ServiceRemoved (with Service)

	From string `json:"from,omitempty"` // MessageReceived
	Kind string `json:"kind,omitempty"`
	Body []byte `json:"body,omitempty"`

	TubeID       string  `json:"tube,omitempty"` // tube events
	Service      string  `json:"service,omitempty"`
	Direction    string  `json:"direction,omitempty"`
	StateCode    *uint32 `json:"state_code,omitempty"` // with State
	Address      string  `json:"address,omitempty"`
	Path         string  `json:"path,omitempty"`
	ConnectionID *uint32 `json:"connection_id,omitempty"`
	Source       string  `json:"source,omitempty"`
	Message      string  `json:"message,omitempty"` // with Error
	Handler      string  `json:"handler,omitempty"` // the client whose handler accepted the tube, or who must generate parameters
	Request      string  `json:"request,omitempty"` // ParametersRequested
}
