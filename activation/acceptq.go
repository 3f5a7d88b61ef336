package activation

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// A shared instance listens on a Unix socket in a directory only this
// user can enter, so that no other local user reaches the service past
// the daemon's checks. Whether the service has accepted our connection
// is read from the listener's accept queue, which Linux reports for Unix
// sockets through sock_diag (UNIX_DIAG_RQLEN: for a listener, the
// connections waiting to be accepted), as TCP_INFO does for TCP.

// unix_diag constants (linux/unix_diag.h).
const (
	udiagShowRQLen = 0x10
	unixDiagRQLen  = 4
	diagReqLen     = 24 // struct unix_diag_req
	diagMsgLen     = 16 // struct unix_diag_msg
	tcpListen      = 10 // a listener's state (TCP_LISTEN, for Unix sockets too)
)

// queues is the process's one netlink socket for accept queues, opened
// the first time a shared instance starts.
var queues = sync.OnceValues(newAcceptQueue)

// acceptQueue asks the kernel about Unix listening sockets by inode.
type acceptQueue struct {
	mu  sync.Mutex
	fd  int
	seq uint32
}

func newAcceptQueue() (*acceptQueue, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("sock_diag: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("sock_diag: %w", err)
	}
	// A reply that never comes must not hold a connection forever.
	tv := unix.NsecToTimeval(int64(1e9))
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	return &acceptQueue{fd: fd}, nil
}

// length returns how many connections wait in the accept queue of the
// listening Unix socket with inode ino.
func (q *acceptQueue) length(ino uint64) (uint32, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.seq++
	msg := make([]byte, unix.NLMSG_HDRLEN+diagReqLen)
	ne := binary.NativeEndian
	ne.PutUint32(msg[0:], uint32(len(msg)))
	ne.PutUint16(msg[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(msg[6:], unix.NLM_F_REQUEST)
	ne.PutUint32(msg[8:], q.seq)
	req := msg[unix.NLMSG_HDRLEN:]
	req[0] = unix.AF_UNIX
	ne.PutUint32(req[4:], 1<<tcpListen) // udiag_states: listeners
	ne.PutUint32(req[8:], uint32(ino))
	ne.PutUint32(req[12:], udiagShowRQLen)
	ne.PutUint32(req[16:], ^uint32(0)) // no cookie
	ne.PutUint32(req[20:], ^uint32(0))
	if err := unix.Sendto(q.fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, fmt.Errorf("sock_diag: %w", err)
	}
	buf := make([]byte, 4096)
	for {
		n, _, err := unix.Recvfrom(q.fd, buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("sock_diag: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return 0, fmt.Errorf("sock_diag: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Seq != q.seq {
				continue // a late answer to an earlier question
			}
			return rqueue(m)
		}
	}
}

// rqueue reads UNIX_DIAG_RQLEN's receive queue from an answer.
func rqueue(m syscall.NetlinkMessage) (uint32, error) {
	ne := binary.NativeEndian
	if m.Header.Type == unix.NLMSG_ERROR {
		if len(m.Data) >= 4 {
			if e := int32(ne.Uint32(m.Data)); e != 0 {
				return 0, fmt.Errorf("sock_diag: %w", unix.Errno(-e))
			}
		}
		return 0, errors.New("sock_diag: an error without a code")
	}
	if len(m.Data) < diagMsgLen {
		return 0, errors.New("sock_diag: a short answer")
	}
	attrs := m.Data[diagMsgLen:]
	for len(attrs) >= 4 {
		l, typ := int(ne.Uint16(attrs[0:])), ne.Uint16(attrs[2:])
		if l < 4 || l > len(attrs) {
			break
		}
		if typ == unixDiagRQLen && l >= 12 {
			return ne.Uint32(attrs[4:]), nil
		}
		attrs = attrs[min((l+3)&^3, len(attrs)):]
	}
	return 0, errors.New("sock_diag: no queue length in the answer")
}

// queueLength is the accept queue length of the listener with inode ino.
func queueLength(ino uint64) (uint32, error) {
	q, err := queues()
	if err != nil {
		return 0, err
	}
	return q.length(ino)
}
