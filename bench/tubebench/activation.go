package main

import (
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"time"

	"github.com/tubes-dev/tubes/activation"
	"github.com/tubes-dev/tubes/internal/serve"
)

// serveActivatedEcho is a socket-activated echo service (the benchmark's
// own binary, started with -activated-echo): it serves the listener it
// was given as descriptor 3.
func serveActivatedEcho() {
	if os.Getenv("LISTEN_PID") != strconv.Itoa(os.Getpid()) || os.Getenv("LISTEN_FDS") != "1" {
		log.Fatal("not socket-activated")
	}
	ln, err := net.FileListener(os.NewFile(3, "listener"))
	if err != nil {
		log.Fatal(err)
	}
	serve.Loop(ln, func(c net.Conn) {
		io.CopyBuffer(struct{ io.Writer }{c}, struct{ io.Reader }{c}, make([]byte, 512))
	})
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
// then reached (its own start-up), and beside it already running.
func (b *bench) activationRows() error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	rounds := 30
	if *smoke {
		rounds = 5
	}
	var hand, cold, warm []time.Duration
	for range rounds {
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
	}
	p50 := func(ds []time.Duration) time.Duration { slices.Sort(ds); return ds[len(ds)/2] }
	h, c, w := p50(hand), p50(cold), p50(warm)
	b.rows = append(b.rows, "", fmt.Sprintf("| service start on demand (%d rounds, p50) | first connection to first byte |", rounds), "| --- | --- |",
		fmt.Sprintf("| started by hand, then reached (its own start-up) | %s |", ms(h)),
		fmt.Sprintf("| autostarted by its first connection (socket activation) | %s (+%s) |", ms(c), ms(c-h)),
		fmt.Sprintf("| already running, through the activation relay | %s |", ms(w)))
	return nil
}
