// Package serve has the two small servers several parts of Tubes run:
// an accept loop, and a service answering with the hash of what it got
// (the demo's service, and the one tests and benchmarks check bytes
// with).
package serve

import (
	"crypto/sha256"
	"fmt"
	"io"
	"net"
)

// Loop runs handle, in its own goroutine, on every connection ln
// accepts, closing the connection after, until ln is closed.
func Loop(ln net.Listener, handle func(net.Conn)) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			handle(c)
		}()
	}
}

// HashBack reads c to its end (the client's half-close) and answers with
// the SHA-256 and the count of what it read: "HEX N\n".
func HashBack(c net.Conn) {
	h := sha256.New()
	n, err := io.Copy(h, c)
	if err == nil {
		fmt.Fprintf(c, "%x %d\n", h.Sum(nil), n)
	}
}

// HashLine is what HashBack answers for data.
func HashLine(data []byte) string {
	return fmt.Sprintf("%x %d\n", sha256.Sum256(data), len(data))
}
