// Package netns builds NAT topologies out of real Linux network namespaces
// for tests: hosts on a shared "public internet" segment, and private LANs
// behind their own NAT routers. A test talks to its hosts through real
// sockets ([Host.Listen], [Host.DialContext], [Host.ListenPacket]) or runs
// programs inside them ([Host.Command]).
//
// A lab with two public hosts and one LAN of two hosts: each line is a
// namespace's end of a veth pair whose other end is a port of a bridge
// in the lab's core namespace, which does nothing but switch.
//
//	public host  eth0  198.18.0.1  ─┐
//	public host  eth0  198.18.0.2  ─┼─ bridge pub (the public segment)
//	NAT router   wan0  198.18.0.3  ─┘
//	NAT router   lan0  10.1.0.1    ─┐
//	LAN host     eth0  10.1.0.2    ─┼─ bridge lan1 (the LAN)
//	LAN host     eth0  10.1.0.3    ─┘
//
// Every namespace has its loopback up. Public hosts and routers share
// 198.18.0.0/24 (a benchmarking range, RFC 2544, so never a real address);
// public hosts have no default route. LAN number N gets 10.N.0.0/24: its
// router is 10.N.0.1 on interface lan0, its hosts are 10.N.0.2 onwards on
// interface eth0, with a default route via the router. A router has
// net.ipv4.ip_forward=1 and, as a home router does,
//
//	iptables -t nat -A POSTROUTING -o wan0 -j MASQUERADE
//	iptables -A FORWARD -i wan0 -m conntrack ! --ctstate ESTABLISHED,RELATED -j DROP
//
// so connections from the LAN leave with the router's public address, and
// nothing from outside reaches the LAN unless it answers such a connection:
// there is no port forwarding, and even a host that routes the LAN's
// private prefix to the router (as a neighbour on the same link could) gets
// nowhere. Routers have no default route, so LANs cannot reach each other's
// private addresses either.
//
// Interface names are fixed (eth0, wan0, lan0) because every interface is
// created directly inside its namespace; tests may shape them, for example
// with tc netem on a host's eth0.
//
// Namespaces are named "tb" plus eight random hex digits (the core), and
// that plus "-" and the name a test chose (the others), so labs of
// parallel test binaries never collide. The Lab deletes them all when the
// test ends, failed or not; a test binary killed before its cleanups run
// leaves them behind (remove them with ip netns del).
//
// Everything needs root and the ip and iptables commands; without them
// [New] skips the test, or fails it under CI (see package testenv).
package netns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/tubes-dev/tubes/internal/testenv"
	"golang.org/x/sys/unix"
)

// runDir is where ip(8) keeps the names of network namespaces.
const runDir = "/var/run/netns/"

// publicNet is the public segment's prefix.
var publicNet = netip.MustParsePrefix("198.18.0.0/24")

// labIDs holds the ids of this process's labs, so no two are the same.
var labIDs struct {
	sync.Mutex
	used map[string]bool
}

// Lab is a set of network namespaces that make up one topology. Its
// methods call t.Fatal on failure, so call them from the test's goroutine.
// All its namespaces are removed when the test ends.
type Lab struct {
	t  testing.TB
	id string // also the core namespace's name

	mu       sync.Mutex
	names    map[string]bool // names given by the test
	created  []string        // namespaces made, to delete
	ports    int             // veth ports on the core's bridges
	public   int             // last host number used on publicNet
	lans     int             // LANs made
	iptables string          // "iptables", or "iptables-legacy" if only that works
}

// New returns an empty Lab (just its core namespace with the public
// segment) whose namespaces are deleted when t ends. It skips t (fails it
// under CI) unless the test runs as root with ip and iptables installed.
func New(t testing.TB) *Lab {
	t.Helper()
	testenv.MustHaveRoot(t)
	testenv.MustHaveCommand(t, "ip")
	testenv.MustHaveCommand(t, "iptables")

	labIDs.Lock()
	if labIDs.used == nil {
		labIDs.used = map[string]bool{}
	}
	var id string
	for id == "" || labIDs.used[id] {
		id = fmt.Sprintf("tb%08x", rand.Uint32())
	}
	labIDs.used[id] = true
	labIDs.Unlock()

	l := &Lab{t: t, id: id, names: map[string]bool{}}
	t.Cleanup(l.cleanup)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.addNS(id)
	l.batch(id, "link set lo up\nlink add pub type bridge\nlink set pub up\n")
	return l
}

// Host is a network namespace with one address.
type Host struct {
	// Name is the network namespace's name, as ip netns uses it.
	Name string
	// IP is the host's address: on the public segment for a public host or
	// a router, on its LAN for a LAN host.
	IP netip.Addr

	path string // the namespace's file
}

// LAN is a private network behind its own NAT router.
type LAN struct {
	lab    *Lab
	n      int // the LAN's number: its prefix is 10.n.0.0/24
	hosts  int // last host number used
	router *Host
}

// Public adds a host on the public segment, with the next free address in
// 198.18.0.0/24. The namespace is named after name, which must be unique
// in the Lab.
func (l *Lab) Public(name string) *Host {
	l.t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	ns := l.addNS(l.nsName(name))
	ip := l.nextPublic()
	l.batch(l.id, l.plug(ns, "eth0", "pub"))
	l.batch(ns, fmt.Sprintf("link set lo up\nlink set eth0 up\naddr add %s/24 dev eth0\n", ip))
	return &Host{Name: ns, IP: ip, path: runDir + ns}
}

// LAN adds a private LAN, 10.N.0.0/24 with N unique in the Lab, behind a
// NAT router with the next free public address. The router's namespace is
// named after name, which must be unique in the Lab. The LAN has no hosts
// until [LAN.Host] adds them.
func (l *Lab) LAN(name string) *LAN {
	l.t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	ns := l.nsName(name)
	if l.lans == 254 {
		l.t.Fatalf("netns: cannot add LAN %q, the lab has 254 already", name)
	}
	l.lans++
	n := &LAN{lab: l, n: l.lans, hosts: 1}
	l.addNS(ns)
	pub := l.nextPublic()
	br := fmt.Sprintf("lan%d", n.n)
	l.batch(l.id, fmt.Sprintf("link add %s type bridge\nlink set %s up\n", br, br)+
		l.plug(ns, "wan0", "pub")+l.plug(ns, "lan0", br))
	l.batch(ns, fmt.Sprintf("link set lo up\n"+
		"link set wan0 up\naddr add %s/24 dev wan0\n"+
		"link set lan0 up\naddr add %s/24 dev lan0\n", pub, n.addr(1)))
	n.router = &Host{Name: ns, IP: pub, path: runDir + ns}
	err := n.router.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0)
	})
	if err != nil {
		l.t.Fatalf("netns: cannot enable IP forwarding in %s: %v", ns, err)
	}
	l.runIptables(ns, "-t", "nat", "-A", "POSTROUTING", "-o", "wan0", "-j", "MASQUERADE")
	l.runIptables(ns, "-A", "FORWARD", "-i", "wan0", "-m", "conntrack", "!", "--ctstate", "ESTABLISHED,RELATED", "-j", "DROP")
	return n
}

// Host adds a host to the LAN, with the LAN's next free address and a
// default route via the router. The namespace is named after name, which
// must be unique in the Lab.
func (n *LAN) Host(name string) *Host {
	l := n.lab
	l.t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	ns := l.nsName(name)
	if n.hosts == 254 {
		l.t.Fatalf("netns: cannot add host %q, LAN %s is full", name, n.router.Name)
	}
	n.hosts++
	ip := n.addr(n.hosts)
	l.addNS(ns)
	l.batch(l.id, l.plug(ns, "eth0", fmt.Sprintf("lan%d", n.n)))
	l.batch(ns, fmt.Sprintf("link set lo up\nlink set eth0 up\naddr add %s/24 dev eth0\n"+
		"route add default via %s\n", ip, n.addr(1)))
	return &Host{Name: ns, IP: ip, path: runDir + ns}
}

// PublicIP returns the router's public address: the source address public
// hosts see on connections from the LAN.
func (n *LAN) PublicIP() netip.Addr { return n.router.IP }

// Router returns the LAN's NAT router, whose IP is its public address.
func (n *LAN) Router() *Host { return n.router }

// addr returns host number i of the LAN.
func (n *LAN) addr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(n.n), 0, byte(i)})
}

// Command returns a command that runs the named program inside the host's
// namespace (with ip netns exec), killed if ctx is done before it exits.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.Name, name}, args...)...)
}

// Do calls fn on an OS thread switched into the host's network namespace
// and returns its error. Sockets fn creates stay in that namespace (and
// may be used from any goroutine afterwards), but goroutines fn starts
// run outside it, and so may name lookups: use IP addresses. If fn panics
// or calls runtime.Goexit, so does Do.
//
// The thread is switched back before other goroutines may use it; if that
// fails, the thread is never reused, it ends with fn's goroutine.
func (h *Host) Do(fn func() error) error {
	type result struct {
		err      error
		panicked bool
		value    any
		exited   bool // by runtime.Goexit
	}
	done := make(chan result, 1)
	go func() {
		r := result{exited: true}
		defer func() {
			if v := recover(); v != nil {
				r = result{panicked: true, value: v}
			}
			done <- r
		}()
		r = result{err: h.do(fn)}
	}()
	r := <-done
	switch {
	case r.panicked:
		panic(r.value)
	case r.exited:
		runtime.Goexit()
	}
	return r.err
}

// do calls fn inside the host's namespace on the calling goroutine's
// thread, which it locks, and unlocks only if the thread is back in its
// own namespace when do returns.
func (h *Host) do(fn func() error) error {
	runtime.LockOSThread()
	self, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netns: cannot open the thread's own network namespace: %w", err)
	}
	defer unix.Close(self)
	target, err := unix.Open(h.path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netns: cannot open network namespace %s: %w", h.Name, err)
	}
	err = unix.Setns(target, unix.CLONE_NEWNET)
	unix.Close(target)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netns: cannot enter network namespace %s: %w", h.Name, err)
	}
	defer func() {
		if unix.Setns(self, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
	}()
	return fn()
}

// Listen is [net.Listen] inside the host's namespace.
func (h *Host) Listen(network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := h.Do(func() (err error) {
		ln, err = net.Listen(network, addr)
		return err
	})
	return ln, err
}

// ListenPacket is [net.ListenPacket] inside the host's namespace.
func (h *Host) ListenPacket(network, addr string) (net.PacketConn, error) {
	var c net.PacketConn
	err := h.Do(func() (err error) {
		c, err = net.ListenPacket(network, addr)
		return err
	})
	return c, err
}

// DialContext is [net.Dialer.DialContext] inside the host's namespace,
// without the dual-stack fallback (which would dial from other threads).
func (h *Host) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := h.Do(func() (err error) {
		d := net.Dialer{FallbackDelay: -1}
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// nsName returns the namespace name for a name given by the test, failing
// the test if the name is invalid or already used.
func (l *Lab) nsName(name string) string {
	l.t.Helper()
	ok := name != "" && len(name) <= 32
	for _, c := range name {
		ok = ok && (c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_')
	}
	if !ok {
		l.t.Fatalf("netns: invalid name %q, want 1 to 32 letters, digits, - or _", name)
	}
	if l.names[name] {
		l.t.Fatalf("netns: name %q is already used in this lab", name)
	}
	l.names[name] = true
	return l.id + "-" + name
}

// nextPublic returns the next free address on the public segment.
func (l *Lab) nextPublic() netip.Addr {
	l.t.Helper()
	if l.public == 254 {
		l.t.Fatalf("netns: the public segment %s is full", publicNet)
	}
	l.public++
	a := publicNet.Addr().As4()
	a[3] = byte(l.public)
	return netip.AddrFrom4(a)
}

// addNS creates a namespace and records it for deletion.
func (l *Lab) addNS(ns string) string {
	l.t.Helper()
	if err := run("", "ip", "netns", "add", ns); err != nil {
		l.t.Fatal(err)
	}
	l.created = append(l.created, ns)
	return ns
}

// plug returns the commands, to run in the core namespace, that connect
// namespace ns to the core's bridge br by a veth pair whose end in ns is
// named ifname (and left down).
func (l *Lab) plug(ns, ifname, br string) string {
	l.ports++
	port := fmt.Sprintf("v%d", l.ports)
	return fmt.Sprintf("link add %s type veth peer name %s netns %s\nlink set %s master %s up\n",
		port, ifname, ns, port, br)
}

// batch runs ip commands, one a line, inside namespace ns.
func (l *Lab) batch(ns, script string) {
	l.t.Helper()
	if err := run(script, "ip", "-n", ns, "-batch", "-"); err != nil {
		l.t.Fatal(err)
	}
}

// runIptables runs iptables inside namespace ns. The first call picks the
// variant: iptables, or iptables-legacy if only that works.
func (l *Lab) runIptables(ns string, args ...string) {
	l.t.Helper()
	cmd := func(prog string) error {
		return run("", "ip", append([]string{"netns", "exec", ns, prog}, args...)...)
	}
	if l.iptables != "" {
		if err := cmd(l.iptables); err != nil {
			l.t.Fatal(err)
		}
		return
	}
	err := cmd("iptables")
	if err == nil {
		l.iptables = "iptables"
		return
	}
	if _, lerr := exec.LookPath("iptables-legacy"); lerr != nil {
		l.t.Fatal(err)
	}
	if lerr := cmd("iptables-legacy"); lerr != nil {
		l.t.Fatalf("%v; and with iptables-legacy: %v", err, lerr)
	}
	l.t.Logf("%v; using iptables-legacy, which works", err)
	l.iptables = "iptables-legacy"
}

// cleanup deletes the lab's namespaces, and with them every interface in
// them. Namespaces still used by a socket or a process live on, nameless,
// until those are gone.
func (l *Lab) cleanup() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.created) == 0 {
		return
	}
	var script strings.Builder
	for i := len(l.created) - 1; i >= 0; i-- {
		fmt.Fprintf(&script, "netns del %s\n", l.created[i])
	}
	if err := run(script.String(), "ip", "-force", "-batch", "-"); err != nil {
		l.t.Errorf("netns: cleanup: %v", err)
	}
	l.created = nil
}

// run runs a command with stdin as its input, and returns an error naming
// the command and holding its stderr if it fails.
func run(stdin, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		msg := fmt.Sprintf("netns: %s failed (%v): %s", strings.Join(cmd.Args, " "), err, strings.TrimSpace(stderr.String()))
		if stdin != "" {
			msg += fmt.Sprintf(", input %q", stdin)
		}
		return errors.New(msg)
	}
	return nil
}
