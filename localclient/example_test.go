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
