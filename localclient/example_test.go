package localclient_test

import (
	"context"
	"fmt"
	"log"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/localclient"
)

// Connect to the daemon on its default socket and print each account's
// Telepathy status and last reason.
func ExampleClient_Status() {
	c := localclient.New("") // $TUBE_SOCKET or the default socket
	defer c.Close()
	st, err := c.Status(context.Background())
	if err != nil {
		log.Fatal(err) // e.g. "no daemon is listening on …" (NotAvailable)
	}
	for _, a := range st.Accounts {
		fmt.Printf("%s: %s (%s)\n", a.Name, a.Status, a.Reason)
	}
}

// Register a new account on a relay. The call returns after the first
// connection attempt; a taken name fails with RegistrationExists and
// leaves nothing behind.
func ExampleClient_AddAccount() {
	c := localclient.New("")
	defer c.Close()
	a, err := c.AddAccount(context.Background(), api.AddAccountRequest{
		Name:     "alice",
		Server:   "relay.example:4222",
		Register: true,
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(a.Name, a.Status, a.Fingerprint)
}

// Follow presence: register interest (so the daemon subscribes to the
// relay's presence notifications), then read the event stream. The
// interest ends when the client is closed or the program exits.
func ExampleClient_Events() {
	ctx := context.Background()
	c := localclient.New("")
	defer c.Close()
	if err := c.AddClientInterest(ctx, "alice", api.InterestPresence); err != nil {
		log.Fatal(err)
	}
	events, err := c.Events(ctx, "alice")
	if err != nil {
		log.Fatal(err)
	}
	defer events.Close()
	for ev := range events.C() {
		switch ev.Type {
		case api.EventPresenceChanged:
			fmt.Printf("%s online: %v\n", ev.Contact, *ev.Online)
		case api.EventStatusChanged:
			fmt.Printf("alice is %s (%s)\n", ev.Status, ev.Reason)
		}
	}
}

// Rooms are invite-only: alice creates one and invites bob, a contact of
// hers; bob (on his own daemon) lists his invitations and joins. Until
// he is invited, lab does not exist as far as he can tell.
func ExampleClient_InviteToRoom() {
	ctx := context.Background()
	alice := localclient.New("/run/user/1000/tube/daemon.sock")
	defer alice.Close()
	if _, err := alice.CreateRoom(ctx, "alice", "lab"); err != nil {
		log.Fatal(err)
	}
	if _, err := alice.InviteToRoom(ctx, "alice", "lab", "bob"); err != nil {
		log.Fatal(err) // PermissionDenied unless bob is alice's contact
	}

	bob := localclient.New("/run/user/1001/tube/daemon.sock")
	defer bob.Close()
	invs, err := bob.Invitations(ctx, "bob")
	if err != nil {
		log.Fatal(err)
	}
	for _, inv := range invs {
		fmt.Printf("%s invites you to %s\n", inv.By, inv.Room)
		if _, err := bob.JoinRoom(ctx, "bob", inv.Room); err != nil {
			log.Fatal(err)
		}
	}
}

// Handles stand for contacts and rooms within a connection; equal
// identifiers get equal handles for as long as the account exists.
func ExampleClient_RequestHandles() {
	ctx := context.Background()
	c := localclient.New("")
	defer c.Close()
	const contact = 1 // Handle_Type Contact
	hs, err := c.RequestHandles(ctx, "alice", contact, "bob", "carol")
	if err != nil {
		log.Fatal(err) // InvalidHandle names an unknown account
	}
	ids, _ := c.InspectHandles(ctx, "alice", contact, hs...)
	fmt.Println(hs, ids)
}

// Export a local VNC server and offer it to bob with a fresh password per
// offer, then print which contact each connection to the VNC server comes
// from (the source address the server sees → the contact).
func ExampleStreamTubeServer() {
	ctx := context.Background()
	c := localclient.New("")
	defer c.Close()
	srv, err := c.NewStreamTubeServer(ctx, "alice")
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()
	err = srv.ExportTCPGenerator(ctx, "vnc", "127.0.0.1:5900", func(r localclient.ParamsRequest) (map[string]api.Value, error) {
		return map[string]api.Value{"password": {Type: api.TypeString, Value: "one-time-for-" + r.Contact}}, nil
	})
	if err != nil {
		log.Fatal(err)
	}
	t, err := srv.Offer(ctx, "vnc", "bob", "")
	if err != nil {
		log.Fatal(err) // e.g. PermissionDenied: bob is not your contact
	}
	fmt.Println("offered tube", t.ID)
	for ev := range srv.Events() {
		if ev.Type == api.EventNewRemoteConnection {
			fmt.Printf("connection from %s is %s\n", ev.Source, ev.Contact)
		}
	}
}

// Accept every vnc tube alice offers, as a private Unix socket only this
// user may connect to, and print where each one can be reached.
func ExampleStreamTubeClient() {
	ctx := context.Background()
	c := localclient.New("")
	defer c.Close()
	cl, err := c.NewStreamTubeClient(ctx, "bob", localclient.StreamTubeClientOptions{
		Services: []string{"vnc"},
		From:     "alice",
		Accept:   api.AcceptRequest{Unix: "auto", Access: "credentials"},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer cl.Close()
	for ev := range cl.Events() {
		switch ev.Type {
		case api.EventTubeStateChanged:
			fmt.Printf("tube %s from %s: connect to %s\n", ev.TubeID, ev.Contact, ev.Address)
		case api.EventConnectionClosed:
			fmt.Printf("connection %d closed: %s\n", *ev.ConnectionID, ev.Error)
		}
	}
}
