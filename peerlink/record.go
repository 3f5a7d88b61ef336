package peerlink

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"

	"golang.org/x/crypto/chacha20poly1305"
)

// Records. The TLS 1.3 handshake authenticates both account keys; after
// it, the link carries its frames in records of its own, keyed from that
// handshake through the TLS exporter (RFC 8446 §7.5) and sealed with the
// AEAD the handshake negotiated. The layout is in frame.go.
//
// Why not crypto/tls's records: a tube's bytes then cross each daemon
// with no copy in user space. The sender reads the local socket straight
// into the buffer the record is sealed in (in place) and written from,
// with one system call per frame; the receiver opens a record in place
// and writes the local socket from that buffer. Through crypto/tls each
// byte was copied twice more per daemon, and each 16 KiB record written
// with a call of its own.
//
// Each direction has its own secret. The nonce is the direction's IV XOR
// the record's number under the current key, so a record that is
// altered, dropped, replayed, reordered or cut short fails to open, and
// the link ends. After recordsPerKey records both ends move the
// direction's secret on (HKDF, as TLS 1.3's KeyUpdate does), well before
// AES-GCM's per-key limit: at most recordsPerKey × 1 MiB = 16 GiB, where
// RFC 8446 §5.5 allows about 2^24.5 full 16 KiB records (390 GB).

// exporterLabel names the link's keys in the TLS exporter. RFC 5705
// reserves labels that begin with "EXPERIMENTAL" for private use.
const exporterLabel = "EXPERIMENTAL tubes peerlink records v2"

// recordsPerKey is how many records one key seals.
const recordsPerKey = 1 << 14

// Record framing sizes.
const (
	recHeaderLen = 4  // the record's length, big-endian: the additional data
	trailerLen   = 5  // after the payload, inside the seal: type, stream id
	tagLen       = 16 // every AEAD here has a 16-byte tag
	// frameRoom is what a frame needs around its payload: a buffer for a
	// frame of n bytes is n+frameRoom long, payload at recHeaderLen.
	frameRoom = recHeaderLen + trailerLen + tagLen
	// maxRecord bounds the length a receiver accepts.
	maxRecord = maxFrame + trailerLen + tagLen
)

// cipherState seals or opens one direction's records.
type cipherState struct {
	suite  uint16
	secret []byte
	aead   cipher.AEAD
	iv     [12]byte
	nonce  [12]byte
	seq    uint64 // records under the current key
}

// keySchedule derives the two directions' states from a finished
// handshake: the dialing side's writes, then the accepting side's.
func keySchedule(cs tls.ConnectionState) (client, server *cipherState, err error) {
	if cs.Version != tls.VersionTLS13 {
		return nil, nil, errors.New("peerlink: the link is not TLS 1.3")
	}
	km, err := cs.ExportKeyingMaterial(exporterLabel, nil, 2*sha256.Size)
	if err != nil {
		return nil, nil, fmt.Errorf("peerlink: keys from the handshake: %w", err)
	}
	if client, err = newCipherState(cs.CipherSuite, km[:sha256.Size]); err != nil {
		return nil, nil, err
	}
	if server, err = newCipherState(cs.CipherSuite, km[sha256.Size:]); err != nil {
		return nil, nil, err
	}
	return client, server, nil
}

func newCipherState(suite uint16, secret []byte) (*cipherState, error) {
	c := &cipherState{suite: suite, secret: secret}
	return c, c.setKey()
}

// setKey derives the key and IV from the current secret.
func (c *cipherState) setKey() error {
	keyLen := 16
	if c.suite != tls.TLS_AES_128_GCM_SHA256 {
		keyLen = 32
	}
	key, err := hkdf.Expand(sha256.New, c.secret, "tubes record key", keyLen)
	if err != nil {
		return err
	}
	iv, err := hkdf.Expand(sha256.New, c.secret, "tubes record iv", len(c.iv))
	if err != nil {
		return err
	}
	copy(c.iv[:], iv)
	switch c.suite {
	case tls.TLS_CHACHA20_POLY1305_SHA256:
		c.aead, err = chacha20poly1305.New(key)
	case tls.TLS_AES_128_GCM_SHA256, tls.TLS_AES_256_GCM_SHA384:
		var b cipher.Block
		if b, err = aes.NewCipher(key); err == nil {
			c.aead, err = cipher.NewGCM(b)
		}
	default:
		err = fmt.Errorf("peerlink: no record cipher for TLS suite %s", tls.CipherSuiteName(c.suite))
	}
	c.seq = 0
	return err
}

// next returns the nonce of the next record and counts it, moving to
// the next key after recordsPerKey records.
func (c *cipherState) next() ([]byte, error) {
	if c.seq == recordsPerKey {
		s, err := hkdf.Expand(sha256.New, c.secret, "tubes record key update", sha256.Size)
		if err != nil {
			return nil, err
		}
		c.secret = s
		if err := c.setKey(); err != nil {
			return nil, err
		}
	}
	c.nonce = c.iv
	var seq [8]byte
	binary.BigEndian.PutUint64(seq[:], c.seq)
	for i, b := range seq {
		c.nonce[4+i] ^= b
	}
	c.seq++
	return c.nonce[:], nil
}

// seal turns the frame in buf into a record, in place: the payload is
// buf[recHeaderLen:recHeaderLen+n], and cap(buf) is at least
// n+frameRoom. It returns the record's bytes (a prefix of buf).
func (c *cipherState) seal(buf []byte, n int, typ byte, stream uint32) ([]byte, error) {
	if n > maxFrame || cap(buf) < n+frameRoom {
		return nil, fmt.Errorf("peerlink: a frame of %d bytes in a buffer of %d (at most %d, with %d of room)", n, cap(buf), maxFrame, frameRoom)
	}
	p := buf[recHeaderLen : recHeaderLen+n+trailerLen]
	p[n] = typ
	binary.BigEndian.PutUint32(p[n+1:], stream)
	binary.BigEndian.PutUint32(buf, uint32(len(p)+tagLen))
	nonce, err := c.next()
	if err != nil {
		return nil, err
	}
	out := c.aead.Seal(p[:0], nonce, p, buf[:recHeaderLen])
	return buf[:recHeaderLen+len(out)], nil
}

// errRecordAuth means a record did not open: altered, out of order, or
// not sealed by the peer at all.
var errRecordAuth = errors.New("peerlink: a record from the peer failed authentication")

// open opens the record body rec (the length header is hdr) in place and
// returns its frame.
func (c *cipherState) open(rec, hdr []byte) (typ byte, stream uint32, payload []byte, err error) {
	nonce, err := c.next()
	if err != nil {
		return 0, 0, nil, err
	}
	p, err := c.aead.Open(rec[:0], nonce, rec, hdr)
	if err != nil || len(p) < trailerLen {
		return 0, 0, nil, errRecordAuth
	}
	n := len(p) - trailerLen
	return p[n], binary.BigEndian.Uint32(p[n+1:]), p[:n], nil
}

// recordLength checks a record's length header.
func recordLength(hdr []byte) (int, error) {
	n := binary.BigEndian.Uint32(hdr)
	if (hdr[0] == 21 || hdr[0] == 23) && hdr[1] == 3 && hdr[2] == 3 {
		// A TLS record (alert, or an encrypted one): the peer's TLS
		// refused the handshake after ours had finished (in TLS 1.3 the
		// client finishes first), and says so in an alert. No link
		// record is that long.
		return 0, errors.New("peerlink: the peer refused the link's TLS handshake (a TLS alert came instead of a link record)")
	}
	if n < trailerLen+tagLen || n > maxRecord {
		return 0, fmt.Errorf("peerlink: a record of %d bytes from the peer (allowed: %d to %d)", n, trailerLen+tagLen, maxRecord)
	}
	return int(n), nil
}

// handshakeConn sits under crypto/tls during the handshake and gives it
// at most the rest of one TLS record per read, so that it never reads
// past the handshake's last record into the link's own records (which
// the peer may send right after).
type handshakeConn struct {
	net.Conn
	hdr  [5]byte
	pend []byte // header bytes read, not yet given to TLS
	left int    // body bytes of the current TLS record not yet read
}

func (c *handshakeConn) Read(p []byte) (int, error) {
	if len(c.pend) == 0 && c.left == 0 {
		if _, err := io.ReadFull(c.Conn, c.hdr[:]); err != nil {
			return 0, err
		}
		c.pend = c.hdr[:]
		c.left = int(binary.BigEndian.Uint16(c.hdr[3:]))
	}
	if len(c.pend) > 0 {
		n := copy(p, c.pend)
		c.pend = c.pend[n:]
		return n, nil
	}
	n, err := c.Conn.Read(p[:min(len(p), c.left)])
	c.left -= n
	return n, err
}
