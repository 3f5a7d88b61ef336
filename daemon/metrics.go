package daemon

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tubes-dev/tubes/connection"
	"github.com/tubes-dev/tubes/tube"
)

// metrics are the daemon's Prometheus metrics; nil records nothing.
type metrics struct {
	changes      *prometheus.CounterVec
	acceptErrors *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer, d *Daemon) *metrics {
	if reg == nil {
		return nil
	}
	m := &metrics{
		changes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tubes_daemon_status_changes_total",
			Help: "Account status changes by new status.",
		}, []string{"status"}),
		acceptErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tubes_accept_errors_total",
			Help: "Accept errors ridden out (out of descriptors, aborted connections), by listener.",
		}, []string{"listener"}),
	}
	accounts := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tubes_daemon_accounts_connected",
		Help: "Accounts currently connected to their relay.",
	}, func() float64 {
		n := 0
		for _, a := range d.Accounts() {
			if a.StatusCode == uint32(connection.Connected) {
				n++
			}
		}
		return float64(n)
	})
	forged := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "tubes_daemon_forged_messages_total",
		Help: "Tube and service messages dropped because they were not signed by their sender's pinned key.",
	}, func() float64 {
		d.mu.Lock()
		defer d.mu.Unlock()
		var n uint64
		for _, a := range d.accounts {
			if a.tubes != nil {
				n += a.tubes.Forged()
			}
		}
		return float64(n)
	})
	reg.MustRegister(m.changes, m.acceptErrors, accounts, forged)
	reg.MustRegister(limitMetrics(d)...)
	return m
}

// limitMetrics are the counts behind the daemon's limits (README's
// table): peer links and event streams.
func limitMetrics(d *Daemon) []prometheus.Collector {
	links := func(f func(tube.LinkStats) float64) func() float64 {
		return func() float64 {
			d.mu.Lock()
			defer d.mu.Unlock()
			var n float64
			for _, a := range d.accounts {
				if a.tubes != nil {
					n += f(a.tubes.LinkStats())
				}
			}
			return n
		}
	}
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	counter := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, f)
	}
	return []prometheus.Collector{
		gauge("tubes_link_receive_bytes", "Bytes contacts sent over peer links that local sockets have not taken yet (at most the receive budget per link).",
			links(func(s tube.LinkStats) float64 { return float64(s.ReceiveHeld) })),
		counter("tubes_link_streams_refused_total", "Connections a contact opened over the per-link stream cap, refused.",
			links(func(s tube.LinkStats) float64 { return float64(s.StreamsRefused) })),
		counter("tubes_link_streams_stalled_total", "Connections reset because their application took none of their data while their peer link was more than half full.",
			links(func(s tube.LinkStats) float64 { return float64(s.StreamsStalled) })),
		gauge("tubes_link_handshakes", "Peer-link handshakes in progress on the peer-link listener.",
			links(func(s tube.LinkStats) float64 { return float64(s.Handshakes) })),
		counter("tubes_link_handshakes_refused_total", "Connections to the peer-link listener reset at once: their source (or everyone) was at the handshake limit.",
			links(func(s tube.LinkStats) float64 { return float64(s.HandshakesRefused) })),
		gauge("tubes_links", "Peer links open, replaced ones still carrying connections included.",
			links(func(s tube.LinkStats) float64 { return float64(s.Links) })),
		gauge("tubes_exports", "Services exported, every account's (at most tube.MaxExports each).", func() float64 {
			d.mu.Lock()
			defer d.mu.Unlock()
			n := 0
			for _, a := range d.accounts {
				if a != nil && a.tubes != nil {
					n += len(a.tubes.Exports())
				}
			}
			return float64(n)
		}),
		counter("tubes_daemon_browses_dropped_total", "Browses from contacts dropped: as many catalogs were being answered as the daemon answers at once.",
			func() float64 {
				if d.pubs == nil {
					return 0
				}
				return float64(d.pubs.browsesDropped.Load())
			}),
		gauge("tubes_daemon_event_subscribers", "Event-stream clients connected.",
			func() float64 { return float64(d.bus.Subscribers()) }),
		counter("tubes_daemon_event_subscribers_cut_total", "Event-stream clients cut off for falling behind (their queue was over its bytes or events).",
			func() float64 { return float64(d.bus.Cut()) }),
	}
}

func (m *metrics) status(_ string, s connection.Status) {
	if m != nil {
		m.changes.WithLabelValues(s.String()).Inc()
	}
}

// acceptError counts an accept error a listener rode out.
func (m *metrics) acceptError(listener string) {
	if m != nil {
		m.acceptErrors.WithLabelValues(listener).Inc()
	}
}
