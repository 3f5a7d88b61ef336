package tube

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/tubes-dev/tubes/identity"
	"github.com/tubes-dev/tubes/tperr"
)

// Signed messages: the relay carries every tube.* message, and could
// forge one "from alice" (an offer pointing at its own addresses, a close,
// a request). So each is signed with the sender's account key, over its
// kind, sender, addressee (a contact, or "" for everyone in a room), room
// and body; the recipient checks the signature with the key it pinned for
// the sender and drops, and counts, any message that fails. The signature
// covers the sending time too: a message older than replayWindow (or as
// far in the future) is dropped, and so is one seen already within it, so
// the relay cannot play an old offer, request or close again.
//
//	{"body": <the message's JSON>, "ts": <unix ms>, "sig": <ed25519 signature, base64>}

// maxSignedLen bounds a signed envelope (the largest body is an offer
// with sealed parameters).
const maxSignedLen = maxSealedLen + 16<<10

// MaxMessageBody is the largest message body one account can send
// another (SendSigned): what a signed envelope carries, in base64, with
// room for its other fields.
const MaxMessageBody = (maxSignedLen - 1024) / 4 * 3

type signedMsg struct {
	Body json.RawMessage `json:"body,omitempty"` // a tube message (JSON)
	Data []byte          `json:"data,omitempty"` // or any other message's bytes (base64)
	TS   int64           `json:"ts"`             // sending time, Unix milliseconds
	Sig  []byte          `json:"sig"`
}

// payload is the signed bytes: Body or Data, not both (neither: an
// empty message).
func (e *signedMsg) payload() ([]byte, bool) {
	switch {
	case len(e.Body) > 0 && len(e.Data) > 0:
		return nil, false
	case len(e.Body) > 0:
		return e.Body, true
	}
	return e.Data, true
}

// replayWindow is how old (or how far ahead, for clocks that differ) a
// signed message may be; replays within it are caught by the seen set.
const replayWindow = 10 * time.Minute

// Bounds of the signatures remembered within the window: per sender, so
// that one sender's flood forgets only its own messages, and senders.
const (
	maxSeenPerSender = 4096
	maxSeenSenders   = 1024
)

// startSlack is how much older than the manager's start a message may be:
// the relay keeps no messages for a daemon that is down, so anything sent
// well before it started is a replay the seen set (lost with the restart)
// cannot catch. The slack allows for the two clocks.
const startSlack = 30 * time.Second

func signedInput(kind, from, to, room string, ts int64, body []byte) []byte {
	b := make([]byte, 0, 80+len(body))
	b = append(b, "tubes-signed-message-v2\x00"...)
	for _, f := range []string{kind, from, to, room, strconv.FormatInt(ts, 10)} {
		b = append(b, f...)
		b = append(b, 0)
	}
	return append(b, body...)
}

// seenSet remembers, per sender, the signatures of messages taken within
// the replay window, oldest first.
type seenSet struct {
	mu      sync.Mutex
	senders map[string]*seenRing
}

type seenRing struct {
	at    map[[32]byte]time.Time
	order [][32]byte
	last  time.Time
}

// fresh records sig from sender, taken at now, and reports whether it was
// new. It forgets what fell out of the window, the sender's oldest beyond
// maxSeenPerSender, and the longest quiet sender beyond maxSeenSenders.
func (s *seenSet) fresh(sender string, sig []byte, now time.Time) bool {
	h := sha256.Sum256(sig)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.senders == nil {
		s.senders = map[string]*seenRing{}
	}
	r := s.senders[sender]
	if r == nil {
		if len(s.senders) >= maxSeenSenders {
			var quiet string
			for n, x := range s.senders {
				if quiet == "" || x.last.Before(s.senders[quiet].last) {
					quiet = n
				}
			}
			delete(s.senders, quiet)
		}
		r = &seenRing{at: map[[32]byte]time.Time{}}
		s.senders[sender] = r
	}
	r.last = now
	for len(r.order) > 0 && (len(r.order) >= maxSeenPerSender || now.Sub(r.at[r.order[0]]) > 2*replayWindow) {
		delete(r.at, r.order[0])
		r.order = r.order[1:]
	}
	if _, dup := r.at[h]; dup {
		return false
	}
	r.at[h] = now
	r.order = append(r.order, h)
	return true
}

// send signs body and sends it to a contact (to), a room (room), or one
// member of a room (both).
func (m *Manager) send(ctx context.Context, to, room, kind string, body []byte) ([]string, error) {
	return m.sendEnvelope(ctx, to, room, kind, signedMsg{Body: body}, body)
}

func (m *Manager) sendEnvelope(ctx context.Context, to, room, kind string, env signedMsg, payload []byte) ([]string, error) {
	env.TS = time.Now().UnixMilli()
	env.Sig = m.cfg.Key.Sign(signedInput(kind, m.cfg.Account, to, room, env.TS, payload))
	b, err := json.Marshal(env)
	if err != nil {
		return nil, err
	}
	if len(b) > maxSignedLen {
		// Recipients drop anything larger: refuse it here, where the
		// sender hears why.
		return nil, tperr.New(tperr.InvalidArgument, "the message is %d bytes signed; recipients take at most %d", len(b), maxSignedLen)
	}
	return m.cfg.Signaller.Send(ctx, to, room, kind, b)
}

// errForged is why a message whose signature does not check was dropped.
var errForged = errors.New("tube: the message is not signed by its sender's pinned key")

// errReplayed is why a message signed rightly but old, or seen before,
// was dropped.
var errReplayed = errors.New("tube: the message was played again")

// openSigned checks a delivery's signature against the sender's pinned
// key and returns the message in it.
func (m *Manager) openSigned(from, room, kind string, data []byte) ([]byte, error) {
	if len(data) > maxSignedLen {
		return nil, fmt.Errorf("%w (%d bytes, more than %d)", errForged, len(data), maxSignedLen)
	}
	var env signedMsg
	if err := json.Unmarshal(data, &env); err != nil || len(env.Sig) == 0 {
		return nil, errForged
	}
	payload, ok := env.payload()
	if !ok {
		return nil, errForged
	}
	key, err := m.senderKey(from)
	if err != nil {
		return nil, err
	}
	for _, to := range []string{m.cfg.Account, ""} {
		if to == "" && room == "" {
			break
		}
		if !key.Verify(signedInput(kind, from, to, room, env.TS, payload), env.Sig) {
			continue
		}
		now := time.Now()
		if d := now.Sub(time.UnixMilli(env.TS)); d > replayWindow || d < -replayWindow {
			return nil, fmt.Errorf("%w: sent %s ago, outside the %s replay window", errReplayed, d.Round(time.Second), replayWindow)
		}
		if sent := time.UnixMilli(env.TS); sent.Before(m.started.Add(-startSlack)) {
			return nil, fmt.Errorf("%w: sent before this daemon started", errReplayed)
		}
		if !m.seen.fresh(from, env.Sig, now) {
			return nil, fmt.Errorf("%w: taken already", errReplayed)
		}
		return payload, nil
	}
	return nil, errForged
}

// senderKey is the key pinned for from, pinning it now (through the
// relay, with the pin check) if this is the first time.
func (m *Manager) senderKey(from string) (identity.PublicKey, error) {
	if m.cfg.PinnedKey != nil {
		if k, ok := m.cfg.PinnedKey(from); ok {
			return k, nil
		}
	}
	ctx, cancel := context.WithTimeout(m.ctx, 5*time.Second)
	defer cancel()
	keys, err := m.keys(ctx, []string{from})
	if err != nil {
		return nil, err
	}
	k := keys[from]
	if k == nil {
		return nil, fmt.Errorf("%w: no key for %s (neither a contact nor a room co-member)", errForged, from)
	}
	return k, nil
}

// SendSigned sends a message of another kind (the service framework's
// catalogs) signed as tube messages are.
func (m *Manager) SendSigned(ctx context.Context, to, room, kind string, body []byte) ([]string, error) {
	if len(body) > MaxMessageBody {
		return nil, tperr.New(tperr.InvalidArgument, "the message is %d bytes; a message carries at most %d", len(body), MaxMessageBody)
	}
	return m.sendEnvelope(ctx, to, room, kind, signedMsg{Data: body}, body)
}

// OpenSigned checks a delivery signed by SendSigned against its sender's
// pinned key and returns the message in it; one that fails is counted
// (Forged).
func (m *Manager) OpenSigned(from, room, kind string, data []byte) ([]byte, error) {
	body, err := m.openSigned(from, room, kind, data)
	if err != nil {
		m.forged.Add(1)
	}
	return body, err
}
