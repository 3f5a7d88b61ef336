package daemon_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tubes-dev/tubes/internal/tubetest"
)

// A per-client on-demand service runs at most max-instances processes:
// a connection over it is refused (a reset, counted), the ones running
// are served, and once one ends a new connection is taken again.
func TestMaxInstances(t *testing.T) {
	script := tubetest.ActivatedScript(t, t.TempDir(), "service")
	alice, bob := contacts(t)
	tb := publishAndOpen(t, alice, bob, "Capped", script,
		`<customproperty key="instance">per-client</customproperty><customproperty key="max-instances">2</customproperty>`)
	dial := func(i int) net.Conn {
		c, err := net.Dial("tcp", tb.Address)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(20 * time.Second))
		fmt.Fprintf(c, "connection %d", i)
		return c
	}
	answer := func(c net.Conn) (string, error) {
		c.(*net.TCPConn).CloseWrite()
		b, err := io.ReadAll(c)
		return string(b), err
	}
	first, second := dial(0), dial(1)
	for deadline := time.Now().Add(10 * time.Second); statusOf(t, alice, "Capped").Starts < 2; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("two connections did not start two instances: %+v", statusOf(t, alice, "Capped"))
		}
	}
	// The refusal is quick: the reset may come before the dial returns,
	// or be reported to the write or the half-close (after which Linux
	// reads a plain end of file, and a half-close finds no connection),
	// not the read.
	got, err := "", error(nil)
	if third, derr := net.Dial("tcp", tb.Address); derr != nil {
		err = derr
	} else {
		t.Cleanup(func() { third.Close() })
		third.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err = fmt.Fprintf(third, "connection 2"); err == nil {
			if err = third.(*net.TCPConn).CloseWrite(); err == nil {
				var b []byte
				b, err = io.ReadAll(third)
				got = string(b)
			}
		}
	}
	if err == nil || !(strings.Contains(err.Error(), "reset") || strings.Contains(err.Error(), "broken pipe") || strings.Contains(err.Error(), "not connected")) {
		t.Fatalf("the connection over max-instances got %q, %v; want a reset", got, err)
	}
	if st := statusOf(t, alice, "Capped"); st.Refused != 1 || st.Starts != 2 {
		t.Fatalf("activation status %+v, want 2 starts and 1 refused", st)
	}
	for i, c := range []net.Conn{first, second} {
		if got, err := answer(c); err != nil || !strings.HasPrefix(got, "activated ") {
			t.Fatalf("connection %d under the limit: %q, %v", i, got, err)
		}
	}
	for deadline := time.Now().Add(10 * time.Second); statusOf(t, alice, "Capped").Clients > 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the instances did not end: %+v", statusOf(t, alice, "Capped"))
		}
	}
	if got, err := answer(dial(3)); err != nil || !strings.HasPrefix(got, "activated ") {
		t.Fatalf("a connection after the others ended: %q, %v", got, err)
	}
}

// Another user who makes the predictable directory of on-demand sockets
// first does not disable on-demand services: the daemon takes a fresh
// directory of its own.
func TestLocalSocketDirTaken(t *testing.T) {
	testenvRoot(t)
	ctx := context.Background()
	state := t.TempDir()
	alice := tubetest.StartDaemon(t, state)
	add := func(name string) string {
		probe := tubetest.ActivatedScript(t, t.TempDir(), name)
		xml := `<SFW version="1.1"><service><name>` + name + `</name><filepath>` + probe + `</filepath>
<interface><name>org.example.` + name + `</name><version>1.0</version></interface></service></SFW>`
		if _, err := alice.C.AddService(ctx, xml, name+".xml", ""); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			if s := statusOf(t, alice, name).Socket; s != "" {
				return s
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s has no local socket", name)
			}
		}
	}
	// The name the daemon uses, made first by uid 65534 this time.
	predictable := filepath.Dir(add("First"))
	alice.Close()
	os.RemoveAll(predictable)
	if err := os.Mkdir(predictable, 0o777); err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(predictable)
	os.Chmod(predictable, 0o777)
	os.Chown(predictable, 65534, 65534)

	again := tubetest.StartDaemon(t, state)
	alice = again
	sock := add("Second")
	if filepath.Dir(sock) == predictable {
		t.Fatalf("the socket went into %s, a directory another user owns", predictable)
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("hello"))
	c.(*net.UnixConn).CloseWrite()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if b, _ := io.ReadAll(c); !strings.HasPrefix(string(b), "activated ") {
		t.Fatalf("the service through the fresh directory: %q", b)
	}
}

// A daemon that stops takes its on-demand sockets with it: the
// directory of local sockets, and a running shared instance's private
// inner socket (the instance is stopped first). Without the wait for the
// instance, its directory outlived the daemon.
func TestStopLeavesNoSockets(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	script := tubetest.ActivatedScript(t, t.TempDir(), "service")
	alice, bob := contacts(t)
	tb := publishAndOpen(t, alice, bob, "Lingering", script, "")
	c, err := net.Dial("tcp", tb.Address)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "hello")
	for deadline := time.Now().Add(10 * time.Second); !statusOf(t, alice, "Lingering").Running; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the service never started: %+v", statusOf(t, alice, "Lingering"))
		}
	}
	sockets := func() []string { // the daemon's, not the relay's
		var names []string
		left, _ := os.ReadDir(tmp)
		for _, e := range left {
			if strings.HasPrefix(e.Name(), "tube-inner-") || strings.Contains(e.Name(), "-services-") {
				names = append(names, e.Name())
			}
		}
		return names
	}
	if len(sockets()) != 2 {
		t.Fatalf("under TMPDIR while the service runs: %v, want the socket directory and the inner one", sockets())
	}
	alice.C.Close()
	if err := alice.Close(); err != nil {
		t.Fatal(err)
	}
	if left := sockets(); len(left) != 0 {
		t.Fatalf("left behind in TMPDIR after the daemon stopped: %v", left)
	}
}
