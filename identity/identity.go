// Package identity holds account keys: ed25519 key pairs whose private half
// never leaves the daemon that made it. The same key signs the rendezvous
// login (as a NATS user nkey) and, for peer links, the TLS certificate that
// the other side pins.
package identity

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/nats-io/nkeys"

	"github.com/tubes-dev/tubes/internal/atomicfile"
)

// Key is an account's private key.
type Key struct {
	priv ed25519.PrivateKey
}

// Generate makes a new random key.
func Generate() (*Key, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("identity: generate key: %w", err)
	}
	return &Key{priv: priv}, nil
}

// FromSeed returns the key with the given 32-byte ed25519 seed.
func FromSeed(seed []byte) (*Key, error) {
	if len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("identity: seed is %d bytes, want %d", len(seed), ed25519.SeedSize)
	}
	return &Key{priv: ed25519.NewKeyFromSeed(seed)}, nil
}

// Load reads a key written by Save. It refuses a key file that other users
// can read.
func Load(path string) (*Key, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("identity: key file %s is readable by others (mode %v); chmod 600 it", path, st.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	return Parse(b)
}

// Parse decodes a PKCS#8 PEM ed25519 private key.
func Parse(b []byte) (*Key, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, errors.New("identity: key file holds no PEM PRIVATE KEY block")
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("identity: key is %T, want ed25519", k)
	}
	return &Key{priv: priv}, nil
}

// Save writes the key as PKCS#8 PEM, mode 0600, atomically.
func (k *Key) Save(path string) error {
	b, err := k.PEM()
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(path, b, 0o600)
}

// PEM encodes the key as PKCS#8 PEM, the form Save writes and Parse reads.
func (k *Key) PEM() ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k.priv)
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// Public returns the public half.
func (k *Key) Public() PublicKey { return PublicKey(k.priv.Public().(ed25519.PublicKey)) }

// Private returns the ed25519 private key (for TLS certificates).
func (k *Key) Private() ed25519.PrivateKey { return k.priv }

// Sign signs msg.
func (k *Key) Sign(msg []byte) []byte { return ed25519.Sign(k.priv, msg) }

// NKey returns the key as a NATS user nkey pair, for the rendezvous login.
func (k *Key) NKey() (nkeys.KeyPair, error) {
	return nkeys.FromRawSeed(nkeys.PrefixByteUser, k.priv.Seed())
}

// PublicKey is an account's public key.
type PublicKey ed25519.PublicKey

// String encodes the key as a NATS user public nkey ("U…"), the form the
// rendezvous stores and shows.
func (p PublicKey) String() string {
	s, err := nkeys.Encode(nkeys.PrefixByteUser, p)
	if err != nil {
		return "invalid-key"
	}
	return string(s)
}

// Fingerprint is a short, stable digest of the key for people to compare:
// the first 16 bytes of SHA-256, base64url.
func (p PublicKey) Fingerprint() string {
	sum := sha256.Sum256(p)
	return "SHA256:" + base64.RawURLEncoding.EncodeToString(sum[:16])
}

// SafetyNumber is the key's fingerprint for people to read aloud or
// compare at a glance: 40 decimal digits in eight groups of five, from
// SHA-512 of the key (each group a 40-bit slice of the digest modulo
// 100000, as Signal's safety numbers are made), about 133 bits. Each
// person's number is their own key's: alice reads hers to bob, who
// compares it with what his daemon pinned for her.
func (p PublicKey) SafetyNumber() string {
	sum := sha512.Sum512(p)
	groups := make([]string, 8)
	for i := range groups {
		b := sum[i*5 : i*5+5]
		v := uint64(b[0])<<32 | uint64(b[1])<<24 | uint64(b[2])<<16 | uint64(b[3])<<8 | uint64(b[4])
		groups[i] = fmt.Sprintf("%05d", v%100000)
	}
	return strings.Join(groups, " ")
}

// MatchesFingerprint reports whether fp names this key: its safety
// number (spaces anywhere, or none) or its SHA256: fingerprint.
func (p PublicKey) MatchesFingerprint(fp string) bool {
	fp = strings.TrimSpace(fp)
	if strings.HasPrefix(fp, "SHA256:") {
		return subtle.ConstantTimeCompare([]byte(fp), []byte(p.Fingerprint())) == 1
	}
	digits := strings.Join(strings.Fields(fp), "")
	return len(digits) == 40 && subtle.ConstantTimeCompare([]byte(digits), []byte(strings.ReplaceAll(p.SafetyNumber(), " ", ""))) == 1
}

// Equal reports whether two public keys are the same.
func (p PublicKey) Equal(q PublicKey) bool { return ed25519.PublicKey(p).Equal(ed25519.PublicKey(q)) }

// Verify checks sig over msg.
func (p PublicKey) Verify(msg, sig []byte) bool {
	return len(p) == ed25519.PublicKeySize && ed25519.Verify(ed25519.PublicKey(p), msg, sig)
}

// ParsePublicKey decodes a "U…" public nkey.
func ParsePublicKey(s string) (PublicKey, error) {
	raw, err := nkeys.Decode(nkeys.PrefixByteUser, []byte(s))
	if err != nil {
		return nil, fmt.Errorf("identity: %q is not a user public key: %w", s, err)
	}
	if len(raw) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("identity: %q decodes to %d bytes", s, len(raw))
	}
	return PublicKey(raw), nil
}
