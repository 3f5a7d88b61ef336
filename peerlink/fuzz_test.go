package peerlink

import (
	"crypto/tls"
	"testing"
)

var fuzzSecret = []byte("a fixed secret for fuzzing only.")

// FuzzRecords feeds arbitrary bytes to a link's reader, as if they came
// from the network: it must stop with an error (the bytes were not
// sealed with the link's key, or ended), never panic or hang.
func FuzzRecords(f *testing.F) {
	out, _ := newCipherState(tls.TLS_AES_128_GCM_SHA256, fuzzSecret)
	f.Add(sealed(f, out, frameCtrl, 0, []byte("hello")))
	f.Add([]byte{0, 0, 0, 21})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1})
	f.Fuzz(func(t *testing.T, input []byte) {
		in, _ := newCipherState(tls.TLS_AES_128_GCM_SHA256, fuzzSecret)
		if _, err := readRecords(in, input); err == nil {
			t.Fatal("the reader ended without an error")
		}
	})
}

// FuzzFrames seals arbitrary frames with the link's key, so that they pass
// the record layer, and feeds them to a link's reader: whatever their
// types, streams and payloads (opens with the wrong parity, data past the
// window, malformed window frames, unknown types), it must not panic or
// hang, and must stop with an error at the end of the input.
//
// The input is a list of frames, each: type, stream id (1 byte), payload
// length (2 bytes), payload.
func FuzzFrames(f *testing.F) {
	f.Add([]byte{frameOpen, 1, 0, 1, 0, frameData, 1, 0, 3, 'a', 'b', 'c', frameFin, 1, 0, 0})
	f.Add([]byte{frameOpen, 1, 0, 0, frameWindow, 2, 0, 3, 1, 2, 3, frameCtrl, 0, 0, 2, 'h', 'i'})
	f.Add([]byte{frameOpen, 3, 0, 1, 1, frameRst, 3, 0, 2, 3, 'x', framePing, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 0, 0})
	f.Add([]byte{frameGoAway, 0, 0, 0, frameCtrl, 0, 0, 1, 'z'})
	f.Fuzz(func(t *testing.T, input []byte) {
		out, _ := newCipherState(tls.TLS_AES_128_GCM_SHA256, fuzzSecret)
		var wire []byte
		for len(input) >= 4 {
			typ, stream, n := input[0], uint32(input[1]), int(input[2])<<8|int(input[3])
			input = input[4:]
			n = min(n, len(input))
			wire = append(wire, sealed(t, out, typ, stream, input[:n])...)
			input = input[n:]
		}
		in, _ := newCipherState(tls.TLS_AES_128_GCM_SHA256, fuzzSecret)
		if _, err := readRecords(in, wire); err == nil {
			t.Fatal("the reader ended without an error")
		}
	})
}
