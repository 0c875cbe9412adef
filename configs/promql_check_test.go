package configs_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/airlock-registry/airlock/alerts"
	"github.com/airlock-registry/airlock/gate"
	"github.com/airlock-registry/airlock/proxy"
	"github.com/airlock-registry/airlock/storage/evict"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// TestCheckExpr shows that the expression check rejects what it is there to
// reject; without it, a lexer that found nothing would pass every file.
func TestCheckExpr(t *testing.T) {
	t.Parallel()
	recorded := map[string]bool{"airlock:x:ratio_rate5m": true}
	tests := []struct {
		expr string
		want string // substring of the first error; "" for valid
	}{
		{`sum by (code) (rate(airlock_http_requests_total{upstream=~"$upstream"}[$__rate_interval]))`, ""},
		{`histogram_quantile(0.99, sum by (le, kind) (rate(airlock_http_request_duration_seconds_bucket{kind="manifest"}[5m]))) > 2`, ""},
		{`airlock:x:ratio_rate5m > (14.4 * 0.001)`, ""},
		{`up{job="airlock-admin"} == 0`, ""},
		{`rate(airlock_http_request_total[5m])`, "unknown metric airlock_http_request_total"},
		{`airlock_cache_requests_total{reslt="hit"}`, `no label "reslt"`},
		{`sum by (upstrem) (airlock_fills_in_flight)`, `grouping by "upstrem"`},
		{`airlock_http_request_duration_seconds_bucket{le="1"}`, ""},
		{`airlock_upstream_errors_total_bucket`, "unknown metric"},
		{`rates(airlock_bytes_total[5m])`, "unknown function rates"},
		{`sum(rate(airlock_bytes_total{source="cache", upstream=~"a,b"}[5m]))`, ""},
		{`1 + 2`, "no metric"},
		{`airlock_bytes_total{source="cache"`, "unterminated"},
	}
	for _, tt := range tests {
		errs := checkExpr(tt.expr, recorded)
		switch {
		case tt.want == "" && len(errs) > 0:
			t.Errorf("checkExpr(%q) = %v, want no error", tt.expr, errs)
		case tt.want != "" && len(errs) == 0:
			t.Errorf("checkExpr(%q) passed, want an error with %q", tt.expr, tt.want)
		case tt.want != "" && !strings.Contains(errs[0].Error(), tt.want):
			t.Errorf("checkExpr(%q) = %v, want an error with %q", tt.expr, errs[0], tt.want)
		}
	}
}

// collectors captures what a constructor registers, so the test can read
// the descriptors of series that have no samples yet.
type collectors struct{ list []prometheus.Collector }

func (c *collectors) Register(x prometheus.Collector) error { c.list = append(c.list, x); return nil }
func (c *collectors) MustRegister(xs ...prometheus.Collector) {
	c.list = append(c.list, xs...)
}
func (c *collectors) Unregister(prometheus.Collector) bool { return false }

// TestKnownSeriesMatchProxy keeps airlockSeries equal to the series the
// proxy, the cache evictor, the alert deliverer and the gate register, so
// a renamed metric or label fails here, not on a dashboard that silently
// shows nothing.
func TestKnownSeriesMatchProxy(t *testing.T) {
	t.Parallel()
	var reg collectors
	proxy.NewMetrics(&reg)
	evict.New(evict.Options{Registerer: &reg})
	alerts.New(alerts.Options{Registerer: &reg})
	db, err := metadata.Open(filepath.Join(t.TempDir(), "metadata.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if _, err := gate.New(t.Context(), gate.Options{Store: db, Content: noContent{}, Registerer: &reg}); err != nil {
		t.Fatal(err)
	}
	got := map[string]series{}
	for _, c := range reg.list {
		_, histogram := c.(*prometheus.HistogramVec)
		ch := make(chan *prometheus.Desc, 16)
		go func() { c.Describe(ch); close(ch) }()
		for d := range ch {
			name, labels := describe(t, d)
			got[name] = series{labels: labels, histogram: histogram}
		}
	}
	for name, want := range airlockSeries {
		g, ok := got[name]
		if !ok {
			t.Errorf("%s is used by the shipped configs but airlock does not register it", name)
			continue
		}
		if strings.Join(g.labels, ",") != strings.Join(want.labels, ",") || g.histogram != want.histogram {
			t.Errorf("%s: proxy registers labels %v (histogram %v), configs assume %v (histogram %v)",
				name, g.labels, g.histogram, want.labels, want.histogram)
		}
	}
	for name := range got {
		if _, ok := airlockSeries[name]; !ok {
			t.Errorf("%s is registered by airlock but unknown to the configs test: add it to airlockSeries", name)
		}
	}
}

// noContent stands for the proxy's cached content, which a gate over an
// empty store never touches.
type noContent struct{}

func (noContent) Withdraw(context.Context, string, digest.Digest, func(digest.Digest) bool) error {
	return nil
}
func (noContent) Remove(context.Context, string, digest.Digest) error { return nil }

// describe reads name and variable labels from a descriptor's String
// form, the only public view of them.
func describe(t *testing.T, d *prometheus.Desc) (string, []string) {
	t.Helper()
	s := d.String()
	name := between(s, `fqName: "`, `"`)
	vars := between(s, "variableLabels: {", "}")
	if name == "" {
		t.Fatalf("cannot read a metric name from %s", s)
	}
	var labels []string
	for l := range strings.SplitSeq(vars, ",") {
		if l = strings.TrimSpace(l); l != "" {
			labels = append(labels, l)
		}
	}
	return name, labels
}

func between(s, start, end string) string {
	_, after, ok := strings.Cut(s, start)
	if !ok {
		return ""
	}
	v, _, _ := strings.Cut(after, end)
	return v
}
