// Package activation starts services on demand, systemd style: a
// service's first connection starts its executable with a listening
// socket passed as file descriptor 3 (LISTEN_FDS=1, LISTEN_PID,
// LISTEN_FDNAMES), so no connection is lost while it starts.
//
// The unit owns the service's front socket and relays each connection to
// the service, which is how it knows when the last client has left:
// shared instances (one process for every client) stop after an idle
// time; per-client instances run one process per connection, which gets
// the connection itself as its descriptor 3 (systemd's Accept=yes). A
// service that fails to start, exits, or does not accept in time gets
// its waiting client reset, and Status says why.
package activation

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Modes of a unit.
const (
	Shared    = "shared"
	PerClient = "per-client"
)

// Config describes a service started on demand.
type Config struct {
	Name string   // the socket's name (LISTEN_FDNAMES)
	Path string   // executable
	Args []string // its arguments
	Env  []string // extra environment
	Mode string   // Shared (default) or PerClient
	// Idle is how long a shared instance runs with no client (default
	// 30 s); StartTimeout how long a new connection may wait for the
	// service to accept it (default 10 s).
	Idle, StartTimeout time.Duration
	Logger             *slog.Logger
}

// Status is what a unit is doing, and what went wrong last.
type Status struct {
	// Socket is where local clients reach the service (set by the
	// daemon, which owns it).
	Socket    string    `json:"socket,omitempty"`
	Running   bool      `json:"running"`
	PID       int       `json:"pid,omitempty"`
	Clients   int       `json:"clients"`
	Starts    int       `json:"starts"`
	LastError string    `json:"last_error,omitempty"`
	LastStart time.Time `json:"last_start,omitzero"`
}

// ErrRefused wraps every reason a connection could not be handed over.
var ErrRefused = errors.New("activation: the service did not take the connection")

// Unit is one on-demand service.
type Unit struct {
	cfg Config
	log *slog.Logger

	mu      sync.Mutex
	proc    *exec.Cmd
	exited  chan struct{} // closed when proc exits
	inner   *net.TCPListener
	clients int
	idle    *time.Timer
	status  Status
	exit    string // how the last instance ended
	closed  bool
}

// New returns a unit; nothing starts until a connection comes.
func New(cfg Config) *Unit {
	if cfg.Mode == "" {
		cfg.Mode = Shared
	}
	if cfg.Idle == 0 {
		cfg.Idle = 30 * time.Second
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = 10 * time.Second
	}
	if cfg.Name == "" {
		cfg.Name = "service"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Unit{cfg: cfg, log: cfg.Logger.With("service", cfg.Name)}
}

// Name is the service's name.
func (u *Unit) Name() string { return u.cfg.Name }

// Status reports the unit's state.
func (u *Unit) Status() Status {
	u.mu.Lock()
	defer u.mu.Unlock()
	s := u.status
	s.Clients = u.clients
	return s
}

// Serve hands conn to the service, starting it if needed, and relays
// until both ends are done. If the service does not take the connection,
// conn is reset and the error says why (wrapping ErrRefused).
func (u *Unit) Serve(conn net.Conn) error {
	if u.cfg.Mode == PerClient {
		return u.servePerClient(conn)
	}
	svc, err := u.connectShared()
	if err != nil {
		reset(conn)
		return err
	}
	defer u.release()
	relay(conn, svc)
	return nil
}

// command makes the service's command with fd as descriptor 3; the
// shell sets LISTEN_PID to its own pid, which exec keeps.
func (u *Unit) command(fd *os.File) *exec.Cmd {
	args := append([]string{"-c", `LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@"`, u.cfg.Path}, u.cfg.Args...)
	cmd := exec.Command("/bin/sh", args...)
	cmd.Env = append(append(os.Environ(), u.cfg.Env...), "LISTEN_FDS=1", "LISTEN_FDNAMES="+u.cfg.Name)
	cmd.ExtraFiles = []*os.File{fd}
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd
}

func (u *Unit) fail(format string, a ...any) error {
	err := fmt.Errorf("%w: "+format, append([]any{ErrRefused}, a...)...)
	u.status.LastError = err.Error()
	u.log.Warn("on-demand service failed", "err", err)
	return err
}

// connectShared returns a connection the shared instance accepted,
// starting the instance if it is not running.
func (u *Unit) connectShared() (net.Conn, error) {
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		return nil, fmt.Errorf("%w: the unit is closed", ErrRefused)
	}
	if u.proc == nil {
		if err := u.startShared(); err != nil {
			u.mu.Unlock()
			return nil, err
		}
	}
	u.clients++
	if u.idle != nil {
		u.idle.Stop()
	}
	inner, exited := u.inner, u.exited
	u.mu.Unlock()

	c, err := net.DialTCP("tcp", nil, inner.Addr().(*net.TCPAddr))
	if err == nil {
		err = u.waitAccepted(inner, exited)
	}
	if err != nil {
		if c != nil {
			c.Close()
		}
		u.release()
		return nil, err
	}
	return c, nil
}

// startShared starts the shared instance on a new inner listener.
// Callers hold u.mu.
func (u *Unit) startShared() error {
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return u.fail("inner listener: %v", err)
	}
	f, err := ln.File()
	if err != nil {
		ln.Close()
		return u.fail("inner listener: %v", err)
	}
	defer f.Close()
	cmd := u.command(f)
	u.status.Starts++
	u.status.LastStart = time.Now()
	if err := cmd.Start(); err != nil {
		ln.Close()
		return u.fail("cannot start %s: %v", u.cfg.Path, err)
	}
	u.proc, u.inner, u.exited = cmd, ln, make(chan struct{})
	u.status.Running, u.status.PID = true, cmd.Process.Pid
	u.log.Info("on-demand service started", "pid", cmd.Process.Pid, "path", u.cfg.Path)
	go u.reap(cmd, ln, u.exited)
	return nil
}

// reap waits for a shared instance to end and forgets it.
func (u *Unit) reap(cmd *exec.Cmd, ln *net.TCPListener, exited chan struct{}) {
	err := cmd.Wait()
	u.mu.Lock()
	if u.proc == cmd {
		u.proc, u.inner = nil, nil
		u.status.Running, u.status.PID = false, 0
		u.exit = orExit(err)
		if u.clients > 0 && !u.closed {
			u.status.LastError = "the service exited with clients connected (" + u.exit + ")"
		}
	}
	u.mu.Unlock()
	close(exited)
	ln.Close()
	u.log.Info("on-demand service ended", "err", err)
}

func orExit(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// waitAccepted waits until the inner listener's accept queue is empty:
// the service has taken our connection (and any before it).
func (u *Unit) waitAccepted(ln *net.TCPListener, exited chan struct{}) error {
	rc, err := ln.SyscallConn()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(u.cfg.StartTimeout)
	// An empty queue means accepted once our connection was seen in it;
	// seen empty at once, look again shortly: the handshake's last ACK
	// may not have reached the listener yet.
	seen, zeros := false, 0
	for delay := 200 * time.Microsecond; ; delay = min(2*delay, 20*time.Millisecond) {
		select {
		case <-exited:
			u.mu.Lock()
			defer u.mu.Unlock()
			return u.fail("the service exited before accepting (%s)", u.exit)
		default:
		}
		var queued uint32
		var gerr error
		cerr := rc.Control(func(fd uintptr) {
			var info *unix.TCPInfo
			info, gerr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
			if gerr == nil {
				queued = info.Unacked // a listener's accept queue length
			}
		})
		if cerr != nil || gerr != nil {
			continue // the listener closed: the service is gone (above)
		}
		if queued > 0 {
			seen = true
		} else if zeros++; seen || zeros >= 2 {
			return nil
		}
		if time.Now().After(deadline) {
			u.mu.Lock()
			defer u.mu.Unlock()
			return u.fail("the service did not accept within %s", u.cfg.StartTimeout)
		}
		time.Sleep(delay)
	}
}

// release counts a client gone; the last one arms the idle stop.
func (u *Unit) release() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.clients--
	if u.clients > 0 || u.proc == nil {
		return
	}
	proc := u.proc
	if u.idle != nil {
		u.idle.Stop()
	}
	u.idle = time.AfterFunc(u.cfg.Idle, func() {
		u.mu.Lock()
		defer u.mu.Unlock()
		if u.proc == proc && u.clients == 0 {
			u.log.Info("on-demand service idle; stopping it", "pid", proc.Process.Pid)
			stop(proc)
		}
	})
}

// stop asks a process group to end, then kills it.
func stop(cmd *exec.Cmd) {
	pgid := cmd.Process.Pid
	unix.Kill(-pgid, unix.SIGTERM)
	go func() {
		time.Sleep(5 * time.Second)
		unix.Kill(-pgid, unix.SIGKILL)
	}()
}

// servePerClient runs one process for conn, given conn as descriptor 3.
func (u *Unit) servePerClient(conn net.Conn) error {
	fc, ok := conn.(interface{ File() (*os.File, error) })
	if !ok {
		reset(conn)
		return fmt.Errorf("%w: per-client services take socket connections", ErrRefused)
	}
	f, err := fc.File()
	if err != nil {
		reset(conn)
		return err
	}
	done, err := u.runPerClient(f)
	f.Close()
	if err != nil {
		reset(conn)
		return err
	}
	conn.Close() // the process has its own copy
	<-done
	return nil
}

// Close stops the service.
func (u *Unit) Close() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.closed = true
	if u.idle != nil {
		u.idle.Stop()
	}
	if u.proc != nil {
		stop(u.proc)
	}
	return nil
}

// relay copies both ways; an end that breaks resets the other.
func relay(a, b net.Conn) {
	done := make(chan error, 2)
	cp := func(dst, src net.Conn) {
		_, err := io.Copy(dst, src)
		if err == nil {
			if cw, ok := dst.(interface{ CloseWrite() error }); ok {
				cw.CloseWrite()
			}
		}
		done <- err
	}
	go cp(a, b)
	go cp(b, a)
	if err := <-done; err != nil {
		reset(a)
		reset(b)
	}
	<-done
	a.Close()
	b.Close()
}

func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

// Connect returns a connection the service has accepted (starting it if
// needed), for a caller that relays it itself (the tube manager), and
// done, to call once that connection has ended. When the service does
// not take it, the error says why (wrapping ErrRefused).
func (u *Unit) Connect() (conn net.Conn, done func(), err error) {
	if u.cfg.Mode == PerClient {
		return u.connectPerClient()
	}
	c, err := u.connectShared()
	if err != nil {
		return nil, nil, err
	}
	var once sync.Once
	return c, func() { once.Do(u.release) }, nil
}

// connectPerClient starts one process with one end of a socket pair as
// its connection (descriptor 3) and returns the other end.
func (u *Unit) connectPerClient() (net.Conn, func(), error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	theirs := os.NewFile(uintptr(fds[1]), "service")
	ours := os.NewFile(uintptr(fds[0]), "client")
	defer ours.Close()
	defer theirs.Close()
	c, err := net.FileConn(ours)
	if err != nil {
		return nil, nil, err
	}
	if _, err := u.runPerClient(theirs); err != nil {
		c.Close()
		return nil, nil, err
	}
	return c, func() {}, nil
}

// runPerClient starts one process with f as its descriptor 3; the
// channel closes once it has ended (and its end is recorded).
func (u *Unit) runPerClient(f *os.File) (<-chan struct{}, error) {
	cmd := u.command(f)
	u.mu.Lock()
	u.status.Starts++
	u.status.LastStart = time.Now()
	if err := cmd.Start(); err != nil {
		err = u.fail("cannot start %s: %v", u.cfg.Path, err)
		u.mu.Unlock()
		return nil, err
	}
	u.clients++
	u.mu.Unlock()
	done := make(chan struct{})
	go func() {
		werr := cmd.Wait()
		u.mu.Lock()
		u.clients--
		if werr != nil {
			u.status.LastError = fmt.Sprintf("a per-client instance exited: %v", werr)
		}
		u.mu.Unlock()
		close(done)
	}()
	return done, nil
}
