package activation

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tubes-dev/tubes/internal/serve"
	"github.com/tubes-dev/tubes/internal/testenv"
)

// The test binary is also the on-demand service: TestMain runs it as one
// when ACTIVATION_SERVICE names a behaviour.
func TestMain(m *testing.M) {
	if mode := os.Getenv("ACTIVATION_SERVICE"); mode != "" {
		service(mode)
		return
	}
	if path := os.Getenv("ACTIVATION_DIAL"); path != "" { // as another user
		if c, err := net.Dial("unix", path); err != nil {
			fmt.Println("refused:", err)
		} else {
			c.Close()
			fmt.Println("connected")
		}
		return
	}
	os.Exit(m.Run())
}

// service is a socket-activated service: it checks LISTEN_* and answers
// each connection with "PID:" and what it read up to the half-close. Its
// descriptor 3 is a listening socket (shared) or the connection itself
// (per-client). A "crash" service sends "PID\n" and does what the line it
// reads next says: "exit N", or "close" the connection (a per-client one
// then exits 0).
func service(mode string) {
	if os.Getenv("LISTEN_PID") != strconv.Itoa(os.Getpid()) || os.Getenv("LISTEN_FDS") != "1" || os.Getenv("LISTEN_FDNAMES") != "echo" {
		fmt.Fprintf(os.Stderr, "bad activation environment: pid %d, %q %q %q\n", os.Getpid(), os.Getenv("LISTEN_PID"), os.Getenv("LISTEN_FDS"), os.Getenv("LISTEN_FDNAMES"))
		os.Exit(3)
	}
	f := os.NewFile(3, "activation")
	handle := func(c net.Conn) {
		defer c.Close()
		b, _ := io.ReadAll(c)
		fmt.Fprintf(c, "%d:%s", os.Getpid(), b)
	}
	switch mode {
	case "exit":
		os.Exit(1)
	case "hang":
		select {}
	case "stubborn": // ignores SIGTERM
		signal.Ignore(syscall.SIGTERM)
		serve.Loop(must(net.FileListener(f)), handle)
	case "slow":
		time.Sleep(300 * time.Millisecond)
	case "crash":
		handle = func(c net.Conn) {
			defer c.Close()
			fmt.Fprintf(c, "%d\n", os.Getpid())
			line, _ := bufio.NewReader(c).ReadString('\n')
			if code, ok := strings.CutPrefix(strings.TrimSpace(line), "exit "); ok {
				n, _ := strconv.Atoi(code)
				os.Exit(n)
			}
		}
	}
	if listening, err := unix.GetsockoptInt(3, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err == nil && listening == 0 {
		c, err := net.FileConn(f)
		if err != nil {
			os.Exit(4)
		}
		handle(c)
		return
	}
	ln, err := net.FileListener(f)
	if err != nil {
		os.Exit(4)
	}
	serve.Loop(ln, handle)
}

// front serves u on a loopback listener, as the daemon does.
func front(t *testing.T, u *Unit) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close(); u.Close() })
	go func() {
		serve.Loop(ln, func(c net.Conn) { u.Serve(c) })
	}()
	return ln.Addr().String()
}

func unit(t *testing.T, mode, behaviour string, cfg Config) *Unit {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cfg.Name, cfg.Path, cfg.Mode = "echo", exe, mode
	cfg.Env = []string{"ACTIVATION_SERVICE=" + behaviour}
	return New(cfg)
}

// ask sends msg and returns the answer "PID:msg", split.
func ask(t *testing.T, addr, msg string) (int, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return 0, err // a reset that came at once
	}
	c.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(c)
	if err != nil {
		return 0, err
	}
	pid, rest, ok := strings.Cut(string(b), ":")
	if !ok || rest != msg {
		return 0, fmt.Errorf("answer %q to %q", b, msg)
	}
	return strconv.Atoi(pid)
}

// A shared instance starts on the first connection with its socket
// passed systemd-style, serves every client from one process, stops once
// idle, and starts again on the next connection.
func TestSharedInstance(t *testing.T) {
	u := unit(t, Shared, "echo", Config{Idle: 300 * time.Millisecond})
	addr := front(t, u)
	if st := u.Status(); st.Running || st.Starts != 0 {
		t.Fatalf("started before any connection: %+v", st)
	}
	pids := make(chan int, 8)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pid, err := ask(t, addr, fmt.Sprintf("client %d", i))
			if err != nil {
				t.Error(err)
			}
			pids <- pid
		}()
	}
	wg.Wait()
	close(pids)
	first := 0
	for pid := range pids {
		if first == 0 {
			first = pid
		}
		if pid != first {
			t.Fatalf("two processes (%d, %d) for a shared service", first, pid)
		}
	}
	if st := u.Status(); st.Starts != 1 || !st.Running || st.PID != first {
		t.Fatalf("status %+v", st)
	}
	deadline := time.Now().Add(10 * time.Second)
	for u.Status().Running {
		if time.Now().After(deadline) {
			t.Fatal("the idle instance did not stop")
		}
		time.Sleep(20 * time.Millisecond)
	}
	pid, err := ask(t, addr, "after idle")
	if err != nil || pid == first {
		t.Fatalf("after the idle stop: pid %d (first %d), %v", pid, first, err)
	}
	if st := u.Status(); st.Starts != 2 {
		t.Fatalf("starts %d", st.Starts)
	}
}

// Connections that come while the service starts (it takes 300 ms to
// accept) all wait and are served: none is lost.
func TestNoConnectionLostWhileStarting(t *testing.T) {
	u := unit(t, Shared, "slow", Config{})
	addr := front(t, u)
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := ask(t, addr, fmt.Sprintf("early %d", i)); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if st := u.Status(); st.Starts != 1 {
		t.Fatalf("starts %d", st.Starts)
	}
}

// One process per connection, each given its connection as fd 3.
func TestPerClientInstances(t *testing.T) {
	u := unit(t, PerClient, "echo", Config{})
	addr := front(t, u)
	seen := map[int]bool{}
	for i := range 3 {
		pid, err := ask(t, addr, fmt.Sprintf("conn %d", i))
		if err != nil {
			t.Fatal(err)
		}
		seen[pid] = true
	}
	if len(seen) != 3 {
		t.Fatalf("%d processes for 3 connections", len(seen))
	}
}

// Closing a unit (its service unregistered, the daemon stopping) ends
// its per-client instances too: their clients see the end (a reset: the
// instance was killed), and none is left running.
func TestCloseEndsPerClientInstances(t *testing.T) {
	u := unit(t, PerClient, "hang", Config{})
	var conns []net.Conn
	for range 2 {
		c, err := u.Connect()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	for deadline := time.Now().Add(10 * time.Second); u.Status().Clients != 2; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("status %+v, want 2 clients", u.Status())
		}
	}
	u.Close()
	for i, c := range conns {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadAll(c); !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("client %d after Close: %v, want a reset", i, err)
		}
	}
	if st := u.Status(); st.Clients != 0 {
		t.Fatalf("status after Close %+v, want no client", st)
	}
}

// A service that is missing, cannot be executed, exits at once, or never
// accepts: the client gets a reset (never a clean end), Connect refuses
// (ErrRefused) when the service did not take the connection, and Status
// says why. In per-client mode the process is given the connection
// itself, so it cannot fail to accept it: one that hangs is a slow
// service, its client's to time out (and one that then dies is
// TestCrashResets); and one that exits at once has taken the connection
// already, so Connect succeeds and the connection is reset, with a read
// error that says the service refused it.
func TestFailuresReset(t *testing.T) {
	notExec := filepath.Join(t.TempDir(), "not-executable")
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Executables another user could replace.
	script := func(dir, name string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	worldWritable := script(t.TempDir(), "world-writable", 0o777)
	openDir := filepath.Join(t.TempDir(), "open")
	if err := os.Mkdir(openDir, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chmod(openDir, 0o777)
	inOpenDir := script(openDir, "service", 0o755)
	linkDir := t.TempDir()
	viaLink := filepath.Join(linkDir, "link")
	if err := os.Symlink(inOpenDir, viaLink); err != nil {
		t.Fatal(err)
	}
	othersDir := t.TempDir()
	others := script(othersDir, "others", 0o755)
	chownErr := os.Chown(others, 65534, 65534)
	for _, c := range []struct {
		name, mode, behaviour, path, why string
		refused                          bool // Connect itself refuses
	}{
		{"missing binary", Shared, "echo", "/nonexistent/service", "cannot start /nonexistent/service: no such file or directory", true},
		{"missing binary", PerClient, "echo", "/nonexistent/service", "cannot start /nonexistent/service: no such file or directory", true},
		{"not executable", Shared, "echo", notExec, "permission denied", true},
		{"not executable", PerClient, "echo", notExec, "permission denied", true},
		{"exits at once", Shared, "exit", "", "exited before accepting (exit status 1)", true},
		{"exits at once", PerClient, "exit", "", "a per-client instance failed (exit status 1)", false},
		{"never accepts", Shared, "hang", "", "did not accept within", true},
		{"writable by others", Shared, "echo", worldWritable, "will not start " + worldWritable + ": " + worldWritable + " is writable by other users (mode 0777)", true},
		{"writable by others", PerClient, "echo", worldWritable, "is writable by other users (mode 0777)", true},
		{"in a directory others can write", Shared, "echo", inOpenDir, openDir + " is writable by other users (mode 0777)", true},
		{"through a link into such a directory", PerClient, "echo", viaLink, openDir + " is writable by other users (mode 0777)", true},
		{"another user's", Shared, "echo", others, others + " belongs to uid 65534, neither root nor this user", true},
	} {
		t.Run(c.mode+"/"+c.name, func(t *testing.T) {
			if c.path == others && chownErr != nil {
				testenv.MustHaveRoot(t)
				t.Fatalf("chown: %v", chownErr)
			}
			newUnit := func() *Unit {
				u := unit(t, c.mode, c.behaviour, Config{StartTimeout: 500 * time.Millisecond})
				if c.path != "" {
					u.cfg.Path = c.path
				}
				t.Cleanup(func() { u.Close() })
				return u
			}
			u := newUnit()
			_, err := ask(t, front(t, u), "hello")
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("the client got %v, want a reset", err)
			}
			if st := u.Status(); !strings.Contains(st.LastError, c.why) {
				t.Fatalf("status %+v, want %q", st, c.why)
			}

			u = newUnit()
			conn, err := u.Connect()
			if c.refused {
				if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), c.why) {
					t.Fatalf("Connect: %v, want ErrRefused with %q", err, c.why)
				}
				return
			}
			if err != nil {
				t.Fatalf("Connect: %v", err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			_, err = io.ReadAll(conn)
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("Connect's connection got %v, want a reset", err)
			}
			// An instance that failed before answering refused it (a
			// tube says ConnectionRefused).
			var re *RefusedError
			if refusal := errors.As(err, &re) && re.Refused() && errors.Is(err, ErrRefused); refusal != (c.mode == PerClient && c.name == "exits at once") {
				t.Fatalf("Connect's connection got %v: a refusal %v", err, refusal)
			}
			if st := u.Status(); !strings.Contains(st.LastError, c.why) {
				t.Fatalf("status %+v, want %q", st, c.why)
			}
		})
	}
}

// An instance that fails while a client is connected (killed, or exits
// non-zero) resets the client's connection, though the kernel ended the
// service's side with a FIN, and Status says how it ended; an instance
// that exits 0, or closes the connection, ends it cleanly. The same for
// both modes, through Serve and through Connect.
func TestCrashResets(t *testing.T) {
	for _, mode := range []string{Shared, PerClient} {
		for _, via := range []string{"serve", "connect"} {
			for _, c := range []struct {
				name, cmd, why string // why "": a clean end
			}{
				{"killed", "", "signal: killed"},
				{"exits non-zero", "exit 3", "exit status 3"},
				{"exits 0", "exit 0", ""},
				{"closes", "close", ""},
			} {
				t.Run(mode+"/"+via+"/"+c.name, func(t *testing.T) {
					u := unit(t, mode, "crash", Config{})
					var conn net.Conn
					var err error
					if via == "serve" {
						conn, err = net.Dial("tcp", front(t, u))
					} else {
						t.Cleanup(func() { u.Close() })
						conn, err = u.Connect()
					}
					if err != nil {
						t.Fatal(err)
					}
					defer conn.Close()
					conn.SetDeadline(time.Now().Add(10 * time.Second))
					r := bufio.NewReader(conn)
					line, err := r.ReadString('\n')
					pid, perr := strconv.Atoi(strings.TrimSpace(line))
					if err != nil || perr != nil {
						t.Fatalf("the service's first line %q: %v", line, err)
					}
					if c.cmd == "" {
						syscall.Kill(pid, syscall.SIGKILL)
					} else {
						io.WriteString(conn, c.cmd+"\n")
					}
					rest, err := io.ReadAll(r)
					if c.why == "" {
						if err != nil || len(rest) != 0 {
							t.Fatalf("the client got %q, %v; want a clean end", rest, err)
						}
						return
					}
					if !errors.Is(err, syscall.ECONNRESET) {
						t.Fatalf("the client got %q, %v; want a reset", rest, err)
					}
					if st := u.Status(); !strings.Contains(st.LastError, c.why) {
						t.Fatalf("status %+v, want %q", st, c.why)
					}
				})
			}
		}
	}
}

// Connect, as the tube manager uses it: a per-client service gets its
// own process for the connection; a shared one is reached, and the end
// of the connection lets its idle stop begin.
func TestConnect(t *testing.T) {
	for _, mode := range []string{PerClient, Shared} {
		t.Run(mode, func(t *testing.T) {
			u := unit(t, mode, "echo", Config{Idle: 200 * time.Millisecond})
			defer u.Close()
			conn, err := u.Connect()
			if err != nil {
				t.Fatal(err)
			}
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			io.WriteString(conn, "direct")
			conn.(interface{ CloseWrite() error }).CloseWrite()
			b, err := io.ReadAll(conn)
			conn.Close()
			if _, rest, ok := strings.Cut(string(b), ":"); !ok || rest != "direct" || err != nil {
				t.Fatalf("answer %q, %v", b, err)
			}
			if st := u.Status(); st.Starts != 1 {
				t.Fatalf("status %+v", st)
			}
			for deadline := time.Now().Add(10 * time.Second); u.Status().Running || u.Status().Clients != 0; time.Sleep(20 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("still running or counting a client after the connection ended: %+v", u.Status())
				}
			}
		})
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		os.Exit(4)
	}
	return v
}

// watchSignals records what is sent to process groups and whether each
// group's leader was still unreaped then (a zombie or alive: waitid with
// WNOWAIT finds it), as stop must ensure.
func watchSignals(u *Unit) func() []string {
	var mu sync.Mutex
	var sent []string
	u.signalGroup = func(pgid int, sig unix.Signal) {
		var info unix.Siginfo
		state := "unreaped"
		if err := unix.Waitid(unix.P_PID, pgid, &info, unix.WEXITED|unix.WNOWAIT|unix.WNOHANG, nil); err != nil {
			state = "reaped (" + err.Error() + ")"
		}
		mu.Lock()
		sent = append(sent, unix.SignalName(sig)+" "+state)
		mu.Unlock()
		signalGroup(pgid, sig)
	}
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), sent...)
	}
}

func startedShared(t *testing.T, u *Unit) *instance {
	t.Helper()
	c, err := u.Connect()
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.shared == nil {
		t.Fatal("no shared instance after a connection")
	}
	return u.shared
}

// Stopping a service signals its process group only while the group's
// leader is unreaped: once it is reaped its pid, the group's id, may be
// another process's. A service that ends on SIGTERM gets no SIGKILL
// after it was reaped (the old stop sent one 5 s later, whatever
// happened); one that ignores SIGTERM is killed after the grace period.
func TestStopSignalsOnlyUnreapedGroups(t *testing.T) {
	t.Run("ends on SIGTERM", func(t *testing.T) {
		u := unit(t, Shared, "echo", Config{})
		sent := watchSignals(u)
		in := startedShared(t, u)
		u.Close()
		<-in.exited
		u.stops.Wait()
		got := sent()
		if len(got) == 0 || got[0] != "SIGTERM unreaped" {
			t.Fatalf("signals %q, want SIGTERM to the unreaped group first", got)
		}
		for _, s := range got {
			if !strings.HasSuffix(s, " unreaped") {
				t.Fatalf("signals %q: one was sent after the leader was reaped", got)
			}
		}
	})
	t.Run("ignores SIGTERM", func(t *testing.T) {
		u := unit(t, Shared, "stubborn", Config{})
		u.grace = 100 * time.Millisecond
		sent := watchSignals(u)
		in := startedShared(t, u)
		u.Close()
		<-in.exited
		u.stops.Wait()
		if got := sent(); len(got) < 2 || got[0] != "SIGTERM unreaped" || got[1] != "SIGKILL unreaped" {
			t.Fatalf("signals %q, want SIGTERM then SIGKILL, both to the unreaped group", got)
		}
		var ee *exec.ExitError
		if !errors.As(in.err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("the service ended with %v, want killed by SIGKILL", in.err)
		}
	})
}

// A shared instance's inner socket is reachable by this user only: it is
// a Unix socket in a directory of mode 0700 (a loopback TCP port would
// let any local user past the daemon's checks). Accepting still works
// as on TCP: the connection waits for the service to take it.
func TestSharedInnerSocketPrivate(t *testing.T) {
	testenv.MustHaveRoot(t)
	u := unit(t, Shared, "echo", Config{})
	defer u.Close()
	conn, err := u.Connect()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	u.mu.Lock()
	inner := u.shared.inner.Addr().String()
	u.mu.Unlock()
	fi, err := os.Stat(filepath.Dir(inner))
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("the inner socket's directory: %v, %v; want mode 0700", fi.Mode(), err)
	}
	// uid 65534 runs a copy of this binary that dials it.
	dir, err := os.MkdirTemp("", "tube-activation-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	exe, _ := os.Executable()
	b, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "dial.test")
	os.WriteFile(bin, b, 0o755)
	cmd := exec.Command(bin)
	cmd.Env = []string{"ACTIVATION_DIAL=" + inner}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "refused") || !strings.Contains(string(out), "permission denied") {
		t.Fatalf("another user dialing the inner socket: %s (%v)", out, err)
	}
}

// A unit's name reaches LISTEN_FDNAMES as sd_listen_fds_with_names can
// read it: no ':' (its separator), printable ASCII, at most 255 bytes.
func TestFDName(t *testing.T) {
	for name, want := range map[string]string{
		"echo":                   "echo",
		"Media@/opt/a:b/plugin":  "Media@/opt/a_b/plugin",
		"tab\there ünï":          "tab_here __n__", // each byte of ü and ï
		strings.Repeat("x", 300): strings.Repeat("x", 255),
	} {
		if got := fdName(name); got != want {
			t.Errorf("fdName(%q) = %q, want %q", name, got, want)
		}
	}
}
