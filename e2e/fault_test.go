package e2e

// Faults with fixed lengths, and what the daemon does after them.

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tubes-dev/tubes/api"
	tubed "github.com/tubes-dev/tubes/daemon"
	"github.com/tubes-dev/tubes/internal/tubetest"
	"github.com/tubes-dev/tubes/localclient"
)

// A relay down for a fixed outage (8 s) is found again soon after it
// returns: in an outage's first two minutes the daemon's back-off is at
// most daemon.DefaultEarlyBackoff (jittered, not doubled past it), so it
// is connected within that plus a second of the relay answering.
func TestReconnectWithinCap(t *testing.T) {
	const outage = 8 * time.Second
	data := t.TempDir()
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	args := []string{"relay", "--turn-listen", "off", "--listen", listen, "--data", data}
	relay := start(t, nil, args...)
	url := strings.TrimSpace(relay.waitLine("rendezvous: "))
	_, alice := daemon(t)
	mustRun(t, alice, "account", "add", "alice", "--server", url, "--register")
	c := localclient.New(strings.TrimPrefix(alice[0], "TUBE_SOCKET="))
	defer c.Close()
	ev := tubetest.Record(t, c, "alice")

	relay.kill()
	ev.MustWait("the loss", func(e api.Event) bool { return e.Type == api.EventStatusChanged && e.Status == "Disconnected" })
	time.Sleep(outage) // the fault: the relay stays down this long
	n := len(ev.All())
	relay = start(t, nil, args...)
	relay.waitLine("rendezvous: ")
	back := time.Now()
	ev.MustWait("the reconnection", func(e api.Event) bool { return e.Type == api.EventStatusChanged && e.Status == "Connected" })
	took := time.Since(back)
	t.Logf("connected %s after the relay returned from an outage of %s (%d events during it)", took.Round(time.Millisecond), outage, len(ev.All())-n)
	if limit := tubed.DefaultEarlyBackoff + time.Second; took > limit {
		t.Errorf("connected %s after the relay returned, over the cap plus a second (%s)", took, limit)
	}
}
