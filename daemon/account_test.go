package daemon

import (
	"context"
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
