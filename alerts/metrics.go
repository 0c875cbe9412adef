package alerts

import (
	"errors"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
)

// Results of a delivery attempt, the values of the result label.
const (
	resultDelivered = "delivered"
	resultRetried   = "retried"
	resultDropped   = "dropped"
)

type metrics struct {
	deliveries *prometheus.CounterVec
	pending    prometheus.Gauge
}

// newMetrics creates the alert metrics and registers them on reg. If an
// earlier Deliverer registered them already, its collectors are reused so
// the series continue.
func newMetrics(reg prometheus.Registerer, log *slog.Logger) metrics {
	m := metrics{
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "airlock_alert_deliveries_total",
			Help: "Webhook delivery outcomes: delivered (2xx), retried (a failed attempt that will be repeated) and dropped (given up, or its webhook is no longer configured).",
		}, []string{"result"}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "airlock_alert_outbox_pending",
			Help: "Webhook deliveries waiting in the outbox, due or scheduled for a retry, as of the last poll.",
		}),
	}
	for _, r := range []string{resultDelivered, resultRetried, resultDropped} {
		m.deliveries.WithLabelValues(r) // export zeros, so that increase() sees the first event
	}
	if reg == nil {
		return m
	}
	m.deliveries = register(reg, log, m.deliveries)
	m.pending = register(reg, log, m.pending)
	return m
}

func register[C prometheus.Collector](reg prometheus.Registerer, log *slog.Logger, c C) C {
	err := reg.Register(c)
	if are, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); ok {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing
		}
	}
	if err != nil {
		log.Warn("alert metric not registered", "error", err)
	}
	return c
}
