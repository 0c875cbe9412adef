package cluster

import "github.com/prometheus/client_golang/prometheus"

// metrics are the cluster's series, registered on the Registerer given to
// Open (never the global one).
type metrics struct {
	led       prometheus.Counter
	followed  prometheus.Counter
	fallbacks prometheus.Counter
	losses    *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		led: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "airlock_cluster_fills_led_total",
			Help: "Fills this replica took the cluster-wide lease for and fetched from the upstream.",
		}),
		followed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "airlock_cluster_fills_followed_total",
			Help: "Peer streams this replica read a fill from instead of the upstream (a fill resumed from another peer counts again).",
		}),
		fallbacks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "airlock_cluster_peer_fallbacks_total",
			Help: "Fills fetched from the upstream because the replica leading them could not be read (partition, refusal).",
		}),
		losses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "airlock_cluster_lease_losses_total",
			Help: "Leases this replica held and lost before giving them up, by kind (fill, singleton).",
		}, []string{"kind"}),
	}
	if reg != nil {
		reg.MustRegister(m.led, m.followed, m.fallbacks, m.losses)
	}
	return m
}
