// Package tubetest starts relays and daemons for tests, on loopback, with
// fast reconnects, and records daemon events for assertions.
package tubetest

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/internal/node"
	"github.com/tubes-dev/tubes/internal/serve"
	"github.com/tubes-dev/tubes/localclient"
	"github.com/tubes-dev/tubes/relay"
	"github.com/tubes-dev/tubes/rendezvous"
)

// Logger logs to stderr when TUBE_TEST_LOG is set, else nowhere.
func Logger() *slog.Logger {
	if os.Getenv("TUBE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// Relay starts a relay on a free loopback port (unless cfg.Listen is set),
// closed when the test ends.
func Relay(t testing.TB, cfg rendezvous.Config) *rendezvous.Server {
	t.Helper()
	if cfg.Listen == "" && cfg.NATS == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	if cfg.Logger == nil {
		cfg.Logger = Logger()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := node.StartRelay(ctx, cfg)
	if err != nil {
		t.Fatalf("start relay: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TURN starts a TURN server on a free loopback port that allows loopback
// peers (everything here is on loopback), closed when the test ends.
func TURN(t testing.TB) *relay.Server {
	t.Helper()
	s, err := node.StartTURN(node.TURNConfig{Listen: "127.0.0.1:0", Secret: "test-secret",
		AllowPeers: []string{"127.0.0.0/8"}, Logger: Logger()})
	if err != nil {
		t.Fatalf("start TURN server: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// RelayWithTURN starts a relay whose rendezvous hands out credentials of
// its own TURN server.
func RelayWithTURN(t testing.TB, cfg rendezvous.Config) (*rendezvous.Server, *relay.Server) {
	t.Helper()
	ts := TURN(t)
	cfg.TURN = node.TURNIssuer(ts)
	rv := Relay(t, cfg)
	node.LinkTURN(rv, ts)
	return rv, ts
}

// Daemon is a daemon under test with a client of its local API.
type Daemon struct {
	*node.Daemon
	C *localclient.Client
}

// StartDaemon starts a daemon with its state in dir (a new temporary
// directory when empty), reconnecting quickly, accepting peer links on
// loopback.
func StartDaemon(t testing.TB, dir string) *Daemon {
	t.Helper()
	return StartDaemonConfig(t, node.DaemonConfig{StateDir: dir})
}

// StartDaemonConfig is StartDaemon with more settings; empty fields get
// the test defaults.
func StartDaemonConfig(t testing.TB, cfg node.DaemonConfig) *Daemon {
	t.Helper()
	if cfg.StateDir == "" {
		cfg.StateDir = t.TempDir()
	}
	if cfg.Socket == "" {
		cfg.Socket = filepath.Join(cfg.StateDir, "daemon.sock")
	}
	if cfg.Logger == nil {
		cfg.Logger = Logger()
	}
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff, cfg.MaxBackoff = 50*time.Millisecond, 300*time.Millisecond
	}
	if cfg.PeerListen == "" {
		cfg.PeerListen = "127.0.0.1:0"
	}
	if cfg.SystemServices == "" {
		cfg.SystemServices = filepath.Join(cfg.StateDir, "system-services.json")
	}
	n, err := node.StartDaemon(context.Background(), cfg)
	if err != nil {
		t.Fatalf("start daemon: %v", err)
	}
	d := &Daemon{Daemon: n, C: n.Client()}
	t.Cleanup(func() {
		d.C.Close()
		n.Close()
	})
	return d
}

// LogBuffer collects log lines for assertions (and copies them to
// stderr when TUBE_TEST_LOG is set).
type LogBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

// Write implements io.Writer.
func (b *LogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if os.Getenv("TUBE_TEST_LOG") != "" {
		os.Stderr.Write(p)
	}
	return b.buf.Write(p)
}

// String returns everything logged so far.
func (b *LogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Logger returns a debug-level text logger writing to b.
func (b *LogBuffer) Logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// Register adds and registers an account on relay, and checks it connects.
func (d *Daemon) Register(t testing.TB, name string, relay *rendezvous.Server) api.Account {
	t.Helper()
	a, err := d.C.AddAccount(context.Background(), api.AddAccountRequest{Name: name, Server: relay.URL(), Register: true})
	if err != nil {
		t.Fatalf("register %s: %v", name, err)
	}
	if a.Status != "Connected" {
		t.Fatalf("%s after registering: %s (%s) %s", name, a.Status, a.Reason, a.Message)
	}
	return a
}

// Befriend makes two daemons' accounts mutual contacts.
func Befriend(t testing.TB, a *Daemon, an string, b *Daemon, bn string) {
	t.Helper()
	ctx := context.Background()
	if _, err := a.C.AddContact(ctx, an, bn); err != nil {
		t.Fatalf("%s adds %s: %v", an, bn, err)
	}
	if c, err := b.C.ApproveContact(ctx, bn, an); err != nil || c.State != "contact" {
		t.Fatalf("%s approves %s: %+v %v", bn, an, c, err)
	}
}

// RelayConn connects to a relay whose data directory is dataDir with the
// relay's own service credentials: what its operator (or whoever takes
// it over) can do, such as publish into any account's inbox.
func RelayConn(t testing.TB, dataDir string) *nats.Conn {
	t.Helper()
	b, err := os.ReadFile(rendezvous.AdminFile(dataDir))
	if err != nil {
		t.Fatal(err)
	}
	var info rendezvous.AdminInfo
	if err := json.Unmarshal(b, &info); err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(info.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// RelayState opens the state bucket of that relay, as RelayConn does:
// the operator can write any record in it.
func RelayState(t testing.TB, dataDir string) jetstream.KeyValue {
	t.Helper()
	js, err := jetstream.New(RelayConn(t, dataDir))
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(context.Background(), "tubes")
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

// InviteAndJoin has owner (or an admin) invite member, a contact of
// theirs, into room, and member join it.
func InviteAndJoin(t testing.TB, owner *Daemon, on, room string, member *Daemon, mn string) {
	t.Helper()
	ctx := context.Background()
	if _, err := owner.C.InviteToRoom(ctx, on, room, mn); err != nil {
		t.Fatalf("%s invites %s to %s: %v", on, mn, room, err)
	}
	if _, err := member.C.JoinRoom(ctx, mn, room); err != nil {
		t.Fatalf("%s joins %s: %v", mn, room, err)
	}
}

// Events records a daemon's event stream.
type Events struct {
	t      testing.TB
	stream *localclient.Stream
	mu     sync.Mutex
	events []api.Event
	notify chan struct{}
}

// Record opens an event stream on d (of one account, or all if "").
func Record(t testing.TB, c *localclient.Client, account string) *Events {
	t.Helper()
	s, err := c.Events(context.Background(), account)
	if err != nil {
		t.Fatalf("open event stream: %v", err)
	}
	e := &Events{t: t, stream: s, notify: make(chan struct{}, 1)}
	go func() {
		for ev := range s.C() {
			e.mu.Lock()
			e.events = append(e.events, ev)
			e.mu.Unlock()
			select {
			case e.notify <- struct{}{}:
			default:
			}
		}
	}()
	t.Cleanup(func() { s.Close() })
	return e
}

// ID is the stream's client id.
func (e *Events) ID() string { return e.stream.ID }

// Close ends the stream (the client "goes away").
func (e *Events) Close() { e.stream.Close() }

// All returns the events so far.
func (e *Events) All() []api.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]api.Event(nil), e.events...)
}

// Wait waits up to timeout for an event matching f and returns it.
func (e *Events) Wait(f func(api.Event) bool, timeout time.Duration) (api.Event, bool) {
	return e.WaitFrom(0, f, timeout)
}

// WaitFrom is Wait over the events from the n-th on (len(All()) taken
// before a fault waits for what comes after it).
func (e *Events) WaitFrom(n int, f func(api.Event) bool, timeout time.Duration) (api.Event, bool) {
	deadline := time.After(timeout)
	seen := n
	for {
		evs := e.All()
		for _, ev := range evs[seen:] {
			if f(ev) {
				return ev, true
			}
		}
		seen = len(evs)
		select {
		case <-e.notify:
		case <-deadline:
			return api.Event{}, false
		}
	}
}

// MustWait is Wait that fails the test.
func (e *Events) MustWait(what string, f func(api.Event) bool) api.Event {
	e.t.Helper()
	ev, ok := e.Wait(f, 10*time.Second)
	if !ok {
		e.t.Fatalf("no event: %s; got:\n%s", what, strings.Join(Signals(e.All()), "\n"))
	}
	return ev
}

// Signals renders the connection signals (StatusChanged, ConnectionError,
// SelfHandleChanged) as strings, in order:
//
//	StatusChanged Connecting Requested
//	ConnectionError im.telepathy1.Error.ConnectionLost
func Signals(evs []api.Event) []string {
	var out []string
	for _, ev := range evs {
		switch ev.Type {
		case api.EventStatusChanged:
			out = append(out, fmt.Sprintf("%s %s %s", ev.Type, ev.Status, ev.Reason))
		case api.EventConnectionError:
			out = append(out, fmt.Sprintf("%s %s", ev.Type, ev.Error))
		case api.EventSelfHandleChanged:
			out = append(out, fmt.Sprintf("%s %d", ev.Type, ev.SelfHandle))
		}
	}
	return out
}

// IsStatus matches a StatusChanged event.
func IsStatus(account, status, reason string) func(api.Event) bool {
	return func(ev api.Event) bool {
		return ev.Type == api.EventStatusChanged && ev.Account == account && ev.Status == status && (reason == "" || ev.Reason == reason)
	}
}

// StartClient returns a new local-API client of d (a separate client in
// the spec's sense), closed when the test ends.
func StartClient(t testing.TB, d *Daemon) *localclient.Client {
	c := d.Client()
	t.Cleanup(func() { c.Close() })
	return c
}

// ServeTCP runs handle on each connection to a new loopback listener,
// closing the connection after; the listener closes when the test ends.
func ServeTCP(t testing.TB, handle func(net.Conn)) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go serve.Loop(l, handle)
	return l
}
