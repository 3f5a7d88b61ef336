// Package ucred finds out which local user is on the other end of a Unix
// socket, for Telepathy's "Credentials" access control: only processes of
// allowed uids may use a tube's socket. There are two ways, and Tubes
// needs both:
//
//   - SO_PEERCRED (unix(7)): the kernel recorded the peer's pid, uid and
//     gid when it called connect(2); [Peer] reads them. Nothing crosses
//     the wire.
//
//   - Telepathy's handshake: right after connecting, the client sends
//     exactly one byte (Telepathy sends '\0') with an SCM_CREDENTIALS
//     control message ([WriteHandshake]). The server reads that byte and
//     its credentials ([ReadHandshake]); the byte (its value is ignored)
//     is consumed by the handshake and is not part of the data stream.
//
// The handshake on the wire:
//
//	client                                  server
//	connect(2)  ──────────────────────────▶ accept(2), SO_PASSCRED set
//	sendmsg(2)  ── 0x00 + SCM_CREDENTIALS ▶ recvmsg(2) into a 1-byte buffer
//	data …      ──────────────────────────▶ data …, from the byte after
//
// unix(7): the receiving socket must have SO_PASSCRED set, or no
// SCM_CREDENTIALS arrive. The kernel checks credentials a client sends
// (a process may claim only its own pid and its real, effective or saved
// uid and gid, unless it has CAP_SYS_ADMIN / CAP_SETUID / CAP_SETGID),
// and when SO_PASSCRED is set it attaches the sender's real credentials
// to data sent without any, so a plain byte works too.
//
// When SO_PASSCRED must be set, measured on Linux 6.18: an accepted socket
// takes the flag from its listener when the client calls connect(2), not
// at accept(2), so a connection already waiting in the backlog when the
// listener gets the flag never has it. And data sent while neither end has
// the flag (once the connection is accepted) carries no credentials: if the
// receiver sets SO_PASSCRED later, recvmsg(2) still returns an
// SCM_CREDENTIALS message, but with pid 0 and the overflow uid and gid
// (65534, "nobody"). Setting the flag on an accepted socket therefore
// races the client's byte, so this package offers no per-connection switch:
// set it on the listener before any client can connect ([ListenConfig], or
// [EnablePassCred] right after listening). [ReadHandshake] refuses a socket
// without the flag (leaving the byte unread) and credentials with pid 0.
package ucred

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Cred is a process's credentials as the kernel reports them: pid, real
// uid and real gid, translated into the receiver's namespaces.
type Cred struct {
	PID      int32
	UID, GID uint32
}

// Allowed reports whether c's uid is one of uids.
func Allowed(c Cred, uids []uint32) bool {
	return slices.Contains(uids, c.UID)
}

// Peer returns the credentials the peer of c had when the connection was
// made (SO_PEERCRED, unix(7)). On the accepting side that is the process
// that called connect(2); on the connecting side, the one that called
// listen(2). The pid is 0 if the peer is in a pid namespace the caller
// cannot see.
func Peer(c *net.UnixConn) (Cred, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return Cred{}, fmt.Errorf("ucred: peer credentials: %w", err)
	}
	var u *unix.Ucred
	var serr error
	if err := rc.Control(func(fd uintptr) {
		u, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Cred{}, fmt.Errorf("ucred: peer credentials: %w", err)
	}
	if serr != nil {
		return Cred{}, fmt.Errorf("ucred: peer credentials: SO_PEERCRED: %w", serr)
	}
	return Cred{PID: u.Pid, UID: u.Uid, GID: u.Gid}, nil
}

// ListenConfig returns a net.ListenConfig whose listeners have SO_PASSCRED
// set before they are bound, so every connection they accept has it; use
// it for sockets that take the handshake.
func ListenConfig() *net.ListenConfig {
	return &net.ListenConfig{Control: func(network, address string, c syscall.RawConn) error {
		return setPassCred(c)
	}}
}

// EnablePassCred sets SO_PASSCRED on l, which connections made after it
// returns inherit. Connections already waiting to be accepted do not; to
// leave no such window, create the listener with [ListenConfig] instead.
func EnablePassCred(l *net.UnixListener) error {
	rc, err := l.SyscallConn()
	if err != nil {
		return fmt.Errorf("ucred: enable SO_PASSCRED: %w", err)
	}
	return setPassCred(rc)
}

func setPassCred(rc syscall.RawConn) error {
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
	}); err != nil {
		return fmt.Errorf("ucred: enable SO_PASSCRED: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("ucred: enable SO_PASSCRED: %w", serr)
	}
	return nil
}

// handshakeOOB is room for the SCM_CREDENTIALS message and a few more, so
// that file descriptors a client adds still arrive and can be closed
// rather than leave the buffer truncated.
var handshakeOOB = unix.CmsgSpace(unix.SizeofUcred) + unix.CmsgSpace(8*4)

// ReadHandshake reads the client's handshake byte from c, which must have
// SO_PASSCRED set (see [ListenConfig]), and returns the credentials that
// came with it. It consumes exactly that byte: the next Read on c returns
// what the client sent after it. On a SOCK_SEQPACKET socket the byte must
// be a packet of its own.
//
// It fails, and c should be closed, if the client closes or the timeout
// (none if <= 0) passes before the byte arrives, if the byte carries no
// credentials the kernel vouches for, or if it carries anything else (file
// descriptors sent with it are closed). With a timeout it sets c's read
// deadline and clears it on return; without, c's own deadline applies.
func ReadHandshake(c *net.UnixConn, timeout time.Duration) (Cred, error) {
	cr, err := readHandshake(c, timeout)
	if err != nil {
		return Cred{}, fmt.Errorf("ucred: read handshake: %w", err)
	}
	return cr, nil
}

func readHandshake(c *net.UnixConn, timeout time.Duration) (Cred, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return Cred{}, err
	}
	// Without SO_PASSCRED the byte would come without credentials; say so
	// before consuming it.
	var on int
	var serr error
	if err := rc.Control(func(fd uintptr) {
		on, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED)
	}); err != nil {
		return Cred{}, err
	}
	if serr != nil {
		return Cred{}, fmt.Errorf("SO_PASSCRED: %w", serr)
	}
	if on == 0 {
		return Cred{}, errors.New("SO_PASSCRED is not set on the socket (set it on the listener before clients connect)")
	}

	if timeout > 0 {
		if err := c.SetReadDeadline(time.Now().Add(timeout)); err != nil {
			return Cred{}, err
		}
		defer c.SetReadDeadline(time.Time{})
	}

	// A one-byte buffer takes exactly one byte from a stream; a longer
	// packet is truncated (MSG_TRUNC), which is refused below.
	var b [1]byte
	oob := make([]byte, handshakeOOB)
	var n, oobn, flags int
	if err := rc.Read(func(fd uintptr) bool {
		for {
			n, oobn, flags, _, serr = unix.Recvmsg(int(fd), b[:], oob, unix.MSG_CMSG_CLOEXEC)
			if serr != unix.EINTR {
				return serr != unix.EAGAIN
			}
		}
	}); err != nil {
		return Cred{}, err
	}
	if serr != nil {
		return Cred{}, serr
	}

	msgs, perr := unix.ParseSocketControlMessage(oob[:oobn])
	var cred *unix.Ucred
	var extra []string
	for _, m := range msgs {
		switch {
		case m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_CREDENTIALS:
			cred, err = unix.ParseUnixCredentials(&m)
			if err != nil {
				perr = errors.Join(perr, err)
			}
		case m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_RIGHTS:
			fds, _ := unix.ParseUnixRights(&m)
			for _, fd := range fds {
				unix.Close(fd)
			}
			extra = append(extra, fmt.Sprintf("%d file descriptors", len(fds)))
		case m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_PIDFD && len(m.Data) >= 4:
			// Only with SO_PASSPIDFD, which this package never sets; a
			// pidfd is still a descriptor to close.
			unix.Close(int(int32(binary.NativeEndian.Uint32(m.Data))))
			extra = append(extra, "a pidfd")
		default:
			extra = append(extra, fmt.Sprintf("control message level %d type %d", m.Header.Level, m.Header.Type))
		}
	}

	switch {
	case n == 0:
		return Cred{}, fmt.Errorf("connection closed before the credentials byte: %w", io.ErrUnexpectedEOF)
	case flags&unix.MSG_TRUNC != 0:
		return Cred{}, errors.New("credentials byte came in a packet longer than one byte")
	case flags&unix.MSG_CTRUNC != 0:
		return Cred{}, errors.New("control messages truncated")
	case perr != nil:
		return Cred{}, fmt.Errorf("parse control messages: %w", perr)
	case len(extra) > 0:
		return Cred{}, fmt.Errorf("credentials byte came with %v", extra)
	case cred == nil:
		return Cred{}, errors.New("no credentials came with the byte")
	case cred.Pid == 0:
		// What the kernel reports for data sent while SO_PASSCRED was off
		// (uid and gid are then the overflow ids), or for a sender in a
		// pid namespace we cannot see: either way it vouches for no one.
		return Cred{}, fmt.Errorf("credentials without a pid (uid %d gid %d): sent before SO_PASSCRED was set, or from another pid namespace", cred.Uid, cred.Gid)
	}
	return Cred{PID: cred.Pid, UID: cred.Uid, GID: cred.Gid}, nil
}

// WriteHandshake sends the client's handshake on c: one '\0' byte with
// this process's pid, real uid and real gid as SCM_CREDENTIALS. It honours
// c's write deadline.
func WriteHandshake(c *net.UnixConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("ucred: write handshake: %w", err)
	}
	oob := unix.UnixCredentials(&unix.Ucred{
		Pid: int32(os.Getpid()),
		Uid: uint32(os.Getuid()),
		Gid: uint32(os.Getgid()),
	})
	var n int
	var serr error
	if err := rc.Write(func(fd uintptr) bool {
		for {
			n, serr = unix.SendmsgN(int(fd), []byte{0}, oob, nil, unix.MSG_NOSIGNAL)
			if serr != unix.EINTR {
				return serr != unix.EAGAIN
			}
		}
	}); err != nil {
		return fmt.Errorf("ucred: write handshake: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("ucred: write handshake: %w", serr)
	}
	if n != 1 {
		return fmt.Errorf("ucred: write handshake: sent %d bytes, want 1", n)
	}
	return nil
}
