// Command tubebench measures stream tubes beside their peers, in one run
// on one machine: throughput (iperf3), new-connection latency (connect,
// 1-byte echo, close), memory per idle tunneled connection, and many
// concurrent connections with every byte checked. The peers are raw
// loopback, socat and ssh -L (OpenSSH). It runs the real tube binary: a
// relay and two daemons (alice exports, bob accepts), all on loopback.
//
// Run it with scripts/bench (which installs iperf3, socat and OpenSSH
// when run as root); it prints a Markdown table and writes it to -out.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/localclient"
)

var (
	tubeBin    = flag.String("tube", "", "the tube binary (default: built from ./cmd/tube)")
	seconds    = flag.Int("seconds", 5, "iperf3 duration per run")
	tries      = flag.Int("tries", 1000, "latency probes per path")
	idle       = flag.Int("idle", 1000, "idle connections for the memory figure")
	concurrent = flag.Int("concurrent", 10000, "concurrent connections through one tube")
	smoke      = flag.Bool("smoke", false, "tiny run that only checks every part works (CI)")
	out        = flag.String("out", "", "also write the Markdown report here")
	echoServe  = flag.String("serve-echo", "", "internal: run an echo server on this address")
	turnEcho   = flag.String("turn-echo", "", "internal: allocate on this TURN server and echo every peer's connection")
	turnAllocs = flag.Int("turn-echo-allocs", 1, "internal: with -turn-echo, this many allocations")
	actEcho    = flag.Bool("activated-echo", false, "internal: run as a socket-activated echo service")
	forward    = flag.String("forward", "", "internal: LISTEN,TARGET: run a bare TCP forwarder")
)

func main() {
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("tubebench: ")
	if *echoServe != "" {
		serveEcho(*echoServe)
		return
	}
	if *actEcho {
		serveActivatedEcho()
		return
	}
	if *forward != "" {
		serveForward(*forward)
		return
	}
	if *turnEcho != "" {
		if err := serveTURNEcho(*turnEcho, *turnAllocs); err != nil {
			log.Fatal(err)
		}
		return
	}
	if *smoke {
		*seconds, *tries, *idle, *concurrent = 1, 20, 50, 200
	}
	raiseFileLimit() // the helpers started from here inherit it
	b := &bench{}
	defer b.cleanup()
	if err := b.run(); err != nil {
		b.cleanup()
		log.Fatal(err)
	}
}

type bench struct {
	dir   string
	procs []*exec.Cmd
	rows  []string
	notes []string
}

func (b *bench) cleanup() {
	for i := len(b.procs) - 1; i >= 0; i-- {
		if p := b.procs[i].Process; p != nil {
			p.Kill()
			b.procs[i].Wait()
		}
	}
	b.procs = nil
	if b.dir != "" {
		os.RemoveAll(b.dir)
		b.dir = ""
	}
}

// start runs a helper process; ready, if set, waits for a line with it.
func (b *bench) start(ready string, name string, args ...string) (*exec.Cmd, string, error) {
	cmd := exec.Command(name, args...)
	if len(args) > 0 && args[0] == "-serve-echo" {
		cmd.Stderr = os.Stderr
	}
	var pr io.ReadCloser
	if ready != "" {
		var err error
		pr, err = cmd.StdoutPipe()
		if err != nil {
			return nil, "", err
		}
		cmd.Stderr = cmd.Stdout
	}
	if err := cmd.Start(); err != nil {
		return nil, "", fmt.Errorf("start %s: %w", name, err)
	}
	b.procs = append(b.procs, cmd)
	if ready == "" {
		return cmd, "", nil
	}
	lines := make(chan string, 64)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				return nil, "", fmt.Errorf("%s exited before printing %q", name, ready)
			}
			if rest, ok := strings.CutPrefix(l, ready); ok {
				go func() {
					for l := range lines { // surface the helpers' warnings
						if strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") {
							log.Printf("%s: %s", filepath.Base(name), l)
						}
					}
				}()
				return cmd, strings.TrimSpace(rest), nil
			}
		case <-deadline:
			return nil, "", fmt.Errorf("%s never printed %q", name, ready)
		}
	}
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func waitListen(addr string) error {
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return nil
		}
	}
	return fmt.Errorf("nothing listens on %s", addr)
}

// paths are the ways to one service: name → local address.
type paths struct {
	names []string
	addr  map[string]string
}

func (p *paths) add(name, addr string) {
	p.names = append(p.names, name)
	p.addr[name] = addr
}

func (b *bench) run() error {
	for _, c := range []string{"iperf3", "socat", "ssh", "ssh-keygen", "turnserver"} {
		if _, err := exec.LookPath(c); err != nil {
			return fmt.Errorf("%s is not installed (scripts/bench installs it when run as root)", c)
		}
	}
	sshd, err := exec.LookPath("sshd")
	if err != nil {
		sshd = "/usr/sbin/sshd"
		if _, err := os.Stat(sshd); err != nil {
			return fmt.Errorf("sshd is not installed (package openssh-server)")
		}
	}
	b.dir, err = os.MkdirTemp("", "tubebench-")
	if err != nil {
		return err
	}
	if *tubeBin == "" {
		*tubeBin = filepath.Join(b.dir, "tube")
		build := exec.Command("go", "build", "-o", *tubeBin, "./cmd/tube")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			return fmt.Errorf("build tube: %w", err)
		}
	}
	ctx := context.Background()

	// Services: iperf3 and an echo server in its own process (so its
	// sockets do not count against this process's descriptors).
	iperfPort := freePort()
	if _, _, err := b.start("", "iperf3", "-s", "-B", "127.0.0.1", "-p", strconv.Itoa(iperfPort)); err != nil {
		return err
	}
	echoAddr := fmt.Sprintf("127.0.0.1:%d", freePort())
	self, _ := os.Executable()
	if _, _, err := b.start("", self, "-serve-echo", echoAddr); err != nil {
		return err
	}
	iperfAddr := fmt.Sprintf("127.0.0.1:%d", iperfPort)
	if err := waitListen(iperfAddr); err != nil {
		return err
	}
	if err := waitListen(echoAddr); err != nil {
		return err
	}

	// Tubes: a relay (rendezvous and TURN server; everything is on
	// loopback, so its peer filter lets loopback through), alice and bob;
	// and coturn with alice2 and bob2, whose daemons relay through it.
	ourTURN := fmt.Sprintf("127.0.0.1:%d", freePort())
	relayCmd, url, err := b.start("rendezvous: ", *tubeBin, "relay", "--listen", fmt.Sprintf("127.0.0.1:%d", freePort()),
		"--turn-listen", ourTURN, "--turn-secret", benchSecret, "--allow-peer", "127.0.0.0/8", "--log-level", "warn")
	if err != nil {
		return err
	}
	coturn, coturnPID, err := b.startCoturn()
	if err != nil {
		return err
	}
	pids := map[string]int{}
	pair := func(a, z string, args ...string) (*localclient.Client, *localclient.Client, error) {
		var cs []*localclient.Client
		for _, n := range []string{a, z} {
			state := filepath.Join(b.dir, n)
			sock := filepath.Join(state, "daemon.sock")
			cmd, _, err := b.start("daemon: ", *tubeBin, append([]string{"daemon", "--state", state, "--socket", sock, "--peer-listen", "127.0.0.1:0", "--log-level", "warn"}, args...)...)
			if err != nil {
				return nil, nil, err
			}
			pids[n] = cmd.Process.Pid
			c := localclient.New(sock)
			cs = append(cs, c)
			if _, err := c.AddAccount(ctx, api.AddAccountRequest{Name: n, Server: url, Register: true}); err != nil {
				return nil, nil, err
			}
		}
		if _, err := cs[0].AddContact(ctx, a, z); err != nil {
			return nil, nil, err
		}
		if _, err := cs[1].ApproveContact(ctx, z, a); err != nil {
			return nil, nil, err
		}
		return cs[0], cs[1], nil
	}
	alice, bob, err := pair("alice", "bob")
	if err != nil {
		return err
	}
	alice2, bob2, err := pair("alice2", "bob2", "--turn", coturn, "--turn-secret", benchSecret)
	if err != nil {
		return err
	}
	for _, c := range []*localclient.Client{alice, bob, alice2, bob2} {
		defer c.Close()
	}
	tubeTo := func(service, target string) (string, error) {
		return tubeVia(ctx, alice, bob, "alice", "bob", "", service, target)
	}

	// socat one-hop relays.
	socatTo := func(target string) (string, error) {
		port := freePort()
		if _, _, err := b.start("", "socat", fmt.Sprintf("TCP-LISTEN:%d,bind=127.0.0.1,fork,reuseaddr", port), "TCP:"+target); err != nil {
			return "", err
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		return addr, waitListen(addr)
	}

	// ssh -L through a private sshd.
	sshPort := freePort()
	sshIperf, sshEcho := freePort(), freePort()
	sshdPID, sshPID, err := b.startSSH(sshd, sshPort, fmt.Sprintf("%d:%s", sshIperf, iperfAddr), fmt.Sprintf("%d:%s", sshEcho, echoAddr))
	if err != nil {
		return err
	}

	tp := &paths{addr: map[string]string{}}
	lp := &paths{addr: map[string]string{}}
	tp.add("raw loopback", iperfAddr)
	lp.add("raw loopback", echoAddr)
	for _, x := range []struct {
		p      *paths
		target string
	}{{tp, iperfAddr}, {lp, echoAddr}} {
		a, err := socatTo(x.target)
		if err != nil {
			return err
		}
		x.p.add("socat", a)
	}
	for _, hops := range []int{1, 2} {
		name := map[int]string{1: "bare forwarder, one process (no encryption)", 2: "two bare forwarders in a chain (no encryption)"}[hops]
		for _, x := range []struct {
			p      *paths
			target string
		}{{tp, iperfAddr}, {lp, echoAddr}} {
			a, err := b.forwardTo(x.target, hops)
			if err != nil {
				return err
			}
			x.p.add(name, a)
		}
	}
	tp.add("ssh -L", fmt.Sprintf("127.0.0.1:%d", sshIperf))
	lp.add("ssh -L", fmt.Sprintf("127.0.0.1:%d", sshEcho))
	a, err := tubeTo("iperf", iperfAddr)
	if err != nil {
		return err
	}
	tp.add("tube (direct)", a)
	echoTube, err := tubeTo("echo", echoAddr)
	if err != nil {
		return err
	}
	lp.add("tube (direct)", echoTube)

	b.notes = append(b.notes, machine())
	// Throughput: three rounds, interleaved, the best of each kept (the machine is noisy).
	best := map[string]float64{}
	for round := 0; round < 3; round++ {
		for _, n := range tp.names {
			bps, err := iperf(tp.addr[n], *seconds)
			if err != nil {
				return fmt.Errorf("iperf3 through %s: %w", n, err)
			}
			if bps > best[n] {
				best[n] = bps
			}
		}
	}
	b.rows = append(b.rows, "| path | throughput, one stream (iperf3 -t "+strconv.Itoa(*seconds)+") | × ssh -L | connect+echo+close p50 | p99 | p50 × raw |", "| --- | --- | --- | --- | --- | --- |")
	lat := map[string][2]time.Duration{}
	for _, n := range lp.names {
		p50, p99, err := probe(lp.addr[n], *tries)
		if err != nil {
			return fmt.Errorf("latency through %s: %w", n, err)
		}
		lat[n] = [2]time.Duration{p50, p99}
	}
	for _, n := range tp.names {
		b.rows = append(b.rows, fmt.Sprintf("| %s | %.2f Gbit/s | %.2f | %s | %s | %.2f |", n, best[n]/1e9, best[n]/best["ssh -L"],
			ms(lat[n][0]), ms(lat[n][1]), float64(lat[n][0])/float64(lat["raw loopback"][0])))
	}

	// Memory per idle connection: RSS growth per connection of each
	// daemon (and of ssh and sshd for ssh -L).
	b.rows = append(b.rows, "", fmt.Sprintf("| memory per idle connection (%d held open) | side 1 | side 2 |", *idle), "| --- | --- | --- |")
	tubeMem, err := idleMemory(echoTube, *idle, []int{pids["bob"], pids["alice"]})
	if err != nil {
		return fmt.Errorf("idle connections through the tube: %w", err)
	}
	b.rows = append(b.rows, fmt.Sprintf("| tube (accepting daemon, offering daemon) | %.1f KiB | %.1f KiB |", tubeMem[0], tubeMem[1]))
	sshMem, err := idleMemory(lp.addr["ssh -L"], *idle, []int{sshPID, sshdPID})
	if err != nil {
		return fmt.Errorf("idle connections through ssh -L: %w", err)
	}
	b.rows = append(b.rows, fmt.Sprintf("| ssh -L (ssh client, sshd with its children) | %.1f KiB | %.1f KiB |", sshMem[0], sshMem[1]),
		"| published, not measured here: rathole 35.8 KB, frp 113.7 KB per connection | | |")

	if err := b.setupRows(ctx, alice, bob, "echo"); err != nil {
		return err
	}

	// Concurrency through the tube.
	okN, errs, took, err := concurrency(echoTube, *concurrent)
	if err != nil {
		return err
	}
	b.rows = append(b.rows, "", "| concurrent tunneled connections, each echoing 64 checked bytes, all open at once | opened and checked | errors | time |", "| --- | --- | --- | --- |",
		fmt.Sprintf("| %d through one tube | %d | %d | %s |", *concurrent, okN, errs, took.Round(time.Millisecond)))
	if errs > 0 {
		b.report()
		return fmt.Errorf("%d of %d concurrent connections failed", errs, *concurrent)
	}

	// The relay path.
	r := relayRun{ourTURN: ourTURN, coturn: coturn, ourPID: relayCmd.Process.Pid, coturnPID: coturnPID,
		raw: best["raw loopback"]}
	for i, p := range []struct {
		a, z *localclient.Client
		an   string
		zn   string
	}{{alice, bob, "alice", "bob"}, {alice2, bob2, "alice2", "bob2"}} {
		if r.tubeIperf[i], err = tubeVia(ctx, p.a, p.z, p.an, p.zn, "relay", "iperf-relayed", iperfAddr); err != nil {
			return err
		}
		if r.tubeEcho[i], err = tubeVia(ctx, p.a, p.z, p.an, p.zn, "relay", "echo-relayed", echoAddr); err != nil {
			return err
		}
	}
	err = b.relayRows(ctx, r)
	if err == nil {
		err = b.registryRows()
	}
	if err == nil {
		err = b.activationRows(ctx, alice, bob)
	}
	b.report()
	return err
}

// tubeVia has a (account an) export target as service and offer it to z
// (account zn) on path, and returns z's local address once accepted.
func tubeVia(ctx context.Context, a, z *localclient.Client, an, zn, path, service, target string) (string, error) {
	if _, err := a.Export(ctx, an, api.Export{Service: service, TCP: target}); err != nil {
		return "", err
	}
	t, err := a.Offer(ctx, an, api.OfferRequest{Service: service, To: zn, Path: path})
	if err != nil {
		return "", err
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		acc, err := z.Accept(ctx, t.ID, api.AcceptRequest{})
		if err == nil {
			if path != "" && acc.Path != path {
				return "", fmt.Errorf("tube %s went %s, not %s", service, acc.Path, path)
			}
			return acc.Address, nil
		}
		if time.Now().After(deadline) {
			return "", err
		}
	}
}

// raiseFileLimit lifts the descriptor limit as far as allowed (as root,
// beyond the hard limit): thousands of connections pass through here.
func raiseFileLimit() {
	r := syscall.Rlimit{Cur: 1 << 17, Max: 1 << 17}
	if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r) != nil {
		syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r)
		r.Cur = r.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r)
	}
}

func ms(d time.Duration) string { return fmt.Sprintf("%.3f ms", float64(d.Microseconds())/1000) }

func (b *bench) report() {
	var sb strings.Builder
	fmt.Fprintf(&sb, "# Tubes benchmark\n\n%s, %s.\nCommand: `scripts/bench%s`.\n\n", time.Now().UTC().Format("2006-01-02 15:04 MST"), strings.Join(b.notes, "; "), map[bool]string{true: " --smoke"}[*smoke])
	sb.WriteString(strings.Join(b.rows, "\n"))
	sb.WriteString("\n")
	fmt.Print(sb.String())
	if *out != "" {
		if err := os.WriteFile(*out, []byte(sb.String()), 0o644); err != nil {
			log.Print(err)
		}
	}
}

func machine() string {
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	return fmt.Sprintf("%d cores (%s), %s/%s", runtime.NumCPU(), cpu, runtime.GOOS, runtime.GOARCH)
}

// startSSH runs sshd on port with a fresh host key and a client key, and
// ssh -N with the forwards; it returns the sshd and ssh pids.
func (b *bench) startSSH(sshd string, port int, forwards ...string) (int, int, error) {
	d := filepath.Join(b.dir, "ssh")
	if err := os.MkdirAll(d, 0o700); err != nil {
		return 0, 0, err
	}
	os.MkdirAll("/run/sshd", 0o755) // privilege separation directory
	for _, k := range []string{"host", "id"} {
		if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(d, k)).CombinedOutput(); err != nil {
			return 0, 0, fmt.Errorf("ssh-keygen: %v %s", err, out)
		}
	}
	pub, _ := os.ReadFile(filepath.Join(d, "id.pub"))
	os.WriteFile(filepath.Join(d, "authorized_keys"), pub, 0o600)
	cfg := fmt.Sprintf("Port %d\nListenAddress 127.0.0.1\nHostKey %s\nAuthorizedKeysFile %s\nPidFile %s\nStrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nMaxSessions 100\nMaxStartups 100\n",
		port, filepath.Join(d, "host"), filepath.Join(d, "authorized_keys"), filepath.Join(d, "sshd.pid"))
	os.WriteFile(filepath.Join(d, "sshd_config"), []byte(cfg), 0o600)
	daemon, _, err := b.start("", sshd, "-D", "-e", "-f", filepath.Join(d, "sshd_config"))
	if err != nil {
		return 0, 0, err
	}
	if err := waitListen(fmt.Sprintf("127.0.0.1:%d", port)); err != nil {
		return 0, 0, err
	}
	user := os.Getenv("USER")
	if user == "" {
		user = "root"
	}
	args := []string{"-N", "-i", filepath.Join(d, "id"), "-p", strconv.Itoa(port), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
		"-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes", "-o", "LogLevel=ERROR"}
	for _, f := range forwards {
		args = append(args, "-L", f)
	}
	args = append(args, user+"@127.0.0.1")
	client, _, err := b.start("", "ssh", args...)
	if err != nil {
		return 0, 0, err
	}
	for _, f := range forwards {
		port, _, _ := strings.Cut(f, ":")
		if err := waitListen("127.0.0.1:" + port); err != nil {
			return 0, 0, fmt.Errorf("ssh -L: %w", err)
		}
	}
	return daemon.Process.Pid, client.Process.Pid, nil
}

// iperf runs iperf3 against addr and returns the received bits per second.
// iperf3's server reopens its socket between tests, so a run can find
// it briefly closed: up to three tries.
func iperf(addr string, secs int) (bps float64, err error) {
	for try := 0; try < 3; try++ {
		if bps, err = iperfOnce(addr, secs); err == nil {
			return bps, nil
		}
		time.Sleep(time.Second)
	}
	return 0, err
}

func iperfOnce(addr string, secs int) (float64, error) {
	host, port, _ := net.SplitHostPort(addr)
	out, err := exec.Command("iperf3", "-c", host, "-p", port, "-t", strconv.Itoa(secs), "-J").Output()
	if err != nil {
		return 0, fmt.Errorf("%v: %s", err, out)
	}
	var r struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return 0, err
	}
	if r.Error != "" {
		return 0, fmt.Errorf("%s", r.Error)
	}
	return r.End.SumReceived.BitsPerSecond, nil
}

// probe measures connect + 1-byte echo + close, n times.
func probe(addr string, n int) (time.Duration, time.Duration, error) {
	var ds []time.Duration
	b := []byte{'x'}
	for i := 0; i < n; i++ {
		t0 := time.Now()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return 0, 0, err
		}
		if _, err := c.Write(b); err != nil {
			c.Close()
			return 0, 0, err
		}
		if _, err := io.ReadFull(c, b); err != nil {
			c.Close()
			return 0, 0, err
		}
		c.Close()
		ds = append(ds, time.Since(t0))
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds[len(ds)/2], ds[len(ds)*99/100], nil
}

// rss returns the resident memory of pid and its descendants, in KiB.
func rss(pid int) int64 {
	total := int64(0)
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
				n, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
				total += n
			}
		}
	}
	kids, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	for _, f := range strings.Fields(string(kids)) {
		if k, err := strconv.Atoi(f); err == nil {
			total += rss(k)
		}
	}
	return total
}

// idleMemory opens n connections through addr (each echoes one byte, so
// it is fully set up), waits, and returns each pid's RSS growth per
// connection in KiB.
func idleMemory(addr string, n int, pids []int) ([]float64, error) {
	before := make([]int64, len(pids))
	for i, p := range pids {
		before[i] = rss(p)
	}
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	b := []byte{'m'}
	for i := 0; i < n; i++ {
		c, err := net.Dial("tcp", pick(addr, i))
		if err != nil {
			return nil, err
		}
		conns = append(conns, c)
		c.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := c.Write(b); err != nil {
			return nil, err
		}
		if _, err := io.ReadFull(c, b); err != nil {
			return nil, err
		}
	}
	time.Sleep(2 * time.Second)
	out := make([]float64, len(pids))
	for i, p := range pids {
		out[i] = float64(rss(p)-before[i]) / float64(n)
	}
	return out, nil
}

// concurrency opens n connections through addr at once (bounded dial
// parallelism), has each echo 64 unique bytes while all are open, and
// counts successes and errors.
func concurrency(addr string, n int) (int, int, time.Duration, error) {
	return holdConns(addr, n, 256, false)
}

// concurrencyBound is concurrency with each connection confirmed by one
// echoed byte before the next opens, at most parallel at a time (a relay
// lets a user keep only so many connections waiting to be bound).
func concurrencyBound(addr string, n, parallel int) (int, int, time.Duration, error) {
	return holdConns(addr, n, parallel, true)
}

// pick is the i-th connection's address among comma-separated addrs
// (round robin).
func pick(addrs string, i int) string {
	list := strings.Split(addrs, ",")
	return list[i%len(list)]
}

// holdConns opens n connections through addr (or spread over several,
// comma-separated), at most parallel at a
// time (each confirmed by one echoed byte if confirm), then, with all
// open, has each echo 64 unique bytes.
func holdConns(addr string, n, parallel int, confirm bool) (int, int, time.Duration, error) {
	t0 := time.Now()
	conns := make([]net.Conn, n)
	var mu sync.Mutex
	errs := 0
	var firstErr error
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := net.DialTimeout("tcp", pick(addr, i), 30*time.Second)
			if err == nil && confirm {
				c.SetDeadline(time.Now().Add(60 * time.Second))
				b := []byte{'b'}
				if _, err = c.Write(b); err == nil {
					_, err = io.ReadFull(c, b)
				}
				if err != nil {
					c.Close()
				}
			}
			if err != nil {
				mu.Lock()
				errs++
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
				return
			}
			conns[i] = c
		}()
	}
	wg.Wait()
	if firstErr != nil {
		log.Printf("first error opening connections: %v", firstErr)
	}
	ok, more, _ := echoAll(conns, 256)
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
	return ok, errs + more, time.Since(t0), nil
}

// echoAll has every open connection echo 64 unique bytes, at most
// parallel at a time, and counts successes and errors.
func echoAll(conns []net.Conn, parallel int) (ok, errs int, took time.Duration) {
	t0 := time.Now()
	var mu sync.Mutex
	var firstErr error
	fail := func(err error) {
		mu.Lock()
		errs++
		if firstErr == nil {
			firstErr = err
		}
		mu.Unlock()
	}
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i, c := range conns {
		if c == nil {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c.SetDeadline(time.Now().Add(60 * time.Second))
			msg := []byte(fmt.Sprintf("connection %08d of the concurrency run, checked %016x", i, uint64(i)*0x9e3779b97f4a7c15))[:64]
			if _, err := c.Write(msg); err != nil {
				fail(err)
				return
			}
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(c, got); err != nil {
				fail(err)
				return
			}
			if string(got) != string(msg) {
				fail(fmt.Errorf("connection %d: bytes differ", i))
				return
			}
			mu.Lock()
			ok++
			mu.Unlock()
		}()
	}
	wg.Wait()
	if firstErr != nil {
		log.Printf("first echo error: %v", firstErr)
	}
	return ok, errs, time.Since(t0)
}

func serveEcho(addr string) {
	raiseFileLimit()
	serveTCP("echo server", addr, func(c net.Conn) {
		defer c.Close()
		// A plain copy: io.Copy between TCP sockets would splice(2)
		// through a pipe, two more descriptors per connection.
		io.CopyBuffer(struct{ io.Writer }{c}, struct{ io.Reader }{c}, make([]byte, 2048))
	})
}

// serveTCP runs handle on its own goroutine for every connection to addr,
// riding out accept errors (such as running out of descriptors).
func serveTCP(name, addr string, handle func(net.Conn)) {
	var live atomic.Int64
	l, err := net.Listen("tcp", addr)
	if err != nil {
		log.Fatal(err)
	}
	for {
		c, err := l.Accept()
		if err != nil {
			log.Printf("%s (%d connections open): %v", name, live.Load(), err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		live.Add(1)
		go func() {
			defer live.Add(-1)
			handle(c)
		}()
	}
}
