package upstream

import (
	"errors"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

// misbehave fails the first requests to the real registry as fail decides
// (n counts from 1); fail returns false to let a request through.
func misbehave(next http.Handler, fail func(n int64, w http.ResponseWriter, r *http.Request) bool) (http.Handler, *atomic.Int64) {
	var count atomic.Int64
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !fail(count.Add(1), w, r) {
			next.ServeHTTP(w, r)
		}
	}), &count
}

func status(code int, header ...string) func(http.ResponseWriter) {
	return func(w http.ResponseWriter) {
		for i := 0; i+1 < len(header); i += 2 {
			w.Header().Set(header[i], header[i+1])
		}
		w.WriteHeader(code)
	}
}

func TestRetries(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		failures int64 // how many requests fail before the real registry answers (-1: all)
		respond  func(http.ResponseWriter)
		tag      string // default "v1"
		maxDelay time.Duration
		want     error
		requests int64
		minTime  time.Duration
		retryFor time.Duration // expected RetryAfter(err)
	}{
		{name: "503 twice then OK", failures: 2, respond: status(503), requests: 3},
		{name: "502 and 504 are retried", failures: 2, respond: status(502), requests: 3},
		{name: "429 with Retry-After seconds", failures: 1, respond: status(429, "Retry-After", "1"),
			maxDelay: 3 * time.Second, requests: 2, minTime: 900 * time.Millisecond},
		{name: "429 with Retry-After beyond MaxDelay", failures: -1, respond: status(429, "Retry-After", "120"),
			want: ErrRateLimited, requests: 1, retryFor: 120 * time.Second},
		{name: "429 until attempts run out", failures: -1, respond: status(429), want: ErrRateLimited, requests: 4},
		{name: "503 until attempts run out", failures: -1, respond: status(503), want: ErrUnavailable, requests: 4},
		{name: "501 is not retried", failures: -1, respond: status(501), want: ErrUnavailable, requests: 2}, // HEAD, then its one GET fallback
		{name: "403 is not retried", failures: -1, respond: status(403), want: ErrDenied, requests: 1},
		{name: "404 is not retried", failures: -1, respond: status(404), want: ErrNotFound, requests: 1},
		{name: "unknown tag", tag: "nope", want: ErrNotFound, requests: 1},
		{name: "connection reset", failures: 1, respond: nil, requests: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			inner := realRegistry(false)
			s := seed(t, inner, "app", "v1")
			h, count := misbehave(inner, func(n int64, w http.ResponseWriter, r *http.Request) bool {
				if tt.failures >= 0 && n > tt.failures {
					return false
				}
				if tt.respond == nil {
					panic(http.ErrAbortHandler) // drop the connection without a response
				}
				tt.respond(w)
				return true
			})
			r := newClient(t, serve(t, h).URL, func(o *Options) {
				if tt.maxDelay != 0 {
					o.MaxDelay = tt.maxDelay
				}
			})
			tag := tt.tag
			if tag == "" {
				tag = s.tag
			}
			start := time.Now()
			desc, err := r.HeadManifest(t.Context(), "app", tag, nil)
			elapsed := time.Since(start)
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("HeadManifest: %v, want %v", err, tt.want)
			}
			if err == nil && desc.Digest.String() != s.digest {
				t.Errorf("digest %s, want %s", desc.Digest, s.digest)
			}
			if got := count.Load(); got != tt.requests {
				t.Errorf("upstream saw %d requests, want %d", got, tt.requests)
			}
			if elapsed < tt.minTime {
				t.Errorf("took %s, want at least %s (Retry-After ignored)", elapsed, tt.minTime)
			}
			if d, ok := RetryAfter(err); tt.retryFor != 0 && (!ok || d != tt.retryFor) {
				t.Errorf("RetryAfter = %s %v, want %s", d, ok, tt.retryFor)
			}
		})
	}
}

func TestHeaderTimeout(t *testing.T) {
	t.Parallel()
	inner := realRegistry(false)
	s := seed(t, inner, "app", "v1")
	h, count := misbehave(inner, func(n int64, w http.ResponseWriter, r *http.Request) bool {
		if n > 1 {
			return false
		}
		<-r.Context().Done() // hang until the client gives up
		return true
	})
	r := newClient(t, serve(t, h).URL, func(o *Options) { o.HeaderTimeout = 100 * time.Millisecond })
	desc, err := r.HeadManifest(t.Context(), "app", "v1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if desc.Digest.String() != s.digest || count.Load() != 2 {
		t.Errorf("digest %s after %d requests", desc.Digest, count.Load())
	}
}

func TestParseRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"", 0, false},
		{"3", 3 * time.Second, true},
		{" 10 ", 10 * time.Second, true},
		{"0", 0, false},
		{"-5", 0, false},
		{"soon", 0, false},
		{"Wed, 01 Jan 2025 12:00:30 GMT", 30 * time.Second, true},
		{"Wed, 01 Jan 2025 11:00:00 GMT", 0, false},
		{"99999999999", 24 * time.Hour, true},
		// A date far ahead is capped like a number of seconds is.
		{"Fri, 31 Dec 9999 23:59:59 GMT", 24 * time.Hour, true},
	}
	for _, tt := range tests {
		got, ok := parseRetryAfter(tt.in, now)
		if got != tt.want || ok != tt.ok {
			t.Errorf("parseRetryAfter(%q) = %s %v, want %s %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func TestBackoff(t *testing.T) {
	t.Parallel()
	r := newClient(t, "http://127.0.0.1:1", func(o *Options) {
		o.BaseDelay, o.MaxDelay = 100*time.Millisecond, time.Second
	})
	for attempt, want := range map[int]time.Duration{1: 100 * time.Millisecond, 2: 200 * time.Millisecond, 4: 800 * time.Millisecond, 5: time.Second, 64: time.Second} {
		for range 50 {
			if d := r.backoff(attempt); d < want/2 || d > want {
				t.Fatalf("backoff(%d) = %s, want within [%s, %s]", attempt, d, want/2, want)
			}
		}
	}
}
