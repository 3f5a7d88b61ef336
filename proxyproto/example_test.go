package proxyproto_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"log"
	"net"

	"github.com/tubes-dev/tubes/proxyproto"
)

// The daemon opens a connection to the local service and, before the
// first byte of the tube, writes who it is from; the service reads the
// header and then its own protocol.
func Example() {
	var conn bytes.Buffer // stands in for the net.Conn to the local service

	h := &proxyproto.Header{
		Command: proxyproto.Proxy,
		Source:  &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000},
		Dest:    &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5900},
		TLVs: []proxyproto.TLV{
			{Type: proxyproto.TypeContact, Value: []byte("bob")},
			{Type: proxyproto.TypeAccount, Value: []byte("alice")},
			{Type: proxyproto.TypeTube, Value: []byte("7")},
			{Type: proxyproto.TypeCRC32C}, // filled in by the encoder
		},
	}
	if _, err := h.WriteTo(&conn); err != nil {
		log.Fatal(err)
	}
	conn.WriteString("RFB 003.008\n")

	// The service side.
	r := bufio.NewReader(&conn)
	got, err := proxyproto.Read(r)
	if err != nil {
		log.Fatal(err) // drop the connection
	}
	contact, _ := got.TLV(proxyproto.TypeContact)
	account, _ := got.TLV(proxyproto.TypeAccount)
	rest, _ := io.ReadAll(r)
	fmt.Printf("%v from %v to %v: %s -> %s\n", got.Command, got.Source, got.Dest, contact, account)
	fmt.Printf("payload %q\n", rest)
	// Output:
	// PROXY from 127.0.0.1:40000 to 127.0.0.1:5900: bob -> alice
	// payload "RFB 003.008\n"
}
