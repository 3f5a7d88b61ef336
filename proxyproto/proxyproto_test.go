package proxyproto_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/tubes-dev/tubes/proxyproto"
)

const sig = "\r\n\r\n\x00\r\nQUIT\n"

func tcp(s string) *net.TCPAddr {
	a, err := net.ResolveTCPAddr("tcp", s)
	if err != nil {
		panic(err)
	}
	return a
}

func unix(name string) *net.UnixAddr { return &net.UnixAddr{Name: name, Net: "unix"} }

// addrEqual compares decoded addresses by meaning: an IPv4 address equals
// its IPv4-mapped IPv6 form, and zones are not on the wire.
func addrEqual(a, b net.Addr) bool {
	switch a := a.(type) {
	case nil:
		return b == nil
	case *net.TCPAddr:
		b, ok := b.(*net.TCPAddr)
		return ok && a.IP.Equal(b.IP) && a.Port == b.Port
	case *net.UnixAddr:
		b, ok := b.(*net.UnixAddr)
		return ok && a.Name == b.Name && a.Net == b.Net
	}
	return false
}

// headerDiff describes how got differs from want, or returns "". The
// value of a CRC32C TLV belongs to one encoding, so only its place is
// compared.
func headerDiff(got, want *proxyproto.Header) string {
	if got.Command != want.Command {
		return fmt.Sprintf("command %v, want %v", got.Command, want.Command)
	}
	if !addrEqual(got.Source, want.Source) {
		return fmt.Sprintf("source %#v, want %#v", got.Source, want.Source)
	}
	if !addrEqual(got.Dest, want.Dest) {
		return fmt.Sprintf("dest %#v, want %#v", got.Dest, want.Dest)
	}
	if len(got.TLVs) != len(want.TLVs) {
		return fmt.Sprintf("%d TLVs, want %d", len(got.TLVs), len(want.TLVs))
	}
	for i, g := range got.TLVs {
		w := want.TLVs[i]
		if g.Type != w.Type || g.Type != proxyproto.TypeCRC32C && !bytes.Equal(g.Value, w.Value) {
			return fmt.Sprintf("TLV %d is %#x %q, want %#x %q", i, g.Type, g.Value, w.Type, w.Value)
		}
	}
	return ""
}

func read(t *testing.T, b []byte) (*proxyproto.Header, []byte) {
	t.Helper()
	r := bufio.NewReader(bytes.NewReader(b))
	h, err := proxyproto.Read(r)
	if err != nil {
		t.Fatalf("Read(%q): %v", b, err)
	}
	rest, _ := io.ReadAll(r)
	return h, rest
}

func TestRoundTrip(t *testing.T) {
	long := strings.Repeat("p", 108)
	tubeTLVs := []proxyproto.TLV{
		{Type: proxyproto.TypeContact, Value: []byte("bob")},
		{Type: proxyproto.TypeAccount, Value: []byte("alice")},
		{Type: proxyproto.TypeRoom, Value: []byte("lobby")},
		{Type: proxyproto.TypeTube, Value: []byte("42")},
	}
	tests := []struct {
		name   string
		h      proxyproto.Header
		fam    byte // expected 14th byte
		length int  // expected length field
		want   *proxyproto.Header
	}{
		{
			name: "tcp4",
			h:    proxyproto.Header{Command: proxyproto.Proxy, Source: tcp("10.1.2.3:40000"), Dest: tcp("127.0.0.1:5900")},
			fam:  0x11, length: 12,
		},
		{
			name: "tcp4 with TLVs",
			h:    proxyproto.Header{Command: proxyproto.Proxy, Source: tcp("10.1.2.3:1"), Dest: tcp("127.0.0.1:65535"), TLVs: tubeTLVs},
			fam:  0x11, length: 12 + 3 + 3 + 3 + 5 + 3 + 5 + 3 + 2,
		},
		{
			name: "tcp6",
			h:    proxyproto.Header{Command: proxyproto.Proxy, Source: tcp("[2001:db8::1]:40000"), Dest: tcp("[::1]:22")},
			fam:  0x21, length: 36,
		},
		{
			name: "tcp6 zone dropped",
			h:    proxyproto.Header{Command: proxyproto.Proxy, Source: tcp("[fe80::1%lo]:40000"), Dest: tcp("[::1]:22")},
			fam:  0x21, length: 36,
		},
		{
			name: "v4 source, v6 dest: both as v6",
			h:    proxyproto.Header{Command: proxyproto.Proxy, Source: tcp("192.0.2.1:1234"), Dest: tcp("[2001:db8::2]:80")},
			fam:  0x21, length: 36,
			want: &proxyproto.Header{Command: proxyproto.Proxy, Source: &net.TCPAddr{IP: net.ParseIP("::ffff:192.0.2.1"), Port: 1234}, Dest: tcp("[2001:db8::2]:80")},
		},
		{
			name: "v6 source, v4 dest: both as v6",
			h:    proxyproto.Header{Command: proxyproto.Proxy, Source: tcp("[2001:db8::2]:80"), Dest: tcp("127.0.0.1:5900")},
			fam:  0x21, length: 36,
		},
		{
			name: "v4-mapped and v4: both as v4",
			h:    proxyproto.Header{Command: proxyproto.Proxy, Source: &net.TCPAddr{IP: net.ParseIP("::ffff:192.0.2.1"), Port: 9}, Dest: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1).To4(), Port: 10}},
			fam:  0x11, length: 12,
		},
		{
			name: "unix",
			h:    proxyproto.Header{Command: proxyproto.Proxy, Source: unix(""), Dest: unix("/run/vnc.sock"), TLVs: tubeTLVs[:1]},
			fam:  0x31, length: 216 + 6,
		},
		{
			name: "unix 108-byte path and abstract name",
			h:    proxyproto.Header{Command: proxyproto.Proxy, Source: unix("@tubes/" + strings.Repeat("a", 100)), Dest: unix(long)},
			fam:  0x31, length: 216,
		},
		{
			name: "unix path \"@\", abstract name with a NUL inside",
			h:    proxyproto.Header{Command: proxyproto.Proxy, Source: unix("@"), Dest: unix("@a\x00b")},
			fam:  0x31, length: 216,
		},
		{
			name: "unix with empty Net",
			h:    proxyproto.Header{Command: proxyproto.Proxy, Source: &net.UnixAddr{Name: "/a"}, Dest: &net.UnixAddr{Name: "/b"}},
			fam:  0x31, length: 216,
			want: &proxyproto.Header{Command: proxyproto.Proxy, Source: unix("/a"), Dest: unix("/b")},
		},
		{
			name: "local",
			h:    proxyproto.Header{Command: proxyproto.Local},
			fam:  0x00, length: 0,
		},
		{
			name: "local with TLVs",
			h:    proxyproto.Header{Command: proxyproto.Local, TLVs: []proxyproto.TLV{{Type: proxyproto.TypeNOOP}, {Type: proxyproto.TypeCRC32C}}},
			fam:  0x00, length: 3 + 7,
		},
		{
			name: "proxy unspec",
			h:    proxyproto.Header{Command: proxyproto.Proxy, Source: (*net.TCPAddr)(nil), TLVs: []proxyproto.TLV{{Type: proxyproto.TypeAuthority, Value: []byte("example.com")}}},
			fam:  0x00, length: 14,
			want: &proxyproto.Header{Command: proxyproto.Proxy, TLVs: []proxyproto.TLV{{Type: proxyproto.TypeAuthority, Value: []byte("example.com")}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prefix := []byte("keep")
			b, err := tt.h.Append(prefix)
			if err != nil {
				t.Fatal(err)
			}
			if string(b[:4]) != "keep" {
				t.Fatalf("Append overwrote its argument: %q", b[:4])
			}
			b = b[4:]
			if want := 16 + tt.length; len(b) != want {
				t.Fatalf("encoded %d bytes, want %d", len(b), want)
			}
			if string(b[:12]) != sig {
				t.Errorf("signature %q", b[:12])
			}
			if want := 0x20 | byte(tt.h.Command); b[12] != want {
				t.Errorf("ver/cmd 0x%02x, want 0x%02x", b[12], want)
			}
			if b[13] != tt.fam {
				t.Errorf("family 0x%02x, want 0x%02x", b[13], tt.fam)
			}
			if got := int(b[14])<<8 | int(b[15]); got != tt.length {
				t.Errorf("length %d, want %d", got, tt.length)
			}
			got, rest := read(t, append(b, "payload"...))
			if string(rest) != "payload" {
				t.Errorf("after the header: %q, want %q", rest, "payload")
			}
			want := tt.want
			if want == nil {
				want = &tt.h
			}
			if d := headerDiff(got, want); d != "" {
				t.Error(d)
			}
		})
	}
}

// TestGolden: bytes written out by hand from section 2.2, so any drift in
// the encoding fails here and not only in a round trip.
func TestGolden(t *testing.T) {
	want := []byte{
		0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, // signature
		0x21,       // version 2, PROXY
		0x11,       // AF_INET, STREAM
		0x00, 0x1a, // 26 bytes follow: 12 of addresses, 6 + 8 of TLVs
		0x7f, 0x00, 0x00, 0x01, // src 127.0.0.1
		0x7f, 0x00, 0x00, 0x01, // dst 127.0.0.1
		0x9c, 0x40, // src port 40000
		0x17, 0x0c, // dst port 5900
		0xe0, 0x00, 0x03, 'b', 'o', 'b', // TypeContact "bob"
		0xe1, 0x00, 0x05, 'a', 'l', 'i', 'c', 'e', // TypeAccount "alice"
	}
	h := &proxyproto.Header{
		Command: proxyproto.Proxy,
		Source:  tcp("127.0.0.1:40000"),
		Dest:    tcp("127.0.0.1:5900"),
		TLVs: []proxyproto.TLV{
			{Type: proxyproto.TypeContact, Value: []byte("bob")},
			{Type: proxyproto.TypeAccount, Value: []byte("alice")},
		},
	}
	got, err := h.Append(nil)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("encoded\n% x\nwant\n% x", got, want)
	}
	dec, _ := read(t, want)
	if d := headerDiff(dec, h); d != "" {
		t.Fatal(d)
	}
	if ip := dec.Source.(*net.TCPAddr).IP; len(ip) != 4 {
		t.Errorf("decoded IPv4 source is %d bytes long", len(ip))
	}
	if v, ok := dec.TLV(proxyproto.TypeContact); !ok || string(v) != "bob" {
		t.Errorf("TLV(TypeContact) = %q, %v", v, ok)
	}
}

func TestTLVLookup(t *testing.T) {
	h := &proxyproto.Header{TLVs: []proxyproto.TLV{
		{Type: proxyproto.TypeRoom, Value: []byte("first")},
		{Type: proxyproto.TypeTube, Value: []byte{}},
		{Type: proxyproto.TypeRoom, Value: []byte("second")},
	}}
	if v, ok := h.TLV(proxyproto.TypeRoom); !ok || string(v) != "first" {
		t.Errorf("TLV(TypeRoom) = %q, %v; want the first", v, ok)
	}
	if v, ok := h.TLV(proxyproto.TypeTube); !ok || len(v) != 0 {
		t.Errorf("TLV(TypeTube) = %q, %v; want an empty value", v, ok)
	}
	if _, ok := h.TLV(proxyproto.TypeContact); ok {
		t.Error("TLV(TypeContact) found a TLV that is not there")
	}
}

// TestPayloadAfterHeader: Read leaves the bytes after the header in the
// reader, even when the reader's buffer is as small as bufio allows and
// the header arrives a byte at a time.
func TestPayloadAfterHeader(t *testing.T) {
	h := &proxyproto.Header{Command: proxyproto.Proxy, Source: tcp("[2001:db8::1]:1"), Dest: tcp("[2001:db8::2]:2"),
		TLVs: []proxyproto.TLV{{Type: proxyproto.TypeTube, Value: bytes.Repeat([]byte("x"), 100)}}}
	b, err := h.Append(nil)
	if err != nil {
		t.Fatal(err)
	}
	payload := "RFB 003.008\n"
	r := bufio.NewReaderSize(oneByteReader{bytes.NewReader(append(b, payload...))}, 16)
	got, err := proxyproto.Read(r)
	if err != nil {
		t.Fatal(err)
	}
	if d := headerDiff(got, h); d != "" {
		t.Fatal(d)
	}
	rest, err := io.ReadAll(r)
	if err != nil || string(rest) != payload {
		t.Fatalf("after the header: %q, %v; want %q", rest, err, payload)
	}

	// Two headers back to back: each Read takes exactly one.
	r = bufio.NewReader(bytes.NewReader(append(append(b[:len(b):len(b)], b...), payload...)))
	for i := range 2 {
		if _, err := proxyproto.Read(r); err != nil {
			t.Fatalf("header %d: %v", i, err)
		}
	}
	if rest, _ := io.ReadAll(r); string(rest) != payload {
		t.Fatalf("after two headers: %q", rest)
	}
}

type oneByteReader struct{ r io.Reader }

func (o oneByteReader) Read(p []byte) (int, error) {
	if len(p) > 1 {
		p = p[:1]
	}
	return o.r.Read(p)
}

// hdr builds a header by hand: ver/cmd, family, length, then body.
func hdr(verCmd, fam byte, length int, body ...string) []byte {
	b := []byte(sig)
	b = append(b, verCmd, fam, byte(length>>8), byte(length))
	for _, s := range body {
		b = append(b, s...)
	}
	return b
}

var addrs4 = "\x7f\x00\x00\x01\x7f\x00\x00\x01\x9c\x40\x17\x0c"

func TestReadRejects(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want string // substring of the error
	}{
		{"wrong signature", []byte("\r\n\r\n\x00\r\nQUIX\n\x21\x11\x00\x0c" + addrs4), "no PROXY v2 signature"},
		{"short wrong signature", []byte("GET /"), "no PROXY v2 signature"},
		{"v1 text header", []byte("PROXY TCP4 127.0.0.1 127.0.0.1 40000 5900\r\n"), "v1"},
		{"version 1", hdr(0x11, 0x11, 12, addrs4), "version 1, want 2"},
		{"version 3", hdr(0x31, 0x11, 12, addrs4), "version 3, want 2"},
		{"version 0", hdr(0x00, 0x00, 0), "version 0, want 2"},
		{"command 2", hdr(0x22, 0x11, 12, addrs4), "unknown command 0x2"},
		{"command 0xf", hdr(0x2f, 0x00, 0), "unknown command 0xf"},
		{"udp4", hdr(0x21, 0x12, 12, addrs4), "datagram"},
		{"udp6", hdr(0x21, 0x22, 36, strings.Repeat("\x00", 36)), "datagram"},
		{"unix dgram", hdr(0x21, 0x32, 216, strings.Repeat("\x00", 216)), "datagram"},
		{"local over udp", hdr(0x20, 0x12, 12, addrs4), "datagram"},
		{"family 4", hdr(0x21, 0x41, 12, addrs4), "unknown family/protocol 0x41"},
		{"protocol 3", hdr(0x21, 0x13, 12, addrs4), "unknown family/protocol 0x13"},
		{"unspec family, stream", hdr(0x21, 0x01, 0), "unknown family/protocol 0x01"},
		{"inet, unspec protocol", hdr(0x21, 0x10, 12, addrs4), "unknown family/protocol 0x10"},
		{"tcp4 length 11", hdr(0x21, 0x11, 11, addrs4[:11]), "length 11 is shorter than the 12-byte address block"},
		{"tcp4 length 0", hdr(0x21, 0x11, 0), "length 0 is shorter"},
		{"tcp6 length 12", hdr(0x21, 0x21, 12, addrs4), "length 12 is shorter than the 36-byte address block"},
		{"unix length 215", hdr(0x21, 0x31, 215, strings.Repeat("\x00", 215)), "length 215 is shorter than the 216-byte"},
		{"local tcp4 length 11", hdr(0x20, 0x11, 11, addrs4[:11]), "is shorter"},
		{"empty", nil, "EOF"},
		{"cut in the fixed part", []byte(sig + "\x21"), "unexpected EOF"},
		{"cut in the addresses", hdr(0x21, 0x11, 12, addrs4[:6]), "unexpected EOF"},
		{"cut in a TLV", hdr(0x21, 0x11, 18, addrs4, "\xe0\x00\x03bo"), "unexpected EOF"},
		{"1 byte after the addresses", hdr(0x21, 0x11, 13, addrs4, "\xe0"), "truncated TLV"},
		{"2 bytes after the addresses", hdr(0x21, 0x11, 14, addrs4, "\xe0\x00"), "truncated TLV"},
		{"TLV overrun", hdr(0x21, 0x11, 17, addrs4, "\xe0\x00\x03bo"), "overruns the header by 1"},
		{"second TLV overrun", hdr(0x21, 0x11, 21, addrs4, "\xe0\x00\x01b", "\xe1\x00\x09al"), "TLV 0xe1 of 9 bytes overruns"},
		{"TLV length 0xffff", hdr(0x21, 0x00, 5, "\x05\xff\xffab"), "overruns"},
		{"CRC32C of 3 bytes", hdr(0x21, 0x11, 18, addrs4, "\x03\x00\x03abc"), "CRC32C TLV of 3 bytes"},
		{"two CRC32C", hdr(0x21, 0x00, 14, "\x03\x00\x04\x00\x00\x00\x00", "\x03\x00\x04\x00\x00\x00\x00"), "more than one CRC32C"},
		{"CRC32C zero", hdr(0x21, 0x11, 19, addrs4, "\x03\x00\x04\x00\x00\x00\x00"), "CRC32C mismatch"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := proxyproto.Read(bufio.NewReader(bytes.NewReader(tt.in)))
			if err == nil {
				t.Fatalf("accepted %+v", h)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "proxyproto: ") || !strings.Contains(msg, tt.want) {
				t.Fatalf("error %q, want \"proxyproto: …%s…\"", msg, tt.want)
			}
			if strings.ToLower(msg[:1]) != msg[:1] {
				t.Errorf("error %q is not lowercase", msg)
			}
		})
	}
}

func TestReadEOF(t *testing.T) {
	_, err := proxyproto.Read(bufio.NewReader(bytes.NewReader(nil)))
	if !errors.Is(err, io.EOF) {
		t.Errorf("empty input: %v, want io.EOF", err)
	}
	_, err = proxyproto.Read(bufio.NewReader(bytes.NewReader(hdr(0x21, 0x11, 12, addrs4[:3]))))
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("cut header: %v, want io.ErrUnexpectedEOF", err)
	}
}

// TestLocalIgnoresAddresses: section 2.2 has the receiver of LOCAL
// discard the address block whatever the family; the TLVs after it are
// still read.
func TestLocalIgnoresAddresses(t *testing.T) {
	h, rest := read(t, append(hdr(0x20, 0x11, 17, addrs4, "\xe3\x00\x0242"), "x"...))
	want := &proxyproto.Header{Command: proxyproto.Local, TLVs: []proxyproto.TLV{{Type: proxyproto.TypeTube, Value: []byte("42")}}}
	if d := headerDiff(h, want); d != "" || h.Source != nil || h.Dest != nil {
		t.Errorf("%+v: %s", h, d)
	}
	if string(rest) != "x" {
		t.Errorf("after the header: %q", rest)
	}
}

// TestUnixNames: sun_path is cut at its first NUL; a leading NUL is an
// abstract name.
func TestUnixNames(t *testing.T) {
	path := func(s string) string { return s + strings.Repeat("\x00", 108-len(s)) }
	h, _ := read(t, hdr(0x21, 0x31, 216, path("/run/a.sock\x00garbage"), path("\x00abstract")))
	if d := headerDiff(h, &proxyproto.Header{Command: proxyproto.Proxy, Source: unix("/run/a.sock"), Dest: unix("@abstract")}); d != "" {
		t.Error(d)
	}
	// A full 108-byte path has no terminator.
	full := strings.Repeat("z", 108)
	h, _ = read(t, hdr(0x21, 0x31, 216, full, path("")))
	if d := headerDiff(h, &proxyproto.Header{Command: proxyproto.Proxy, Source: unix(full), Dest: unix("")}); d != "" {
		t.Error(d)
	}
}

func TestAppendRejects(t *testing.T) {
	big := make([]byte, 0xffff)
	tests := []struct {
		name string
		h    proxyproto.Header
		want string
	}{
		{"tcp and unix", proxyproto.Header{Command: proxyproto.Proxy, Source: tcp("127.0.0.1:1"), Dest: unix("/a")}, "source is *net.TCPAddr but destination is *net.UnixAddr"},
		{"unix and tcp", proxyproto.Header{Command: proxyproto.Proxy, Source: unix("/a"), Dest: tcp("127.0.0.1:1")}, "source is *net.UnixAddr but destination is *net.TCPAddr"},
		{"tcp and nil", proxyproto.Header{Command: proxyproto.Proxy, Source: tcp("127.0.0.1:1")}, "destination is <nil>"},
		{"nil and tcp", proxyproto.Header{Command: proxyproto.Proxy, Dest: tcp("127.0.0.1:1")}, "source is nil but destination is *net.TCPAddr"},
		{"udp", proxyproto.Header{Command: proxyproto.Proxy, Source: &net.UDPAddr{}, Dest: &net.UDPAddr{}}, "unsupported address type *net.UDPAddr"},
		{"unixgram", proxyproto.Header{Command: proxyproto.Proxy, Source: &net.UnixAddr{Net: "unixgram"}, Dest: &net.UnixAddr{Net: "unixgram"}}, "\"unixgram\" socket"},
		{"unix path of 109 bytes", proxyproto.Header{Command: proxyproto.Proxy, Source: unix("/a"), Dest: unix(strings.Repeat("p", 109))}, "unix path of 109 bytes is longer than 108"},
		{"abstract name of 109 bytes", proxyproto.Header{Command: proxyproto.Proxy, Source: unix("@" + strings.Repeat("p", 108)), Dest: unix("/b")}, "longer than 108"},
		{"NUL in a path", proxyproto.Header{Command: proxyproto.Proxy, Source: unix("/a\x00b"), Dest: unix("/b")}, "contains NUL"},
		{"abstract name ending in NUL", proxyproto.Header{Command: proxyproto.Proxy, Source: unix("@a\x00"), Dest: unix("/b")}, "ends in NUL"},
		{"no IP", proxyproto.Header{Command: proxyproto.Proxy, Source: &net.TCPAddr{Port: 1}, Dest: tcp("127.0.0.1:1")}, "not an IPv4 or IPv6 address"},
		{"port 65536", proxyproto.Header{Command: proxyproto.Proxy, Source: tcp("127.0.0.1:1"), Dest: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 65536}}, "port 65536 is out of range"},
		{"negative port", proxyproto.Header{Command: proxyproto.Proxy, Source: &net.TCPAddr{IP: net.IPv6loopback, Port: -1}, Dest: tcp("[::1]:1")}, "port -1 is out of range"},
		{"local with addresses", proxyproto.Header{Command: proxyproto.Local, Source: tcp("127.0.0.1:1"), Dest: tcp("127.0.0.1:2")}, "LOCAL header carries no addresses"},
		{"command 2", proxyproto.Header{Command: 2}, "unknown command"},
		{"TLV of 65536 bytes", proxyproto.Header{Command: proxyproto.Local, TLVs: []proxyproto.TLV{{Type: proxyproto.TypeNOOP, Value: make([]byte, 0x10000)}}}, "longer than 65535"},
		{"length over 65535", proxyproto.Header{Command: proxyproto.Local, TLVs: []proxyproto.TLV{{Type: proxyproto.TypeNOOP, Value: big[:0xffff-3]}, {Type: proxyproto.TypeTube}}}, "65538 bytes after the fixed part"},
		{"addresses push it over", proxyproto.Header{Command: proxyproto.Proxy, Source: tcp("127.0.0.1:1"), Dest: tcp("127.0.0.1:2"), TLVs: []proxyproto.TLV{{Type: proxyproto.TypeNOOP, Value: big[:0xffff-3]}}}, "more than 65535"},
		{"two CRC32C", proxyproto.Header{Command: proxyproto.Local, TLVs: []proxyproto.TLV{{Type: proxyproto.TypeCRC32C}, {Type: proxyproto.TypeCRC32C}}}, "more than one CRC32C"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := []byte("prefix")
			b, err := tt.h.Append(in)
			if err == nil {
				t.Fatalf("encoded % x", b)
			}
			if !strings.HasPrefix(err.Error(), "proxyproto: ") || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q, want \"proxyproto: …%s…\"", err, tt.want)
			}
			if string(b) != "prefix" {
				t.Errorf("Append changed b on error: %q", b)
			}
			var w countingWriter
			if n, err := tt.h.WriteTo(&w); err == nil || n != 0 || w.calls != 0 {
				t.Errorf("WriteTo = %d, %v after %d writes; want an error before any write", n, err, w.calls)
			}
		})
	}

	// The largest header that fits is fine.
	h := proxyproto.Header{Command: proxyproto.Local, TLVs: []proxyproto.TLV{{Type: proxyproto.TypeNOOP, Value: big[:0xffff-3]}}}
	b, err := h.Append(nil)
	if err != nil || len(b) != 16+0xffff {
		t.Fatalf("maximal header: %d bytes, %v", len(b), err)
	}
	got, _ := read(t, b)
	if d := headerDiff(got, &h); d != "" {
		t.Fatal(d)
	}
}

type countingWriter struct {
	bytes.Buffer
	calls int
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.calls++
	return w.Buffer.Write(p)
}

type shortWriter struct{}

func (shortWriter) Write(p []byte) (int, error) { return len(p) / 2, nil }

func TestWriteTo(t *testing.T) {
	h := &proxyproto.Header{Command: proxyproto.Proxy, Source: tcp("127.0.0.1:40000"), Dest: tcp("127.0.0.1:5900"),
		TLVs: []proxyproto.TLV{{Type: proxyproto.TypeContact, Value: []byte("bob")}}}
	want, _ := h.Append(nil)
	var w countingWriter
	n, err := h.WriteTo(&w)
	if err != nil || n != int64(len(want)) || w.calls != 1 || !bytes.Equal(w.Bytes(), want) {
		t.Fatalf("WriteTo = %d, %v in %d writes: % x; want one write of % x", n, err, w.calls, w.Bytes(), want)
	}
	var _ io.WriterTo = h

	n, err = h.WriteTo(shortWriter{})
	if !errors.Is(err, io.ErrShortWrite) || n != int64(len(want)/2) {
		t.Fatalf("short write: %d, %v", n, err)
	}
}

// haproxyCRC is a header laid out as HAProxy's send-proxy-v2 with the
// crc32c option writes it: the CRC32C TLV first after the addresses, then
// ALPN and AUTHORITY. Built by hand; the checksum 0x233d5811 was computed
// with a bitwise CRC-32C (reflected polynomial 0x82F63B78) over these
// bytes with the CRC field zeroed, not with this package.
var haproxyCRC = []byte{
	0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
	0x21, 0x11, 0x00, 0x26, // PROXY, TCP4, 38 bytes
	192, 0, 2, 10, // src 192.0.2.10
	198, 51, 100, 7, // dst 198.51.100.7
	0xc8, 0x22, // src port 51234
	0x01, 0xbb, // dst port 443
	0x03, 0x00, 0x04, 0x23, 0x3d, 0x58, 0x11, // CRC32C
	0x01, 0x00, 0x02, 'h', '2', // ALPN "h2"
	0x02, 0x00, 0x0b, 'e', 'x', 'a', 'm', 'p', 'l', 'e', '.', 'c', 'o', 'm', // AUTHORITY
}

// awsNLB is a header sent by an AWS Network Load Balancer, with a CRC32C,
// AWS's VPC endpoint TLV (0xEA) and NOOP padding, as published in
// aws/elastic-load-balancing-tools (proprot
// Compatibility_AwsNetworkLoadBalancerTest.java).
var awsNLB = []byte{
	0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
	0x21, 0x11, 0x00, 0x54,
	0xac, 0x1f, 0x07, 0x71, 0xac, 0x1f, 0x0a, 0x1f, 0xc8, 0xf2, 0x00, 0x50,
	0x03, 0x00, 0x04, 0xe8, 0xd6, 0x89, 0x2d,
	0xea, 0x00, 0x17, 0x01, 'v', 'p', 'c', 'e', '-', '0', '8', 'd', '2', 'b', 'f', '1', '5', 'f', 'a', 'c', '5', '0', '0', '1', 'c', '9',
	0x04, 0x00, 0x24, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
}

func TestCRC32C(t *testing.T) {
	h, _ := read(t, haproxyCRC)
	want := &proxyproto.Header{
		Command: proxyproto.Proxy, Source: tcp("192.0.2.10:51234"), Dest: tcp("198.51.100.7:443"),
		TLVs: []proxyproto.TLV{
			{Type: proxyproto.TypeCRC32C, Value: []byte{0x23, 0x3d, 0x58, 0x11}},
			{Type: proxyproto.TypeALPN, Value: []byte("h2")},
			{Type: proxyproto.TypeAuthority, Value: []byte("example.com")},
		},
	}
	if d := headerDiff(h, want); d != "" {
		t.Fatal(d)
	}
	if v, _ := h.TLV(proxyproto.TypeCRC32C); !bytes.Equal(v, want.TLVs[0].Value) {
		t.Errorf("CRC32C value % x", v)
	}
	// The encoder computes the same checksum, whatever Value says.
	want.TLVs[0].Value = nil
	if b, err := want.Append(nil); err != nil || !bytes.Equal(b, haproxyCRC) {
		t.Errorf("Append = % x, %v\nwant       % x", b, err, haproxyCRC)
	}

	// Any single flipped bit in the addresses or TLVs is caught. Not in
	// the CRC TLV's own type byte: that turns it into another TLV and
	// the header into one without a checksum, which the protocol allows.
	for i := 16; i < len(haproxyCRC); i++ {
		if i == 16+12 {
			continue
		}
		for bit := range 8 {
			bad := bytes.Clone(haproxyCRC)
			bad[i] ^= 1 << bit
			_, err := proxyproto.Read(bufio.NewReader(bytes.NewReader(bad)))
			if err == nil {
				t.Fatalf("accepted the header with byte %d bit %d flipped", i, bit)
			}
			if i > 16+12 && i < 16+12+3 {
				continue // the CRC TLV's length: a size or overrun error
			}
			if !strings.Contains(err.Error(), "CRC32C mismatch") && !strings.Contains(err.Error(), "TLV") {
				t.Fatalf("byte %d bit %d: %v", i, bit, err)
			}
		}
	}

	h, _ = read(t, awsNLB)
	if d := headerDiff(h, &proxyproto.Header{Command: proxyproto.Proxy, Source: tcp("172.31.7.113:51442"), Dest: tcp("172.31.10.31:80"),
		TLVs: []proxyproto.TLV{{Type: proxyproto.TypeCRC32C}, {Type: 0xea, Value: []byte("\x01vpce-08d2bf15fac5001c9")}, {Type: proxyproto.TypeNOOP, Value: make([]byte, 36)}}}); d != "" {
		t.Fatal(d)
	}
	bad := bytes.Clone(awsNLB)
	bad[len(bad)-1] = 1 // in the NOOP padding
	if _, err := proxyproto.Read(bufio.NewReader(bytes.NewReader(bad))); err == nil || !strings.Contains(err.Error(), "CRC32C mismatch") {
		t.Fatalf("corrupted AWS header: %v", err)
	}
}
