package rendezvous

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tubes-dev/tubes/tperr"
)

// Metrics are the account service's Prometheus metrics. A nil *Metrics
// records nothing.
type Metrics struct {
	reg      prometheus.Registerer
	auths    *prometheus.CounterVec
	requests *prometheus.CounterVec
	delivers prometheus.Counter
	refusals *prometheus.CounterVec
}

// NewMetrics registers the service's metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		reg: reg,
		auths: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tubes_rendezvous_authorizations_total",
			Help: "Connection authorizations by result (ok, refused).",
		}, []string{"result"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tubes_rendezvous_requests_total",
			Help: "Account service requests by operation and result (ok or the Telepathy error name).",
		}, []string{"op", "result"}),
		delivers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tubes_rendezvous_messages_delivered_total",
			Help: "Messages delivered into inboxes by send.",
		}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tubes_rendezvous_refused_total",
			Help: "Requests refused for being over a limit, by limit (README's limits table).",
		}, []string{"limit"}),
	}
	reg.MustRegister(m.auths, m.requests, m.delivers, m.refusals)
	return m
}

// bind adds gauges read from a running service.
func (m *Metrics) bind(s *Service) {
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tubes_rendezvous_accounts",
			Help: "Registered accounts.",
		}, func() float64 { return float64(len(s.store.view.accountNames())) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tubes_rendezvous_online_accounts",
			Help: "Accounts with at least one live connection.",
		}, func() float64 { return float64(s.pres.onlineCount()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tubes_rendezvous_active_accounts",
			Help: "Accounts with requests in flight or their request buckets not full: those the per-account limits track.",
		}, func() float64 { n, _ := s.acct.tracked(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tubes_rendezvous_requests_in_flight",
			Help: "Account requests being answered, waiting ones included (at most the per-account limit each).",
		}, func() float64 { _, n := s.acct.tracked(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tubes_rendezvous_relays",
			Help: "Relay instances serving the cluster.",
		}, func() float64 { return float64(s.pres.relayCount()) }),
	)
}

func (m *Metrics) auth(result string) {
	if m != nil {
		m.auths.WithLabelValues(result).Inc()
	}
}

// knownOps are the operations a request may name; any other is counted
// as "unknown", so that the names a client makes up cannot grow the
// metrics without bound.
var knownOps = func() map[string]bool {
	ops := map[string]bool{opRegister: true, opWhois: true, opUserAdd: true, opUserList: true, opUserRemove: true}
	for op := range (&Service{}).accountHandlers() {
		ops[op] = true
	}
	return ops
}()

func (m *Metrics) request(op string, err error) {
	if m == nil {
		return
	}
	if !knownOps[op] {
		op = "unknown"
	}
	result := "ok"
	if err != nil {
		result = tperr.Short(tperr.Name(err))
		if result == "" {
			result = "internal"
		}
	}
	m.requests.WithLabelValues(op, result).Inc()
}

func (m *Metrics) refused(limit string) {
	if m != nil {
		m.refusals.WithLabelValues(limit).Inc()
	}
}

func (m *Metrics) delivered(n int) {
	if m != nil {
		m.delivers.Add(float64(n))
	}
}
