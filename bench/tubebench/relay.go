package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tubes-dev/tubes/internal/turntest"
	"github.com/tubes-dev/tubes/relay"
	"github.com/tubes-dev/tubes/turnclient"
)

// benchSecret is the TURN REST secret of both TURN servers in the run.
const benchSecret = "tubebench-secret"

// startCoturn runs coturn (RFC 6062 TCP relaying, REST credentials) on a
// free loopback port and returns its address and pid.
func (b *bench) startCoturn() (string, int, error) {
	port := freePort()
	cmd, _, err := b.start("", "turnserver", turntest.CoturnArgs("127.0.0.1", port, "tubebench", turntest.Options{Secret: benchSecret})...)
	if err != nil {
		return "", 0, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	return addr, cmd.Process.Pid, waitListen(addr)
}

// serveTURNEcho (a helper process, so that its sockets do not count
// against the benchmark's descriptors) makes allocs TCP allocations on the
// TURN server, prints their relayed addresses (comma-separated), and echoes
// every peer connecting to them: one relayed TCP connection per peer
// connection. Several allocations, as a relay serving many users has: a
// TURN relay bounds the connections of one allocation (pion keeps them in
// a list it scans for each new one).
func serveTURNEcho(server string, allocs int) error {
	raiseFileLimit()
	ctx := context.Background()
	user, pass := relay.RESTCredentials(benchSecret, "bench", time.Hour, time.Now())
	var addrs []string
	errs := make(chan error, allocs)
	for range allocs {
		c, err := turnclient.Allocate(ctx, turnclient.Config{Server: server, Username: user, Password: pass})
		if err != nil {
			return err
		}
		defer c.Close()
		if err := c.Permit(ctx, netip.MustParseAddr("127.0.0.1")); err != nil {
			return err
		}
		addrs = append(addrs, c.RelayedAddr().String())
		go func() { errs <- echoAttempts(ctx, c, server) }()
	}
	fmt.Printf("relayed: %s\n", strings.Join(addrs, ","))
	return <-errs
}

// echoAttempts binds every connection attempt on c's allocation and
// echoes it.
func echoAttempts(ctx context.Context, c *turnclient.Client, server string) error {
	for {
		a, err := c.NextAttempt(ctx)
		if err != nil {
			return err
		}
		go func() {
			d, err := c.Bind(ctx, a)
			if err != nil {
				log.Printf("bind a relayed connection on %s: %v", server, err)
				return
			}
			defer d.Close()
			// A plain copy: no splice pipes (two descriptors) per connection.
			io.CopyBuffer(struct{ io.Writer }{d}, struct{ io.Reader }{d}, make([]byte, 2048))
		}()
	}
}

// echoAllocs is how many allocations the relayed connections are spread
// over: one per thousand.
func echoAllocs() int { return max(1, (*concurrent+999)/1000) }

// relayRows measures the relay path: one TCP stream through a TURN TCP
// allocation on our relay and on coturn, tubes forced onto the relay path
// through each, relay memory per relayed connection, and many relayed
// connections held by one relay.
func (b *bench) relayRows(ctx context.Context, r relayRun) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	servers := []struct{ name, addr string }{{"tube relay", r.ourTURN}, {"coturn", r.coturn}}

	// (a) The relay alone: a peer streams to a TURN client through the
	// client's allocation, both ends in this process, beside the same
	// stream over plain loopback.
	best := map[string]float64{}
	for round := 0; round < 2; round++ {
		bps, err := streamRaw(*seconds)
		if err != nil {
			return err
		}
		best["raw"] = max(best["raw"], bps)
		for _, s := range servers {
			bps, err := streamRelayed(ctx, s.addr, *seconds)
			if err != nil {
				return fmt.Errorf("a stream through %s: %w", s.name, err)
			}
			best[s.name] = max(best[s.name], bps)
		}
	}
	b.rows = append(b.rows, "", "| one TCP stream through a TURN TCP allocation (peer → relay → TURN client) | throughput | × coturn | × raw loopback |", "| --- | --- | --- | --- |",
		fmt.Sprintf("| raw loopback (same harness, no relay) | %.2f Gbit/s | | 1.00 |", best["raw"]/1e9))
	for _, s := range servers {
		b.rows = append(b.rows, fmt.Sprintf("| %s | %.2f Gbit/s | %.2f | %.2f |", s.name, best[s.name]/1e9, best[s.name]/best["coturn"], best[s.name]/best["raw"]))
	}

	// (b) Tubes forced onto the relay path, and new-connection latency
	// through them.
	tubes := map[string]float64{}
	for round := 0; round < 2; round++ {
		for i, s := range servers {
			bps, err := iperf(r.tubeIperf[i], *seconds)
			if err != nil {
				return fmt.Errorf("iperf3 through a tube relayed by %s: %w", s.name, err)
			}
			tubes[s.name] = max(tubes[s.name], bps)
		}
	}
	b.rows = append(b.rows, "", "| tube on the relay path (TURN server) | throughput, one stream (iperf3) | × coturn | × raw loopback | connect+echo+close p50 | p99 |", "| --- | --- | --- | --- | --- | --- |")
	for i, s := range servers {
		p50, p99, err := probe(r.tubeEcho[i], *tries)
		if err != nil {
			return fmt.Errorf("latency through a tube relayed by %s: %w", s.name, err)
		}
		b.rows = append(b.rows, fmt.Sprintf("| %s | %.2f Gbit/s | %.2f | %.2f | %s | %s |", s.name, tubes[s.name]/1e9,
			tubes[s.name]/tubes["coturn"], tubes[s.name]/r.raw, ms(p50), ms(p99)))
	}

	// Memory and scale: connections through an allocation, each bound
	// and forwarded to the echo server.
	echo := make([]string, len(servers))
	self, _ := os.Executable()
	for i, s := range servers {
		_, a, err := b.start("relayed: ", self, "-turn-echo", s.addr, "-turn-echo-allocs", strconv.Itoa(echoAllocs()))
		if err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		echo[i] = a
	}
	b.rows = append(b.rows, "", fmt.Sprintf("| relay memory per relayed TCP connection (%d held open, each bound and echoing) | RSS growth per connection |", *idle), "| --- | --- |")
	for i, pid := range []int{r.ourPID, r.coturnPID} {
		mem, err := idleMemory(echo[i], *idle, []int{pid})
		if err != nil {
			return fmt.Errorf("idle relayed connections through %s: %w", servers[i].name, err)
		}
		b.rows = append(b.rows, fmt.Sprintf("| %s | %.1f KiB |", servers[i].name, mem[0]))
	}
	// Each relayed connection is two sockets in the relay; stay under
	// the descriptor limit every process here shares.
	var lim syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	held := min(*concurrent, int(lim.Cur-300)/2)
	note := ""
	if held < *concurrent {
		note = fmt.Sprintf(" (%d asked; the descriptor limit here, %d, allows two sockets each for %d)", *concurrent, lim.Cur, held)
	}
	allocs := echoAllocs()
	b.rows = append(b.rows, "", fmt.Sprintf("| relayed TCP connections held by one relay over %d allocations, each echoing 64 checked bytes, all open at once%s | opened and checked | errors | time |", allocs, note), "| --- | --- | --- | --- |")
	for i, s := range servers {
		// A relay lets a user keep only so many peer connections waiting
		// for ConnectionBind: each connection is confirmed (one echoed
		// byte, so bound) before the next batch opens.
		okN, errs, took, err := concurrencyBound(echo[i], held, 32)
		if err != nil {
			return err
		}
		b.rows = append(b.rows, fmt.Sprintf("| %d through %s | %d | %d | %s |", held, s.name, okN, errs, took.Round(time.Millisecond)))
		if i == 0 && errs > 0 {
			return fmt.Errorf("%d of %d relayed connections failed", errs, held)
		}
	}
	return b.allocationRows(ctx, servers)
}

// streamFor writes to w as fast as it can while r is read for secs
// seconds (after a short warm-up), and returns the rate the reader saw
// in bit/s.
func streamFor(w, r net.Conn, secs int) (float64, error) {
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		buf := make([]byte, 128<<10)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := w.Write(buf); err != nil {
				return
			}
		}
	}()
	buf := make([]byte, 128<<10)
	read := func(d time.Duration) (int64, error) {
		r.SetReadDeadline(time.Now().Add(d))
		var n int64
		for {
			m, err := r.Read(buf)
			n += int64(m)
			if err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					return n, nil
				}
				return n, err
			}
		}
	}
	if _, err := read(200 * time.Millisecond); err != nil {
		return 0, err
	}
	t0 := time.Now()
	n, err := read(time.Duration(secs) * time.Second)
	if err != nil {
		return 0, err
	}
	return float64(n) * 8 / time.Since(t0).Seconds(), nil
}

// streamRaw measures one stream over plain loopback TCP.
func streamRaw(secs int) (float64, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	w, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return 0, err
	}
	defer w.Close()
	r, err := ln.Accept()
	if err != nil {
		return 0, err
	}
	defer r.Close()
	return streamFor(w, r, secs)
}

// streamRelayed measures one stream from a peer through a TURN TCP
// allocation on server to the allocation's client.
func streamRelayed(ctx context.Context, server string, secs int) (float64, error) {
	user, pass := relay.RESTCredentials(benchSecret, "bench-stream", time.Hour, time.Now())
	c, err := turnclient.Allocate(ctx, turnclient.Config{Server: server, Username: user, Password: pass})
	if err != nil {
		return 0, err
	}
	defer c.Close()
	if err := c.Permit(ctx, netip.MustParseAddr("127.0.0.1")); err != nil {
		return 0, err
	}
	w, err := net.Dial("tcp", c.RelayedAddr().String())
	if err != nil {
		return 0, err
	}
	defer w.Close()
	r, err := c.Accept(ctx)
	if err != nil {
		return 0, err
	}
	defer r.Close()
	return streamFor(w, r.TCPConn, secs)
}

// relayRun is what relayRows measures against.
type relayRun struct {
	ourTURN, coturn     string
	ourPID, coturnPID   int
	tubeIperf, tubeEcho [2]string // our relay, coturn
	raw                 float64   // raw loopback iperf3 throughput, bit/s
}

// allocationRows measures TURN allocations on each server: how many per
// second a client can make and end (control connection, the 401
// challenge, Allocate, Refresh 0), sixteen at a time; and how many one
// server holds open at once, each a control connection and a relayed
// port.
func (b *bench) allocationRows(ctx context.Context, servers []struct{ name, addr string }) error {
	rate, held := 1000, 1000
	if *smoke {
		rate, held = 20, 50
	}
	b.rows = append(b.rows, "", fmt.Sprintf("| TURN TCP allocations | made and ended per second (%d, 16 at a time) | held open at once (%d asked, each its own user) |", rate, held), "| --- | --- | --- |")
	for _, s := range servers {
		perSec, err := allocationRate(ctx, s.addr, rate, 16)
		if err != nil {
			return fmt.Errorf("allocations on %s: %w", s.name, err)
		}
		clients, err := holdAllocations(ctx, s.addr, held, 16)
		for _, c := range clients {
			c.Close()
		}
		if err != nil {
			return fmt.Errorf("holding allocations on %s: %w", s.name, err)
		}
		b.rows = append(b.rows, fmt.Sprintf("| %s | %.0f | %d |", s.name, perSec, len(clients)))
	}
	return nil
}

// allocationRate makes and ends n allocations on server, parallel at a
// time, and returns how many per second.
func allocationRate(ctx context.Context, server string, n, parallel int) (float64, error) {
	jobs := make(chan int)
	errs := make(chan error, parallel)
	t0 := time.Now()
	for w := range parallel {
		go func() {
			user, pass := relay.RESTCredentials(benchSecret, fmt.Sprintf("bench-rate-%d", w), time.Hour, time.Now())
			for range jobs {
				c, err := turnclient.Allocate(ctx, turnclient.Config{Server: server, Username: user, Password: pass})
				if err != nil {
					errs <- err
					for range jobs {
					}
					return
				}
				c.Close()
			}
			errs <- nil
		}()
	}
	for i := range n {
		jobs <- i
	}
	close(jobs)
	var first error
	for range parallel {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return float64(n) / time.Since(t0).Seconds(), first
}

// holdAllocations makes n allocations on server (each under a user of
// its own: a relay bounds one user's allocations) and returns them open.
func holdAllocations(ctx context.Context, server string, n, parallel int) ([]*turnclient.Client, error) {
	out := make([]*turnclient.Client, n)
	errs := make(chan error, n)
	sem := make(chan struct{}, parallel)
	for i := range n {
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			user, pass := relay.RESTCredentials(benchSecret, fmt.Sprintf("bench-hold-%d", i), time.Hour, time.Now())
			c, err := turnclient.Allocate(ctx, turnclient.Config{Server: server, Username: user, Password: pass})
			out[i] = c
			errs <- err
		}()
	}
	var first error
	for range n {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	held := out[:0]
	for _, c := range out {
		if c != nil {
			held = append(held, c)
		}
	}
	return held, first
}
