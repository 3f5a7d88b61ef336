package peerlink

// Wire layout after the TLS 1.3 handshake, in both directions: a stream
// of records (record.go), one frame each.
//
//	+-----------+------------------------------------------------+-----+
//	| length    | sealed: payload | type, 1 B | stream id, 4 B BE  | tag |
//	| 4 B, BE   |                                                 | 16 B|
//	+-----------+------------------------------------------------+-----+
//
// length counts everything after it (sealed bytes and tag). The frame's
// type and stream come after its payload so that a receiver, opening the
// record in place, finds the payload at the start of its buffer.
//
// Stream ids are odd when opened by the side that dialed the link and
// even when opened by the side that accepted it, so both may open
// streams without coordinating. Stream id 0 is the link itself (ctrl,
// ping, pong, goaway, and window: credit for the whole link).
//
// Flow control has two levels, as in HTTP/2: a sender may have at most
// initialWindow bytes of DATA in flight on one stream, and at most
// linkWindow on the link, however many streams are open. Each receiver
// grants credit back (WINDOW on the stream, WINDOW on stream 0 for the
// link) as it writes data to its local sockets, so what one link can make
// a receiver hold is linkWindow bytes (see Limits).

// Frame types.
const (
	frameData   byte = 0 // payload: stream bytes
	frameOpen   byte = 1 // payload: opaque open metadata for the layer above
	frameFin    byte = 2 // the sender will send no more data on the stream
	frameRst    byte = 3 // abort; payload: 1-byte code, then a message
	frameWindow byte = 4 // payload: 4-byte credit increment (stream 0: the link's)
	framePing   byte = 5 // payload: 8 opaque bytes, echoed in a pong
	framePong   byte = 6
	frameCtrl   byte = 7 // stream 0; payload: message for the layer above
	frameGoAway byte = 8 // stream 0; the sender is closing the link
	// frameRetire (stream 0): the sender has another link to this peer
	// and will close this one once its streams end; the receiver opens
	// no more streams on it and answers with a retire of its own, after
	// which the sender knows no open from it is still on the way.
	frameRetire byte = 9
)

// Limits.
const (
	// maxData is the largest DATA payload a sender produces (large reads
	// of the local socket are what make bulk transfers fast), and
	// maxFrame the largest payload of any frame.
	maxData  = 1 << 20
	maxFrame = maxData
	// initialWindow is each stream's receive window: the most bytes a
	// sender may have in flight on one stream before the receiver has
	// written them to its local socket.
	initialWindow = 4 << 20
	// linkWindow is each link's receive budget: the most bytes a sender
	// may have in flight on all streams of the link together.
	linkWindow = 16 << 20
	// streamReserve is what every stream may have in flight whatever
	// the link's budget: streams whose applications do not read can hold
	// all of that budget, and the others' would then wait for nothing.
	// A stream with less than this in flight (its data is being taken)
	// may send on, so a receiver holds at most linkWindow plus this much
	// per stream.
	streamReserve = 64 << 10
)
