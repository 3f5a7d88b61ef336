package main

import (
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"strings"
)

// The forwarding floor. A tube's connection crosses two processes, the
// accepting and the offering daemon, besides the client and the service;
// so does ssh -L's (ssh and sshd). A bare forwarder (accept, dial, copy
// both ways with splice(2), no encryption, no multiplexing) and two of
// them in a chain show what those process hops cost on this machine by
// themselves, in the same run.

// serveForward runs a bare forwarder: spec is LISTEN,TARGET.
func serveForward(spec string) {
	listen, target, ok := strings.Cut(spec, ",")
	if !ok {
		log.Fatalf("-forward wants LISTEN,TARGET, not %q", spec)
	}
	serveTCP("forwarder", listen, func(c net.Conn) {
		s, err := net.Dial("tcp", target)
		if err != nil {
			log.Printf("forwarder: %v", err)
			c.Close()
			return
		}
		go func() {
			io.Copy(s, c)
			s.(*net.TCPConn).CloseWrite()
		}()
		io.Copy(c, s)
		c.Close()
		s.Close()
	})
}

// forwardTo starts hops bare forwarders in a chain in front of target
// and returns the first one's address.
func (b *bench) forwardTo(target string, hops int) (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	for range hops {
		addr := fmt.Sprintf("127.0.0.1:%d", freePort())
		if _, _, err := b.start("", self, "-forward", addr+","+target); err != nil {
			return "", err
		}
		if err := waitListen(addr); err != nil {
			return "", err
		}
		target = addr
	}
	return target, nil
}
