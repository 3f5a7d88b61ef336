package daemon

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/tubes-dev/tubes/connection"
	"github.com/tubes-dev/tubes/identity"
	"github.com/tubes-dev/tubes/tperr"
)

// waitStatus (WaitDisconnected) wakes on the status change itself, and
// when the status does not come it says so with Timeout: it used to
// return the still-connected account with no error.
func TestWaitStatus(t *testing.T) {
	key, err := identity.Generate()
	if err != nil {
		t.Fatal(err)
	}
	a := &account{name: "alice", key: key, status: connection.Connected, changed: make(chan struct{})}
	got, err := a.waitStatus(context.Background(), connection.Disconnected, 50*time.Millisecond)
	if !tperr.Has(err, tperr.Timeout) || got.Status != "Connected" {
		t.Fatalf("waiting for a status that does not come: %+v, %v; want Connected and Timeout", got, err)
	}
	changed := make(chan struct{})
	go func() {
		a.mu.Lock()
		a.status = connection.Disconnected
		close(a.changed)
		a.changed = make(chan struct{})
		a.mu.Unlock()
		close(changed)
	}()
	got, err = a.waitStatus(context.Background(), connection.Disconnected, time.Minute)
	if err != nil || got.Status != "Disconnected" {
		t.Fatalf("after the change: %+v, %v; want Disconnected", got, err)
	}
	<-changed
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := a.waitStatus(ctx, connection.Connected, time.Minute); err != context.Canceled {
		t.Fatalf("with a cancelled context: %v, want context.Canceled", err)
	}
}

// A name that is not an account name is never pinned (a relay answering a
// key lookup with one made the pin file unreadable, and the daemon with
// it); many new pins are written at once.
func TestPinsRefuseBadNames(t *testing.T) {
	file := t.TempDir() + "/pins.json"
	p, err := loadPins(file, nil)
	if err != nil {
		t.Fatal(err)
	}
	good, _ := identity.Generate()
	given := map[string]identity.PublicKey{"Zed": good.Public(), "not a name": good.Public(), "../x": good.Public()}
	for i := range 50 {
		k, _ := identity.Generate()
		given[fmt.Sprintf("fake%d", i)] = k.Public()
	}
	refused := p.checkAll(given)
	if len(refused) != 3 || refused["Zed"] == nil || refused["not a name"] == nil || refused["../x"] == nil {
		t.Fatalf("refused %v; want the three bad names", refused)
	}
	again, err := loadPins(file, nil)
	if err != nil {
		t.Fatalf("the pin file after bad names: %v", err)
	}
	if len(again.keys) != 50 {
		t.Fatalf("%d pins saved, want 50", len(again.keys))
	}
}
