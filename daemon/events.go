package daemon

import (
	"encoding/json"
	"sync"
	"time"

	"github.com/tubes-dev/tubes/api"
)

// Bus fans events out to subscribers (the /v1/events streams). Publishing
// never blocks: each subscriber has a queue bounded in events and in
// bytes (what the events take as JSON: message bodies count), and one that
// falls that far behind is cut off (Overflowed) and must reconnect,
// rather than silently missing events, slowing the daemon, or making it
// hold what it does not read.
type Bus struct {
	// MaxBytes and MaxEvents bound each subscriber's queue (defaults
	// DefaultEventBytes, DefaultEventCount); set before Subscribe.
	MaxBytes, MaxEvents int

	mu   sync.Mutex // guards the fields below; held while publishing so groups stay together
	seq  uint64
	subs map[*Subscription]struct{}
	cuts uint64 // subscribers cut off so far
}

// Defaults of the per-subscriber queue.
const (
	DefaultEventBytes = 8 << 20
	DefaultEventCount = 4096
)

// Event is one queued event and its JSON encoding.
type Event struct {
	api.Event
	JSON []byte
}

// Subscription receives events until closed.
type Subscription struct {
	bus   *Bus
	ready chan struct{} // a token when queue is not empty, or the subscription ended

	// guarded by bus.mu
	queue  []Event
	bytes  int
	closed bool
	cut    bool // closed because it fell behind
}

// Ready has a token when events are queued or the subscription has ended;
// Take then gets them.
func (s *Subscription) Ready() <-chan struct{} { return s.ready }

// Take returns the queued events, and false once the subscription has
// ended (the events are then the last).
func (s *Subscription) Take() ([]Event, bool) {
	s.bus.mu.Lock()
	defer s.bus.mu.Unlock()
	q := s.queue
	s.queue, s.bytes = nil, 0
	return q, !s.closed
}

// Overflowed reports whether the subscription was cut off for falling behind.
func (s *Subscription) Overflowed() bool {
	s.bus.mu.Lock()
	defer s.bus.mu.Unlock()
	return s.cut
}

// Close ends the subscription.
func (s *Subscription) Close() {
	s.bus.mu.Lock()
	defer s.bus.mu.Unlock()
	s.end()
}

// end removes the subscription (bus.mu held).
func (s *Subscription) end() {
	if s.closed {
		return
	}
	s.closed = true
	delete(s.bus.subs, s)
	s.signal()
}

func (s *Subscription) signal() {
	select {
	case s.ready <- struct{}{}:
	default:
	}
}

// Subscribe starts a subscription.
func (b *Bus) Subscribe() *Subscription {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.subs == nil {
		b.subs = map[*Subscription]struct{}{}
	}
	s := &Subscription{bus: b, ready: make(chan struct{}, 1)}
	b.subs[s] = struct{}{}
	return s
}

// Cut counts the subscribers cut off for falling behind.
func (b *Bus) Cut() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.cuts
}

// Subscribers is the number of subscriptions.
func (b *Bus) Subscribers() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.subs)
}

// Publish sends events in order, with nothing from other publishers
// between them (ConnectionError must be immediately followed by its
// StatusChanged).
func (b *Bus) Publish(events ...api.Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	maxBytes, maxEvents := b.MaxBytes, b.MaxEvents
	if maxBytes <= 0 {
		maxBytes = DefaultEventBytes
	}
	if maxEvents <= 0 {
		maxEvents = DefaultEventCount
	}
	now := time.Now().UTC()
	for _, e := range events {
		b.seq++
		e.Seq = b.seq
		e.Time = now
		if len(b.subs) == 0 {
			continue
		}
		js, _ := json.Marshal(e)
		for s := range b.subs {
			if len(s.queue) >= maxEvents || s.bytes+len(js) > maxBytes {
				// What it has not taken is dropped with it: a client
				// that does not read holds nothing here.
				s.queue, s.bytes = nil, 0
				s.cut = true
				b.cuts++
				s.end()
				continue
			}
			s.queue = append(s.queue, Event{Event: e, JSON: js})
			s.bytes += len(js)
			s.signal()
		}
	}
}
