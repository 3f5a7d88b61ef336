package stunframe

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

func stunMsg(bodyLen int) []byte {
	b := make([]byte, HeaderSize+bodyLen)
	binary.BigEndian.PutUint16(b[0:2], 0x0001) // Binding request
	binary.BigEndian.PutUint16(b[2:4], uint16(bodyLen))
	binary.BigEndian.PutUint32(b[4:8], 0x2112A442)
	return b
}

// Frames are read whole and one at a time, never a byte past the frame:
// what follows a frame (a peer's data after ConnectionBind) stays unread.
func TestReadExact(t *testing.T) {
	cd := []byte{0x40, 0x00, 0x00, 0x05, 'h', 'e', 'l', 'l', 'o', 0, 0, 0} // ChannelData, padded to 4
	in := append(append(stunMsg(8), cd...), "peer data"...)
	r := bytes.NewReader(in)
	var hdr [4]byte
	f, err := Read(r, hdr[:])
	if err != nil || len(f) != HeaderSize+8 {
		t.Fatalf("STUN frame: %d bytes, %v", len(f), err)
	}
	f, err = Read(r, hdr[:])
	if err != nil || !bytes.Equal(f, cd) {
		t.Fatalf("ChannelData frame: %x, %v", f, err)
	}
	rest, _ := io.ReadAll(r)
	if string(rest) != "peer data" {
		t.Fatalf("bytes after the frames: %q", rest)
	}
}

func TestReadRejects(t *testing.T) {
	var hdr [4]byte
	for name, in := range map[string][]byte{
		"not TURN":       {0x80, 0, 0, 0},
		"odd STUN size":  {0x00, 0x01, 0x00, 0x03},
		"truncated STUN": stunMsg(8)[:HeaderSize+4],
	} {
		if _, err := Read(bytes.NewReader(in), hdr[:]); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if _, err := Read(bytes.NewReader(stunMsg(8)[:HeaderSize]), hdr[:]); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("a cut frame: %v, want unexpected EOF", err)
	}
}

func FuzzRead(f *testing.F) {
	f.Add(stunMsg(8))
	f.Add([]byte{0x40, 0x00, 0x00, 0x05, 'h', 'e', 'l', 'l', 'o', 0, 0, 0})
	f.Add([]byte{0x80, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		var hdr [4]byte
		total := 0
		for {
			fr, err := Read(r, hdr[:])
			if err != nil {
				break
			}
			total += len(fr)
			if total+r.Len() != len(b) {
				t.Fatalf("read %d bytes of frames but %d remain of %d", total, r.Len(), len(b))
			}
		}
	})
}
