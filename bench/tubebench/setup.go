package main

import (
	"context"
	"fmt"
	"time"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/localclient"
)

// setupRows measures tube setup: alice offers her exported service to bob,
// bob accepts the tube as soon as its NewTube event reaches him, and a
// client sends a byte through bob's new local socket and gets it back.
// Timed from the offer to that byte: the rendezvous's delivery of the
// offer, both daemons' local APIs, the local socket and the first
// connection over the pair's peer link.
func (b *bench) setupRows(ctx context.Context, alice, bob *localclient.Client, service string) error {
	rounds := 50
	if *smoke {
		rounds = 5
	}
	ev, err := bob.Events(ctx, "bob")
	if err != nil {
		return err
	}
	defer ev.Close()
	var took []time.Duration
	for range rounds {
		d, err := setupOnce(ctx, alice, bob, ev, service)
		if err != nil {
			return fmt.Errorf("tube setup: %w", err)
		}
		took = append(took, d)
	}
	p := pct(took)
	b.rows = append(b.rows, "", fmt.Sprintf("| tube setup (%d rounds): offer → NewTube at the contact → accepted → first byte echoed | p50 | p99 |", rounds), "| --- | --- | --- |",
		fmt.Sprintf("| alice offers, bob accepts, over their open peer link | %s | %s |", ms(p[0]), ms(p[1])))
	return nil
}

// setupOnce times one tube from alice's offer to the first byte echoed
// through bob's end, then closes it.
func setupOnce(ctx context.Context, alice, bob *localclient.Client, ev *localclient.Stream, service string) (time.Duration, error) {
	t0 := time.Now()
	t, err := alice.Offer(ctx, "alice", api.OfferRequest{Service: service, To: "bob"})
	if err != nil {
		return 0, err
	}
	defer alice.CloseTube(ctx, t.ID)
	timeout := time.After(10 * time.Second)
	for arrived := false; !arrived; {
		select {
		case e, ok := <-ev.C():
			if !ok {
				return 0, fmt.Errorf("bob's event stream ended: %v", ev.Err())
			}
			arrived = e.Type == api.EventNewTube && e.TubeID == t.ID
		case <-timeout:
			return 0, fmt.Errorf("the offer of tube %s never reached bob", t.ID)
		}
	}
	acc, err := bob.Accept(ctx, t.ID, api.AcceptRequest{})
	if err != nil {
		return 0, err
	}
	if err := firstByte(acc.Address); err != nil {
		return 0, err
	}
	return time.Since(t0), nil
}
