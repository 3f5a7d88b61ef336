package daemon

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tubes-dev/tubes/connection"
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
	return m
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
