package e2e

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/tubes-dev/tubes/internal/testenv"
	"github.com/tubes-dev/tubes/turnclient"
)

// A burst of idle connects that exhausts the relay's descriptors does not
// kill TURN over TCP: pion's accept loop returned on the first EMFILE, and
// the relay never accepted a TCP client again until restarted. The relay
// runs with 64 descriptors (prlimit) so that 100 idle connections exhaust
// it; once they close, an allocation over TCP works, with no restart.
func TestTURNSurvivesDescriptorExhaustion(t *testing.T) {
	prlimit := testenv.MustHaveCommand(t, "prlimit")
	relay := startCmd(t, exec.Command(prlimit, "--nofile=64:64", tubeBin, "relay", "--turn-only",
		"--turn-listen", "127.0.0.1:0", "--turn-user", "op:pw", "--allow-peer", "127.0.0.0/8",
		"--turn-unauth-total", "4096"), nil) // over the descriptors: by default it stays under a quarter of them
	addr := strings.TrimSpace(relay.waitLine("turn: "))

	var idle []net.Conn
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	// From four sources of their own, each under the per-source cap of
	// unauthenticated connections: together they are over the 64
	// descriptors.
	for i := range 100 {
		c, err := dialFrom(fmt.Sprintf("127.0.0.%d", 2+i%4), addr)
		if err != nil {
			break // the backlog is full too
		}
		idle = append(idle, c)
	}
	relay.waitContains("accept failed; trying again") // EMFILE reached, and ridden out
	for _, c := range idle {
		c.Close()
	}
	idle = nil

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := turnclient.Allocate(ctx, turnclient.Config{Server: addr, Username: "op", Password: "pw"})
	if err != nil {
		t.Fatalf("allocating over TCP after the burst: %v", err)
	}
	c.Close()
}

// One source holding idle connections to the TURN port is cut off at its
// cap of unauthenticated connections (the rest are closed at once, not
// left to their authentication deadline); a client from another address
// allocates meanwhile; once the attacker leaves, its address is served
// again, with no restart.
func TestTURNUnauthenticatedPerSource(t *testing.T) {
	const perSource, attack = 8, 40
	httpAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	relay := start(t, nil, "relay", "--turn-only", "--turn-listen", "127.0.0.1:0", "--turn-user", "op:pw",
		"--allow-peer", "127.0.0.0/8", "--http", httpAddr, "--turn-unauth-per-source", fmt.Sprint(perSource),
		"--turn-auth-deadline", "10m") // only the cap can close them during the test
	addr := strings.TrimSpace(relay.waitLine("turn: "))
	relay.waitLine("metrics: ")

	var idle []net.Conn
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	for i := range attack {
		c, err := dialFrom("127.0.0.2", addr)
		if err != nil {
			if i < perSource {
				t.Fatal(err)
			}
			continue // reset over the cap before the dial returned
		}
		idle = append(idle, c)
	}
	waitMetric(t, httpAddr, "tubes_turn_unauthenticated_refused_total", equal(attack-perSource))
	if v, _ := metric(t, httpAddr, "tubes_turn_unauthenticated_connections"); v != perSource {
		t.Fatalf("%v unauthenticated connections held, want the cap of %d", v, perSource)
	}
	// The attacker sees its connection over the cap end.
	last := idle[len(idle)-1]
	last.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := last.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("the connection over the cap is still open: %v", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	allocate := func(who string) {
		t.Helper()
		c, err := turnclient.Allocate(ctx, turnclient.Config{Server: addr, Username: "op", Password: "pw"})
		if err != nil {
			t.Fatalf("%s: allocating over TCP: %v", who, err)
		}
		c.Close()
	}
	allocate("another address, during the attack")

	for _, c := range idle {
		c.Close()
	}
	idle = nil
	waitMetric(t, httpAddr, "tubes_turn_unauthenticated_connections", equal(0))
	c, err := dialFrom("127.0.0.2", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitMetric(t, httpAddr, "tubes_turn_unauthenticated_connections", equal(1))
	if v, _ := metric(t, httpAddr, "tubes_turn_unauthenticated_refused_total"); v != attack-perSource {
		t.Fatalf("the attacker's address was refused after it left (%v refusals)", v)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// By default the relay keeps unauthenticated connections to a quarter of
// its descriptors, so that idle connects from many sources, each under
// its own cap, cannot use them all up: the relay keeps accepting (and
// resetting) and its metrics answer throughout; and at that total a
// legitimate client's connection takes the place of an attacker's.
func TestTURNUnauthenticatedWithinDescriptors(t *testing.T) {
	prlimit := testenv.MustHaveCommand(t, "prlimit")
	httpAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	relay := startCmd(t, exec.Command(prlimit, "--nofile=128:128", tubeBin, "relay", "--turn-only",
		"--turn-listen", "127.0.0.1:0", "--turn-user", "op:pw", "--allow-peer", "127.0.0.0/8", "--http", httpAddr), nil)
	addr := strings.TrimSpace(relay.waitLine("turn: "))
	relay.waitLine("metrics: ")
	var idle []net.Conn
	defer func() { closeAll(idle) }()
	for i := range 8 * 32 { // eight sources at their cap of 32
		if c, err := dialFrom(fmt.Sprintf("127.0.0.%d", 2+i%8), addr); err == nil {
			idle = append(idle, c)
		}
	}
	waitMetric(t, httpAddr, "tubes_turn_unauthenticated_refused_total", func(v float64) bool { return v > 0 })
	if v, _ := metric(t, httpAddr, "tubes_turn_unauthenticated_connections"); v > 32 {
		t.Fatalf("%v unauthenticated connections held with 128 descriptors, over a quarter of them", v)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := turnclient.Allocate(ctx, turnclient.Config{Server: addr, Username: "op", Password: "pw"})
	if err != nil {
		t.Fatalf("allocating during the attack: %v", err)
	}
	c.Close()
	if v, _ := metric(t, httpAddr, "tubes_turn_unauthenticated_evicted_total"); v < 1 {
		t.Errorf("the legitimate client got in with %v evictions: the total was not reached", v)
	}
	if v, _ := metric(t, httpAddr, `tubes_accept_errors_total{listener="turn-tcp"}`); v != 0 {
		t.Fatalf("the relay ran out of descriptors (%v accept errors)", v)
	}
}
