// Package serve has the two small servers several parts of Tubes run:
// an accept loop, and a service answering with the hash of what it got
// (the demo's service, and the one tests and benchmarks check bytes
// with).
package serve

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
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

// Activated serves the socket passed as descriptor 3, systemd style
// (LISTEN_FDS=1, LISTEN_PID its own process): a listening socket (a shared
// instance) with handle on each connection until it closes, or a
// connection (a per-client instance, like systemd's Accept=yes) with
// handle once, returning nil.
func Activated(handle func(net.Conn)) error {
	if os.Getenv("LISTEN_PID") != strconv.Itoa(os.Getpid()) || os.Getenv("LISTEN_FDS") != "1" {
		return errors.New("not socket-activated: LISTEN_PID and LISTEN_FDS=1 are not set for this process")
	}
	f := os.NewFile(3, "activation")
	if listening, err := unix.GetsockoptInt(3, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err == nil && listening == 0 {
		c, err := net.FileConn(f)
		if err != nil {
			return fmt.Errorf("descriptor 3: %w", err)
		}
		defer c.Close()
		handle(c)
		return nil
	}
	ln, err := net.FileListener(f)
	if err != nil {
		return fmt.Errorf("descriptor 3: %w", err)
	}
	Loop(ln, handle)
	return errors.New("the listener closed")
}

// PIDHashBack answers like HashBack, after "activated PID " naming the
// process that served the connection.
func PIDHashBack(c net.Conn) {
	fmt.Fprintf(c, "activated %d ", os.Getpid())
	HashBack(c)
}

// ActivatedMain is the whole of the on-demand service that tests
// register (their own binary, re-run): socket-activated, it answers each
// connection with PIDHashBack, then exits.
func ActivatedMain() {
	if err := Activated(PIDHashBack); err != nil {
		fmt.Fprintln(os.Stderr, "activated service:", err)
		os.Exit(3)
	}
	os.Exit(0)
}
