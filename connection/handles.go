package connection

import (
	"sync"

	"github.com/tubes-dev/tubes/tperr"
)

// HandleType is Handle_Type.
type HandleType uint32

// Handle_Type values, numbered as in the Telepathy spec.
const (
	HandleNone    HandleType = 0
	HandleContact HandleType = 1
	HandleRoom    HandleType = 2
)

func (t HandleType) String() string {
	switch t {
	case HandleNone:
		return "None"
	case HandleContact:
		return "Contact"
	case HandleRoom:
		return "Room"
	}
	return "Unknown"
}

// Handle is a non-zero number standing for a contact or a room within one
// connection. Zero means "no contact/room".
type Handle uint32

// Handles hands out handles for one connection. Handles are per type,
// never reused and never change: equal identifiers always get equal
// handles for the lifetime of the Handles value (the daemon keeps one per
// account for as long as the account exists, which is at least the
// lifetime of any one connection).
type Handles struct {
	// Normalize validates and canonicalises an identifier of a type; it
	// returns an error naming what is wrong with the identifier.
	Normalize func(HandleType, string) (string, error)

	mu    sync.Mutex // guards the fields below
	byID  [3]map[string]Handle
	names [3][]string // names[t][h-1] is the identifier of handle h
}

// table prepares the table of type t. An unknown type is NotImplemented
// for RequestHandles and InvalidArgument for InspectHandles, as the spec
// lists those errors for each.
func (h *Handles) table(t HandleType, unknown string) error {
	switch t {
	case HandleContact, HandleRoom:
	case HandleNone:
		return tperr.New(tperr.InvalidArgument, "handle type None (0) names no contact or room")
	default:
		return tperr.New(unknown, "handle type %d is not supported; use Contact (1) or Room (2)", t)
	}
	if h.byID[t] == nil {
		h.byID[t] = make(map[string]Handle)
	}
	return nil
}

// Request returns handles for identifiers, creating them as needed. It is
// all or nothing: if one identifier is invalid, no handle is created and
// the error (InvalidHandle) names that identifier.
func (h *Handles) Request(t HandleType, ids []string) ([]Handle, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.table(t, tperr.NotImplemented); err != nil {
		return nil, err
	}
	norm := make([]string, len(ids))
	for i, id := range ids {
		n := id
		if h.Normalize != nil {
			var err error
			if n, err = h.Normalize(t, id); err != nil {
				return nil, tperr.Wrap(err, tperr.InvalidHandle, "%q is not a valid %s identifier: %v", id, t, err)
			}
		}
		norm[i] = n
	}
	out := make([]Handle, len(ids))
	for i, n := range norm {
		hd, ok := h.byID[t][n]
		if !ok {
			h.names[t] = append(h.names[t], n)
			hd = Handle(len(h.names[t]))
			h.byID[t][n] = hd
		}
		out[i] = hd
	}
	return out, nil
}

// Inspect returns the identifiers of handles. Unknown or zero handles fail
// the whole call with InvalidHandle.
func (h *Handles) Inspect(t HandleType, handles []Handle) ([]string, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.table(t, tperr.InvalidArgument); err != nil {
		return nil, err
	}
	out := make([]string, len(handles))
	for i, hd := range handles {
		if hd == 0 || int(hd) > len(h.names[t]) {
			return nil, tperr.New(tperr.InvalidHandle, "%d is not a %s handle of this connection", hd, t)
		}
		out[i] = h.names[t][hd-1]
	}
	return out, nil
}

// Lookup returns the handle of an already known identifier, or 0.
func (h *Handles) Lookup(t HandleType, id string) Handle {
	hs, err := h.Request(t, []string{id})
	if err != nil {
		return 0
	}
	return hs[0]
}
