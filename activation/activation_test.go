package activation

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tubes-dev/tubes/internal/serve"
)

// The test binary is also the on-demand service: TestMain runs it as one
// when ACTIVATION_SERVICE names a behaviour.
func TestMain(m *testing.M) {
	if mode := os.Getenv("ACTIVATION_SERVICE"); mode != "" {
		service(mode)
		return
	}
	os.Exit(m.Run())
}

// service is a socket-activated service: it checks LISTEN_* and answers
// each connection with "PID:" and what it read up to the half-close.
func service(mode string) {
	if os.Getenv("LISTEN_PID") != strconv.Itoa(os.Getpid()) || os.Getenv("LISTEN_FDS") != "1" || os.Getenv("LISTEN_FDNAMES") != "echo" {
		fmt.Fprintf(os.Stderr, "bad activation environment: pid %d, %q %q %q\n", os.Getpid(), os.Getenv("LISTEN_PID"), os.Getenv("LISTEN_FDS"), os.Getenv("LISTEN_FDNAMES"))
		os.Exit(3)
	}
	f := os.NewFile(3, "activation")
	answer := func(c net.Conn) {
		defer c.Close()
		b, _ := io.ReadAll(c)
		fmt.Fprintf(c, "%d:%s", os.Getpid(), b)
	}
	switch mode {
	case "exit":
		os.Exit(1)
	case "hang":
		select {}
	case "per-client":
		c, err := net.FileConn(f)
		if err != nil {
			os.Exit(4)
		}
		answer(c)
		return
	case "slow":
		time.Sleep(300 * time.Millisecond)
	}
	ln, err := net.FileListener(f)
	if err != nil {
		os.Exit(4)
	}
	serve.Loop(ln, answer)
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
	io.WriteString(c, msg)
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
	u := unit(t, PerClient, "per-client", Config{})
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

// A service that exits at once, never accepts, or is missing: the client
// gets a reset (never a clean end), and Status says why.
func TestFailuresReset(t *testing.T) {
	for _, c := range []struct {
		name, behaviour, path, why string
	}{
		{"exits at once", "exit", "", "exited"},
		{"never accepts", "hang", "", "did not accept within"},
		{"missing binary", "echo", "/nonexistent/service", "exit status 127"},
	} {
		t.Run(c.name, func(t *testing.T) {
			u := unit(t, Shared, c.behaviour, Config{StartTimeout: 500 * time.Millisecond})
			if c.path != "" {
				u.cfg.Path = c.path
			}
			addr := front(t, u)
			_, err := ask(t, addr, "hello")
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("the client got %v, want a reset", err)
			}
			if st := u.Status(); !strings.Contains(st.LastError, c.why) {
				t.Fatalf("status %+v, want %q", st, c.why)
			}
		})
	}
}

// Connect, as the tube manager uses it: a per-client service gets one end
// of a socket pair as its connection; a shared one is reached, and done
// lets its idle stop begin.
func TestConnect(t *testing.T) {
	for _, c := range []struct{ mode, behaviour string }{{PerClient, "per-client"}, {Shared, "echo"}} {
		t.Run(c.mode, func(t *testing.T) {
			u := unit(t, c.mode, c.behaviour, Config{Idle: 200 * time.Millisecond})
			defer u.Close()
			conn, done, err := u.Connect()
			if err != nil {
				t.Fatal(err)
			}
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			io.WriteString(conn, "direct")
			conn.(interface{ CloseWrite() error }).CloseWrite()
			b, err := io.ReadAll(conn)
			conn.Close()
			done()
			if _, rest, ok := strings.Cut(string(b), ":"); !ok || rest != "direct" || err != nil {
				t.Fatalf("answer %q, %v", b, err)
			}
			if st := u.Status(); st.Starts != 1 {
				t.Fatalf("status %+v", st)
			}
		})
	}
}
