// Command relayload measures the rendezvous at scale: how long `tube relay`
// takes to start, its memory with N connected idle accounts (memory per
// account), and a daemon's memory at rest. It runs the real binary as a
// separate process and connects N accounts to it from this process.
//
//	go build -o /tmp/tube ./cmd/tube && go run ./bench/relayload -tube /tmp/tube -n 10000
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tubes-dev/tubes/identity"
	"github.com/tubes-dev/tubes/rendezvous"
)

func main() {
	tube := flag.String("tube", "tube", "path of the tube binary")
	n := flag.Int("n", 10000, "accounts to connect")
	conc := flag.Int("c", 64, "concurrent registrations/logins")
	flag.Parse()
	if err := run(*tube, *n, *conc); err != nil {
		fmt.Fprintln(os.Stderr, "relayload:", err)
		os.Exit(1)
	}
}

func rssKB(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			v, _ := strconv.Atoi(f[1])
			return v
		}
	}
	return -1
}

func freeAddr() string {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	defer l.Close()
	return l.Addr().String()
}

// startTube runs tube with args and waits for a line starting with prefix.
func startTube(tube string, prefix string, args ...string) (*exec.Cmd, string, time.Duration, error) {
	cmd := exec.Command(tube, args...)
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = io.Discard
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, "", 0, err
	}
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), prefix); ok {
			d := time.Since(t0)
			go io.Copy(io.Discard, out)
			return cmd, strings.TrimSpace(rest), d, nil
		}
	}
	cmd.Process.Kill()
	return nil, "", 0, fmt.Errorf("%s never printed %q", tube, prefix)
}

func metric(addr, name string) float64 {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == name {
			v, _ := strconv.ParseFloat(f[1], 64)
			return v
		}
	}
	return -1
}

func run(tube string, n, conc int) error {
	dir, _ := os.MkdirTemp("", "relayload-")
	defer os.RemoveAll(dir)

	// Start-up: best of 5 runs of a fresh relay with a file store.
	best := time.Hour
	for i := range 5 {
		cmd, _, d, err := startTube(tube, "rendezvous: ", "relay", "--listen", "127.0.0.1:0", "--data", filepath.Join(dir, fmt.Sprint("s", i)))
		if err != nil {
			return err
		}
		cmd.Process.Kill()
		cmd.Wait()
		best = min(best, d)
	}

	httpAddr := freeAddr()
	relay, url, _, err := startTube(tube, "rendezvous: ", "relay", "--listen", "127.0.0.1:0", "--data", filepath.Join(dir, "relay"), "--http", httpAddr, "--pprof")
	if err != nil {
		return err
	}
	defer func() { relay.Process.Kill(); relay.Wait() }()
	time.Sleep(500 * time.Millisecond)
	base := rssKB(relay.Process.Pid)
	baseHeap := metric(httpAddr, "go_memstats_heap_inuse_bytes")
	_ = baseHeap

	ctx := context.Background()
	clients := make([]*rendezvous.Client, n)
	var next, failed atomic.Int64
	var firstErr atomic.Value
	t0 := time.Now()
	var wg sync.WaitGroup
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				k, _ := identity.Generate()
				cfg := rendezvous.DialConfig{Server: url, Account: fmt.Sprintf("u%05d", i), Key: k, Timeout: 20 * time.Second}
				err := rendezvous.Register(ctx, cfg, "")
				var c *rendezvous.Client
				if err == nil {
					c, err = rendezvous.Dial(ctx, cfg)
				}
				if err == nil {
					_, err = c.Hello(ctx)
				}
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				clients[i] = c
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(t0)
	time.Sleep(3 * time.Second) // idle
	online := metric(httpAddr, "tubes_rendezvous_online_accounts")
	full := rssKB(relay.Process.Pid)
	heap := metric(httpAddr, "go_memstats_heap_inuse_bytes")
	if prof := os.Getenv("RELAYLOAD_HEAP_PROFILE"); prof != "" {
		if resp, err := http.Get("http://" + httpAddr + "/debug/pprof/heap"); err == nil {
			f, _ := os.Create(prof)
			io.Copy(f, resp.Body)
			f.Close()
			resp.Body.Close()
		}
	}
	stack := metric(httpAddr, "go_memstats_stack_inuse_bytes")
	goroutines := metric(httpAddr, "go_goroutines")

	// A daemon at rest with one connected account.
	dstate := filepath.Join(dir, "daemon")
	sock := filepath.Join(dstate, "d.sock")
	daemon, _, _, err := startTube(tube, "daemon: ", "daemon", "--state", dstate, "--socket", sock)
	if err != nil {
		return err
	}
	defer func() { daemon.Process.Kill(); daemon.Wait() }()
	add := exec.Command(tube, "--socket", sock, "account", "add", "restful", "--server", url, "--register")
	if out, err := add.CombinedOutput(); err != nil {
		return fmt.Errorf("daemon account add: %v %s", err, out)
	}
	time.Sleep(3 * time.Second)
	daemonRSS := rssKB(daemon.Process.Pid)

	fmt.Printf("relay start-up (exec to listening, file store, best of 5): %.1f ms\n", float64(best.Microseconds())/1000)
	fmt.Printf("accounts registered and connected: %d of %d (failed %d) in %.1f s (%.0f logins/s)\n",
		n-int(failed.Load()), n, failed.Load(), elapsed.Seconds(), float64(n)/elapsed.Seconds())
	if e := firstErr.Load(); e != nil {
		fmt.Printf("first failure: %v\n", e)
	}
	fmt.Printf("relay reports online accounts: %.0f\n", online)
	fmt.Printf("relay RSS: %.1f MiB idle, %.1f MiB with %d accounts: %.1f KiB per connected account\n",
		float64(base)/1024, float64(full)/1024, n, float64(full-base)/float64(n))
	fmt.Printf("relay Go heap in use: %.1f MiB (%.1f KiB per account); stacks %.1f MiB; goroutines: %.0f\n", heap/(1<<20), heap/1024/float64(n), stack/(1<<20), goroutines)
	fmt.Printf("daemon RSS at rest (one connected account): %.1f MiB\n", float64(daemonRSS)/1024)
	for _, c := range clients {
		if c != nil {
			c.Close()
		}
	}
	return nil
}
