// Package stunframe reads the frames of TURN over a byte stream (RFC 8656
// §10.1): STUN messages and ChannelData, one at a time, reading no byte
// past the frame (after ConnectionBind the rest of the stream is a peer's).
package stunframe

import (
	"encoding/binary"
	"errors"
	"io"
)

// HeaderSize is the size of a STUN message header.
const HeaderSize = 20

// ErrNotTURN is returned for bytes that start neither a STUN message nor
// a ChannelData frame.
var ErrNotTURN = errors.New("not a STUN message or ChannelData frame")

// Read reads one frame. hdr is scratch space of at least 4 bytes.
func Read(r io.Reader, hdr []byte) ([]byte, error) {
	if _, err := io.ReadFull(r, hdr[:4]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(hdr[2:4]))
	var size int
	switch hdr[0] & 0xC0 {
	case 0:
		if n%4 != 0 {
			return nil, ErrNotTURN
		}
		size = HeaderSize + n
	case 0x40:
		size = 4 + (n+3)&^3
	default:
		return nil, ErrNotTURN
	}
	f := make([]byte, size)
	copy(f, hdr[:4])
	if _, err := io.ReadFull(r, f[4:]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return f, nil
}
