package ucred

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tubes-dev/tubes/internal/testenv"
)

// The other-uid test re-runs this test binary as a client; these select
// that mode and name the socket.
const (
	helperEnv = "UCRED_TEST_HELPER"
	socketEnv = "UCRED_TEST_SOCKET"
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "client" {
		if err := helperClient(os.Getenv(socketEnv)); err != nil {
			fmt.Fprintln(os.Stderr, "ucred test helper:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// helperClient does the client's handshake, sends "hello" and waits for
// the server to hang up.
func helperClient(path string) error {
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if err := WriteHandshake(c); err != nil {
		return err
	}
	if _, err := c.Write([]byte("hello")); err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, c)
	return err
}

func self() Cred {
	return Cred{PID: int32(os.Getpid()), UID: uint32(os.Getuid()), GID: uint32(os.Getgid())}
}

// listen listens on a new socket in dir (a new temporary directory if ""),
// with SO_PASSCRED set before binding if passCred.
func listen(t *testing.T, network, dir string, passCred bool) (*net.UnixListener, string) {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	path := filepath.Join(dir, "s")
	lc := &net.ListenConfig{}
	if passCred {
		lc = ListenConfig()
	}
	ln, err := lc.Listen(t.Context(), network, path)
	if err != nil {
		t.Fatal(err)
	}
	l := ln.(*net.UnixListener)
	t.Cleanup(func() { l.Close() })
	return l, path
}

func dial(t *testing.T, network, path string) *net.UnixConn {
	t.Helper()
	c, err := net.DialUnix(network, nil, &net.UnixAddr{Name: path, Net: network})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func accept(t *testing.T, l *net.UnixListener) *net.UnixConn {
	t.Helper()
	l.SetDeadline(time.Now().Add(20 * time.Second))
	c, err := l.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// pair returns the client and server ends of a new connection.
func pair(t *testing.T, network string, passCred bool) (client, server *net.UnixConn) {
	t.Helper()
	l, path := listen(t, network, "", passCred)
	client = dial(t, network, path)
	return client, accept(t, l)
}

func passCredOn(t *testing.T, c *net.UnixConn) bool {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var serr error
	rc.Control(func(fd uintptr) { v, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED) })
	if serr != nil {
		t.Fatal(serr)
	}
	return v != 0
}

// expectRest checks that what is left on server after the handshake is
// exactly want: the credentials byte neither stays in the stream nor takes
// data with it.
func expectRest(t *testing.T, client, server *net.UnixConn, want string) {
	t.Helper()
	client.CloseWrite()
	server.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(server)
	if err != nil {
		t.Fatalf("read after handshake: %v", err)
	}
	if string(got) != want {
		t.Fatalf("after handshake read %q, want %q", got, want)
	}
}

func TestAllowed(t *testing.T) {
	c := Cred{PID: 1, UID: 1000, GID: 1000}
	for _, tc := range []struct {
		uids []uint32
		want bool
	}{
		{nil, false},
		{[]uint32{0}, false},
		{[]uint32{1000}, true},
		{[]uint32{0, 1000}, true},
	} {
		if got := Allowed(c, tc.uids); got != tc.want {
			t.Errorf("Allowed(uid 1000, %v) = %v, want %v", tc.uids, got, tc.want)
		}
	}
}

func TestPeer(t *testing.T) {
	client, server := pair(t, "unix", false)
	for name, c := range map[string]*net.UnixConn{"server": server, "client": client} {
		got, err := Peer(c)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got != self() {
			t.Errorf("%s: Peer = %+v, want %+v", name, got, self())
		}
	}
}

func TestHandshake(t *testing.T) {
	for _, network := range []string{"unix", "unixpacket"} {
		for _, setup := range []string{"ListenConfig", "EnablePassCred"} {
			t.Run(network+"/"+setup, func(t *testing.T) {
				l, path := listen(t, network, "", setup == "ListenConfig")
				if setup == "EnablePassCred" {
					if err := EnablePassCred(l); err != nil {
						t.Fatal(err)
					}
				}
				client := dial(t, network, path)
				server := accept(t, l)
				if !passCredOn(t, server) {
					t.Fatal("accepted socket did not inherit SO_PASSCRED from its listener")
				}
				if err := WriteHandshake(client); err != nil {
					t.Fatal(err)
				}
				if _, err := client.Write([]byte("hello")); err != nil {
					t.Fatal(err)
				}
				got, err := ReadHandshake(server, 10*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				if got != self() {
					t.Fatalf("ReadHandshake = %+v, want %+v", got, self())
				}
				if !Allowed(got, []uint32{uint32(os.Getuid())}) {
					t.Fatal("own uid not allowed")
				}
				expectRest(t, client, server, "hello")
			})
		}
	}
}

// A client that sends a plain byte, with no control message, is still
// identified: with SO_PASSCRED on the receiver the kernel attaches the
// sender's real credentials itself.
func TestHandshakePlainByte(t *testing.T) {
	client, server := pair(t, "unix", true)
	if _, err := client.Write([]byte("\x00hello")); err != nil {
		t.Fatal(err)
	}
	got, err := ReadHandshake(server, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if got != self() {
		t.Fatalf("ReadHandshake = %+v, want %+v", got, self())
	}
	expectRest(t, client, server, "hello")
}

// A connection waiting in the backlog when the listener gets SO_PASSCRED
// may not inherit it (Linux 6.18 copies the flag at connect(2)); the
// handshake must then fail, never report wrong credentials.
func TestHandshakeConnectedBeforeEnable(t *testing.T) {
	l, path := listen(t, "unix", "", false)
	client := dial(t, "unix", path)
	if err := EnablePassCred(l); err != nil {
		t.Fatal(err)
	}
	server := accept(t, l)
	t.Logf("SO_PASSCRED inherited by a connection made before EnablePassCred: %v", passCredOn(t, server))
	if err := WriteHandshake(client); err != nil {
		t.Fatal(err)
	}
	got, err := ReadHandshake(server, 10*time.Second)
	if err == nil && got != self() {
		t.Fatalf("ReadHandshake = %+v, want %+v or an error", got, self())
	}
	t.Logf("ReadHandshake: %+v, %v", got, err)
}

// Without SO_PASSCRED, ReadHandshake fails and leaves the byte unread.
func TestHandshakeNoPassCred(t *testing.T) {
	client, server := pair(t, "unix", false)
	if err := WriteHandshake(client); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadHandshake(server, 10*time.Second); err == nil || !strings.Contains(err.Error(), "SO_PASSCRED") {
		t.Fatalf("ReadHandshake without SO_PASSCRED: %v, want an error about SO_PASSCRED", err)
	}
	expectRest(t, client, server, "\x00")
}

// Setting SO_PASSCRED on an accepted socket races the client: a byte sent
// before it carries no credentials, which the kernel reports as pid 0 and
// the overflow uid. ReadHandshake must refuse those.
func TestHandshakePassCredTooLate(t *testing.T) {
	client, server := pair(t, "unix", false)
	if _, err := client.Write([]byte{0}); err != nil {
		t.Fatal(err)
	}
	rc, err := server.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1) })
	if serr != nil {
		t.Fatal(serr)
	}
	got, err := ReadHandshake(server, 10*time.Second)
	if err == nil {
		t.Fatalf("ReadHandshake of a byte sent before SO_PASSCRED = %+v, want an error", got)
	}
	t.Log(err)
}

func TestHandshakeClosed(t *testing.T) {
	client, server := pair(t, "unix", true)
	client.Close()
	if _, err := ReadHandshake(server, 10*time.Second); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("ReadHandshake after the client closed: %v, want io.ErrUnexpectedEOF", err)
	}
}

func TestHandshakeTimeout(t *testing.T) {
	client, server := pair(t, "unix", true)
	start := time.Now()
	_, err := ReadHandshake(server, 50*time.Millisecond)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("ReadHandshake from a silent client: %v, want os.ErrDeadlineExceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("timeout took %v", d)
	}
	// The deadline is cleared: a late handshake and its data still read.
	if err := WriteHandshake(client); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Write([]byte("late")); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadHandshake(server, 0); err != nil {
		t.Fatal(err)
	}
	expectRest(t, client, server, "late")
}

// On a packet socket the byte must be a packet of its own: reading one
// byte of a longer packet would discard the rest.
func TestHandshakeLongPacket(t *testing.T) {
	client, server := pair(t, "unixpacket", true)
	if _, err := client.Write([]byte("\x00hello")); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadHandshake(server, 10*time.Second); err == nil || !strings.Contains(err.Error(), "longer than one byte") {
		t.Fatalf("ReadHandshake of a 6-byte packet: %v, want an error about its length", err)
	}
}

// File descriptors sent with the byte are refused and closed, not leaked
// into the server.
func TestHandshakeFileDescriptors(t *testing.T) {
	client, server := pair(t, "unix", true)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	oob := append(unix.UnixCredentials(&unix.Ucred{Pid: self().PID, Uid: self().UID, Gid: self().GID}),
		unix.UnixRights(int(w.Fd()))...)
	rc, err := client.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	rc.Write(func(fd uintptr) bool {
		serr = unix.Sendmsg(int(fd), []byte{0}, oob, nil, 0)
		return serr != unix.EAGAIN
	})
	if serr != nil {
		t.Fatal(serr)
	}
	w.Close()
	if _, err := ReadHandshake(server, 10*time.Second); err == nil || !strings.Contains(err.Error(), "file descriptors") {
		t.Fatalf("ReadHandshake with SCM_RIGHTS: %v, want an error about file descriptors", err)
	}
	// The only write end left was the one received; once closed, the
	// pipe reads EOF.
	r.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := r.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("pipe read: %v, want EOF (received descriptor not closed)", err)
	}
}

// A client running as another uid (nobody) is seen as that uid both by
// SO_PEERCRED and by the handshake, and is not allowed where only root is.
func TestOtherUID(t *testing.T) {
	testenv.MustHaveRoot(t)
	const nobody = 65534

	// The client runs as nobody, so its binary and the socket must be
	// reachable by it; t.TempDir's root is private (0700).
	base, err := os.MkdirTemp("", "ucred-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	sockDir := filepath.Join(base, "sock")
	if err := os.Mkdir(sockDir, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(sockDir, 0o777); err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	helper := filepath.Join(base, "ucred.test")
	if err := os.WriteFile(helper, bin, 0o755); err != nil {
		t.Fatal(err)
	}

	l, path := listen(t, "unix", sockDir, true)
	if err := os.Chmod(path, 0o777); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(helper)
	cmd.Env = append(os.Environ(), helperEnv+"=client", socketEnv+"="+path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := false
	defer func() {
		if !exited {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}()

	server := accept(t, l)
	want := Cred{PID: int32(cmd.Process.Pid), UID: nobody, GID: nobody}
	peer, err := Peer(server)
	if err != nil {
		t.Fatal(err)
	}
	if peer != want {
		t.Errorf("Peer = %+v, want %+v", peer, want)
	}
	hs, err := ReadHandshake(server, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if hs != want {
		t.Errorf("ReadHandshake = %+v, want %+v", hs, want)
	}
	if Allowed(hs, []uint32{0}) {
		t.Error("uid 65534 allowed by a root-only list")
	}
	if !Allowed(hs, []uint32{0, nobody}) {
		t.Error("uid 65534 not allowed by a list with it")
	}
	server.SetReadDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, 5)
	if _, err := io.ReadFull(server, got); err != nil || string(got) != "hello" {
		t.Fatalf("after handshake read %q, %v; want \"hello\"", got, err)
	}
	server.Close()
	exited = true
	if err := cmd.Wait(); err != nil {
		t.Fatalf("client: %v\n%s", err, out.String())
	}
}
