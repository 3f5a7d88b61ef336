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
	}
	if reg != nil {
		reg.MustRegister(m.allocations, m.pending, m.relayed, m.relayedTotal, m.bytes, m.refused, m.authFailures, m.acceptErrors)
	}
	return m
}
