// Package turntest runs coturn, the reference TURN server, for interop
// tests and benchmarks: a loopback server with RFC 6062 TCP relaying.
package turntest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/tubes-dev/tubes/internal/testenv"
)

// Coturn is a running coturn.
type Coturn struct {
	Addr  string // 127.0.0.1:PORT (UDP and TCP)
	Realm string
	// User/Password is the long-term credential (when started with one);
	// Secret the REST shared secret (when started with one).
	User, Password, Secret string
	cmd                    *exec.Cmd
	out                    *syncBuffer
}

// Options choose coturn's credentials: a static user, or the REST secret.
type Options struct {
	User, Password string
	Secret         string
	// Bind is the address to listen and relay on (default 127.0.0.1).
	Bind string
	// Command wraps the command line (e.g. ip netns exec); nil runs it here.
	Command func(ctx context.Context, name string, args ...string) *exec.Cmd
}

// StartCoturn starts turnserver for the test; it fails (under CI) or
// skips when coturn is not installed.
func StartCoturn(t testing.TB, o Options) *Coturn {
	t.Helper()
	bin := testenv.MustHaveCommand(t, "turnserver")
	if o.Bind == "" {
		o.Bind = "127.0.0.1"
	}
	if o.Command == nil {
		o.Command = exec.CommandContext
	}
	var lastErr error
	for range 5 {
		port, err := freePort(o.Bind)
		if err != nil {
			t.Fatal(err)
		}
		c := &Coturn{Addr: net.JoinHostPort(o.Bind, strconv.Itoa(port)), Realm: "example.test",
			User: o.User, Password: o.Password, Secret: o.Secret, out: &syncBuffer{}}
		args := CoturnArgs(o.Bind, port, c.Realm, o)
		ctx, cancel := context.WithCancel(context.Background())
		cmd := o.Command(ctx, bin, args...)
		cmd.Stdout, cmd.Stderr = c.out, c.out
		if err := cmd.Start(); err != nil {
			cancel()
			t.Fatalf("start coturn: %v", err)
		}
		c.cmd = cmd
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		t.Cleanup(func() {
			cancel()
			<-exited
			if t.Failed() {
				t.Logf("coturn output:\n%s", c.out.String())
			}
		})
		if err := c.waitReady(o, exited); err != nil {
			lastErr = err
			cancel()
			<-exited
			continue
		}
		return c
	}
	t.Fatalf("coturn did not start: %v", lastErr)
	return nil
}

// CoturnArgs is turnserver's command line for a loopback-friendly server
// on bind:port with the credentials of o (the benchmark uses it too).
func CoturnArgs(bind string, port int, realm string, o Options) []string {
	args := []string{"-n", "--listening-ip=" + bind, "--relay-ip=" + bind, "--listening-port=" + strconv.Itoa(port),
		"--realm=" + realm, "--fingerprint", "--allow-loopback-peers", "--no-cli", "--no-tls", "--no-dtls",
		"--no-rfc5780", "--no-multicast-peers", "--log-file=stdout", "--simple-log",
		"--pidfile=/dev/null", "--min-port=20000", "--max-port=60000"}
	if o.Secret != "" {
		return append(args, "--use-auth-secret", "--static-auth-secret="+o.Secret)
	}
	return append(args, "--lt-cred-mech", "--user="+o.User+":"+o.Password)
}

func (c *Coturn) waitReady(o Options, exited chan struct{}) error {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return fmt.Errorf("coturn exited: %s", c.out.String())
		default:
		}
		if bytes.Contains(c.out.Bytes(), []byte("Total General servers")) || bytes.Contains(c.out.Bytes(), []byte("IPv4. TCP listener opened on")) {
			if o.Bind == "127.0.0.1" {
				if conn, err := net.DialTimeout("tcp", c.Addr, time.Second); err == nil {
					conn.Close()
					return nil
				}
			} else {
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("coturn not ready after 10 s: %s", c.out.String())
}

// Output is what coturn logged so far.
func (c *Coturn) Output() string { return c.out.String() }

func freePort(host string) (int, error) {
	for range 20 {
		ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return 0, err
		}
		port := ln.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp", ln.Addr().String())
		ln.Close()
		if err == nil {
			pc.Close()
			return port, nil
		}
	}
	return 0, fmt.Errorf("no free port with both TCP and UDP on %s", host)
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]byte(nil), s.b.Bytes()...)
}

func (s *syncBuffer) String() string { return string(s.Bytes()) }
