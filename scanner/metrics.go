package scanner

import "github.com/prometheus/client_golang/prometheus"

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

func newMetrics(reg prometheus.Registerer) *metrics {
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
	if reg != nil {
		for _, c := range []prometheus.Collector{m.jobs, m.scans, m.scanSeconds, m.waitSeconds, m.layers,
			m.layerBytes, m.rechecks, m.rechecked, m.updates, m.lastUpdate, m.refused} {
			reg.MustRegister(c)
		}
	}
	return m
}
