package identity

import (
	"crypto/ecdh"
	"crypto/hpke"
	"crypto/sha512"
	"errors"
	"fmt"

	"filippo.io/edwards25519"
)

// Sealing lets a daemon encrypt a small message (tube parameters) to
// another account's key, so that the relay carrying it cannot read it.
// It is HPKE (RFC 9180, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
// ChaCha20-Poly1305) to the X25519 form of the recipient's ed25519 key
// (RFC 7748 birational map; the private scalar is the ed25519 one, as
// libsodium's crypto_sign_ed25519_sk_to_curve25519 derives it).

// X25519 returns the key's X25519 private key.
func (k *Key) X25519() (*ecdh.PrivateKey, error) {
	h := sha512.Sum512(k.priv.Seed())
	return ecdh.X25519().NewPrivateKey(h[:32])
}

// X25519 returns the public key's X25519 form.
func (p PublicKey) X25519() (*ecdh.PublicKey, error) {
	pt, err := new(edwards25519.Point).SetBytes(p)
	if err != nil {
		return nil, fmt.Errorf("identity: not an ed25519 public key: %w", err)
	}
	return ecdh.X25519().NewPublicKey(pt.BytesMontgomery())
}

var (
	sealKDF  = hpke.HKDFSHA256()
	sealAEAD = hpke.ChaCha20Poly1305()
)

// Seal encrypts plaintext to p. info binds the ciphertext to its use
// (e.g. the tube id), so it cannot be replayed elsewhere.
func Seal(p PublicKey, info, plaintext []byte) ([]byte, error) {
	xp, err := p.X25519()
	if err != nil {
		return nil, err
	}
	pk, err := hpke.NewDHKEMPublicKey(xp)
	if err != nil {
		return nil, fmt.Errorf("identity: seal: %w", err)
	}
	return hpke.Seal(pk, sealKDF, sealAEAD, info, plaintext)
}

// ErrUnseal is returned when a sealed message cannot be opened.
var ErrUnseal = errors.New("identity: sealed message could not be opened with this key")

// Open decrypts what Seal encrypted to k with the same info.
func (k *Key) Open(info, ciphertext []byte) ([]byte, error) {
	xk, err := k.X25519()
	if err != nil {
		return nil, err
	}
	sk, err := hpke.NewDHKEMPrivateKey(xk)
	if err != nil {
		return nil, fmt.Errorf("identity: open: %w", err)
	}
	pt, err := hpke.Open(sk, sealKDF, sealAEAD, info, ciphertext)
	if err != nil {
		return nil, ErrUnseal
	}
	return pt, nil
}
