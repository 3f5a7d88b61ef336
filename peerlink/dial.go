package peerlink

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"
)

// Path names how a link reaches its peer.
const (
	PathDirect = "direct" // TCP to one of the peer's own addresses
	PathRelay  = "relay"  // through the peer's TURN TCP allocation
)

// Candidate is one way to reach a peer: a path kind and how to dial it.
type Candidate struct {
	Path string // PathDirect or PathRelay
	Addr string // HOST:PORT (the relayed address for PathRelay)
	// Dial opens the raw connection; nil means plain TCP to Addr.
	Dial func(ctx context.Context) (net.Conn, error)
}

func (c Candidate) dial(ctx context.Context) (net.Conn, error) {
	if c.Dial != nil {
		return c.Dial(ctx)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", c.Addr)
	if err == nil {
		if tc, ok := conn.(*net.TCPConn); ok {
			tc.SetNoDelay(true)
		}
	}
	return conn, err
}

// RelayDelay is how long direct candidates get a head start before relay
// candidates are tried too.
var RelayDelay = 300 * time.Millisecond

// Race dials candidates and runs establish (the TLS handshake and session
// set-up) on each connection, told which candidate it came from; the first to complete wins and the others
// are closed. Direct candidates start at once, relay candidates after
// RelayDelay (or at once if all direct ones failed already).
func Race(ctx context.Context, cands []Candidate, establish func(context.Context, Candidate, net.Conn) (*Session, error)) (*Session, Candidate, error) {
	if len(cands) == 0 {
		return nil, Candidate{}, errors.New("peerlink: the peer offered no address to reach it")
	}
	// Cancelling ends the losing attempts; the winner's connection does
	// not depend on ctx once established.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		s    *Session
		cand Candidate
		err  error
	}
	results := make(chan result, len(cands))
	var direct, relay []Candidate
	for _, c := range cands {
		if c.Path == PathRelay {
			relay = append(relay, c)
		} else {
			direct = append(direct, c)
		}
	}
	try := func(c Candidate) {
		conn, err := c.dial(ctx)
		if err != nil {
			results <- result{cand: c, err: err}
			return
		}
		s, err := establish(ctx, c, conn)
		if err != nil {
			conn.Close()
		}
		results <- result{s: s, cand: c, err: err}
	}
	for _, c := range direct {
		go try(c)
	}
	relayStart := time.NewTimer(RelayDelay)
	defer relayStart.Stop()
	if len(direct) == 0 {
		relayStart.Reset(0)
	}
	pending := len(direct)
	relayed := false
	startRelay := func() {
		if relayed {
			return
		}
		relayed = true
		for _, c := range relay {
			go try(c)
		}
		pending += len(relay)
	}
	var errs []error
	for {
		if pending == 0 {
			if relayed {
				return nil, Candidate{}, fmt.Errorf("peerlink: no path to the peer worked: %w", errors.Join(errs...))
			}
			startRelay()
			continue
		}
		select {
		case <-relayStart.C:
			startRelay()
		case r := <-results:
			pending--
			if r.err != nil {
				errs = append(errs, fmt.Errorf("%s %s: %w", r.cand.Path, r.cand.Addr, r.err))
				continue
			}
			// The winner. Stop the others; close any that still succeed.
			go func(n int) {
				for range n {
					if l := <-results; l.s != nil {
						l.s.Close(CodeCancelled)
					}
				}
			}(pending)
			return r.s, r.cand, nil
		case <-ctx.Done():
			go func(n int) {
				for range n {
					if l := <-results; l.s != nil {
						l.s.Close(CodeCancelled)
					}
				}
			}(pending)
			return nil, Candidate{}, errors.Join(append(errs, ctx.Err())...)
		}
	}
}
