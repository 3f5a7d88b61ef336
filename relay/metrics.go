package relay

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	allocations  *prometheus.GaugeVec
	pending      prometheus.Gauge
	relayed      prometheus.Gauge
	relayedTotal prometheus.Counter
	bytes        *prometheus.CounterVec
	refused      prometheus.Counter
	authFailures prometheus.Counter
	acceptErrors *prometheus.CounterVec
	quota        *prometheus.CounterVec
	foreign      prometheus.Counter
}

// unauthMetrics are the gauge and counter of unauthenticated TCP
// connections, read from the server's per-source count.
func unauthMetrics(s *Server) []prometheus.Collector {
	return []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tubes_turn_unauthenticated_connections", Help: "TCP connections to the TURN port not yet authenticated.",
		}, func() float64 { return float64(s.unauth.Held()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "tubes_turn_unauthenticated_refused_total", Help: "TCP connections to the TURN port closed at once: their source (or everyone) was at the unauthenticated limit.",
		}, func() float64 { return float64(s.unauth.Refused()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "tubes_turn_unauthenticated_evicted_total", Help: "Unauthenticated TCP connections closed to make room for one from a source holding fewer, at the total.",
		}, func() float64 { return float64(s.unauth.Evicted()) }),
	}
}

func newMetrics(s *Server, reg prometheus.Registerer) *metrics {
	m := &metrics{
		allocations: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tubes_turn_allocations", Help: "Live TURN allocations by transport.",
		}, []string{"transport"}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tubes_turn_pending_connections", Help: "Peer connections of TCP allocations waiting for ConnectionBind.",
		}),
		relayed: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tubes_turn_relayed_connections", Help: "TCP connections being relayed now.",
		}),
		relayedTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tubes_turn_relayed_connections_total", Help: "TCP connections relayed since start.",
		}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tubes_turn_relayed_bytes_total", Help: "Bytes relayed on TCP connections (counted when a connection ends), by direction.",
		}, []string{"direction"}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tubes_turn_peers_refused_total", Help: "Peer addresses refused by the peer filter.",
		}),
		authFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tubes_turn_auth_failures_total", Help: "TURN requests with refused credentials.",
		}),
		acceptErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tubes_accept_errors_total", Help: "Accept errors ridden out (out of descriptors, aborted connections), by listener.",
		}, []string{"listener"}),
		foreign: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tubes_turn_foreign_peers_refused_total", Help: "Peers refused to allocations of account credentials: no contact of the account is connected from there.",
		}),
		quota: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tubes_turn_allocations_refused_total", Help: "Allocations refused for a quota, by quota (per_user, total).",
		}, []string{"quota"}),
	}
	if reg != nil {
		reg.MustRegister(m.allocations, m.pending, m.relayed, m.relayedTotal, m.bytes, m.refused, m.authFailures, m.acceptErrors, m.quota, m.foreign)
		reg.MustRegister(unauthMetrics(s)...)
	}
	return m
}
