package serve

import (
	"io"
	"net"
	"testing"
)

func TestHashBack(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go Loop(ln, HashBack)
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	data := []byte("the bytes to hash")
	c.Write(data)
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != HashLine(data) {
		t.Fatalf("answer %q, %v; want %q", got, err, HashLine(data))
	}
}
