package gate

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/airlock-registry/airlock/storage/metadata"
)

type metrics struct {
	decisions   *prometheus.CounterVec
	transitions *prometheus.CounterVec
	findings    *prometheus.CounterVec
}

var states = []metadata.State{metadata.StatePending, metadata.StateApproved, metadata.StateQuarantined,
	metadata.StateReleased, metadata.StateBlocked}

func newMetrics(g *Gate, reg prometheus.Registerer) *metrics {
	m := &metrics{
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "airlock_gate_decisions_total",
			Help: "Manifest requests the gate decided, by decision (allow, deny, pending)."}, []string{"decision"}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "airlock_image_transitions_total",
			Help: "Image state changes, by new state and by whom (policy, admin, expiry)."}, []string{"to", "by"}),
		findings: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "airlock_policy_findings_total",
			Help: "Policy findings recorded on images, by policy and mode (enforce refuses, audit only records)."}, []string{"policy", "mode"}),
	}
	for _, d := range []string{"allow", "deny", "pending"} {
		m.decisions.WithLabelValues(d)
	}
	if reg != nil {
		reg.MustRegister(m.decisions, m.transitions, m.findings, &stateCollector{g: g,
			desc: prometheus.NewDesc("airlock_images", "Images airlock has seen, by state.", []string{"state"}, nil)})
	}
	return m
}

func (m *metrics) decision(d string) { m.decisions.WithLabelValues(d).Inc() }

func (m *metrics) transition(to metadata.State, by string) {
	m.transitions.WithLabelValues(string(to), by).Inc()
}

func (m *metrics) finding(policy, mode string) {
	if mode == "" {
		mode = "enforce"
	}
	m.findings.WithLabelValues(policy, mode).Inc()
}

// stateCollector counts images per state when scraped, from the gate's
// memory: exact, and free between scrapes.
type stateCollector struct {
	g    *Gate
	desc *prometheus.Desc
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	now := c.g.now()
	counts := map[metadata.State]int{}
	c.g.mu.RLock()
	for _, img := range c.g.images {
		counts[stateOf(img, now)]++
	}
	c.g.mu.RUnlock()
	for _, s := range states {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(counts[s]), string(s))
	}
}
