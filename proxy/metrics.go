package proxy

import (
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/airlock-registry/airlock/proxy/upstream"
)

// Metrics are the proxy's Prometheus series, all under the "airlock_"
// namespace and registered on the registry given to NewMetrics (never the
// global one). The gates that come later add their own series beside these.
type Metrics struct {
	requests        *prometheus.CounterVec
	requestDuration *prometheus.HistogramVec
	cache           *prometheus.CounterVec
	bytes           *prometheus.CounterVec
	saved           *prometheus.CounterVec
	upstreamReqs    *prometheus.CounterVec
	upstreamErrors  *prometheus.CounterVec
	upstreamLatency *prometheus.HistogramVec
	rateRemaining   *prometheus.GaugeVec
	fillsInFlight   *prometheus.GaugeVec
	coalescedTotal  *prometheus.CounterVec
	followers       *prometheus.GaugeVec
	mismatches      *prometheus.CounterVec
	stale           *prometheus.CounterVec
	uncached        *prometheus.CounterVec
}

// NewMetrics creates the series and registers them on reg; a nil reg keeps
// them unregistered (tests, tools).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "airlock_http_requests_total", Help: "Registry API requests by upstream, endpoint kind, method and status code.",
		}, []string{"upstream", "kind", "method", "code"}),
		requestDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "airlock_http_request_duration_seconds", Help: "Registry API request duration, headers to last byte.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
		}, []string{"kind", "method"}),
		cache: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "airlock_cache_requests_total", Help: "Cache lookups by upstream, kind (manifest, blob) and result (hit, miss, stale).",
		}, []string{"upstream", "kind", "result"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "airlock_bytes_total", Help: "Blob bytes by upstream and source: cache (served from the store) or upstream (fetched).",
		}, []string{"upstream", "source"}),
		saved: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "airlock_bytes_saved_total", Help: "Blob bytes clients received without an upstream transfer of their own: cache hits and followers of a running fill.",
		}, []string{"upstream"}),
		upstreamReqs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "airlock_upstream_requests_total", Help: "HTTP round trips to upstreams by operation and status code (0: no response).",
		}, []string{"upstream", "op", "code"}),
		upstreamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "airlock_upstream_errors_total", Help: "Upstream round trips that failed: network errors, 5xx and 429.",
		}, []string{"upstream", "op"}),
		upstreamLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "airlock_upstream_request_duration_seconds", Help: "Upstream round trip time to response headers.",
			Buckets: prometheus.DefBuckets,
		}, []string{"upstream", "op"}),
		rateRemaining: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "airlock_upstream_ratelimit_remaining", Help: "The last ratelimit-remaining an upstream reported (Docker Hub).",
		}, []string{"upstream"}),
		fillsInFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "airlock_fills_in_flight", Help: "Upstream blob transfers running now.",
		}, []string{"upstream"}),
		coalescedTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "airlock_fill_followers_total", Help: "Requests that joined a running transfer instead of starting one.",
		}, []string{"upstream"}),
		followers: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "airlock_fill_followers", Help: "Clients reading along a running transfer now, besides the one that started it.",
		}, []string{"upstream"}),
		mismatches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "airlock_digest_mismatches_total", Help: "Upstream content that did not match its digest (never cached).",
		}, []string{"upstream", "kind"}),
		stale: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "airlock_stale_serves_total", Help: "Responses served from cache because the upstream could not answer.",
		}, []string{"upstream"}),
		uncached: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "airlock_uncached_blob_requests_total", Help: "Blob requests served straight from the upstream without caching, because the cache volume was full.",
		}, []string{"upstream"}),
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.requestDuration, m.cache, m.bytes, m.saved, m.upstreamReqs, m.upstreamErrors,
			m.upstreamLatency, m.rateRemaining, m.fillsInFlight, m.coalescedTotal, m.followers, m.mismatches, m.stale, m.uncached)
	}
	return m
}

func (m *Metrics) observeRequest(up, kind, method string, status int, d time.Duration) {
	m.requests.WithLabelValues(up, kind, method, strconv.Itoa(status)).Inc()
	m.requestDuration.WithLabelValues(kind, method).Observe(d.Seconds())
}

func (m *Metrics) cacheResult(up, kind, result string) {
	m.cache.WithLabelValues(up, kind, result).Inc()
}
func (m *Metrics) bytesFrom(up, source string, n int) {
	m.bytes.WithLabelValues(up, source).Add(float64(n))
}
func (m *Metrics) bytesSaved(up string, n int64)  { m.saved.WithLabelValues(up).Add(float64(n)) }
func (m *Metrics) fillStarted(up string)          { m.fillsInFlight.WithLabelValues(up).Inc() }
func (m *Metrics) fillEnded(up string)            { m.fillsInFlight.WithLabelValues(up).Dec() }
func (m *Metrics) coalesced(up string)            { m.coalescedTotal.WithLabelValues(up).Inc() }
func (m *Metrics) digestMismatch(up, kind string) { m.mismatches.WithLabelValues(up, kind).Inc() }

// staleServe counts a stale answer; its cache result is counted with the
// request, once.
func (m *Metrics) staleServe(up string) { m.stale.WithLabelValues(up).Inc() }

// ObserveUpstream records one upstream round trip; pass it as the upstream
// client's Observe hook.
func (m *Metrics) ObserveUpstream(e upstream.Event) {
	m.upstreamReqs.WithLabelValues(e.Upstream, e.Op, strconv.Itoa(e.Status)).Inc()
	m.upstreamLatency.WithLabelValues(e.Upstream, e.Op).Observe(e.Duration.Seconds())
	if e.Err != nil || e.Status >= 500 || e.Status == 429 {
		m.upstreamErrors.WithLabelValues(e.Upstream, e.Op).Inc()
	}
	if e.Header != nil {
		if v := e.Header.Get("ratelimit-remaining"); v != "" {
			// Docker Hub sends "<n>;w=<seconds>".
			if n, err := strconv.ParseFloat(strings.TrimSpace(strings.SplitN(v, ";", 2)[0]), 64); err == nil {
				m.rateRemaining.WithLabelValues(e.Upstream).Set(n)
			}
		}
	}
}
