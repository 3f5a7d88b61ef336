package peerlink

import (
	"io"
	"net"
	"testing"
)

// BenchmarkStreamThroughput moves bytes from a local TCP client, through a
// stream on a TLS link, to a local TCP sink: the data path of one tube
// connection on loopback.
func BenchmarkStreamThroughput(b *testing.B) {
	l := newLink(b, serviceHandler(b, func(c net.Conn) { io.Copy(io.Discard, c); c.Close() }))
	app, done := openConn(b, l.client, "")
	buf := make([]byte, 128<<10)
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	for range b.N {
		if _, err := app.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	app.(*net.TCPConn).CloseWrite()
	io.Copy(io.Discard, app)
	<-done
}

// BenchmarkConnect measures opening a stream and a 1-byte echo on it.
func BenchmarkConnect(b *testing.B) {
	l := newLink(b, serviceHandler(b, echo))
	one := make([]byte, 1)
	b.ResetTimer()
	for range b.N {
		app, done := openConn(b, l.client, "")
		app.Write(one)
		if _, err := io.ReadFull(app, one); err != nil {
			b.Fatal(err)
		}
		app.Close()
		<-done
	}
}
