package daemon

import (
	"sync"
	"time"

	"github.com/tubes-dev/tubes/api"
)

// Bus fans events out to subscribers (the /v1/events streams). Publishing
// never blocks: a subscriber that falls subscriberBuffer events behind is
// cut off (its channel closed) and must reconnect, rather than silently
// missing events or slowing the daemon.
type Bus struct {
	mu   sync.Mutex // guards the fields below; held while publishing so groups stay together
	seq  uint64
	subs map[*Subscription]struct{}
}

const subscriberBuffer = 4096

// Subscription receives events until closed.
type Subscription struct {
	bus *Bus
	ch  chan api.Event
	cut bool // closed because it fell behind
}

// C returns the channel of events. It is closed when the subscription ends.
func (s *Subscription) C() <-chan api.Event { return s.ch }

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
	if _, ok := s.bus.subs[s]; ok {
		delete(s.bus.subs, s)
		close(s.ch)
	}
}

// Subscribe starts a subscription.
func (b *Bus) Subscribe() *Subscription {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.subs == nil {
		b.subs = map[*Subscription]struct{}{}
	}
	s := &Subscription{bus: b, ch: make(chan api.Event, subscriberBuffer)}
	b.subs[s] = struct{}{}
	return s
}

// Publish sends events in order, with nothing from other publishers
// between them (ConnectionError must be immediately followed by its
// StatusChanged).
func (b *Bus) Publish(events ...api.Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now().UTC()
	for _, e := range events {
		b.seq++
		e.Seq = b.seq
		e.Time = now
		for s := range b.subs {
			select {
			case s.ch <- e:
			default:
				s.cut = true
				delete(b.subs, s)
				close(s.ch)
			}
		}
	}
}
