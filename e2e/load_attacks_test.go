package e2e

// The attacks of the load-and-fault suite (load_test.go), each at the
// rate that broke the code before its limit: the account service's
// (hello and request floods, registrations, guest logins, made-up
// operations), the TURN server's (idle connections, allocations) and the
// daemon's (idle peer-link handshakes, writers to a service that does
// not read). Each runs until its context ends and then lets go of
// everything it holds.

import (
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tubes-dev/tubes/rendezvous"
	"github.com/tubes-dev/tubes/turnclient"
)

type loadAttack struct {
	name, rate string
	// metric counts what the limit refused, at the relay (or at alice's
	// daemon, when daemon is set).
	metric   string
	daemon   bool
	held     bool // metric is a gauge of bytes held, not a count
	note     string
	setup    func(w *world)
	teardown func(w *world)
	// run attacks until ctx ends; ready is called once its pressure is in.
	run func(ctx context.Context, w *world, ready func())
}

// count renders what the metric counted during the attack.
func (a loadAttack) count(v float64) string {
	if a.held {
		return fmt.Sprintf("%.1f MiB held", v/(1<<20))
	}
	return fmt.Sprintf("%.0f refused", v)
}

func (a loadAttack) endpoint(w *world) string {
	if a.daemon {
		return w.alice.http
	}
	return w.relayHTTP
}

// attacker registers (once) an account of the attackers', from an
// address of its own.
func (w *world) attacker(name, src string) *testAccount {
	if a := w.attackers[name]; a != nil {
		return a
	}
	a := &testAccount{name: name, key: newKey(w.t)}
	if err := rendezvous.Register(w.t.Context(), a.cfg(w.url, src), ""); err != nil {
		w.t.Fatalf("register the attacker %s: %v", name, err)
	}
	w.attackers[name] = a
	return a
}

// natsLogin logs a in over plain NATS from src, for requests the client
// library would never make.
func natsLogin(url string, a *testAccount, src string) (*nats.Conn, error) {
	kp, err := a.key.NKey()
	if err != nil {
		return nil, err
	}
	pub, _ := kp.PublicKey()
	return nats.Connect(url, nats.Nkey(pub, kp.Sign), nats.UserInfo(a.name, ""), nats.CustomInboxPrefix("tube.reply."+a.name),
		nats.SetCustomDialer(&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}),
		nats.NoReconnect(), nats.MaxPingsOutstanding(1000), quiet)
}

// quiet keeps the NATS client from printing the errors of a connection
// the relay cuts (an attacker's, which expects them).
var quiet = nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {})

// loggedIn runs flood on a raw login of a, logging in again whenever the
// relay closes the connection (a shut-out flooder tries again), until
// ctx ends.
func loggedIn(ctx context.Context, w *world, a *testAccount, src string, flood func(ctx context.Context, nc *nats.Conn)) {
	for ctx.Err() == nil {
		nc, err := natsLogin(w.url, a, src)
		if err != nil {
			select { // shut out: try again a little later
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
			continue
		}
		fctx, cancel := context.WithCancel(ctx)
		nc.SetClosedHandler(func(*nats.Conn) { cancel() })
		flood(fctx, nc)
		cancel()
		nc.Close()
	}
}

// holdConns keeps up to most connections from src to addr open, dialing
// again as the server closes them, until ctx ends; ready once most are
// open or refused.
func holdConns(ctx context.Context, src, addr string, most int, ready func()) {
	var mu sync.Mutex
	open := map[net.Conn]bool{}
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for c := range open {
			c.Close()
		}
	}()
	tries := 0
	for ctx.Err() == nil {
		mu.Lock()
		n := len(open)
		mu.Unlock()
		if n >= most || tries >= most {
			ready()
		}
		if n >= most {
			select {
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
			continue
		}
		tries++
		c, err := dialFrom(src, addr)
		if err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(5 * time.Millisecond):
			}
			continue
		}
		mu.Lock()
		open[c] = true
		mu.Unlock()
		go func() { // a closed connection makes room for another
			c.Read(make([]byte, 1))
			mu.Lock()
			delete(open, c)
			mu.Unlock()
			c.Close()
		}()
	}
}

// readyAfter calls ready once n calls of the returned function were made.
func readyAfter(n int, ready func()) func() {
	var mu sync.Mutex
	count := 0
	return func() {
		mu.Lock()
		defer mu.Unlock()
		if count++; count >= n {
			ready()
		}
	}
}

func loadAttacks() []loadAttack {
	return []loadAttack{
		{
			name: "hello flood", rate: "300 hellos in flight from one account, each naming a NATS server that never answers",
			metric: `tubes_rendezvous_refused_total{limit="in_flight"}`,
			run: func(ctx context.Context, w *world, ready func()) {
				a := w.attacker("mallory-hello", "127.0.0.2")
				loggedIn(ctx, w, a, "127.0.0.2", func(ctx context.Context, nc *nats.Conn) {
					sem := make(chan struct{}, 300)
					sent := readyAfter(300, ready)
					var wg sync.WaitGroup
					defer wg.Wait()
					for ctx.Err() == nil {
						select {
						case sem <- struct{}{}:
						case <-ctx.Done():
							return
						}
						sent()
						wg.Go(func() {
							defer func() { <-sem }()
							rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
							defer cancel()
							nc.RequestWithContext(rctx, "tube.svc.mallory-hello.hello", []byte(`{"server":"NBOGUSSERVERIDTHATNEVERANSWERS","cid":7}`))
						})
					}
				})
			},
		},
		{
			name: "largest requests", rate: "96 KiB requests from one account, 16 senders, each as fast as answered",
			metric: `tubes_rendezvous_refused_total{limit="rate"}`,
			run: func(ctx context.Context, w *world, ready func()) {
				a := w.attacker("mallory-big", "127.0.0.3")
				body := base64.StdEncoding.EncodeToString(make([]byte, 70<<10))
				req := []byte(`{"to":"bob","kind":"flood","body":"` + body + `"}`)
				loggedIn(ctx, w, a, "127.0.0.3", func(ctx context.Context, nc *nats.Conn) {
					sent := readyAfter(200, ready)
					var wg sync.WaitGroup
					for range 16 {
						wg.Go(func() {
							for ctx.Err() == nil {
								rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
								nc.RequestWithContext(rctx, "tube.svc.mallory-big.send", req)
								cancel()
								sent()
							}
						})
					}
					wg.Wait()
				})
			},
		},
		{
			name: "registrations", rate: "from one address, one after another, as fast as answered",
			metric: `tubes_rendezvous_refused_total{limit="register_per_source"}`,
			run: func(ctx context.Context, w *world, ready func()) {
				for i := 0; ctx.Err() == nil; i++ {
					a := &testAccount{name: fmt.Sprintf("squatter%d", i), key: newKey(w.t)}
					rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
					err := rendezvous.Register(rctx, a.cfg(w.url, "127.0.0.4"), "")
					cancel()
					if err != nil {
						ready()
					}
				}
			},
		},
		{
			name: "guest logins", rate: "from one address, 4 at a time, as fast as answered",
			metric: `tubes_rendezvous_refused_total{limit="guest_logins"}`,
			run: func(ctx context.Context, w *world, ready func()) {
				var wg sync.WaitGroup
				for range 4 {
					wg.Go(func() {
						for ctx.Err() == nil {
							kp, _ := newKey(w.t).NKey()
							pub, _ := kp.PublicKey()
							nc, err := nats.Connect(w.url, nats.Nkey(pub, kp.Sign), nats.CustomInboxPrefix("tube.guest."+pub+".reply"),
								nats.SetCustomDialer(&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.5")}}), nats.NoReconnect(), quiet)
							if err == nil {
								nc.Close()
							} else {
								ready()
							}
						}
					})
				}
				wg.Wait()
			},
		},
		{
			name: "made-up operations", rate: "from one account, sent without waiting for answers, until shut out, then logging in again",
			metric: `tubes_rendezvous_refused_total{limit="banned"}`,
			note:   "the account is shut out (its connection closed, its logins refused for a minute) after 5000 refusals in a minute; the count is of bans",
			run: func(ctx context.Context, w *world, ready func()) {
				a := w.attacker("mallory-ops", "127.0.0.6")
				loggedIn(ctx, w, a, "127.0.0.6", func(ctx context.Context, nc *nats.Conn) {
					for i := 0; ctx.Err() == nil && !nc.IsClosed(); i++ {
						nc.PublishRequest(fmt.Sprintf("tube.svc.mallory-ops.madeup%d", i), "tube.reply.mallory-ops.x", []byte(`{}`))
						if i%1000 == 999 {
							nc.Flush()
						}
					}
					ready()
				})
			},
		},
		{
			name: "idle TURN connections", rate: "160 addresses, each holding 40 connections that never authenticate",
			metric: "tubes_turn_unauthenticated_evicted_total",
			note:   "the relay holds 32 per address and, by default, 4096 in all (or a quarter of its descriptors); past that a newcomer evicts the oldest of the biggest address",
			run: func(ctx context.Context, w *world, ready func()) {
				var wg sync.WaitGroup
				in := readyAfter(160, ready)
				for i := range 160 {
					wg.Go(func() { holdConns(ctx, fmt.Sprintf("127.0.3.%d", 1+i), w.turn, 40, sync.OnceFunc(in)) })
				}
				wg.Wait()
			},
		},
		{
			name: "TURN allocations", rate: "one account's issued credential, allocating until refused, then every 50 ms",
			metric: `tubes_turn_allocations_refused_total{quota="per_user"}`,
			run: func(ctx context.Context, w *world, ready func()) {
				a := w.attacker("mallory-turn", "127.0.0.7")
				a.loginFrom(w.t, w.url, "127.0.0.7")
				defer a.c.Close()
				cred, err := a.c.TURN(ctx)
				if err != nil {
					w.t.Errorf("TURN credential: %v", err)
					ready()
					return
				}
				var held []*turnclient.Client
				defer func() {
					for _, c := range held {
						c.Close()
					}
				}()
				for ctx.Err() == nil {
					actx, cancel := context.WithTimeout(ctx, 5*time.Second)
					c, err := turnclient.Allocate(actx, turnclient.Config{Server: w.turn, Username: cred.Username, Password: cred.Password,
						Dialer: &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.7")}}})
					cancel()
					if err != nil {
						ready()
						select {
						case <-ctx.Done():
						case <-time.After(50 * time.Millisecond):
						}
						continue
					}
					held = append(held, c)
				}
			},
		},
		{
			name: "idle peer-link handshakes", rate: "one address holding 256 connections to alice's daemon that never handshake",
			metric: "tubes_link_handshakes_refused_total", daemon: true,
			run: func(ctx context.Context, w *world, ready func()) {
				holdConns(ctx, "127.0.0.8", w.alice.peer, 256, sync.OnceFunc(ready))
			},
		},
		{
			name: "writers to a service that reads nothing", rate: "bob's 64 connections through one tube, each writing as fast as it can",
			metric: "tubes_link_receive_bytes", daemon: true, held: true,
			note: "what alice's daemon holds for the link when the window ends: at most the link's receive budget (16 MiB) and a 64 KiB reserve " +
				"per connection, however many connections write; the probes' transfer and tube setups on the same link go on beside them",
			run: func(ctx context.Context, w *world, ready func()) {
				var wg sync.WaitGroup
				chunk := make([]byte, 256<<10)
				in := readyAfter(64, ready)
				for range 64 {
					c, err := net.Dial("tcp", w.sinkAddr)
					if err != nil {
						w.t.Errorf("a writer: %v", err)
						in()
						continue
					}
					wg.Go(func() {
						defer c.Close()
						go func() { <-ctx.Done(); c.Close() }()
						n := 0
						for {
							if _, err := c.Write(chunk); err != nil {
								return
							}
							if n++; n == 1 {
								in()
							}
						}
					})
				}
				wg.Wait()
			},
		},
	}
}
