package evict

import (
	"errors"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	size         prometheus.Gauge
	spool        prometheus.Gauge
	index        prometheus.Gauge
	evictions    prometheus.Counter
	evictedBytes prometheus.Counter
}

// newMetrics creates the eviction metrics and registers them on reg. If an
// earlier Evictor (one replaced by a configuration reload) registered them
// already, its collectors are reused so the series continue.
func newMetrics(reg prometheus.Registerer, log *slog.Logger) metrics {
	m := metrics{
		size: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "airlock_cache_size_bytes",
			Help: "Bytes of committed blobs in the cache, as measured by the last eviction sweep.",
		}),
		spool: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "airlock_cache_spool_bytes",
			Help: "Bytes held by downloads in progress, written or reserved, as measured by the last eviction sweep; counted toward cache.maxSize.",
		}),
		index: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "airlock_cache_index_bytes",
			Help: "Bytes of the metadata index file (manifests, tags, links), as measured by the last eviction sweep; counted toward cache.maxSize.",
		}),
		evictions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "airlock_cache_evictions_total",
			Help: "Blobs deleted from the cache to keep it under cache.maxSize.",
		}),
		evictedBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "airlock_cache_evicted_bytes_total",
			Help: "Bytes of blobs deleted from the cache to keep it under cache.maxSize.",
		}),
	}
	if reg == nil {
		return m
	}
	m.size = register(reg, log, m.size)
	m.spool = register(reg, log, m.spool)
	m.index = register(reg, log, m.index)
	m.evictions = register(reg, log, m.evictions)
	m.evictedBytes = register(reg, log, m.evictedBytes)
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
		log.Warn("cache eviction metric not registered", "error", err)
	}
	return c
}
