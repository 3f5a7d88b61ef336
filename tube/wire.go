package tube

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"

	"github.com/tubes-dev/tubes/tperr"
)

// Rendezvous message kinds of tubes. Every kind that starts with "tube."
// belongs to this package (IsTubeKind); the daemon hands such deliveries
// to the account's Manager instead of the event stream.
const (
	kindOffer   = "tube.offer"   // offerer → recipient: a new tube
	kindClose   = "tube.close"   // either side: the tube (or this member's part of it) ends
	kindRequest = "tube.request" // requester → owner: offer me a tube to SERVICE (reverse tube)
	kindRefuse  = "tube.refuse"  // owner → requester: no
	// Relay path: the accepter names the address the offerer's TURN
	// server sees it at; the offerer permits it on its allocation.
	kindPermit    = "tube.permit"    // accepter → offerer: permit my address
	kindPermitted = "tube.permitted" // offerer → accepter: done (or why not)
)

// IsTubeKind reports whether a rendezvous message kind belongs to tubes.
func IsTubeKind(kind string) bool { return strings.HasPrefix(kind, "tube.") }

// Limits of the wire messages.
const (
	maxIDLen      = 64
	maxServiceLen = 255
	maxAddrs      = 32
	maxMessageLen = 255
	maxSealedLen  = 48 << 10
)

// offerMsg is the body of tube.offer. Params is the tube's parameters
// sealed (HPKE) to the recipient's account key; the relay, and any other
// room member, sees only ciphertext.
type offerMsg struct {
	ID      string     `json:"id"`
	Service string     `json:"service"`
	Addrs   []string   `json:"addrs,omitempty"`   // the offerer's direct peer-link addresses
	Path    string     `json:"path,omitempty"`    // the offerer's path choice: "", direct or relay
	Relay   *relayInfo `json:"relay,omitempty"`   // the offerer's TURN TCP allocation
	Params  []byte     `json:"params,omitempty"`  // sealed JSON object of api.Value
	Request string     `json:"request,omitempty"` // the reverse-tube request this answers
}

// relayInfo is where the offerer can be reached through a TURN relay.
type relayInfo struct {
	Addr   string `json:"addr"`   // the relayed address of its TCP allocation
	Server string `json:"server"` // the TURN server, for the accepter to learn its own address there
}

// permitMsg is the body of tube.permit; permittedMsg of tube.permitted.
type permitMsg struct {
	ID string `json:"id"` // matches the answer to the question
	IP string `json:"ip"`
	// Relay is the relayed address the asker means to dial (older peers
	// leave it out): one the offerer's allocation no longer has tells it
	// that the asker missed an offer, which it sends again.
	Relay string `json:"relay,omitempty"`
}

type permittedMsg struct {
	ID      string `json:"id"`
	Error   string `json:"error,omitempty"`
	Message string `json:"message,omitempty"`
}

// closeMsg is the body of tube.close.
type closeMsg struct {
	ID      string `json:"id"`
	Error   string `json:"error,omitempty"`
	Message string `json:"message,omitempty"`
}

// requestMsg is the body of tube.request.
type requestMsg struct {
	Request string `json:"request"`
	Service string `json:"service"`
	// Implementation is the interface and version the requester chose
	// ("INTERFACE@M.m") when it asked for an interface, which a service
	// registered at several locations serves from one of them; older
	// peers leave it out.
	Implementation string `json:"implementation,omitempty"`
}

// refuseMsg is the body of tube.refuse.
type refuseMsg struct {
	Request string `json:"request"`
	Error   string `json:"error"`
	Message string `json:"message"`
}

// streamMeta opens a stream: which tube the connection belongs to.
type streamMeta struct {
	Tube string `json:"tube"`
}

// ctrlMsg is a link-level message: the accepter tells the offerer it
// accepted a tube (which opens an outgoing p2p tube).
type ctrlMsg struct {
	Op   string `json:"op"` // "accepted"
	Tube string `json:"tube"`
}

const ctrlAccepted = "accepted"

// decodeStrict decodes JSON that must be exactly one object of v's shape.
func decodeStrict(data []byte, v any, what string) error {
	if err := json.Unmarshal(data, v); err != nil {
		return tperr.New(tperr.InvalidArgument, "malformed %s: %v", what, err)
	}
	return nil
}

func checkID(field, id string) error {
	if id == "" || len(id) > maxIDLen {
		return tperr.New(tperr.InvalidArgument, "%s must be 1 to %d characters", field, maxIDLen)
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return tperr.New(tperr.InvalidArgument, "%s %q has a character other than letters, digits, - and _", field, id)
		}
	}
	return nil
}

// checkService validates a service name: a short protocol name (vnc,
// x-myapp) or an interface name (com.example.Editor).
func checkService(s string) error {
	if s == "" || len(s) > maxServiceLen {
		return tperr.New(tperr.InvalidArgument, "a service name must be 1 to %d characters", maxServiceLen)
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' || c == '+') {
			return tperr.New(tperr.InvalidArgument, "service name %q may only have letters, digits and - _ . +", s)
		}
	}
	return nil
}

// checkImplementation validates a requested implementation: empty, or
// INTERFACE@MAJOR.MINOR.
func checkImplementation(s string) error {
	if s == "" {
		return nil
	}
	iface, v, ok := strings.Cut(s, "@")
	maj, min, dot := strings.Cut(v, ".")
	if !ok || !dot || checkService(iface) != nil || !digits(maj) || !digits(min) {
		return tperr.New(tperr.InvalidArgument, "implementation %q is not INTERFACE@MAJOR.MINOR", clip(s))
	}
	return nil
}

func digits(s string) bool {
	if s == "" || len(s) > 9 {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func checkPath(p string) error {
	switch p {
	case "", "auto", "direct", "relay":
		return nil
	}
	return tperr.New(tperr.InvalidArgument, "path %q is not one of auto, direct, relay", p)
}

func decodeOffer(data []byte) (offerMsg, error) {
	var m offerMsg
	if err := decodeStrict(data, &m, "tube offer"); err != nil {
		return m, err
	}
	if err := checkID("tube id", m.ID); err != nil {
		return m, err
	}
	if err := checkService(m.Service); err != nil {
		return m, err
	}
	if err := checkPath(m.Path); err != nil {
		return m, err
	}
	if len(m.Addrs) > maxAddrs {
		return m, tperr.New(tperr.InvalidArgument, "a tube offer has at most %d addresses", maxAddrs)
	}
	for _, a := range m.Addrs {
		if _, err := netip.ParseAddrPort(a); err != nil {
			return m, tperr.New(tperr.InvalidArgument, "offer address %q is not a numeric HOST:PORT", a)
		}
	}
	if r := m.Relay; r != nil {
		for _, a := range []string{r.Addr, r.Server} {
			if _, err := netip.ParseAddrPort(a); err != nil {
				return m, tperr.New(tperr.InvalidArgument, "offer relay address %q is not a numeric HOST:PORT", a)
			}
		}
	}
	if len(m.Params) > maxSealedLen {
		return m, tperr.New(tperr.InvalidArgument, "tube parameters are larger than %d bytes", maxSealedLen)
	}
	if m.Request != "" {
		if err := checkID("request id", m.Request); err != nil {
			return m, err
		}
	}
	return m, nil
}

func decodePermit(data []byte) (permitMsg, error) {
	var m permitMsg
	if err := decodeStrict(data, &m, "relay permission request"); err != nil {
		return m, err
	}
	if err := checkID("permission id", m.ID); err != nil {
		return m, err
	}
	if ip, err := netip.ParseAddr(m.IP); err != nil || ip.Zone() != "" {
		return m, tperr.New(tperr.InvalidArgument, "permission address %q is not an IP address", clip(m.IP))
	}
	if _, err := netip.ParseAddrPort(m.Relay); m.Relay != "" && err != nil {
		return m, tperr.New(tperr.InvalidArgument, "relayed address %q is not HOST:PORT", clip(m.Relay))
	}
	return m, nil
}

func decodePermitted(data []byte) (permittedMsg, error) {
	var m permittedMsg
	if err := decodeStrict(data, &m, "relay permission answer"); err != nil {
		return m, err
	}
	if err := checkID("permission id", m.ID); err != nil {
		return m, err
	}
	if len(m.Message) > maxMessageLen || (m.Error != "" && !tperr.IsName(m.Error)) {
		return m, tperr.New(tperr.InvalidArgument, "malformed relay permission answer")
	}
	m.Message = clip(m.Message)
	return m, nil
}

func decodeClose(data []byte) (closeMsg, error) {
	var m closeMsg
	if err := decodeStrict(data, &m, "tube close"); err != nil {
		return m, err
	}
	if err := checkID("tube id", m.ID); err != nil {
		return m, err
	}
	m.Error, m.Message = clip(m.Error), clip(m.Message)
	return m, nil
}

func decodeRequest(data []byte) (requestMsg, error) {
	var m requestMsg
	if err := decodeStrict(data, &m, "tube request"); err != nil {
		return m, err
	}
	if err := checkID("request id", m.Request); err != nil {
		return m, err
	}
	if err := checkService(m.Service); err != nil {
		return m, err
	}
	return m, checkImplementation(m.Implementation)
}

func decodeRefuse(data []byte) (refuseMsg, error) {
	var m refuseMsg
	if err := decodeStrict(data, &m, "tube refusal"); err != nil {
		return m, err
	}
	if err := checkID("request id", m.Request); err != nil {
		return m, err
	}
	m.Error, m.Message = clip(m.Error), clip(m.Message)
	return m, nil
}

func decodeMeta(data []byte) (streamMeta, error) {
	var m streamMeta
	if err := decodeStrict(data, &m, "stream header"); err != nil {
		return m, err
	}
	return m, checkID("tube id", m.Tube)
}

func decodeCtrl(data []byte) (ctrlMsg, error) {
	var m ctrlMsg
	if err := decodeStrict(data, &m, "link message"); err != nil {
		return m, err
	}
	if m.Op != ctrlAccepted {
		return m, tperr.New(tperr.InvalidArgument, "unknown link message %q", clip(m.Op))
	}
	return m, checkID("tube id", m.Tube)
}

// clip bounds a peer-supplied string before it reaches events and logs,
// and drops control characters.
func clip(s string) string {
	if len(s) > maxMessageLen {
		s = s[:maxMessageLen]
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, strings.ToValidUTF8(s, ""))
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("tube: encoding %T: %v", v, err)) // only plain structs are encoded
	}
	return b
}
