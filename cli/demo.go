package cli

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/internal/node"
	"github.com/tubes-dev/tubes/internal/serve"
	"github.com/tubes-dev/tubes/localclient"
	"github.com/tubes-dev/tubes/rendezvous"
	"github.com/tubes-dev/tubes/tperr"
)

func demoCmd(e *env) *cobra.Command {
	var keep bool
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run a relay and two daemons (alice, bob) on loopback and show them working together",
		Long: `Starts, in this process and on loopback only, a relay and two daemons for
alice and bob; registers both, makes them contacts, shows presence, a room
and a message delivered through the relay, then shares a service: alice
exports it, offers it to bob in a tube, bob accepts, and data moves through
the tube with every byte checked. Exits 0 only
if every check held. With --keep, everything stays up and the commands to
try next are printed.`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runDemo(cmd.Context(), e, keep)
		},
	}
	cmd.Flags().BoolVar(&keep, "keep", false, "leave the relay and daemons running and print commands to try")
	return cmd
}

// demo prints numbered steps with the time since the start.
type demo struct {
	e        *env
	start    time.Time
	step     int
	pinShown bool
}

func (d *demo) say(format string, a ...any) {
	d.step++
	fmt.Fprintf(d.e.stdout, "[%7.1f ms] %2d. %s\n", float64(time.Since(d.start).Microseconds())/1000, d.step, fmt.Sprintf(format, a...))
}

func (d *demo) note(format string, a ...any) {
	fmt.Fprintf(d.e.stdout, "              %s\n", fmt.Sprintf(format, a...))
}

func runDemo(ctx context.Context, e *env, keep bool) (err error) {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	dir, err := os.MkdirTemp("", "tube-demo-")
	if err != nil {
		return err
	}
	if !keep {
		defer os.RemoveAll(dir)
	}
	d := &demo{e: e, start: time.Now()}
	fmt.Fprintln(e.stdout, "Tubes demo: a relay and two people, alice and bob, on this machine (loopback only).")
	quiet := slog.New(slog.DiscardHandler)

	// Everything is on loopback, so the TURN server's peer filter lets
	// loopback through (by default it refuses every non-public address).
	turn, err := node.StartTURN(node.TURNConfig{Listen: "127.0.0.1:0", Secret: randomSecret(),
		AllowPeers: []string{"127.0.0.0/8"}, Logger: quiet})
	if err != nil {
		return fmt.Errorf("demo: start the TURN server: %w", err)
	}
	defer turn.Close()
	relay, err := node.StartRelay(ctx, node.RelayConfig{Listen: "127.0.0.1:0", Logger: quiet, TURN: node.TURNIssuer(turn)})
	if err != nil {
		return fmt.Errorf("demo: start relay: %w", err)
	}
	defer relay.Close()
	node.LinkTURN(relay, turn)
	d.say("relay started: rendezvous on %s (embedded NATS, state in memory), TURN on %s", relay.URL(), turn.Addr())

	people := map[string]*localclient.Client{}
	for _, name := range []string{"alice", "bob"} {
		n, err := node.StartDaemon(ctx, node.DaemonConfig{StateDir: filepath.Join(dir, name), Logger: quiet, PeerListen: "127.0.0.1:0"})
		if err != nil {
			return fmt.Errorf("demo: start %s's daemon: %w", name, err)
		}
		defer n.Close()
		c := n.Client()
		defer c.Close()
		people[name] = c
		d.say("%s's daemon started; local API on %s", name, n.Socket)
	}
	alice, bob := people["alice"], people["bob"]

	// Watch alice's events for bob's presence and bob's for the message.
	aliceEv, err := alice.Events(ctx, "alice")
	if err != nil {
		return err
	}
	defer aliceEv.Close()
	bobEv, err := bob.Events(ctx, "bob")
	if err != nil {
		return err
	}
	defer bobEv.Close()

	for _, name := range []string{"alice", "bob"} {
		a, err := people[name].AddAccount(ctx, api.AddAccountRequest{Name: name, Server: relay.URL(), Register: true})
		if err != nil {
			return fmt.Errorf("demo: register %s: %w", name, err)
		}
		if a.Status != "Connected" {
			return fmt.Errorf("demo: %s is %s after registering: %s", name, a.Status, a.Message)
		}
		d.say("%s registered and connected (safety number %s)", name, a.SafetyNumber)
	}
	if err := alice.AddClientInterest(ctx, "alice", api.InterestPresence); err != nil {
		return err
	}
	if _, err := alice.AddContact(ctx, "alice", "bob"); err != nil {
		return err
	}
	d.say("alice asked bob to be her contact")
	c, err := bob.ApproveContact(ctx, "bob", "alice")
	if err != nil {
		return err
	}
	if c.State != string(rendezvous.ContactMutual) {
		return fmt.Errorf("demo: after approval bob sees alice as %q", c.State)
	}
	d.say("bob approved: they are contacts on both sides")
	if _, err := waitEvent(ctx, aliceEv, func(ev api.Event) bool {
		return ev.Type == api.EventPresenceChanged && ev.Contact == "bob" && ev.Online != nil && *ev.Online
	}); err != nil {
		return fmt.Errorf("demo: alice never saw bob online: %w", err)
	}
	d.say("alice sees bob online (presence comes from bob's live connection, not from bob)")

	if _, err := alice.CreateRoom(ctx, "alice", "lab"); err != nil {
		return err
	}
	if _, err := bob.JoinRoom(ctx, "bob", "lab"); !tperr.Has(err, tperr.PermissionDenied) {
		return fmt.Errorf("demo: bob joined the invite-only room lab uninvited (%v)", err)
	}
	if _, err := alice.InviteToRoom(ctx, "alice", "lab", "bob"); err != nil {
		return err
	}
	invs, err := bob.Invitations(ctx, "bob")
	if err != nil {
		return err
	}
	if len(invs) != 1 || invs[0].Room != "lab" || invs[0].By != "alice" {
		return fmt.Errorf("demo: bob's invitations are %+v, want alice's to lab", invs)
	}
	d.say("alice created the invite-only room \"lab\": bob could not join it until she invited him")
	if _, err := bob.JoinRoom(ctx, "bob", "lab"); err != nil {
		return err
	}
	ms, err := bob.RoomMembers(ctx, "bob", "lab")
	if err != nil {
		return err
	}
	var names []string
	for _, m := range ms {
		n := m.Name
		if m.Owner {
			n += " (owner)"
		}
		names = append(names, n)
	}
	if len(ms) != 2 {
		return fmt.Errorf("demo: room lab has members %v, want alice and bob", names)
	}
	d.say("bob accepted the invitation and joined; members: %s", strings.Join(names, ", "))

	body := []byte("hello bob, this came through the relay")
	if _, err := alice.Send(ctx, "alice", api.SendRequest{To: "bob", Kind: "demo.hello", Body: body}); err != nil {
		return err
	}
	ev, err := waitEvent(ctx, bobEv, func(ev api.Event) bool { return ev.Type == api.EventMessageReceived && ev.Kind == "demo.hello" })
	if err != nil {
		return fmt.Errorf("demo: bob never got alice's message: %w", err)
	}
	if ev.From != "alice" || !bytes.Equal(ev.Body, body) {
		return fmt.Errorf("demo: bob got %q from %q, want alice's message", ev.Body, ev.From)
	}
	d.say("alice sent bob a message; bob received it from \"alice\" (sender set by the relay), bytes checked")

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer l.Close()
	go serve.Loop(l, serve.HashBack)
	if _, err := alice.Export(ctx, "alice", api.Export{Service: "x-sha256", TCP: l.Addr().String(),
		Parameters: map[string]api.Value{"greeting": {Type: api.TypeString, Value: "hi bob"}}}); err != nil {
		return err
	}
	d.say("alice exported her SHA-256 service (%s) as \"x-sha256\"", l.Addr())
	if err := demoTube(ctx, d, alice, bob, aliceEv, bobEv, "direct", demoSize); err != nil {
		return err
	}
	d.note("now as if alice and bob were behind NATs: the tube is forced through the relay")
	if err := demoTube(ctx, d, alice, bob, aliceEv, bobEv, "relay", demoSize/2); err != nil {
		return err
	}
	for deadline := time.Now().Add(5 * time.Second); turn.Allocations() != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			return fmt.Errorf("demo: alice's TURN allocation outlived her tubes")
		}
	}
	d.say("alice's TURN allocation ended with her last tube")

	fmt.Fprintln(e.stdout, "All checks held.")
	if !keep {
		return nil
	}
	fmt.Fprintf(e.stdout, "\nEverything keeps running (Ctrl-C to stop). Try:\n")
	for _, name := range []string{"alice", "bob"} {
		fmt.Fprintf(e.stdout, "  TUBE_SOCKET=%s tube status\n", people[name].Socket())
	}
	fmt.Fprintf(e.stdout, "  TUBE_SOCKET=%s tube contact list\n", alice.Socket())
	fmt.Fprintf(e.stdout, "  TUBE_SOCKET=%s tube status --watch\n", bob.Socket())
	<-ctx.Done()
	return nil
}

// demoSize is how much data the demo moves through the tube.
const demoSize = 64 << 20

// randomSecret is a fresh TURN REST secret.
func randomSecret() string {
	b := make([]byte, 16)
	rand.Read(b)
	return fmt.Sprintf("%x", b)
}

// demoTube has alice offer her exported service to bob on path, bob
// accept it, and moves size bytes through the tube with every byte
// checked.
func demoTube(ctx context.Context, d *demo, alice, bob *localclient.Client, aliceEv, bobEv *localclient.Stream, path string, size int) error {
	t, err := alice.Offer(ctx, "alice", api.OfferRequest{Service: "x-sha256", To: "bob", Path: path})
	if err != nil {
		return err
	}
	d.say("alice offered it to bob (path %s): tube %s, %s", path, t.ID, t.State)
	if _, err := waitEvent(ctx, bobEv, func(ev api.Event) bool { return ev.Type == api.EventNewTube && ev.TubeID == t.ID }); err != nil {
		return fmt.Errorf("demo: bob never got the offer: %w", err)
	}
	in, err := bob.Tube(ctx, t.ID)
	if err != nil {
		return err
	}
	if in.Parameters["greeting"].Value != "hi bob" {
		return fmt.Errorf("demo: bob got parameters %v", in.Parameters)
	}
	d.say("bob sees the offer (%s) with its parameters, sealed to his key on the way", in.State)
	if err := d.checkPinned(ctx, alice, bob); err != nil {
		return err
	}
	acc, err := bob.Accept(ctx, t.ID, api.AcceptRequest{})
	if err != nil {
		return fmt.Errorf("demo: bob could not accept: %w", err)
	}
	if acc.Path != path {
		return fmt.Errorf("demo: the tube went %s, not %s", acc.Path, path)
	}
	how := "straight to alice's daemon"
	if path == "relay" {
		how = "through alice's TURN TCP allocation on the relay"
	}
	d.say("bob accepted: his local socket is %s, path %s, %s (TLS 1.3, both account keys pinned)", acc.Address, acc.Path, how)

	data := make([]byte, size)
	rand.Read(data)
	began := time.Now()
	c, err := net.Dial("tcp", acc.Address)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	if _, err := c.Write(data); err != nil {
		return fmt.Errorf("demo: sending through the tube: %w", err)
	}
	c.(*net.TCPConn).CloseWrite()
	reply, err := io.ReadAll(c)
	if err != nil {
		return fmt.Errorf("demo: reading the service's answer: %w", err)
	}
	took := time.Since(began)
	if got := string(reply); got != serve.HashLine(data) {
		return fmt.Errorf("demo: the service answered %q, bob sent %q", strings.TrimSpace(got), strings.TrimSpace(serve.HashLine(data)))
	}
	d.say("bob sent %d MiB through the tube in %s (%.0f MiB/s); alice's service hashed exactly what bob sent", size>>20, took.Round(time.Millisecond), float64(size)/(1<<20)/took.Seconds())
	ev, err := waitEvent(ctx, aliceEv, func(ev api.Event) bool { return ev.Type == api.EventNewRemoteConnection && ev.TubeID == t.ID })
	if err != nil {
		return fmt.Errorf("demo: alice never saw the connection: %w", err)
	}
	if ev.Contact != "bob" {
		return fmt.Errorf("demo: alice's service connection %s mapped to %q", ev.Source, ev.Contact)
	}
	d.say("alice's daemon told her service the connection from %s is bob's", ev.Source)
	if err := alice.CloseTube(ctx, t.ID); err != nil {
		return err
	}
	if _, err := waitEvent(ctx, bobEv, func(ev api.Event) bool { return ev.Type == api.EventTubeClosed && ev.TubeID == t.ID }); err != nil {
		return fmt.Errorf("demo: bob never saw the tube close: %w", err)
	}
	d.say("alice closed the tube; bob's side closed too and his socket is gone")
	return nil
}

// waitEvent waits up to 10 s for an event matching f.
func waitEvent(ctx context.Context, s *localclient.Stream, f func(api.Event) bool) (api.Event, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		select {
		case ev, ok := <-s.C():
			if !ok {
				return api.Event{}, fmt.Errorf("event stream ended: %v", s.Err())
			}
			if f(ev) {
				return ev, nil
			}
		case <-ctx.Done():
			return api.Event{}, ctx.Err()
		}
	}
}

// checkPinned shows, once, that bob's daemon pinned the key alice's offer
// was signed with, and that it is alice's own: the number the two would
// compare to be sure the relay swapped nothing.
func (d *demo) checkPinned(ctx context.Context, alice, bob *localclient.Client) error {
	if d.pinShown {
		return nil
	}
	a, err := alice.Account(ctx, "alice")
	if err != nil {
		return err
	}
	c, err := bob.Contact(ctx, "bob", "alice")
	if err != nil {
		return err
	}
	if c.Pinned == nil || c.Pinned.SafetyNumber != a.SafetyNumber {
		return fmt.Errorf("demo: bob pinned %+v for alice, whose own safety number is %s", c.Pinned, a.SafetyNumber)
	}
	d.pinShown = true
	d.say("bob's daemon pinned the key alice's offer was signed with: safety number %s, the one alice's own account shows (tube contact verify alice NUMBER, once they compared)", c.Pinned.SafetyNumber)
	return nil
}
