package proxyproto_test

import (
	"bufio"
	"bytes"
	"testing"

	"github.com/tubes-dev/tubes/proxyproto"
)

// FuzzRead: headers from whoever connects to a service. Read never
// panics, consumes exactly the header it accepts, and whatever it accepts
// encodes again to bytes it decodes to the same header; that encoding is
// a fixed point.
func FuzzRead(f *testing.F) {
	f.Add(haproxyCRC)
	f.Add(awsNLB)
	f.Fuzz(func(t *testing.T, in []byte) {
		src := bytes.NewReader(in)
		r := bufio.NewReader(src)
		h, err := proxyproto.Read(r)
		if err != nil {
			return
		}
		if used := len(in) - src.Len() - r.Buffered(); used < 16 || used != 16+(int(in[14])<<8|int(in[15])) {
			t.Fatalf("consumed %d bytes of a header with length %d", used, int(in[14])<<8|int(in[15]))
		}
		b, err := h.Append(nil)
		if err != nil {
			t.Fatalf("cannot encode accepted header %+v: %v", h, err)
		}
		h2, err := proxyproto.Read(bufio.NewReader(bytes.NewReader(b)))
		if err != nil {
			t.Fatalf("cannot decode re-encoded header % x: %v", b, err)
		}
		if d := headerDiff(h2, h); d != "" {
			t.Fatalf("re-encoded header differs: %s", d)
		}
		b2, err := h2.Append(nil)
		if err != nil || !bytes.Equal(b, b2) {
			t.Fatalf("encoding is not stable: % x then % x (%v)", b, b2, err)
		}
	})
}
