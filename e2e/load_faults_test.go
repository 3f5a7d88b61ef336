package e2e

// The faults of the load-and-fault suite (load_test.go): the exported
// service down, the rendezvous restarted, the relay killed mid-transfer,
// the offerer killed, and a NAT router's mappings flushed. Each checks
// how the affected connection ended (a reset, never a clean end of
// file), that no entry was lost, and that tubes came back.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tubes-dev/tubes/api"
	tubed "github.com/tubes-dev/tubes/daemon"
	"github.com/tubes-dev/tubes/internal/netns"
	"github.com/tubes-dev/tubes/internal/serve"
	"github.com/tubes-dev/tubes/internal/testenv"
	"github.com/tubes-dev/tubes/rendezvous"
)

type faultRow struct {
	name      string
	ended     string // how the affected connection ended
	back      string // whether and how soon tubes came back
	reconnect string
	note      string
	before    map[string]int
	after     map[string]int
	problems  []string
}

func (f *faultRow) problem(format string, args ...any) {
	f.problems = append(f.problems, fmt.Sprintf(format, args...))
}

func (f *faultRow) entries() string {
	if f.before == nil {
		return "–"
	}
	total := func(m map[string]int) (n int) {
		for _, v := range m {
			n += v
		}
		return n
	}
	s := fmt.Sprintf("%d → %d", total(f.before), total(f.after))
	var lost []string
	for k, v := range f.before {
		if f.after[k] != v {
			lost = append(lost, fmt.Sprintf("%s %d → %d", k, v, f.after[k]))
		}
	}
	slices.Sort(lost)
	if len(lost) > 0 {
		s += " (" + strings.Join(lost, ", ") + ")"
	}
	return s
}

// census counts the entries a fault must not lose, through the daemons
// and the relay.
func (w *world) census() map[string]int {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n := map[string]int{}
	for _, a := range w.legit {
		c, err := rendezvous.Dial(ctx, a.cfg(w.url, ""))
		if err == nil {
			n["accounts"]++
			c.Close()
		}
	}
	for _, m := range []*member{w.alice, w.bob} {
		if cs, err := m.c.Contacts(ctx, m.name); err == nil {
			n["contacts"] += len(cs)
		}
		if rs, err := m.c.Rooms(ctx, m.name); err == nil {
			n["rooms"] += len(rs)
		}
		if ms, err := m.c.RoomMembers(ctx, m.name, "lab"); err == nil {
			n["room members"] += len(ms)
		}
	}
	if ss, err := w.alice.c.Services(ctx, ""); err == nil {
		n["registry"] = len(ss)
	}
	if ps, err := w.alice.c.Publications(ctx, "alice"); err == nil {
		n["publications"] = len(ps)
	}
	if xs, err := w.alice.c.Exports(ctx); err == nil {
		n["exports"] = len(xs)
	}
	if rs, err := w.bob.c.Browse(ctx, "bob", api.BrowseRequest{Contact: "alice"}); err == nil {
		n["browsed"] = len(rs)
	}
	return n
}

func (f *faultRow) lostNothing() {
	for k, v := range f.before {
		if f.after[k] < v {
			f.problem("%s went from %d to %d", k, v, f.after[k])
		}
	}
}

// reading opens a connection to addr and reads size bytes from it: the
// affected connection of a fault.
func reading(addr string, size int64) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.CopyN(io.Discard, c, size); err != nil {
		c.Close()
		return nil, fmt.Errorf("before the fault: %w", err)
	}
	return c, nil
}

// endedWith reads c to its end and says how it ended.
func endedWith(c net.Conn, within time.Duration) string {
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(within))
	_, err := io.Copy(io.Discard, c)
	return how(err)
}

// how names the way a read ended: err from io.Copy (nil: end of file).
func how(err error) string {
	switch {
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	case err == nil:
		return "clean EOF"
	case isTimeout(err):
		return "still open"
	default:
		return err.Error()
	}
}

// waitConnected waits for m's account to be connected in an event from
// the n-th on, and returns when.
func (m *member) waitConnected(n int, timeout time.Duration) (time.Time, bool) {
	ev, ok := m.ev.WaitFrom(n, func(e api.Event) bool { return e.Type == api.EventStatusChanged && e.Status == "Connected" }, timeout)
	return ev.Time, ok
}

func (m *member) waitDisconnected(n int) bool {
	_, ok := m.ev.WaitFrom(n, func(e api.Event) bool { return e.Type == api.EventStatusChanged && e.Status == "Disconnected" }, 30*time.Second)
	return ok
}

// comeBack retries fn until it works or a deadline passes, says how
// soon it did and returns that.
func comeBack(f *faultRow, from time.Time, fn func() error) time.Duration {
	var err error
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		if err = fn(); err == nil {
			took := time.Since(from)
			f.back = "yes, at once"
			if took >= time.Millisecond {
				f.back = fmt.Sprintf("yes, %s after", ms(took))
			}
			return took
		}
		time.Sleep(100 * time.Millisecond) // each try is a new connection, as an application makes
	}
	f.back = "**no**"
	f.problem("tubes never came back: %v", err)
	return 0
}

// faults makes each fault on loopback in turn, the offerer's death last
// (it closes every tube).
func (w *world) faults() []faultRow {
	var rows []faultRow
	for _, f := range []struct {
		name string
		make func() faultRow
	}{{"service", w.serviceDown}, {"rendezvous", w.rendezvousRestarted}, {"relay", w.relayKilled}, {"offerer", w.offererKilled}} {
		if picked(f.name) {
			rows = append(rows, f.make())
		}
	}
	return rows
}

// The exported service crashes (its connections reset, its listener
// gone) while bob reads from it; a connection made while it is down is
// reset too; once it is back, the same tube serves again.
func (w *world) serviceDown() faultRow {
	f := faultRow{name: "exported service down (crashed mid-transfer, back on its address)"}
	c, err := reading(w.firehoseAddr, 4<<20)
	if err != nil {
		f.problem("%v", err)
		return f
	}
	w.firehose.down()
	f.ended = endedWith(c, 30*time.Second)
	if f.ended != "reset" {
		f.problem("the reading application saw %s, not a reset", f.ended)
	}
	// A new connection while the service is down.
	if c, err := net.DialTimeout("tcp", w.firehoseAddr, 10*time.Second); err == nil {
		if how := endedWith(c, 30*time.Second); how != "reset" {
			f.problem("a connection made while the service was down ended with %s, not a reset", how)
		} else {
			f.note = "a connection made while it was down was reset too"
		}
	}
	addr := w.firehose.addr
	if err := w.firehose.up(addr); err != nil {
		f.problem("the service could not come back on %s: %v", addr, err)
		return f
	}
	comeBack(&f, time.Now(), func() error {
		c, err := reading(w.firehoseAddr, 1<<20)
		if err == nil {
			c.Close()
		}
		return err
	})
	return f
}

// The rendezvous is restarted (SIGTERM, started again at once) while a
// transfer runs on a direct tube: the transfer completes intact, nothing
// is lost, and both daemons are connected again.
func (w *world) rendezvousRestarted() faultRow {
	f := faultRow{name: "rendezvous restarted (SIGTERM, started again) during a direct transfer"}
	f.before = w.census()
	na, nb := len(w.alice.ev.All()), len(w.bob.ev.All())
	done, stop := make(chan error, 1), make(chan struct{})
	go func() {
		_, err := transferUntil(w.hashAddr, 4<<20, stop) // until both daemons are back
		done <- err
	}()
	w.relay.stop()
	w.startRelay()
	back := time.Now()
	f.reconnect = w.reconnected(&f, back, na, nb)
	close(stop)
	if err := <-done; err != nil {
		f.ended = "failed: " + err.Error()
		f.problem("the direct transfer across the restart: %v", err)
	} else {
		f.ended = "not affected: the direct transfer completed, every byte checked"
	}
	f.after = w.census()
	f.lostNothing()
	comeBack(&f, back, func() error { _, err := w.setupOnce(); return err })
	return f
}

// reconnected waits for both daemons to connect again after the relay
// returned at back, and checks the time against the back-off cap.
func (w *world) reconnected(f *faultRow, back time.Time, na, nb int) string {
	var parts []string
	for _, x := range []struct {
		m *member
		n int
	}{{w.alice, na}, {w.bob, nb}} {
		at, ok := x.m.waitConnected(x.n, time.Minute)
		if !ok {
			f.problem("%s's daemon never connected again", x.m.name)
			parts = append(parts, x.m.name+" never")
			continue
		}
		took := at.Sub(back)
		parts = append(parts, fmt.Sprintf("%s %s", x.m.name, took.Round(10*time.Millisecond)))
		if limit := tubed.DefaultEarlyBackoff + time.Second; took > limit {
			f.problem("%s's daemon connected %s after the relay returned, over the cap plus a second (%s)", x.m.name, took, limit)
		}
	}
	return strings.Join(parts, ", ")
}

// The relay is killed (SIGKILL) while bob reads from a tube on the relay
// path, and stays down for a fixed outage: bob's application sees a
// reset; after the relay returns both daemons connect within the back-
// off cap plus a second, nothing is lost and the same tube carries data
// again.
func (w *world) relayKilled() faultRow {
	f := faultRow{name: fmt.Sprintf("relay killed (SIGKILL) mid-transfer on the relay path, down %s", w.size.outage)}
	relayed := w.accepted("firehose-relayed", w.firehose.addr, "relay")
	f.before = w.census()
	c, err := reading(relayed, 4<<20)
	if err != nil {
		f.problem("%v", err)
		return f
	}
	na, nb := len(w.alice.ev.All()), len(w.bob.ev.All())
	w.relay.kill()
	f.ended = endedWith(c, 30*time.Second)
	if f.ended != "reset" {
		f.problem("the reading application saw %s, not a reset", f.ended)
	}
	if !w.alice.waitDisconnected(na) || !w.bob.waitDisconnected(nb) {
		f.problem("a daemon never saw the relay go")
	}
	time.Sleep(w.size.outage) // the fault: the relay stays down this long
	w.startRelay()
	back := time.Now()
	f.reconnect = w.reconnected(&f, back, na, nb)
	f.after = w.census()
	f.lostNothing()
	if took := comeBack(&f, back, func() error { _, err := transfer(w.relayedAddr, 1<<20); return err }); took > tubed.DefaultEarlyBackoff+time.Second {
		f.problem("the relayed tube came back %s after the relay returned, over the cap plus a second", took)
	}
	return f
}

// Alice's daemon is killed (SIGKILL) while bob reads from her tube:
// bob's application sees a reset; alice's daemon, started again on its
// state, has lost nothing and offers tubes again.
func (w *world) offererKilled() faultRow {
	f := faultRow{name: "offerer's daemon killed (SIGKILL) mid-transfer, started again"}
	f.before = w.census()
	c, err := reading(w.firehoseAddr, 4<<20)
	if err != nil {
		f.problem("%v", err)
		return f
	}
	w.alice.p.kill()
	f.ended = endedWith(c, 30*time.Second)
	if f.ended != "reset" {
		f.problem("the reading application saw %s, not a reset", f.ended)
	}
	w.alice.start(w.t)
	back := time.Now()
	if _, ok := w.alice.waitConnected(0, time.Minute); !ok {
		f.problem("alice's daemon never connected after its restart")
	}
	f.after = w.census()
	f.lostNothing()
	// Her exports are kept (exports.json); offers end with the daemon
	// that made them (docs/cli.md, "Not yet available"): she offers again.
	comeBack(&f, back, func() error { _, err := w.setupOnce(); return err })
	f.note = "offers end with the daemon that made them (docs/cli.md lists their persistence as not yet available): " +
		"tubes came back as new offers of the exports she kept; accounts, rosters, rooms, the registry, publications and exports were all kept"
	return f
}

// natFault puts alice and bob behind NATs of their own (network
// namespaces, iptables MASQUERADE), so that a tube between them goes
// through the relay, and flushes both routers' connection tracking
// (conntrack -F) while bob reads from it: the connection keeps flowing
// or ends with a reset, never with a clean end of file, and the tube
// carries new connections after.
func natFault(t *testing.T) (f faultRow) {
	f = faultRow{name: "NAT mappings flushed (conntrack -F on both routers) mid-transfer on the relay path"}
	conntrack := testenv.MustHaveCommand(t, "conntrack")
	lab := netns.New(t)
	pub := lab.Public("relay")
	lanA, lanB := lab.LAN("a"), lab.LAN("b")
	aliceH, bobH := lanA.Host("alice"), lanB.Host("bob")
	ip := pub.IP.String()
	relay := startCmd(t, pub.Command(context.Background(), tubeBin, "relay",
		"--listen", ip+":4222", "--turn-listen", ip+":3478", "--allow-peer", "198.18.0.0/24"), nil)
	url := strings.TrimSpace(relay.waitLine("rendezvous: "))
	aliceP, alice := daemonProcIn(t, aliceH)
	bobP, bob := daemonProcIn(t, bobH)
	defer func() {
		if len(f.problems) > 0 && *loadLogs != "" {
			for name, p := range map[string]*proc{"nat-relay": relay, "nat-alice": aliceP, "nat-bob": bobP} {
				os.WriteFile(filepath.Join(*loadLogs, name+".log"), []byte(p.output()), 0o644)
			}
		}
	}()
	mustRun(t, alice, "account", "add", "alice", "--server", url, "--register")
	mustRun(t, bob, "account", "add", "bob", "--server", url, "--register")
	mustRun(t, alice, "contact", "add", "bob")
	mustRun(t, bob, "contact", "approve", "alice")

	ln, err := aliceH.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	chunk := make([]byte, 64<<10)
	go serve.Loop(ln, func(c net.Conn) { // a firehose
		for {
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	})
	mustRun(t, alice, "export", "firehose", "--tcp", ln.Addr().String())
	id := strings.TrimSpace(mustRun(t, alice, "offer", "firehose", "--to", "bob"))
	var addr string
	for deadline := time.Now().Add(20 * time.Second); addr == ""; time.Sleep(50 * time.Millisecond) { // the offer may be on its way
		if code, out := run(t, bob, "accept", id); code == 0 {
			addr = strings.TrimSpace(out)
		} else if time.Now().After(deadline) {
			t.Fatalf("accept: %s", out)
		}
	}
	readFrom := func(n int64) (net.Conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := bobH.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.CopyN(io.Discard, c, n); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
	c, err := readFrom(4 << 20)
	if err != nil {
		f.problem("before the flush: %v", err)
		return f
	}
	if p := tubePath(t, bob, id); p != "relay" {
		f.problem("the tube went %s, not through the relay", p)
	}
	for _, r := range []*netns.Host{lanA.Router(), lanB.Router()} {
		if out, err := r.Command(context.Background(), conntrack, "-F").CombinedOutput(); err != nil {
			t.Fatalf("conntrack -F: %v: %s", err, out)
		}
	}
	flushed := time.Now()
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.CopyN(io.Discard, c, 16<<20); err == nil {
		f.ended = "kept flowing: 16 MiB more read after the flush"
		c.Close()
	} else {
		c.Close()
		if err == io.EOF {
			err = nil
		}
		f.ended = how(err)
		if f.ended != "reset" {
			f.problem("after the flush the reading application saw %s, not a reset", f.ended)
		}
	}
	comeBack(&f, flushed, func() error {
		c, err := readFrom(1 << 20)
		if err == nil {
			c.Close()
		}
		return err
	})
	f.note = "the routers forget every mapping: each daemon's connections to the relay fall silent, and each finds its own dead " +
		"(its connection to the rendezvous by the NATS ping, every 5 s, once every 15 s, when this took 18 s; the relayed link by its keepalive) before the tube can be linked again"
	return f
}
