package e2e

import (
	"context"
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
		"--turn-listen", "127.0.0.1:0", "--turn-user", "op:pw", "--allow-peer", "127.0.0.0/8"), nil)
	addr := strings.TrimSpace(relay.waitLine("turn: "))

	var idle []net.Conn
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	for range 100 {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
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
