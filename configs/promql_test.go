package configs_test

import (
	"fmt"
	"slices"
	"strings"
	"unicode"
)

// series is a metric airlock's dashboards and alerts may use, with the
// labels it carries.
type series struct {
	labels    []string
	histogram bool
}

// airlockSeries are airlock's own metrics. TestKnownSeriesMatchProxy keeps
// this table equal to what the proxy, the cache evictor, the alert
// deliverer and the gate register.
var airlockSeries = map[string]series{
	"airlock_http_requests_total":               {labels: []string{"upstream", "kind", "method", "code"}},
	"airlock_http_request_duration_seconds":     {labels: []string{"kind", "method"}, histogram: true},
	"airlock_cache_requests_total":              {labels: []string{"upstream", "kind", "result"}},
	"airlock_bytes_total":                       {labels: []string{"upstream", "source"}},
	"airlock_bytes_saved_total":                 {labels: []string{"upstream"}},
	"airlock_upstream_requests_total":           {labels: []string{"upstream", "op", "code"}},
	"airlock_upstream_errors_total":             {labels: []string{"upstream", "op"}},
	"airlock_upstream_request_duration_seconds": {labels: []string{"upstream", "op"}, histogram: true},
	"airlock_upstream_ratelimit_remaining":      {labels: []string{"upstream"}},
	"airlock_fills_in_flight":                   {labels: []string{"upstream"}},
	"airlock_fill_followers_total":              {labels: []string{"upstream"}},
	"airlock_fill_followers":                    {labels: []string{"upstream"}},
	"airlock_digest_mismatches_total":           {labels: []string{"upstream", "kind"}},
	"airlock_stale_serves_total":                {labels: []string{"upstream"}},
	"airlock_uncached_blob_requests_total":      {labels: []string{"upstream"}},
	"airlock_cache_size_bytes":                  {},
	"airlock_cache_spool_bytes":                 {},
	"airlock_cache_index_bytes":                 {},
	"airlock_cache_evictions_total":             {},
	"airlock_cache_evicted_bytes_total":         {},
	"airlock_alert_deliveries_total":            {labels: []string{"result"}},
	"airlock_alert_outbox_pending":              {},
	"airlock_images":                            {labels: []string{"state"}},
	"airlock_gate_decisions_total":              {labels: []string{"decision"}},
	"airlock_image_transitions_total":           {labels: []string{"to", "by"}},
	"airlock_policy_findings_total":             {labels: []string{"policy", "mode"}},
}

// otherSeries come from the Go and process collectors airlock registers,
// from Prometheus itself and from the kubelet.
var otherSeries = map[string]series{
	"up":                                   {},
	"process_cpu_seconds_total":            {},
	"process_resident_memory_bytes":        {},
	"go_memstats_heap_inuse_bytes":         {},
	"go_goroutines":                        {},
	"kubelet_volume_stats_available_bytes": {labels: []string{"persistentvolumeclaim"}},
	"kubelet_volume_stats_capacity_bytes":  {labels: []string{"persistentvolumeclaim"}},
}

// targetLabels are attached by Prometheus service discovery to every
// scraped series.
var targetLabels = []string{"job", "instance", "namespace", "pod", "service", "endpoint", "container"}

// promqlWords are aggregation operators, binary operators and keywords:
// identifiers that are neither metrics nor functions.
var promqlWords = []string{
	"sum", "avg", "min", "max", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values", "group",
	"and", "or", "unless", "bool", "offset", "inf", "nan",
}

var promqlGrouping = []string{"by", "without", "on", "ignoring", "group_left", "group_right"}

var promqlFunctions = []string{
	"abs", "absent", "ceil", "clamp_min", "clamp_max", "delta", "deriv", "floor", "histogram_quantile",
	"increase", "irate", "label_replace", "predict_linear", "rate", "round", "scalar", "sort", "time",
	"vector", "avg_over_time", "max_over_time", "min_over_time", "sum_over_time", "changes", "resets",
}

// selector is one metric name in an expression with the label names its
// matchers use.
type selector struct {
	name   string
	labels []string
}

// parsedExpr is what checkExpr needs from a PromQL expression. It is a
// lexer, not a parser: enough to find every metric name, matcher label,
// grouping label and function call in the expressions shipped here.
type parsedExpr struct {
	selectors []selector
	grouping  []string
	functions []string
}

func lexPromQL(expr string) (parsedExpr, error) {
	var p parsedExpr
	rs := []rune(expr)
	i := 0
	skipSpace := func(j int) int {
		for j < len(rs) && unicode.IsSpace(rs[j]) {
			j++
		}
		return j
	}
	ident := func(j int) (string, int) {
		k := j
		for k < len(rs) && (rs[k] == '_' || rs[k] == ':' || unicode.IsLetter(rs[k]) || unicode.IsDigit(rs[k])) {
			k++
		}
		return string(rs[j:k]), k
	}
	lastMetric := -1 // index in p.selectors of a name a '{' may follow
	for i < len(rs) {
		r := rs[i]
		switch {
		case unicode.IsSpace(r):
			i++
		case r == '"' || r == '\'' || r == '`':
			j := i + 1
			for j < len(rs) && rs[j] != r {
				if rs[j] == '\\' {
					j++
				}
				j++
			}
			if j >= len(rs) {
				return p, fmt.Errorf("unterminated string at offset %d", i)
			}
			i = j + 1
			lastMetric = -1
		case r == '[':
			j := slices.Index(rs[i:], ']')
			if j < 0 {
				return p, fmt.Errorf("unterminated range at offset %d", i)
			}
			i += j + 1
		case r == '{':
			j := slices.Index(rs[i:], '}')
			if j < 0 {
				return p, fmt.Errorf("unterminated matcher at offset %d", i)
			}
			if lastMetric < 0 {
				return p, fmt.Errorf("matcher without a metric name at offset %d", i)
			}
			labels, err := matcherLabels(string(rs[i+1 : i+j]))
			if err != nil {
				return p, err
			}
			p.selectors[lastMetric].labels = append(p.selectors[lastMetric].labels, labels...)
			i += j + 1
			lastMetric = -1
		case r == '$':
			_, i = ident(i + 1) // a Grafana variable
			lastMetric = -1
		case unicode.IsDigit(r) || r == '.':
			// A number or a duration: 0.99, 1e3, 5m, 1h30m.
			for i < len(rs) && (rs[i] == '.' || unicode.IsLetter(rs[i]) || unicode.IsDigit(rs[i])) {
				i++
			}
			lastMetric = -1
		case r == '_' || r == ':' || unicode.IsLetter(r):
			word, j := ident(i)
			next := skipSpace(j)
			called := next < len(rs) && rs[next] == '('
			lastMetric = -1
			switch {
			case slices.Contains(promqlGrouping, word):
				if !called {
					return p, fmt.Errorf("%s without a label list", word)
				}
				end := slices.Index(rs[next:], ')')
				if end < 0 {
					return p, fmt.Errorf("unterminated %s list", word)
				}
				for l := range strings.SplitSeq(string(rs[next+1:next+end]), ",") {
					if l = strings.TrimSpace(l); l != "" {
						p.grouping = append(p.grouping, l)
					}
				}
				j = next + end + 1
			case slices.Contains(promqlWords, word):
			case called:
				p.functions = append(p.functions, word)
			default:
				p.selectors = append(p.selectors, selector{name: word})
				lastMetric = len(p.selectors) - 1
			}
			i = j
		default:
			i++ // operators and parentheses
			lastMetric = -1
		}
	}
	return p, nil
}

// matcherLabels returns the label names of a matcher list such as
// `code=~"5..",upstream="x"`.
func matcherLabels(s string) ([]string, error) {
	var labels []string
	for _, m := range splitMatchers(s) {
		m = strings.TrimSpace(m)
		if m == "" {
			continue
		}
		k := strings.IndexAny(m, "=!")
		if k <= 0 {
			return nil, fmt.Errorf("matcher %q has no operator", m)
		}
		labels = append(labels, strings.TrimSpace(m[:k]))
	}
	return labels, nil
}

// splitMatchers splits on commas outside quoted values.
func splitMatchers(s string) []string {
	var out []string
	var quote rune
	start := 0
	for i, r := range s {
		switch {
		case quote != 0 && r == quote:
			quote = 0
		case quote == 0 && (r == '"' || r == '\''):
			quote = r
		case quote == 0 && r == ',':
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

// lookupSeries finds a metric by name, accepting the _bucket, _sum and
// _count series of histograms (a _bucket series also carries "le").
func lookupSeries(name string, recorded map[string]bool) (series, bool) {
	if recorded[name] {
		return series{}, true
	}
	for _, table := range []map[string]series{airlockSeries, otherSeries} {
		if s, ok := table[name]; ok {
			return s, true
		}
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if !ok {
			continue
		}
		if s, ok := airlockSeries[base]; ok && s.histogram {
			if suffix == "_bucket" {
				s.labels = append(slices.Clone(s.labels), "le")
			}
			return s, true
		}
	}
	return series{}, false
}

// checkExpr reports every metric, label or function in expr that does not
// exist. recorded names series defined by recording rules beside expr;
// their labels are not checked.
func checkExpr(expr string, recorded map[string]bool) []error {
	p, err := lexPromQL(expr)
	if err != nil {
		return []error{err}
	}
	var errs []error
	if len(p.selectors) == 0 {
		errs = append(errs, fmt.Errorf("no metric in %q", expr))
	}
	groupable := slices.Clone(targetLabels)
	anyRecorded := false
	for _, sel := range p.selectors {
		s, ok := lookupSeries(sel.name, recorded)
		if !ok {
			errs = append(errs, fmt.Errorf("unknown metric %s", sel.name))
			continue
		}
		anyRecorded = anyRecorded || recorded[sel.name]
		groupable = append(groupable, s.labels...)
		for _, l := range sel.labels {
			if !recorded[sel.name] && !slices.Contains(s.labels, l) && !slices.Contains(targetLabels, l) {
				errs = append(errs, fmt.Errorf("metric %s has no label %q", sel.name, l))
			}
		}
	}
	for _, l := range p.grouping {
		if !anyRecorded && !slices.Contains(groupable, l) {
			errs = append(errs, fmt.Errorf("grouping by %q, a label none of the metrics has", l))
		}
	}
	for _, f := range p.functions {
		if !slices.Contains(promqlFunctions, f) {
			errs = append(errs, fmt.Errorf("unknown function %s", f))
		}
	}
	return errs
}
