package localapi_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/daemon"
	"github.com/tubes-dev/tubes/internal/node"
	"github.com/tubes-dev/tubes/internal/tubetest"
	"github.com/tubes-dev/tubes/rendezvous"
	"github.com/tubes-dev/tubes/tube"
)

// An event-stream client that stops reading while a contact sends big
// messages is cut off once its queue is over --event-buffer bytes (well
// under its 4,096-event count), and dropped after the write deadline; a
// client that reads gets every event, and the daemon keeps serving.
func TestEventStreamBoundedInBytes(t *testing.T) {
	const budget, messages, size = 256 << 10, 96, 40 << 10
	relay := tubetest.Relay(t, rendezvous.Config{})
	alice := tubetest.StartDaemonConfig(t, node.DaemonConfig{Limits: daemon.Limits{EventBytes: budget, EventWriteTimeout: time.Second}})
	bob := tubetest.StartDaemon(t, "")
	alice.Register(t, "alice", relay)
	bob.Register(t, "bob", relay)
	tubetest.Befriend(t, alice, "alice", bob, "bob")
	reader := tubetest.Record(t, alice.C, "alice")

	// The stuck client: asks for the stream, never reads it.
	stuck, err := net.Dial("unix", alice.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer stuck.Close()
	stuck.(*net.UnixConn).SetReadBuffer(4 << 10)
	io.WriteString(stuck, "GET /v1/events?account=alice HTTP/1.1\r\nHost: tube\r\n\r\n")
	waitSubscribers(t, alice.Daemon.Daemon, 2)

	ctx := context.Background()
	// A body larger than recipients take is refused to its sender.
	if _, err := bob.C.Send(ctx, "bob", api.SendRequest{To: "alice", Kind: "test", Body: make([]byte, tube.MaxMessageBody+1)}); err == nil ||
		!strings.Contains(err.Error(), "at most") {
		t.Fatalf("sending more than a message carries: %v", err)
	}
	body := bytes.Repeat([]byte("m"), size)
	// One at a time, each received by the reader before the next: the
	// reader never lags, the stuck client falls behind by all of them.
	got := 0
	for i := range messages {
		if _, err := bob.C.Send(ctx, "bob", api.SendRequest{To: "alice", Kind: "test", Body: body}); err != nil {
			t.Fatal(err)
		}
		reader.MustWait("message received", func(e api.Event) bool {
			if e.Type == api.EventMessageReceived && e.Seq > 0 {
				got++
			}
			return got > i
		})
		got = 0
	}
	// The stuck client is cut off and dropped; only the reader is left.
	waitSubscribers(t, alice.Daemon.Daemon, 1)
	if _, cut := alice.Daemon.Daemon.EventStats(); cut != 1 {
		t.Fatalf("%d clients cut off for falling behind, want 1 (the stuck one, over %d bytes)", cut, budget)
	}
	// What it gets, once it reads again, is what was already in its
	// socket and then the end: Overflow where it fitted, or the
	// connection closed after the write deadline.
	stuck.SetReadDeadline(time.Now().Add(20 * time.Second))
	var rest []byte
	buf := make([]byte, 64<<10)
	for !bytes.Contains(rest, []byte("event: Overflow")) {
		n, err := stuck.Read(buf)
		rest = append(rest, buf[:n]...)
		if err != nil {
			if isTimeout(err) {
				t.Fatalf("the stuck client's stream neither overflowed nor ended (%d bytes)", len(rest))
			}
			break
		}
	}
	if n := strings.Count(string(rest), "event: MessageReceived"); n >= messages {
		t.Fatalf("the stuck client got all %d messages: it was never cut off", n)
	}
	// Others are served as before.
	if _, err := alice.C.Status(ctx); err != nil {
		t.Fatalf("the daemon after the stuck client: %v", err)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

func waitSubscribers(t *testing.T, d *daemon.Daemon, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		subs, _ := d.EventStats()
		if subs == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d event-stream clients, want %d", subs, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The largest body a message carries fits in what the relay takes from
// an account in one request (rendezvous.MaxPayload), with its signature,
// base64 and fields.
func TestLargestMessageDelivered(t *testing.T) {
	relay := tubetest.Relay(t, rendezvous.Config{})
	alice, bob := tubetest.StartDaemon(t, ""), tubetest.StartDaemon(t, "")
	alice.Register(t, "alice", relay)
	bob.Register(t, "bob", relay)
	tubetest.Befriend(t, alice, "alice", bob, "bob")
	ev := tubetest.Record(t, alice.C, "alice")
	body := bytes.Repeat([]byte{0xff}, tube.MaxMessageBody)
	if _, err := bob.C.Send(context.Background(), "bob", api.SendRequest{To: "alice", Kind: "big", Body: body}); err != nil {
		t.Fatalf("a message of %d bytes: %v", len(body), err)
	}
	ev.MustWait("the largest message", func(e api.Event) bool {
		return e.Type == api.EventMessageReceived && e.Kind == "big" && bytes.Equal(e.Body, body)
	})
}
