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
	"time"

	"golang.org/x/sys/unix"
)

// Loop runs handle, in its own goroutine, on every connection ln
// accepts, closing the connection after, until ln is closed.
func Loop(ln net.Listener, handle func(net.Conn)) {
	ln = Resilient{Listener: ln}
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

// Resilient is a listener whose Accept rides out the errors a busy
// process meets (out of descriptors or memory, a connection aborted
// before it was taken): it counts each in OnError, backs off from 5 ms
// doubling to 1 s as net/http does, and tries again, so that a burst that
// exhausts the process's descriptors does not end the accept loop (before,
// such a loop returned and the listener stayed dead until a restart). It
// returns an error only when the listener is closed or fails for good.
type Resilient struct {
	net.Listener
	OnError func(error) // optional
}

func (l Resilient) Accept() (net.Conn, error) {
	var delay time.Duration
	for {
		c, err := l.Listener.Accept()
		if err == nil {
			return c, nil
		}
		if !Transient(err) {
			return nil, err
		}
		if l.OnError != nil {
			l.OnError(err)
		}
		delay = min(max(2*delay, 5*time.Millisecond), time.Second)
		time.Sleep(delay)
	}
}

// Transient reports whether an Accept error will pass: the process or
// system is out of descriptors, buffers or memory, or the connection was
// aborted or timed out before it was taken.
func Transient(err error) bool {
	if errors.Is(err, net.ErrClosed) {
		return false
	}
	for _, e := range []error{unix.EMFILE, unix.ENFILE, unix.ENOBUFS, unix.ENOMEM, unix.ECONNABORTED, unix.EINTR, unix.EAGAIN, unix.EPROTO, unix.EPERM} {
		if errors.Is(err, e) {
			return true
		}
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
