package daemon

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tubes-dev/tubes/connection"
)

// metrics are the daemon's Prometheus metrics; nil records nothing.
type metrics struct {
	changes *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer, d *Daemon) *metrics {
	if reg == nil {
		return nil
	}
	m := &metrics{
		changes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tube_daemon_status_changes_total",
			Help: "Account status changes by new status.",
		}, []string{"status"}),
	}
	accounts := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tube_daemon_accounts_connected",
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
	reg.MustRegister(m.changes, accounts)
	return m
}

func (m *metrics) status(_ string, s connection.Status) {
	if m != nil {
		m.changes.WithLabelValues(s.String()).Inc()
	}
}
