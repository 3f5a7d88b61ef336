package peerlink

import (
	"encoding/binary"
	"fmt"
	"io"
)

// Frame layout, after the TLS handshake, in both directions:
//
//	+------+-----------+-----------+-----------------+
//	| type | stream id | length    | payload         |
//	| 1 B  | 4 B, BE   | 4 B, BE   | length bytes    |
//	+------+-----------+-----------+-----------------+
//
// Stream ids are odd when opened by the side that dialed the link and
// even when opened by the side that accepted it, so both may open
// streams without coordinating. Stream id 0 is the link itself (ctrl,
// ping, pong, goaway).
const headerLen = 9

// Frame types.
const (
	frameData   byte = 0 // payload: stream bytes
	frameOpen   byte = 1 // payload: opaque open metadata for the layer above
	frameFin    byte = 2 // the sender will send no more data on the stream
	frameRst    byte = 3 // abort; payload: 1-byte code, then a message
	frameWindow byte = 4 // payload: 4-byte credit increment
	framePing   byte = 5 // payload: 8 opaque bytes, echoed in a pong
	framePong   byte = 6
	frameCtrl   byte = 7 // stream 0; payload: message for the layer above
	frameGoAway byte = 8 // stream 0; the sender is closing the link
)

// Limits.
const (
	// maxData is the largest DATA payload a sender produces (large reads
	// of the local socket are what make bulk transfers fast); receivers
	// accept up to maxFrame for any frame.
	maxData  = 1 << 20
	maxFrame = 2 << 20
	// initialWindow is each stream's receive window: the most bytes a
	// sender may have in flight on one stream before the receiver has
	// written them to its local socket.
	initialWindow = 4 << 20
)

type frameHeader struct {
	typ    byte
	stream uint32
	length uint32
}

func putHeader(b []byte, typ byte, stream uint32, length int) {
	b[0] = typ
	binary.BigEndian.PutUint32(b[1:5], stream)
	binary.BigEndian.PutUint32(b[5:9], uint32(length))
}

func readHeader(r io.Reader, b []byte) (frameHeader, error) {
	if _, err := io.ReadFull(r, b[:headerLen]); err != nil {
		return frameHeader{}, err
	}
	h := frameHeader{typ: b[0], stream: binary.BigEndian.Uint32(b[1:5]), length: binary.BigEndian.Uint32(b[5:9])}
	if h.length > maxFrame {
		return h, fmt.Errorf("peerlink: frame of %d bytes exceeds %d", h.length, maxFrame)
	}
	if h.typ > frameGoAway {
		return h, fmt.Errorf("peerlink: unknown frame type %d", h.typ)
	}
	return h, nil
}
