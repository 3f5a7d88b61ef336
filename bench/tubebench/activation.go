package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"time"

	"github.com/tubes-dev/tubes/activation"
	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/internal/serve"
	"github.com/tubes-dev/tubes/localclient"
)

// serveActivatedEcho is a socket-activated echo service (the benchmark's
// own binary, started with -activated-echo): it serves the listener it
// was given as descriptor 3.
func serveActivatedEcho() {
	log.Fatal(serve.Activated(func(c net.Conn) {
		io.CopyBuffer(struct{ io.Writer }{c}, struct{ io.Reader }{c}, make([]byte, 512))
	}))
}

// firstByte connects to addr, sends a byte and waits for it to come back.
func firstByte(addr string) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte{'x'}); err != nil {
		return err
	}
	_, err = io.ReadFull(c, make([]byte, 1))
	return err
}

// activationRows measures cold start: first connection to first byte of
// an autostarted service, beside the same service started by hand and
// then reached (its own start-up), and beside it already running; then
// the same through a tube: bob opens a service alice publishes to him
// and his first connection starts it on alice's side.
func (b *bench) activationRows(ctx context.Context, alice, bob *localclient.Client) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	script := filepath.Join(b.dir, "activated-echo")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nexec "+self+" -activated-echo\n"), 0o755); err != nil {
		return err
	}
	rounds := 30
	if *smoke {
		rounds = 5
	}
	var hand, cold, warm, tubeCold, tubeWarm []time.Duration
	for i := range rounds {
		// By hand: the same shim, listener and environment, started
		// directly; timed from the start to the first byte.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		f, _ := ln.(*net.TCPListener).File()
		cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@"`, self, "-activated-echo")
		cmd.Env = append(os.Environ(), "LISTEN_FDS=1", "LISTEN_FDNAMES=echo")
		cmd.ExtraFiles = []*os.File{f}
		t0 := time.Now()
		if err := cmd.Start(); err != nil {
			return err
		}
		err = firstByte(ln.Addr().String())
		hand = append(hand, time.Since(t0))
		cmd.Process.Kill()
		cmd.Wait()
		f.Close()
		ln.Close()
		if err != nil {
			return fmt.Errorf("service started by hand: %w", err)
		}

		// Autostarted: the first connection to the unit's front socket
		// starts the service.
		u := activation.New(activation.Config{Name: "echo", Path: self, Args: []string{"-activated-echo"}})
		front, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		go serve.Loop(front, func(c net.Conn) { u.Serve(c) })
		t0 = time.Now()
		err = firstByte(front.Addr().String())
		cold = append(cold, time.Since(t0))
		if err == nil {
			t0 = time.Now()
			err = firstByte(front.Addr().String())
			warm = append(warm, time.Since(t0))
		}
		u.Close()
		front.Close()
		if err != nil {
			return fmt.Errorf("autostarted service: %w", err)
		}

		// Through a tube: a service of its own each round, so that each
		// first connection is a cold start.
		c, w, err := tubeColdStart(ctx, alice, bob, fmt.Sprintf("Echo%d", i), script)
		if err != nil {
			return fmt.Errorf("autostarted service through a tube: %w", err)
		}
		tubeCold, tubeWarm = append(tubeCold, c), append(tubeWarm, w)
	}
	h, c, w, tc, tw := pct(hand), pct(cold), pct(warm), pct(tubeCold), pct(tubeWarm)
	b.rows = append(b.rows, "", fmt.Sprintf("| service start on demand (%d rounds) | first connection to first byte, p50 | p99 | added to its own start-up (p50) |", rounds), "| --- | --- | --- | --- |",
		fmt.Sprintf("| started by hand, then reached (its own start-up) | %s | %s | — |", ms(h[0]), ms(h[1])),
		fmt.Sprintf("| autostarted by its first connection (socket activation) | %s | %s | %s |", ms(c[0]), ms(c[1]), ms(c[0]-h[0])),
		fmt.Sprintf("| already running, through the activation relay | %s | %s | — |", ms(w[0]), ms(w[1])),
		fmt.Sprintf("| through a tube (bob to alice's published service), autostarted | %s | %s | %s (beyond the tube's own %s) |", ms(tc[0]), ms(tc[1]), ms(tc[0]-tw[0]-h[0]), ms(tw[0])),
		fmt.Sprintf("| through a tube, already running | %s | %s | — |", ms(tw[0]), ms(tw[1])))
	return nil
}

// tubeColdStart registers service (script started on demand) at alice,
// publishes it to bob, has bob open it, and times bob's first connection
// (which starts it) and his second.
func tubeColdStart(ctx context.Context, alice, bob *localclient.Client, service, script string) (cold, warm time.Duration, err error) {
	xml := `<SFW version="1.1"><service><name>` + service + `</name><filepath>` + script + `</filepath>
<interface><name>org.example.` + service + `</name><version>1.0</version></interface></service></SFW>`
	if _, err := alice.AddService(ctx, xml, service+".xml", ""); err != nil {
		return 0, 0, err
	}
	defer alice.RemoveService(ctx, service, "")
	if _, err := alice.Publish(ctx, "alice", api.Publication{Service: service, To: "bob"}); err != nil {
		return 0, 0, err
	}
	t, err := bob.Open(ctx, "bob", api.OpenRequest{Contact: "alice", Service: service})
	if err != nil {
		return 0, 0, err
	}
	defer bob.CloseTube(ctx, t.ID)
	t0 := time.Now()
	if err := firstByte(t.Address); err != nil {
		return 0, 0, err
	}
	cold = time.Since(t0)
	t0 = time.Now()
	if err := firstByte(t.Address); err != nil {
		return 0, 0, err
	}
	return cold, time.Since(t0), nil
}

// pct returns the p50 and p99 of ds.
func pct(ds []time.Duration) [2]time.Duration {
	slices.Sort(ds)
	return [2]time.Duration{ds[len(ds)/2], ds[min(len(ds)-1, len(ds)*99/100)]}
}
