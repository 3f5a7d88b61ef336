package turnclient_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/tubes-dev/tubes/relay"
	"github.com/tubes-dev/tubes/turnclient"
)

// A client allocates a relayed TCP address, permits a peer's IP, and
// accepts the peer's connection to the relayed address: a data
// connection that carries the peer's bytes.
func Example() {
	// A TURN server on loopback (its peer filter must allow loopback).
	srv, err := relay.Start(relay.Config{Listen: "127.0.0.1:0", Users: map[string]string{"alice": "secret"},
		AllowPeers: []string{"127.0.0.0/8"}})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := turnclient.Allocate(ctx, turnclient.Config{Server: srv.Addr(), Username: "alice", Password: "secret"})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close() // releases the allocation and closes its data connections
	if err := c.Permit(ctx, netip.MustParseAddr("127.0.0.1")); err != nil {
		fmt.Println(err)
		return
	}

	// The peer connects to the relayed address, as if to the client.
	go func() {
		p, err := net.Dial("tcp", c.RelayedAddr().String())
		if err != nil {
			return
		}
		defer p.Close()
		io.WriteString(p, "hello through the relay")
	}()

	d, err := c.Accept(ctx) // ConnectionAttempt, then ConnectionBind
	if err != nil {
		fmt.Println(err)
		return
	}
	defer d.Close()
	b, _ := io.ReadAll(d)
	fmt.Printf("%s (peer on loopback: %v)\n", b, d.Peer.Addr().IsLoopback())
	// Output: hello through the relay (peer on loopback: true)
}
