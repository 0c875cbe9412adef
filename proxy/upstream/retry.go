package upstream

import (
	"context"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// backoff returns the wait before attempt+1: BaseDelay doubled per attempt,
// capped at MaxDelay, with the upper half randomised so that many proxies
// (or many flights in one) do not retry in lockstep against a recovering
// upstream.
func (r *Registry) backoff(attempt int) time.Duration {
	d := r.o.MaxDelay
	if attempt <= 30 {
		if x := r.o.BaseDelay << (attempt - 1); x > 0 && x < d {
			d = x
		}
	}
	half := d / 2
	return half + rand.N(half+1)
}

// sleep waits for d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// maxRetryAfter caps what an upstream may ask callers to wait: the value is
// passed on to airlock's clients as their Retry-After.
const maxRetryAfter = 24 * time.Hour

// parseRetryAfter reads a Retry-After value: delay-seconds or an HTTP date,
// capped at maxRetryAfter either way. It reports false for an absent,
// malformed, zero or past value.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs <= 0 {
			return 0, false
		}
		if secs > int64(maxRetryAfter/time.Second) {
			secs = int64(maxRetryAfter / time.Second)
		}
		return time.Duration(secs) * time.Second, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	d := t.Sub(now)
	if d <= 0 {
		return 0, false
	}
	return min(d, maxRetryAfter), true
}
