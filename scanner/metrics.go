package scanner

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the scanner's progress, registered on Options.Registerer.
type metrics struct {
	jobs        *prometheus.GaugeVec   // by state
	scans       *prometheus.CounterVec // by result
	scanSeconds prometheus.Histogram
	waitSeconds prometheus.Histogram
	layers      prometheus.Counter
	layerBytes  prometheus.Counter
	rechecks    prometheus.Counter
	rechecked   prometheus.Counter
	updates     *prometheus.CounterVec // by result
	lastUpdate  prometheus.Gauge
	refused     prometheus.Counter
}

// newMetrics makes the scanner's metrics; register adds them to a
// registry.
func newMetrics() *metrics {
	const ns, sub = "airlock", "scanner"
	buckets := []float64{0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800}
	m := &metrics{
		jobs: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "jobs",
			Help: "Scan jobs in the queue by state (queued, scanning, done, failed), across every process sharing the database."}, []string{"state"}),
		scans: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "scans_total",
			Help: "Scan attempts this process finished, by result: done, retried, failed."}, []string{"result"}),
		scanSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "scan_duration_seconds",
			Help: "Time one successful scan took: reading layers, indexing, matching.", Buckets: buckets}),
		waitSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "queued_to_done_seconds",
			Help: "Time from a manifest being queued to its scan being done.", Buckets: buckets}),
		layers: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "layers_indexed_total",
			Help: "Layers read and indexed; a layer indexed before (in any image) is not read again."}),
		layerBytes: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "layer_bytes_total",
			Help: "Uncompressed bytes of the layers indexed."}),
		rechecks: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "rechecks_total",
			Help: "Re-checks run after vulnerability data changed."}),
		rechecked: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "rechecked_images_total",
			Help: "Scanned images matched again after vulnerability data changed."}),
		updates: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "updates_total",
			Help: "Updater runs by result (ok, failed); a failed run keeps the last good data."}, []string{"result"}),
		lastUpdate: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "last_update_success_timestamp_seconds",
			Help: "When the updaters last ran without an error."}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "indexer_requests_refused_total",
			Help: "Network requests the indexer attempted and airlock refused (it should make none)."}),
	}
	return m
}

// register adds the metrics to reg. A scanner opened again on the same
// registry (after a failed Open, in a test) takes over the collectors
// already there.
func (m *metrics) register(reg prometheus.Registerer) error {
	if reg == nil {
		return nil
	}
	var err error
	m.jobs = adopt(reg, m.jobs, &err)
	m.scans = adopt(reg, m.scans, &err)
	m.scanSeconds = adopt(reg, m.scanSeconds, &err)
	m.waitSeconds = adopt(reg, m.waitSeconds, &err)
	m.layers = adopt(reg, m.layers, &err)
	m.layerBytes = adopt(reg, m.layerBytes, &err)
	m.rechecks = adopt(reg, m.rechecks, &err)
	m.rechecked = adopt(reg, m.rechecked, &err)
	m.updates = adopt(reg, m.updates, &err)
	m.lastUpdate = adopt(reg, m.lastUpdate, &err)
	m.refused = adopt(reg, m.refused, &err)
	return err
}

func adopt[C prometheus.Collector](reg prometheus.Registerer, c C, errp *error) C {
	err := reg.Register(c)
	if err == nil {
		return c
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if ex, ok := are.ExistingCollector.(C); ok {
			return ex
		}
	}
	*errp = errors.Join(*errp, fmt.Errorf("scanner: registering metrics: %w", err))
	return c
}
