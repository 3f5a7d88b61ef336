package netns

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// blockedTimeout is how long a connection that must not happen may take
// to fail: dropped packets fail by timing out, and a working connection
// inside a lab takes well under a millisecond.
const blockedTimeout = 300 * time.Millisecond

// serveSource listens on h, at port 0 of all its IPv4 addresses, and
// answers each connection with the connection's source address, then
// closes it. It returns the port.
func serveSource(t *testing.T, h *Host) uint16 {
	t.Helper()
	ln, err := h.Listen("tcp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s\n", c.RemoteAddr())
			c.Close()
		}
	}()
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

// source connects from h to a serveSource listener at addr and returns
// the source address the listener saw.
func source(t *testing.T, h *Host, addr netip.AddrPort) netip.AddrPort {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	c, err := h.DialContext(ctx, "tcp4", addr.String())
	if err != nil {
		t.Fatalf("%s cannot connect to %s: %v", h.Name, addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("%s connected to %s but read nothing: %v", h.Name, addr, err)
	}
	src, err := netip.ParseAddrPort(strings.TrimSpace(line))
	if err != nil {
		t.Fatal(err)
	}
	return src
}

// mustNotConnect fails the test if h can connect to addr.
func mustNotConnect(t *testing.T, h *Host, addr netip.AddrPort) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), blockedTimeout)
	defer cancel()
	c, err := h.DialContext(ctx, "tcp4", addr.String())
	if err == nil {
		c.Close()
		t.Errorf("%s connected to %s, want no connection", h.Name, addr)
		return
	}
	t.Logf("%s to %s: %v", h.Name, addr, err)
}

// mustRun runs a command inside h and fails the test if it fails.
func (h *Host) mustRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := h.Command(t.Context(), name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("in %s: %s %s: %v: %s", h.Name, name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestMasquerade connects from a LAN host to a public host, over TCP and
// UDP, and checks that the public host sees the router's public address.
func TestMasquerade(t *testing.T) {
	t.Parallel()
	start := time.Now()
	lab := New(t)
	server := lab.Public("server")
	lab.Public("other")
	home := lab.LAN("home")
	client := home.Host("client")
	home.Host("sibling")
	work := lab.LAN("work")
	work.Host("desk")
	t.Logf("built a lab of 8 namespaces (core, 2 public hosts, 2 routers, 3 LAN hosts) in %v", time.Since(start))

	port := serveSource(t, server)
	src := source(t, client, netip.AddrPortFrom(server.IP, port))
	if src.Addr() != home.PublicIP() {
		t.Errorf("server saw a TCP connection from %v, want the router's public address %v", src, home.PublicIP())
	}
	if !home.PublicIP().IsValid() || !publicNet.Contains(home.PublicIP()) {
		t.Errorf("router's public address %v is not in %v", home.PublicIP(), publicNet)
	}

	// UDP: the server sees the public address, and its reply comes back.
	sc, err := server.ListenPacket("udp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	cc, err := client.ListenPacket("udp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	sc.SetDeadline(time.Now().Add(5 * time.Second))
	cc.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := cc.WriteTo([]byte("ping"), &net.UDPAddr{IP: server.IP.AsSlice(), Port: sc.LocalAddr().(*net.UDPAddr).Port}); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	n, from, err := sc.ReadFrom(buf)
	if err != nil {
		t.Fatalf("server received no UDP datagram: %v", err)
	}
	if got := from.(*net.UDPAddr).AddrPort().Addr().Unmap(); got != home.PublicIP() || string(buf[:n]) != "ping" {
		t.Errorf("server received %q from %v, want \"ping\" from %v", buf[:n], from, home.PublicIP())
	}
	if _, err := sc.WriteTo([]byte("pong"), from); err != nil {
		t.Fatal(err)
	}
	n, _, err = cc.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "pong" {
		t.Errorf("client got %q, %v for the server's reply, want \"pong\"", buf[:n], err)
	}
}

// TestNoInbound checks that a public host can reach a LAN host neither by
// its private address (not even with a route to the LAN via the router)
// nor at the router's public address: the NAT forwards no ports.
func TestNoInbound(t *testing.T) {
	t.Parallel()
	lab := New(t)
	outside := lab.Public("outside")
	home := lab.LAN("home")
	inside := home.Host("inside")
	port := serveSource(t, inside)
	private := netip.AddrPortFrom(inside.IP, port)

	// The listener works: the router, inside the LAN, reaches it.
	if src := source(t, home.Router(), private); src.Addr() != netip.MustParseAddr("10.1.0.1") {
		t.Errorf("LAN host saw the router's connection from %v, want 10.1.0.1", src)
	}

	public := netip.AddrPortFrom(home.PublicIP(), port)
	mustNotConnect(t, outside, private)
	mustNotConnect(t, outside, public)

	// A neighbour on the router's link can send it packets for the LAN;
	// the router's firewall drops them.
	prefix := netip.PrefixFrom(inside.IP, 24).Masked()
	outside.mustRun(t, "ip", "route", "add", prefix.String(), "via", home.PublicIP().String())
	mustNotConnect(t, outside, private)

	// And it is that firewall rule that drops them: without it, they get
	// through. Even then, no port of the router leads into the LAN.
	home.Router().mustRun(t, lab.iptables, "-D", "FORWARD", "-i", "wan0", "-m", "conntrack", "!", "--ctstate", "ESTABLISHED,RELATED", "-j", "DROP")
	if src := source(t, outside, private); src.Addr() != outside.IP {
		t.Errorf("LAN host saw a connection from %v, want %v", src, outside.IP)
	}
	mustNotConnect(t, outside, public)
}

// TestLANsIsolated checks that a host on one LAN cannot reach a host on
// another LAN by its private address, even if its router routes the other
// LAN's prefix to the other router.
func TestLANsIsolated(t *testing.T) {
	t.Parallel()
	lab := New(t)
	lanA, lanB := lab.LAN("a"), lab.LAN("b")
	a, b := lanA.Host("ha"), lanB.Host("hb")
	if a.IP == b.IP || netip.PrefixFrom(a.IP, 24).Contains(b.IP) {
		t.Fatalf("LAN hosts %v and %v are on the same /24", a.IP, b.IP)
	}
	addr := netip.AddrPortFrom(b.IP, serveSource(t, b))
	mustNotConnect(t, a, addr)

	prefix := netip.PrefixFrom(b.IP, 24).Masked()
	lanA.Router().mustRun(t, "ip", "route", "add", prefix.String(), "via", lanB.PublicIP().String())
	mustNotConnect(t, a, addr)
}

// TestSameLAN checks that two hosts on one LAN reach each other directly,
// each seeing the other's private address.
func TestSameLAN(t *testing.T) {
	t.Parallel()
	lab := New(t)
	lan := lab.LAN("home")
	h1, h2 := lan.Host("h1"), lan.Host("h2")
	for _, p := range [][2]*Host{{h1, h2}, {h2, h1}} {
		from, to := p[0], p[1]
		src := source(t, from, netip.AddrPortFrom(to.IP, serveSource(t, to)))
		if src.Addr() != from.IP {
			t.Errorf("%s saw a connection from %s at %v, want %v", to.Name, from.Name, src, from.IP)
		}
	}
}

// TestLoopback checks that loopback works in every kind of namespace.
func TestLoopback(t *testing.T) {
	t.Parallel()
	lab := New(t)
	lan := lab.LAN("home")
	for _, h := range []*Host{lab.Public("pub"), lan.Router(), lan.Host("host")} {
		lo := netip.MustParseAddr("127.0.0.1")
		ln, err := h.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("cannot listen on loopback in %s: %v", h.Name, err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			if c, err := ln.Accept(); err == nil {
				fmt.Fprintf(c, "%s\n", c.RemoteAddr())
				c.Close()
			}
		}()
		if src := source(t, h, netip.AddrPortFrom(lo, uint16(ln.Addr().(*net.TCPAddr).Port))); src.Addr() != lo {
			t.Errorf("in %s, loopback connection came from %v", h.Name, src)
		}
	}
}

// TestDo checks that Do runs fn inside the namespace, returns its error,
// and passes its panic on.
func TestDo(t *testing.T) {
	t.Parallel()
	lab := New(t)
	h := lab.Public("pub")
	var want, self unix.Stat_t
	if err := unix.Stat(h.path, &want); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat("/proc/thread-self/ns/net", &self); err != nil {
		t.Fatal(err)
	}
	if self.Ino == want.Ino {
		t.Fatal("the test already runs in the host's namespace")
	}
	errFn := errors.New("fn failed")
	err := h.Do(func() error {
		var got unix.Stat_t
		if err := unix.Stat("/proc/thread-self/ns/net", &got); err != nil {
			return err
		}
		if got.Ino != want.Ino {
			return fmt.Errorf("fn runs in network namespace %d, want %d", got.Ino, want.Ino)
		}
		return errFn
	})
	if err != errFn {
		t.Errorf("Do returned %v, want %v", err, errFn)
	}
	func() {
		defer func() {
			if v := recover(); v != "boom" {
				t.Errorf("Do panicked with %v, want boom", v)
			}
		}()
		h.Do(func() error { panic("boom") })
	}()
	if err := (&Host{Name: "missing", path: "/nonexistent"}).Do(func() error { return nil }); err == nil {
		t.Error("Do in a missing namespace succeeded")
	}
}

// TestCleanup checks that no namespace of a lab remains after its test.
func TestCleanup(t *testing.T) {
	t.Parallel()
	var lab *Lab
	var names []string
	t.Run("lab", func(t *testing.T) {
		lab = New(t)
		lan := lab.LAN("home")
		for _, h := range []*Host{lab.Public("pub"), lan.Router(), lan.Host("host")} {
			names = append(names, h.Name)
		}
		if _, err := os.Stat(runDir + lab.id); err != nil {
			t.Errorf("core namespace: %v", err)
		}
		list := netnsList(t)
		for _, n := range names {
			if !strings.Contains(list, n+" ") && !strings.Contains(list, n+"\n") {
				t.Errorf("namespace %s is not in ip netns list:\n%s", n, list)
			}
		}
	})
	if lab == nil {
		t.FailNow()
	}
	list := netnsList(t)
	if strings.Contains(list, lab.id) {
		t.Errorf("namespaces of lab %s remain after its test:\n%s", lab.id, list)
	}
}

// netnsList returns the output of ip netns list.
func netnsList(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v: %s", err, out)
	}
	return string(out)
}
