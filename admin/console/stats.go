package console

import (
	"context"
	"slices"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Stats are the process's own measurements the overview shows.
type Stats struct {
	Cache     CacheStats
	Upstreams []UpstreamStats
}

// CacheStats describe the blob cache.
type CacheStats struct {
	// SizeKnown is false until the first eviction sweep measured the cache.
	SizeKnown bool
	Bytes     int64
	// Hits and Lookups count cache lookups (manifests and blobs) since
	// the process started.
	Hits, Lookups float64
}

// HitRatio is Hits/Lookups, 0 without lookups.
func (s CacheStats) HitRatio() float64 {
	if s.Lookups == 0 {
		return 0
	}
	return s.Hits / s.Lookups
}

// UpstreamStats describe one upstream since the process started.
type UpstreamStats struct {
	Name     string
	Requests float64
	// Errors are round trips that failed: network errors, 5xx and 429.
	Errors float64
	// RateLimitRemaining is the last ratelimit-remaining the upstream
	// sent, when it sent one.
	RateLimitKnown     bool
	RateLimitRemaining float64
}

// Health is a word for the upstream's error ratio.
func (u UpstreamStats) Health() string {
	switch {
	case u.Requests == 0:
		return "idle"
	case u.Errors == 0 || u.Errors/u.Requests < 0.05:
		return "healthy"
	case u.Errors/u.Requests < 0.5:
		return "degraded"
	}
	return "failing"
}

// ErrorRatio is Errors/Requests, 0 without requests.
func (u UpstreamStats) ErrorRatio() float64 {
	if u.Requests == 0 {
		return 0
	}
	return u.Errors / u.Requests
}

// StatsFrom reads Stats from the series the proxy and the evictor already
// register on g: airlock_cache_size_bytes, airlock_cache_requests_total,
// airlock_upstream_requests_total, airlock_upstream_errors_total and
// airlock_upstream_ratelimit_remaining. Pass it as Options.Stats.
func StatsFrom(g prometheus.Gatherer) func(context.Context) (Stats, error) {
	return func(context.Context) (Stats, error) {
		families, err := g.Gather()
		if err != nil && len(families) == 0 {
			return Stats{}, err
		}
		var s Stats
		ups := map[string]*UpstreamStats{}
		up := func(name string) *UpstreamStats {
			if ups[name] == nil {
				ups[name] = &UpstreamStats{Name: name}
			}
			return ups[name]
		}
		for _, f := range families {
			for _, m := range f.GetMetric() {
				switch f.GetName() {
				case "airlock_cache_size_bytes":
					s.Cache.SizeKnown, s.Cache.Bytes = true, int64(m.GetGauge().GetValue())
				case "airlock_cache_requests_total":
					n := m.GetCounter().GetValue()
					s.Cache.Lookups += n
					if label(m, "result") == "hit" {
						s.Cache.Hits += n
					}
				case "airlock_upstream_requests_total":
					up(label(m, "upstream")).Requests += m.GetCounter().GetValue()
				case "airlock_upstream_errors_total":
					up(label(m, "upstream")).Errors += m.GetCounter().GetValue()
				case "airlock_upstream_ratelimit_remaining":
					u := up(label(m, "upstream"))
					u.RateLimitKnown, u.RateLimitRemaining = true, m.GetGauge().GetValue()
				}
			}
		}
		for _, u := range ups {
			s.Upstreams = append(s.Upstreams, *u)
		}
		slices.SortFunc(s.Upstreams, func(a, b UpstreamStats) int {
			if a.Name < b.Name {
				return -1
			}
			if a.Name > b.Name {
				return 1
			}
			return 0
		})
		return s, nil
	}
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}
