package tube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/tubes-dev/tubes/identity"
)

// Signed messages: the relay carries every tube.* message, and could
// forge one "from alice" (an offer pointing at its own addresses, a close,
// a request). So each is signed with the sender's account key, over its
// kind, sender, addressee (a contact, or "" for everyone in a room), room
// and body; the recipient checks the signature with the key it pinned for
// the sender and drops, and counts, any message that fails.
//
//	{"body": <the message's JSON>, "sig": <ed25519 signature, base64>}

// maxSignedLen bounds a signed envelope (the largest body is an offer
// with sealed parameters).
const maxSignedLen = maxSealedLen + 16<<10

type signedMsg struct {
	Body json.RawMessage `json:"body"`
	Sig  []byte          `json:"sig"`
}

func signedInput(kind, from, to, room string, body []byte) []byte {
	b := make([]byte, 0, 64+len(body))
	b = append(b, "tubes-signed-message-v1\x00"...)
	for _, f := range []string{kind, from, to, room} {
		b = append(b, f...)
		b = append(b, 0)
	}
	return append(b, body...)
}

// send signs body and sends it to a contact (to), a room (room), or one
// member of a room (both).
func (m *Manager) send(ctx context.Context, to, room, kind string, body []byte) ([]string, error) {
	env := signedMsg{Body: body, Sig: m.cfg.Key.Sign(signedInput(kind, m.cfg.Account, to, room, body))}
	return m.cfg.Signaller.Send(ctx, to, room, kind, mustJSON(env))
}

// errForged is why a message whose signature does not check was dropped.
var errForged = errors.New("tube: the message is not signed by its sender's pinned key")

// openSigned checks a delivery's signature against the sender's pinned
// key and returns the message in it.
func (m *Manager) openSigned(from, room, kind string, data []byte) ([]byte, error) {
	if len(data) > maxSignedLen {
		return nil, fmt.Errorf("%w (%d bytes, more than %d)", errForged, len(data), maxSignedLen)
	}
	var env signedMsg
	if err := json.Unmarshal(data, &env); err != nil || len(env.Body) == 0 || len(env.Sig) == 0 {
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
		if key.Verify(signedInput(kind, from, to, room, env.Body), env.Sig) {
			return env.Body, nil
		}
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
	return m.send(ctx, to, room, kind, body)
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
