package rendezvous_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tubes-dev/tubes/connection"
	"github.com/tubes-dev/tubes/rendezvous"
)

// A guest (a key, no account) and an account that name their NATS
// connections as relay instances do ("tube-relay:…") stay what they are:
// while they are connected, presence reaches contacts and a second login
// still replaces the first (Name_In_Use). Before relay instances had to be
// the service user, the guest's empty instance id won the leader election
// and both stopped.
func TestRelayImpostors(t *testing.T) {
	s := startRelay(t, rendezvous.Config{})
	ctx := context.Background()
	mallory := register(t, s, "mallory")
	for _, user := range []string{"", "mallory"} {
		key := newKey(t)
		if user == "mallory" {
			key = mallory.key
		}
		kp, err := key.NKey()
		if err != nil {
			t.Fatal(err)
		}
		pub, _ := kp.PublicKey()
		opts := []nats.Option{nats.Nkey(pub, kp.Sign), nats.Name("tube-relay:"), nats.NoReconnect()}
		if user != "" {
			opts = append(opts, nats.UserInfo(user, ""))
		}
		nc, err := nats.Connect(s.URL(), opts...)
		if err != nil {
			t.Fatalf("impostor %q connecting: %v", user, err)
		}
		t.Cleanup(nc.Close)
	}

	// Presence fan-out: bob sees alice come online.
	alice := register(t, s, "alice")
	bob := register(t, s, "bob")
	befriend(t, alice, bob)
	alice.c.Close()
	bob.in.wait(t, rendezvous.KindPresence, func(b []byte) bool {
		var e rendezvous.PresenceEvent
		return json.Unmarshal(b, &e) == nil && e.Name == "alice" && !e.Online
	})
	again, err := rendezvous.Dial(ctx, dialCfg(s, "alice", alice.key, nil))
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	bob.in.wait(t, rendezvous.KindPresence, func(b []byte) bool {
		var e rendezvous.PresenceEvent
		return json.Unmarshal(b, &e) == nil && e.Name == "alice" && e.Online
	})

	// Name_In_Use: a second connection replaces the first.
	second, err := rendezvous.Dial(ctx, dialCfg(s, "alice", alice.key, nil))
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	select {
	case <-again.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("with impostor relay connections present, the first connection was not replaced")
	}
	if ce := again.Err(); ce == nil || ce.Reason != connection.NameInUse {
		t.Fatalf("first connection ended with %+v", ce)
	}
}
