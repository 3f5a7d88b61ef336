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
// its waiting client reset, and Status says why; so do the clients of an
// instance that fails (non-zero exit or a signal) while they are
// connected, where a clean exit ends their connections normally.
package activation

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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
	// MaxInstances bounds the per-client instances running at once
	// (default DefaultMaxInstances); a connection over it is refused.
	MaxInstances int
	Logger       *slog.Logger
}

// DefaultMaxInstances is Config.MaxInstances' default (systemd's
// MaxConnections is 64 for the same thing; a tube's contacts are fewer).
const DefaultMaxInstances = 32

// Status is what a unit is doing, and what went wrong last.
type Status struct {
	// Socket is where local clients reach the service (set by the
	// daemon, which owns it).
	Socket string `json:"socket,omitempty"`
	// Path is the executable (set by the daemon, for the service's
	// location it starts).
	Path      string    `json:"path,omitempty"`
	Running   bool      `json:"running"`
	PID       int       `json:"pid,omitempty"`
	Clients   int       `json:"clients"`
	Starts    int       `json:"starts"`
	LastError string    `json:"last_error,omitempty"`
	Refused   int       `json:"refused,omitempty"` // connections over max-instances
	LastStart time.Time `json:"last_start,omitzero"`
}

// errTooMany is why a connection over MaxInstances was refused.
var errTooMany = errors.New("activation: max-instances reached")

// ErrRefused wraps every reason a connection could not be handed over.
var ErrRefused = errors.New("activation: the service did not take the connection")

// Unit is one on-demand service.
type Unit struct {
	cfg Config
	log *slog.Logger

	mu        sync.Mutex         // guards the fields below
	shared    *instance          // the shared instance, while it runs
	perClient map[*instance]bool // per-client instances, while they run
	clients   int
	idle      *time.Timer
	status    Status
	closed    bool

	stops       sync.WaitGroup // stop's grace-period goroutines
	grace       time.Duration  // how long a group has after SIGTERM
	signalGroup func(pgid int, sig unix.Signal)
}

// instance is one process of the service.
type instance struct {
	cmd   *exec.Cmd
	inner *net.UnixListener // a shared instance's listening socket (acceptq.go)
	ino   uint64            // its inode, to ask about its accept queue
	dir   string            // the private directory it is in
	// exited is closed once the process has ended and err says how
	// (nil for exit status 0).
	exited chan struct{}
	err    error

	// reapMu is held while the leader is reaped and while its process
	// group is signalled: a group is signalled only while its leader is
	// unreaped (alive, or a zombie), when its pid, the group's id, cannot
	// belong to anyone else.
	reapMu   sync.Mutex
	reaped   bool // guarded by reapMu
	stopping bool // guarded by reapMu: stop was asked; stragglers are killed with the leader
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
	if cfg.MaxInstances <= 0 {
		cfg.MaxInstances = DefaultMaxInstances
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Unit{cfg: cfg, log: cfg.Logger.With("service", cfg.Name), grace: stopGrace, signalGroup: signalGroup}
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
	svc, in, err := u.connectShared()
	if err != nil {
		reset(conn)
		return err
	}
	defer u.release()
	relay(conn, svc, in)
	return nil
}

// command makes the service's command with fd as descriptor 3; the
// shell sets LISTEN_PID to its own pid, which exec keeps.
func (u *Unit) command(fd *os.File) *exec.Cmd {
	args := append([]string{"-c", `LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@"`, u.cfg.Path}, u.cfg.Args...)
	cmd := exec.Command("/bin/sh", args...)
	cmd.Env = append(append(os.Environ(), u.cfg.Env...), "LISTEN_FDS=1", "LISTEN_FDNAMES="+fdName(u.cfg.Name))
	cmd.ExtraFiles = []*os.File{fd}
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	// Pdeathsig: the service ends with the daemon, even one killed
	// (startCmd forks from a thread that lives as long as the process).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	return cmd
}

// spawnReq asks the spawner to start cmd.
type spawnReq struct {
	cmd  *exec.Cmd
	done chan error
}

// spawner starts commands from one OS thread kept for the purpose: a
// child's parent-death signal follows the thread that forked it, and Go
// ends other threads when it no longer needs them, which would kill the
// child with a daemon still running.
var spawner = sync.OnceValue(func() chan spawnReq {
	ch := make(chan spawnReq)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread stays
		for r := range ch {
			r.done <- r.cmd.Start()
		}
	}()
	return ch
})

// startCmd starts cmd from the spawner's thread.
func startCmd(cmd *exec.Cmd) error {
	done := make(chan error, 1)
	spawner() <- spawnReq{cmd, done}
	return <-done
}

func (u *Unit) fail(format string, a ...any) error {
	err := fmt.Errorf("%w: "+format, append([]any{ErrRefused}, a...)...)
	u.status.LastError = err.Error()
	u.log.Warn("on-demand service failed", "err", err)
	return err
}

// connectShared returns a connection the shared instance accepted,
// starting the instance if it is not running.
func (u *Unit) connectShared() (net.Conn, *instance, error) {
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		return nil, nil, fmt.Errorf("%w: the unit is closed", ErrRefused)
	}
	if u.shared == nil {
		if err := u.startShared(); err != nil {
			u.mu.Unlock()
			return nil, nil, err
		}
	}
	u.clients++
	if u.idle != nil {
		u.idle.Stop()
	}
	in := u.shared
	u.mu.Unlock()

	c, err := net.DialUnix("unix", nil, in.inner.Addr().(*net.UnixAddr))
	if err == nil {
		err = u.waitAccepted(in)
	} else {
		u.mu.Lock()
		select {
		case <-in.exited: // its listener closed with it
			err = u.endedEarly(in)
		default:
			err = u.fail("cannot reach the service: %v", err)
		}
		u.mu.Unlock()
	}
	if err != nil {
		if c != nil {
			c.Close()
		}
		u.release()
		return nil, nil, err
	}
	return c, in, nil
}

// startShared starts the shared instance on a new inner listener: a
// Unix socket in a fresh directory of mode 0700, which only this user
// (the daemon) can connect to. Callers hold u.mu.
func (u *Unit) startShared() error {
	if _, err := queues(); err != nil {
		return u.fail("inner listener: %v", err)
	}
	dir, err := os.MkdirTemp("", "tube-inner-")
	if err != nil {
		return u.fail("inner listener: %v", err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "s"), Net: "unix"})
	if err != nil {
		os.RemoveAll(dir)
		return u.fail("inner listener: %v", err)
	}
	ln.SetUnlinkOnClose(true)
	f, err := ln.File()
	if err != nil {
		ln.Close()
		os.RemoveAll(dir)
		return u.fail("inner listener: %v", err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		ln.Close()
		os.RemoveAll(dir)
		return u.fail("inner listener: %v", err)
	}
	in, err := u.start(f)
	if err != nil {
		ln.Close()
		os.RemoveAll(dir)
		return err
	}
	in.inner, in.ino, in.dir = ln, st.Ino, dir
	u.shared = in
	u.status.Running, u.status.PID = true, in.cmd.Process.Pid
	go u.reap(in)
	return nil
}

// start starts one process with f as its descriptor 3. An executable
// that is missing or not executable is refused here, with a clear error,
// rather than left to the shell's exit status 127 or 126; so is one that
// another user could replace (safeExecutable). Callers hold u.mu.
func (u *Unit) start(f *os.File) (*instance, error) {
	u.status.Starts++
	u.status.LastStart = time.Now()
	path, err := exec.LookPath(u.cfg.Path)
	if err != nil && !errors.Is(err, exec.ErrDot) {
		return nil, u.fail("cannot start %s: %v", u.cfg.Path, cause(err))
	}
	if err := safeExecutable(path); err != nil {
		return nil, u.fail("will not start %s: %v", u.cfg.Path, err)
	}
	cmd := u.command(f)
	if err := startCmd(cmd); err != nil {
		return nil, u.fail("cannot start %s: %v", u.cfg.Path, err)
	}
	u.log.Info("on-demand service started", "pid", cmd.Process.Pid, "path", u.cfg.Path, "mode", u.cfg.Mode)
	return &instance{cmd: cmd, exited: make(chan struct{})}, nil
}

// safeExecutable refuses an executable that a user other than root or
// this process's own could replace: the file and every directory above
// it, on the path as given and on its real path, must belong to root or
// to this user and be writable by no one else (a directory with the
// sticky bit, such as /tmp, may be). Otherwise the daemon would run, as
// its user, whatever somebody else put there; for root's daemon and a
// system-scope service, a way to root. The rule is sshd's StrictModes.
func safeExecutable(path string) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return cause(err)
	}
	uid := uint32(os.Geteuid())
	for _, p := range []string{abs, real} {
		for ; ; p = filepath.Dir(p) {
			var st unix.Stat_t
			if err := unix.Stat(p, &st); err != nil {
				return fmt.Errorf("%s: %w", p, cause(err))
			}
			if st.Uid != 0 && st.Uid != uid {
				return fmt.Errorf("%s belongs to uid %d, neither root nor this user (uid %d)", p, st.Uid, uid)
			}
			sticky := st.Mode&unix.S_IFMT == unix.S_IFDIR && st.Mode&unix.S_ISVTX != 0
			if st.Mode&0o022 != 0 && !sticky {
				return fmt.Errorf("%s is writable by other users (mode %04o)", p, st.Mode&0o7777)
			}
			if p == "/" {
				break
			}
		}
	}
	return nil
}

// cause is the innermost of err's wrapped errors ("no such file or
// directory", not the three paths around it).
func cause(err error) error {
	for e := errors.Unwrap(err); e != nil; e = errors.Unwrap(e) {
		err = e
	}
	return err
}

// reap waits for an instance to end and records how. It waits for the
// leader's exit without reaping it (waitid WNOWAIT), then, holding
// in.reapMu, kills what is left of a group that was asked to stop and
// reaps the leader: no signal is sent to the group's id once it may have
// been given to another process.
func (u *Unit) reap(in *instance) {
	pid := in.cmd.Process.Pid
	var info unix.Siginfo
	for unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil) == unix.EINTR {
	}
	in.reapMu.Lock()
	if in.stopping {
		u.signalGroup(pid, unix.SIGKILL) // the leader is a zombie: its id is still ours
	}
	err := in.cmd.Wait()
	in.reaped = true
	in.reapMu.Unlock()
	u.mu.Lock()
	in.err = err
	switch {
	case u.cfg.Mode == PerClient:
		delete(u.perClient, in)
		u.clients--
		if err != nil {
			u.status.LastError = "a per-client instance failed (" + err.Error() + ")"
		}
	case u.shared == in:
		u.shared = nil
		u.status.Running, u.status.PID = false, 0
		if u.clients > 0 && !u.closed {
			u.status.LastError = "the service exited with clients connected (" + orExit(err) + ")"
		}
	}
	u.mu.Unlock()
	if in.inner != nil {
		in.inner.Close()
		os.RemoveAll(in.dir)
	}
	close(in.exited) // after the cleanup: Close waits for it
	u.log.Info("on-demand service ended", "pid", in.cmd.Process.Pid, "err", err)
}

func orExit(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// failed says, once the instance's side of a connection has ended,
// whether that was the instance failing: nil while it runs or after a
// clean exit. The kernel ends a dying process's connections with a FIN,
// like a clean close, but marks the process as exiting first; so for an
// exiting process this waits (briefly) for its exit status.
func (in *instance) failed() error {
	if exiting(in.cmd.Process.Pid) {
		t := time.NewTimer(exitWait)
		defer t.Stop()
		select {
		case <-in.exited:
		case <-t.C:
		}
	}
	select {
	case <-in.exited:
		if in.err != nil {
			return fmt.Errorf("activation: the service failed (%v)", in.err)
		}
	default:
	}
	return nil
}

// exitWait bounds how long failed waits for an exiting process to be
// reaped: moments, unless its main thread alone has ended.
const exitWait = time.Second

// pfExiting is the kernel's PF_EXITING task flag (linux/sched.h), set as
// a process starts to exit, before its files are closed.
const pfExiting = 0x4

// exiting reports whether process pid, a child not yet reaped or just
// reaped, is on its way out or gone (without /proc, only gone).
func exiting(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return unix.Kill(pid, 0) == unix.ESRCH
	}
	// "PID (COMM) STATE PPID PGRP SESSION TTY TPGID FLAGS ...", where
	// COMM may hold spaces and parentheses.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 7 {
		return false
	}
	flags, err := strconv.ParseUint(f[6], 10, 64)
	return err == nil && flags&pfExiting != 0
}

// waitAccepted waits until the inner listener's accept queue is empty:
// the service has taken our connection (and any before it).
func (u *Unit) waitAccepted(in *instance) error {
	deadline := time.Now().Add(u.cfg.StartTimeout)
	// An empty queue means accepted once our connection was seen in it;
	// seen empty at once, look again shortly: the handshake's last ACK
	// may not have reached the listener yet. Looked at after 20 µs, then
	// less often: a running service accepts within some tens of
	// microseconds, one starting within milliseconds (looked at every
	// millisecond for a quarter of a second), one that hangs every 20 ms
	// until it times out.
	seen, zeros := false, 0
	start := time.Now()
	for delay := 20 * time.Microsecond; ; {
		select {
		case <-in.exited:
			u.mu.Lock()
			defer u.mu.Unlock()
			return u.endedEarly(in)
		default:
		}
		// An error means the listener closed: the service is gone, which
		// the next look at exited says.
		if queued, err := queueLength(in.ino); err == nil {
			if queued > 0 {
				seen = true
			} else if zeros++; seen || zeros >= 2 {
				return nil
			}
		}
		if time.Now().After(deadline) {
			u.mu.Lock()
			defer u.mu.Unlock()
			return u.fail("the service did not accept within %s", u.cfg.StartTimeout)
		}
		pause(delay)
		switch {
		case delay < time.Millisecond:
			delay = min(2*delay, time.Millisecond)
		case time.Since(start) > 250*time.Millisecond:
			delay = 20 * time.Millisecond
		}
	}
}

// pause sleeps for d. A pause under a millisecond sleeps in nanosleep(2)
// on this thread: the runtime's timers wake a sleeper no sooner than about
// a millisecond after it asked (epoll's timeout is in milliseconds), and
// every connection to a running on-demand service waits here for the
// service to accept, which takes it some tens of microseconds.
func pause(d time.Duration) {
	if d >= time.Millisecond {
		time.Sleep(d)
		return
	}
	ts := unix.NsecToTimespec(int64(d))
	for unix.Nanosleep(&ts, &ts) == unix.EINTR {
	}
}

// endedEarly records that the instance ended before it accepted a
// connection. Callers hold u.mu.
func (u *Unit) endedEarly(in *instance) error {
	return u.fail("the service exited before accepting (%s)", orExit(in.err))
}

// release counts a client gone; the last one arms the idle stop.
func (u *Unit) release() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.clients--
	if u.clients > 0 || u.shared == nil {
		return
	}
	in := u.shared
	if u.idle != nil {
		u.idle.Stop()
	}
	u.idle = time.AfterFunc(u.cfg.Idle, func() {
		u.mu.Lock()
		defer u.mu.Unlock()
		if u.shared == in && u.clients == 0 {
			u.log.Info("on-demand service idle; stopping it", "pid", in.cmd.Process.Pid)
			u.stop(in)
		}
	})
}

// stopGrace is how long a process group has to end after SIGTERM before
// it is killed.
const stopGrace = 5 * time.Second

// signalGroup signals the process group pgid.
func signalGroup(pgid int, sig unix.Signal) { unix.Kill(-pgid, sig) }

// signal sends sig to the instance's process group while its leader is
// unreaped, and reports whether it did.
func (u *Unit) signal(in *instance, sig unix.Signal) bool {
	in.reapMu.Lock()
	defer in.reapMu.Unlock()
	if in.reaped {
		return false
	}
	in.stopping = true
	u.signalGroup(in.cmd.Process.Pid, sig)
	return true
}

// stop asks an instance's process group to end, and kills it if its
// leader has not ended stopGrace later; once the leader has ended, reap
// kills what is left of the group.
func (u *Unit) stop(in *instance) {
	if !u.signal(in, unix.SIGTERM) {
		return
	}
	u.stops.Go(func() {
		t := time.NewTimer(u.grace)
		defer t.Stop()
		select {
		case <-in.exited:
		case <-t.C:
			u.signal(in, unix.SIGKILL)
		}
	})
}

// servePerClient runs one process for conn, given conn as descriptor 3.
func (u *Unit) servePerClient(conn net.Conn) error {
	in, err := u.startPerClient(conn)
	if err != nil {
		reset(conn)
		return err
	}
	return hold(conn, in)
}

// startPerClient starts one process with conn as its descriptor 3.
func (u *Unit) startPerClient(conn net.Conn) (*instance, error) {
	fc, ok := conn.(interface{ File() (*os.File, error) })
	if !ok {
		return nil, fmt.Errorf("%w: per-client services take socket connections", ErrRefused)
	}
	f, err := fc.File()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrRefused, err)
	}
	defer f.Close()
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return nil, fmt.Errorf("%w: the unit is closed", ErrRefused)
	}
	if len(u.perClient) >= u.cfg.MaxInstances {
		u.status.Refused++
		return nil, &RefusedError{Reason: fmt.Sprintf("the service runs its most instances at once (%d)", u.cfg.MaxInstances), Err: errTooMany}
	}
	in, err := u.start(f)
	if err != nil {
		return nil, err
	}
	u.clients++
	if u.perClient == nil {
		u.perClient = map[*instance]bool{}
	}
	u.perClient[in] = true
	go u.reap(in)
	return in, nil
}

// hold keeps our copy of a per-client instance's connection open until
// the process has ended, then resets it if the process failed, or closes
// it. The kernel would end the connection of a process that crashed with
// a FIN, like a clean end; with our copy open it ends only when we say.
// (So a process that closes its connection and carries on running holds
// its client until it exits: per-client instances end with their
// connection.)
func hold(conn net.Conn, in *instance) error {
	<-in.exited
	if in.err != nil {
		reset(conn)
		return fmt.Errorf("activation: a per-client instance failed (%v)", in.err)
	}
	return conn.Close()
}

// Close stops the service and returns once its processes have ended
// (killed after the grace period) and their sockets are gone.
func (u *Unit) Close() error {
	u.mu.Lock()
	u.closed = true
	if u.idle != nil {
		u.idle.Stop()
	}
	var running []*instance
	if u.shared != nil {
		u.stop(u.shared)
		running = append(running, u.shared)
	}
	for in := range u.perClient {
		u.stop(in) // their clients see them end (reset, if killed)
		running = append(running, in)
	}
	u.mu.Unlock()
	for _, in := range running {
		<-in.exited
	}
	return nil
}

// relay copies between a client and an instance both ways until both
// are done; an end that breaks resets the other, and so does the
// instance failing when its side ends.
func relay(client, svc net.Conn, in *instance) {
	done := make(chan error, 2)
	cp := func(dst, src net.Conn, ended func() error) {
		_, err := io.Copy(dst, src)
		if err == nil {
			err = ended()
		}
		if err == nil {
			if cw, ok := dst.(interface{ CloseWrite() error }); ok {
				cw.CloseWrite()
			}
		}
		done <- err
	}
	go cp(client, svc, in.failed)
	go cp(svc, client, func() error { return nil })
	for range 2 {
		if err := <-done; err != nil {
			reset(client)
			reset(svc)
		}
	}
	client.Close()
	svc.Close()
}

func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

// Connect returns a connection to the service (starting it if needed),
// for a caller that relays it itself (the tube manager). When the
// service does not take it, the error says why (wrapping ErrRefused);
// once it has, the connection behaves as Serve's client would see it:
// reset if the instance fails.
func (u *Unit) Connect() (net.Conn, error) {
	if u.cfg.Mode == PerClient {
		ours, theirs, err := pair()
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrRefused, err)
		}
		in, err := u.startPerClient(theirs)
		if err != nil {
			ours.Close()
			theirs.Close()
			return nil, err
		}
		go hold(theirs, in)
		return &perClientConn{c: ours, in: in}, nil
	}
	svc, in, err := u.connectShared()
	if err != nil {
		return nil, err
	}
	ours, theirs, err := pair()
	if err != nil {
		svc.Close()
		u.release()
		return nil, fmt.Errorf("%w: %v", ErrRefused, err)
	}
	go func() {
		defer u.release()
		relay(theirs, svc, in)
	}()
	return ours, nil
}

// perClientConn is the caller's end of a per-client instance's
// connection. An instance that fails before it has sent a byte did not
// take the connection: the reset that follows reads (or writes) as a
// RefusedError, which a tube reports as ConnectionRefused rather than a
// cut connection. It has no raw descriptor and no vectored write, so
// that every read and write goes through the methods that tell.
type perClientConn struct {
	c   *net.TCPConn
	in  *instance
	got atomic.Bool // the instance has sent something
}

func (c *perClientConn) Read(p []byte) (int, error) {
	n, err := c.c.Read(p)
	if n > 0 {
		c.got.Store(true)
	}
	return n, c.refusal(err)
}

func (c *perClientConn) Write(p []byte) (int, error) {
	n, err := c.c.Write(p)
	return n, c.refusal(err)
}

// refusal turns the reset of a connection whose instance failed before
// sending anything into a RefusedError.
func (c *perClientConn) refusal(err error) error {
	if err == nil || c.got.Load() || !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
		return err
	}
	select {
	case <-c.in.exited: // hold resets only after the exit
		if c.in.err != nil {
			return &RefusedError{Reason: fmt.Sprintf("the service exited before answering (%v)", c.in.err), Err: err}
		}
	default:
	}
	return err
}

func (c *perClientConn) Close() error                       { return c.c.Close() }
func (c *perClientConn) CloseWrite() error                  { return c.c.CloseWrite() }
func (c *perClientConn) SetLinger(sec int) error            { return c.c.SetLinger(sec) }
func (c *perClientConn) LocalAddr() net.Addr                { return c.c.LocalAddr() }
func (c *perClientConn) RemoteAddr() net.Addr               { return c.c.RemoteAddr() }
func (c *perClientConn) SetDeadline(t time.Time) error      { return c.c.SetDeadline(t) }
func (c *perClientConn) SetReadDeadline(t time.Time) error  { return c.c.SetReadDeadline(t) }
func (c *perClientConn) SetWriteDeadline(t time.Time) error { return c.c.SetWriteDeadline(t) }

// RefusedError is a read or write error meaning the service never took
// the connection: Reason says why; it wraps ErrRefused and the system
// call's own error (the reset).
type RefusedError struct {
	Reason string
	Err    error
}

func (e *RefusedError) Error() string   { return e.Reason }
func (e *RefusedError) Unwrap() []error { return []error{ErrRefused, e.Err} }

// Refused says the connection was refused, for callers that must not
// import this package to tell (peerlink).
func (e *RefusedError) Refused() bool { return true }

// pair returns the two ends of a new loopback TCP connection: unlike a
// socket pair's, either end can be reset.
func pair() (ours, theirs *net.TCPConn, err error) {
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, nil, err
	}
	defer ln.Close()
	ln.SetDeadline(time.Now().Add(5 * time.Second)) // others' connections cannot keep us here
	ours, err = net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		return nil, nil, err
	}
	for {
		theirs, err = ln.AcceptTCP()
		if err != nil {
			ours.Close()
			return nil, nil, err
		}
		if theirs.RemoteAddr().String() == ours.LocalAddr().String() {
			return ours, theirs, nil
		}
		theirs.Close() // another local process's connection, not ours
	}
}

// fdName is name as LISTEN_FDNAMES may carry it: sd_listen_fds_with_names
// splits the list on ':' and takes up to 255 printable ASCII characters,
// so anything else becomes '_'.
func fdName(name string) string {
	b := []byte(name)
	if len(b) > 255 {
		b = b[:255]
	}
	for i, c := range b {
		if c < ' ' || c > '~' || c == ':' {
			b[i] = '_'
		}
	}
	return string(b)
}
