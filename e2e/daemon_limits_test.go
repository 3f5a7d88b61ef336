package e2e

// The daemon's limits attacked with the real binary: its peer-link
// listener from sources of their own, its descriptors, its memory.

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/internal/testenv"
	"github.com/tubes-dev/tubes/internal/tubetest"
	"github.com/tubes-dev/tubes/localclient"
)

// One source holding idle connections to a daemon's peer-link listener
// gets its handshake cap and no more: the rest are reset at once. A
// contact from another address links directly meanwhile, and once the
// attacker leaves its address is let in again, with no restart.
func TestPeerLinkHandshakesPerSource(t *testing.T) {
	const perSource, attack = 4, 20
	peer := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	httpAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	_, alice, bob := contacts(t, "--peer-listen", peer, "--http", httpAddr,
		"--link-handshakes-per-source", strconv.Itoa(perSource),
		"--link-handshake-timeout", "10m") // only the cap can end them during the test

	var idle []net.Conn
	defer func() { closeAll(idle) }()
	for range attack {
		if c, err := dialFrom("127.0.0.2", peer); err == nil {
			idle = append(idle, c)
		}
	}
	waitMetric(t, httpAddr, "tubes_link_handshakes_refused_total", equal(attack-perSource))
	if v, _ := metric(t, httpAddr, "tubes_link_handshakes"); v != perSource {
		t.Fatalf("%v handshakes held, want the cap of %d", v, perSource)
	}
	// The attacker sees its connections over the cap end.
	if open := stillOpen(idle); open != perSource {
		t.Fatalf("%d of the attacker's connections are open, want the cap of %d", open, perSource)
	}

	echoDirect(t, alice, bob, "during") // bob dials from 127.0.0.1

	closeAll(idle)
	idle = nil
	waitMetric(t, httpAddr, "tubes_link_handshakes", equal(0))
	c, err := dialFrom("127.0.0.2", peer)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitMetric(t, httpAddr, "tubes_link_handshakes", equal(1))
	if v, _ := metric(t, httpAddr, "tubes_link_handshakes_refused_total"); v != attack-perSource {
		t.Fatalf("the attacker's address was refused after it left (%v refusals)", v)
	}
}

// A burst of idle connects that exhausts a daemon's descriptors does not
// kill its peer-link listener: its accept loop returned on the first
// EMFILE, and no contact reached the daemon directly again until it was
// restarted. The daemon is left 16 descriptors above what it holds
// (prlimit), four sources of attackers take more than that, all under the
// per-source cap; once they close, a contact links directly.
func TestDaemonSurvivesDescriptorExhaustion(t *testing.T) {
	prlimit := testenv.MustHaveCommand(t, "prlimit")
	peer := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	aliceProc, alice, bob := contacts(t, "--peer-listen", peer)
	pid := aliceProc.cmd.Process.Pid
	limit := openFiles(t, pid) + 16
	if out, err := exec.Command(prlimit, "--pid", strconv.Itoa(pid), fmt.Sprintf("--nofile=%d:%d", limit, limit)).CombinedOutput(); err != nil {
		t.Fatalf("prlimit: %v: %s", err, out)
	}

	var idle []net.Conn
	defer func() { closeAll(idle) }()
	for i := range 32 { // 4 sources of 8, the default per-source cap
		if c, err := dialFrom(fmt.Sprintf("127.0.0.%d", 2+i%4), peer); err == nil {
			idle = append(idle, c)
		}
	}
	aliceProc.waitContains("accept failed; trying again") // EMFILE reached, and ridden out
	closeAll(idle)
	idle = nil

	echoDirect(t, alice, bob, "after")
}

// A contact opening many connections to a service that does not read
// makes the offering daemon hold at most the link's receive budget, not a
// stream window per connection: 64 writers once grew it by 256 MiB (4 MiB
// each). The daemon's resident memory stays within four budgets of what
// it was before (the budget itself, buffers, the collector's headroom).
// The binary is built without -race, so the figure is a real one.
func TestLinkReceiveBudgetBoundsMemory(t *testing.T) {
	const (
		conns  = 64
		budget = 16 << 20              // README's limits table
		most   = budget + conns*64<<10 // and each stream's reserve
	)
	httpAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	aliceProc, alice, bob := contacts(t, "--http", httpAddr)

	held := make(chan net.Conn, conns)
	l := serveTCP(t, func(c net.Conn) {
		c.(*net.TCPConn).SetReadBuffer(4 << 10) // keep the kernel's share small
		held <- c
		<-t.Context().Done()
	})
	addr := offerAccepted(t, alice, bob, "sink", l.Addr().String(), "auto")
	before := rss(t, aliceProc.cmd.Process.Pid)

	var wg sync.WaitGroup
	var writers []net.Conn
	defer func() {
		closeAll(writers)
		wg.Wait()
	}()
	chunk := make([]byte, 256<<10)
	for range conns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		writers = append(writers, c)
		wg.Go(func() {
			for {
				if _, err := c.Write(chunk); err != nil {
					return
				}
			}
		})
	}
	for range conns {
		select {
		case <-held:
		case <-time.After(30 * time.Second):
			t.Fatal("the service never saw every connection")
		}
	}
	// The writers fill the kernel's buffers, then the link's budget.
	got := waitMetric(t, httpAddr, "tubes_link_receive_bytes", func(v float64) bool { return v >= budget*3/4 })
	after := rss(t, aliceProc.cmd.Process.Pid)
	if v, _ := metric(t, httpAddr, "tubes_link_receive_bytes"); v > most || got > most {
		t.Errorf("the daemon holds %v bytes for the link, over its budget and the streams' reserves (%d)", max(v, got), most)
	}
	t.Logf("daemon RSS %d MiB before, %d MiB with %d connections not read (%.0f bytes held)", before>>20, after>>20, conns, got)
	if after-before > 4*budget {
		t.Errorf("the daemon grew by %d MiB, over four receive budgets", (after-before)>>20)
	}
}

// echoDirect offers an echo service from alice to bob on the direct path
// only, and checks bytes through it: bob's daemon must have linked
// directly to alice's.
func echoDirect(t *testing.T, alice, bob []string, name string) {
	t.Helper()
	l := serveTCP(t, func(c net.Conn) { io.Copy(c, c) })
	addr := offerAccepted(t, alice, bob, "echo-"+name, l.Addr().String(), "direct")
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(c, "ping"); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "ping" {
		t.Fatalf("%s: through the direct tube: %q, %v", name, b, err)
	}
}

// offerAccepted exports target at alice as service, offers it to bob on
// path, and returns the local address bob's accept gives.
func offerAccepted(t *testing.T, alice, bob []string, service, target, path string) string {
	t.Helper()
	bc := localclient.New(strings.TrimPrefix(bob[0], "TUBE_SOCKET="))
	defer bc.Close()
	ev := tubetest.Record(t, bc, "bob")
	defer ev.Close()
	mustRun(t, alice, "export", service, "--tcp", target)
	id := strings.TrimSpace(mustRun(t, alice, "offer", service, "--to", "bob", "--path", path))
	ev.MustWait("the offer", func(e api.Event) bool { return e.Type == api.EventNewTube && e.TubeID == id })
	return strings.TrimSpace(mustRun(t, bob, "accept", id))
}

// stillOpen counts the connections that a read does not end within a
// second: the server holds them.
func stillOpen(cs []net.Conn) int {
	var n atomic.Int32
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Go(func() {
			c.SetReadDeadline(time.Now().Add(time.Second))
			if _, err := c.Read(make([]byte, 1)); isTimeout(err) {
				n.Add(1)
			}
			c.SetReadDeadline(time.Time{})
		})
	}
	wg.Wait()
	return int(n.Load())
}

func closeAll(cs []net.Conn) {
	for _, c := range cs {
		c.Close()
	}
}

// openFiles is how many descriptors process pid has open.
func openFiles(t *testing.T, pid int) int {
	t.Helper()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(fds)
}

// rss is process pid's resident set size in bytes.
func rss(t *testing.T, pid int) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatalf("VmRSS %q", v)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS")
	return 0
}
