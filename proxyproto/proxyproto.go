// Package proxyproto encodes and decodes the binary header of the HAProxy
// PROXY protocol, version 2 (haproxy "proxy-protocol.txt", section 2.2).
// The daemon writes one header at the start of every TCP or Unix
// connection it opens to a local service, so the service learns which
// contact, account, room and tube the connection belongs to; Read is the
// strict decoder for tests and for services that want to parse it.
//
// # Byte layout
//
//	offset  size  field
//	0       12    signature  \r \n \r \n \0 \r \n Q U I T \n
//	                         (0D 0A 0D 0A 00 0D 0A 51 55 49 54 0A)
//	12      1     version<<4 | command: 0x21 PROXY, 0x20 LOCAL
//	13      1     family<<4 | protocol:
//	                0x00 UNSPEC          no addresses
//	                0x11 TCP over IPv4   12 address bytes
//	                0x21 TCP over IPv6   36 address bytes
//	                0x31 UNIX stream     216 address bytes
//	14      2     length of everything that follows, big-endian
//	16      …     addresses:
//	                IPv4: src addr(4) dst addr(4) src port(2) dst port(2)
//	                IPv6: src addr(16) dst addr(16) src port(2) dst port(2)
//	                UNIX: src path(108) dst path(108), NUL-padded
//	…       …     TLVs to the end of length: type(1) length(2, big-endian) value
//
// UDP (0x12, 0x22) and UNIX datagram (0x32) are valid in the
// specification but not here: every connection the daemon proxies is a
// stream, and Read rejects them.
//
// # TLVs
//
// Tubes' own TLVs sit in the range the specification reserves for
// application-specific data ("Reserved type ranges": PP2_TYPE_MIN_CUSTOM
// 0xE0 to PP2_TYPE_MAX_CUSTOM 0xEF):
// TypeContact, TypeAccount, TypeRoom and TypeTube. This package does not
// interpret TLV values, except that a PP2_TYPE_CRC32C TLV is filled in by
// Append and checked by Read (section 2.2.3).
package proxyproto

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"slices"
	"strings"
)

// Command is the low nibble of the 13th header byte.
type Command byte

const (
	// Local: the connection was made by the proxy itself (a health check,
	// say); the receiver uses the real endpoints and ignores the addresses.
	Local Command = 0x0
	// Proxy: the connection was relayed on behalf of another node, whose
	// endpoints are in the header.
	Proxy Command = 0x1
)

func (c Command) String() string {
	switch c {
	case Local:
		return "LOCAL"
	case Proxy:
		return "PROXY"
	}
	return fmt.Sprintf("Command(%#x)", byte(c))
}

// TLV types. The first five are registered PP2_TYPE_* values (sections
// 2.2.1 to 2.2.5); the rest are Tubes' TLVs, from the custom range.
const (
	TypeALPN      = 0x01 // PP2_TYPE_ALPN: the negotiated application protocol
	TypeAuthority = 0x02 // PP2_TYPE_AUTHORITY: the host name the client asked for (SNI)
	TypeCRC32C    = 0x03 // PP2_TYPE_CRC32C: CRC-32C of the header, big-endian (section 2.2.3)
	TypeNOOP      = 0x04 // PP2_TYPE_NOOP: padding, to be ignored
	TypeUniqueID  = 0x05 // PP2_TYPE_UNIQUE_ID: an opaque connection id of up to 128 bytes

	TypeContact = 0xE0 // Tubes: the remote contact's account name
	TypeAccount = 0xE1 // Tubes: the local account the connection arrived on
	TypeRoom    = 0xE2 // Tubes: the room name, for room tubes
	TypeTube    = 0xE3 // Tubes: the tube id
)

// Header is a PROXY v2 header.
type Header struct {
	Command Command  // Proxy or Local
	Source  net.Addr // *net.TCPAddr or *net.UnixAddr, nil for Local/UNSPEC
	Dest    net.Addr
	TLVs    []TLV
}

// TLV is one type-length-value vector after the addresses. Value may be
// at most 65535 bytes.
type TLV struct {
	Type  byte
	Value []byte
}

// TLV returns the value of the first TLV of type typ.
func (h *Header) TLV(typ byte) ([]byte, bool) {
	for _, t := range h.TLVs {
		if t.Type == typ {
			return t.Value, true
		}
	}
	return nil, false
}

// signature opens every v2 header (section 2.2).
var signature = []byte("\r\n\r\n\x00\r\nQUIT\n")

const (
	fixedLen   = 16  // signature, version/command, family/protocol, length
	version    = 0x2 // the high nibble of the 13th byte
	unixPathSz = 108 // sizeof(sun_path) in the unix_addr block

	famUnspec = 0x00
	famTCP4   = 0x11
	famUDP4   = 0x12
	famTCP6   = 0x21
	famUDP6   = 0x22
	famUnix   = 0x31
	famUnixDG = 0x32
)

// addrLen is the size of the address block for each supported family.
func addrLen(fam byte) int {
	switch fam {
	case famTCP4:
		return 12
	case famTCP6:
		return 36
	case famUnix:
		return 2 * unixPathSz
	}
	return 0
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Append appends the encoded header to b.
//
// Source and Dest must both be nil (UNSPEC; the only choice for Local),
// both *net.TCPAddr or both *net.UnixAddr. TCP addresses are sent as
// IPv4 when both are IPv4 or IPv4-mapped IPv6, and as IPv6 otherwise,
// with an IPv4 address mapped into IPv6; an IPv6 zone is not sent. A Unix
// name that starts with '@' is an abstract socket, as in package net.
// A TypeCRC32C TLV is written with the checksum of the encoded header,
// whatever its Value.
//
// On error, b is returned unchanged.
func (h *Header) Append(b []byte) ([]byte, error) {
	if h.Command != Local && h.Command != Proxy {
		return b, fmt.Errorf("proxyproto: unknown command %v", h.Command)
	}
	fam, err := family(h.Command, h.Source, h.Dest)
	if err != nil {
		return b, err
	}
	n := addrLen(fam)
	crcs := 0
	for _, t := range h.TLVs {
		if t.Type == TypeCRC32C {
			if crcs++; crcs > 1 {
				return b, errors.New("proxyproto: more than one CRC32C TLV")
			}
			n += 3 + 4
			continue
		}
		if len(t.Value) > 0xffff {
			return b, fmt.Errorf("proxyproto: TLV 0x%02x value of %d bytes is longer than 65535", t.Type, len(t.Value))
		}
		n += 3 + len(t.Value)
	}
	if n > 0xffff {
		return b, fmt.Errorf("proxyproto: header needs %d bytes after the fixed part, more than 65535", n)
	}

	start := len(b)
	b = slices.Grow(b, fixedLen+n)
	b = append(b, signature...)
	b = append(b, version<<4|byte(h.Command), fam)
	b = binary.BigEndian.AppendUint16(b, uint16(n))
	switch fam {
	case famTCP4, famTCP6:
		src, dst := tcpAddr(h.Source), tcpAddr(h.Dest)
		if fam == famTCP4 {
			b = append(b, src.IP.To4()...)
			b = append(b, dst.IP.To4()...)
		} else {
			b = append(b, src.IP.To16()...)
			b = append(b, dst.IP.To16()...)
		}
		b = binary.BigEndian.AppendUint16(b, uint16(src.Port))
		b = binary.BigEndian.AppendUint16(b, uint16(dst.Port))
	case famUnix:
		b = appendUnixPath(b, unixAddr(h.Source).Name)
		b = appendUnixPath(b, unixAddr(h.Dest).Name)
	}
	crcAt := -1
	for _, t := range h.TLVs {
		if t.Type == TypeCRC32C {
			b = append(b, TypeCRC32C, 0, 4)
			crcAt = len(b)
			b = append(b, 0, 0, 0, 0)
			continue
		}
		b = append(b, t.Type)
		b = binary.BigEndian.AppendUint16(b, uint16(len(t.Value)))
		b = append(b, t.Value...)
	}
	// Section 2.2.3: the checksum covers the whole header with the CRC
	// field zeroed, which it still is here.
	if crcAt >= 0 {
		binary.BigEndian.PutUint32(b[crcAt:], crc32.Checksum(b[start:], castagnoli))
	}
	return b, nil
}

// WriteTo writes the encoded header to w in a single Write, as section 2.2
// asks ("the sender must ensure that all the protocol header is sent at
// once"); an encoding error leaves w untouched.
func (h *Header) WriteTo(w io.Writer) (int64, error) {
	b, err := h.Append(nil)
	if err != nil {
		return 0, err
	}
	n, err := w.Write(b)
	if err == nil && n < len(b) {
		err = io.ErrShortWrite
	}
	if err != nil {
		return int64(n), fmt.Errorf("proxyproto: writing header: %w", err)
	}
	return int64(n), nil
}

// family picks the family/protocol byte for the addresses and checks that
// they can be encoded.
func family(cmd Command, src, dst net.Addr) (byte, error) {
	src, dst = nilAddr(src), nilAddr(dst)
	if cmd == Local {
		// Section 2.2: a sender presenting LOCAL "should not present any
		// address".
		if src != nil || dst != nil {
			return 0, errors.New("proxyproto: a LOCAL header carries no addresses")
		}
		return famUnspec, nil
	}
	switch s := src.(type) {
	case nil:
		if dst != nil {
			return 0, fmt.Errorf("proxyproto: source is nil but destination is %T", dst)
		}
		return famUnspec, nil
	case *net.TCPAddr:
		d, ok := dst.(*net.TCPAddr)
		if !ok {
			return 0, fmt.Errorf("proxyproto: source is %T but destination is %T", src, dst)
		}
		if err := checkTCP("source", s); err != nil {
			return 0, err
		}
		if err := checkTCP("destination", d); err != nil {
			return 0, err
		}
		if s.IP.To4() != nil && d.IP.To4() != nil {
			return famTCP4, nil
		}
		return famTCP6, nil
	case *net.UnixAddr:
		d, ok := dst.(*net.UnixAddr)
		if !ok {
			return 0, fmt.Errorf("proxyproto: source is %T but destination is %T", src, dst)
		}
		if err := checkUnix("source", s); err != nil {
			return 0, err
		}
		if err := checkUnix("destination", d); err != nil {
			return 0, err
		}
		return famUnix, nil
	}
	return 0, fmt.Errorf("proxyproto: unsupported address type %T (want *net.TCPAddr or *net.UnixAddr)", src)
}

// nilAddr turns a nil *net.TCPAddr or *net.UnixAddr inside an interface,
// as a closed conn's LocalAddr may give, into a plain nil.
func nilAddr(a net.Addr) net.Addr {
	switch v := a.(type) {
	case *net.TCPAddr:
		if v == nil {
			return nil
		}
	case *net.UnixAddr:
		if v == nil {
			return nil
		}
	}
	return a
}

func tcpAddr(a net.Addr) *net.TCPAddr   { return a.(*net.TCPAddr) }
func unixAddr(a net.Addr) *net.UnixAddr { return a.(*net.UnixAddr) }

func checkTCP(which string, a *net.TCPAddr) error {
	if a.IP.To16() == nil {
		return fmt.Errorf("proxyproto: %s IP %v is not an IPv4 or IPv6 address", which, a.IP)
	}
	if a.Port < 0 || a.Port > 0xffff {
		return fmt.Errorf("proxyproto: %s port %d is out of range", which, a.Port)
	}
	return nil
}

func checkUnix(which string, a *net.UnixAddr) error {
	if a.Net != "unix" && a.Net != "" {
		return fmt.Errorf("proxyproto: %s is a %q socket; only \"unix\" (stream) is supported", which, a.Net)
	}
	name := a.Name
	if len(name) > unixPathSz {
		return fmt.Errorf("proxyproto: %s unix path of %d bytes is longer than %d", which, len(name), unixPathSz)
	}
	if rest, ok := abstract(name); ok {
		// The field has no length, so trailing NULs of an abstract name
		// would be lost.
		if rest[len(rest)-1] == 0 {
			return fmt.Errorf("proxyproto: %s abstract unix name %q ends in NUL", which, name)
		}
		return nil
	}
	if strings.IndexByte(name, 0) >= 0 {
		return fmt.Errorf("proxyproto: %s unix path %q contains NUL", which, name)
	}
	return nil
}

// abstract reports whether name is an abstract socket name, "@" and at
// least one byte, as package net writes them on Linux, and returns it
// without the '@'. As in package net, a path that starts with '@' cannot
// be told from an abstract name; a lone "@" is the path "@", since an
// empty abstract name cannot be sent.
func abstract(name string) (string, bool) {
	if len(name) > 1 && name[0] == '@' {
		return name[1:], true
	}
	return "", false
}

// appendUnixPath appends a checked name as a NUL-padded sun_path.
func appendUnixPath(b []byte, name string) []byte {
	start := len(b)
	if rest, ok := abstract(name); ok {
		b = append(b, 0)
		name = rest
	}
	b = append(b, name...)
	return append(b, make([]byte, unixPathSz-(len(b)-start))...)
}

// unixName is the inverse of appendUnixPath. A path is cut at its first
// NUL (senders may leave garbage after it); a leading NUL marks an
// abstract name, cut at its trailing NULs.
func unixName(p []byte) string {
	if p[0] == 0 {
		rest := bytes.TrimRight(p[1:], "\x00")
		if len(rest) == 0 {
			return "" // unnamed socket
		}
		return "@" + string(rest)
	}
	if i := bytes.IndexByte(p, 0); i >= 0 {
		p = p[:i]
	}
	return string(p)
}

// Read decodes one header from r and consumes exactly its bytes, leaving
// whatever follows in r. It is strict, as section 2.2 asks receivers to
// be: anything but version 2, the LOCAL and PROXY commands and the
// UNSPEC, TCP4, TCP6 and UNIX stream families is an error, as are a
// length too short for the addresses, a TLV running past the header and
// a CRC32C TLV that does not match. After an error the connection should
// be dropped; how much of r was consumed is unspecified.
//
// For LOCAL, Source and Dest are nil whatever the family: the receiver
// uses the real endpoints. Read allocates at most the header's length
// (16 + 65535 bytes); TLV values alias one buffer.
func Read(r *bufio.Reader) (*Header, error) {
	fixed, err := r.Peek(fixedLen)
	if sig := fixed[:min(len(fixed), len(signature))]; !bytes.Equal(sig, signature[:len(sig)]) {
		if bytes.HasPrefix(fixed, []byte("PROXY ")) {
			return nil, errors.New("proxyproto: PROXY v1 (text) header, want v2")
		}
		return nil, errors.New("proxyproto: no PROXY v2 signature")
	}
	if err != nil {
		if errors.Is(err, io.EOF) && len(fixed) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("proxyproto: reading header: %w", err)
	}
	if v := fixed[12] >> 4; v != version {
		return nil, fmt.Errorf("proxyproto: version %d, want 2", v)
	}
	cmd := Command(fixed[12] & 0xf)
	if cmd != Local && cmd != Proxy {
		return nil, fmt.Errorf("proxyproto: unknown command %#x", byte(cmd))
	}
	fam := fixed[13]
	switch fam {
	case famUnspec, famTCP4, famTCP6, famUnix:
	case famUDP4, famUDP6, famUnixDG:
		return nil, fmt.Errorf("proxyproto: datagram family/protocol 0x%02x is not supported, only streams", fam)
	default:
		return nil, fmt.Errorf("proxyproto: unknown family/protocol 0x%02x", fam)
	}
	n := int(binary.BigEndian.Uint16(fixed[14:]))
	alen := addrLen(fam)
	if n < alen {
		return nil, fmt.Errorf("proxyproto: length %d is shorter than the %d-byte address block of family 0x%02x", n, alen, fam)
	}

	buf := make([]byte, fixedLen+n)
	if _, err := io.ReadFull(r, buf); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("proxyproto: reading header: %w", err)
	}

	h := &Header{Command: cmd}
	addrs := buf[fixedLen : fixedLen+alen]
	if cmd == Proxy {
		switch fam {
		case famTCP4:
			h.Source = &net.TCPAddr{IP: net.IP(bytes.Clone(addrs[0:4])), Port: int(binary.BigEndian.Uint16(addrs[8:]))}
			h.Dest = &net.TCPAddr{IP: net.IP(bytes.Clone(addrs[4:8])), Port: int(binary.BigEndian.Uint16(addrs[10:]))}
		case famTCP6:
			h.Source = &net.TCPAddr{IP: net.IP(bytes.Clone(addrs[0:16])), Port: int(binary.BigEndian.Uint16(addrs[32:]))}
			h.Dest = &net.TCPAddr{IP: net.IP(bytes.Clone(addrs[16:32])), Port: int(binary.BigEndian.Uint16(addrs[34:]))}
		case famUnix:
			h.Source = &net.UnixAddr{Name: unixName(addrs[:unixPathSz]), Net: "unix"}
			h.Dest = &net.UnixAddr{Name: unixName(addrs[unixPathSz:]), Net: "unix"}
		}
	}

	crcAt := -1
	for off := fixedLen + alen; off < len(buf); {
		if len(buf)-off < 3 {
			return nil, fmt.Errorf("proxyproto: truncated TLV: %d bytes left at offset %d", len(buf)-off, off)
		}
		typ := buf[off]
		l := int(binary.BigEndian.Uint16(buf[off+1:]))
		off += 3
		if l > len(buf)-off {
			return nil, fmt.Errorf("proxyproto: TLV 0x%02x of %d bytes overruns the header by %d", typ, l, l-(len(buf)-off))
		}
		if typ == TypeCRC32C {
			if l != 4 {
				return nil, fmt.Errorf("proxyproto: CRC32C TLV of %d bytes, want 4", l)
			}
			if crcAt >= 0 {
				return nil, errors.New("proxyproto: more than one CRC32C TLV")
			}
			crcAt = off
		}
		h.TLVs = append(h.TLVs, TLV{Type: typ, Value: buf[off : off+l : off+l]})
		off += l
	}

	// Section 2.2.3: a receiver that supports the checksum must validate
	// it, over the whole header with the CRC field set to zero.
	if crcAt >= 0 {
		want := binary.BigEndian.Uint32(buf[crcAt:])
		d := crc32.Update(0, castagnoli, buf[:crcAt])
		d = crc32.Update(d, castagnoli, []byte{0, 0, 0, 0})
		d = crc32.Update(d, castagnoli, buf[crcAt+4:])
		if d != want {
			return nil, fmt.Errorf("proxyproto: CRC32C mismatch: header says 0x%08x, computed 0x%08x", want, d)
		}
	}
	return h, nil
}
