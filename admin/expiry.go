package admin

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// ParseExpiry reads a release's end as an admin writes it:
//
//   - "" : the release never expires;
//   - a date, "2026-12-31": the release holds through that day, UTC, so
//     it ends at the following midnight UTC;
//   - an RFC 3339 time, "2026-12-31T18:00:00+01:00": exactly then;
//   - a duration from now, "72h", "90m" or "30d" (days of 24 hours).
//
// An end that is not after now is refused: a release that has already
// expired would change the audit log and nothing else.
func ParseExpiry(s string, now time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return time.Time{}, nil
	}
	t, err := parseExpiryForm(s, now)
	if err != nil {
		return time.Time{}, err
	}
	if t.UTC().Year() > 9999 {
		// RFC 3339, and so the store's JSON, ends with year 9999.
		return time.Time{}, fmt.Errorf("expiry %q is after year 9999; give an earlier date, or none for a release that never expires", s)
	}
	if !t.After(now) {
		return time.Time{}, fmt.Errorf("expiry %q is in the past (%s, now is %s); give a later date",
			s, t.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	return t.UTC(), nil
}

func parseExpiryForm(s string, now time.Time) (time.Time, error) {
	if d, err := time.Parse(time.DateOnly, s); err == nil {
		return d.AddDate(0, 0, 1), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if days, ok := strings.CutSuffix(s, "d"); ok {
		if n, err := strconv.Atoi(days); err == nil && n > 0 && n <= 100*366 {
			return now.Add(time.Duration(n) * 24 * time.Hour), nil
		}
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d <= 0 {
			return time.Time{}, fmt.Errorf("expiry %q is not a positive duration; give how long the release holds, e.g. 72h", s)
		}
		return now.Add(d), nil
	}
	return time.Time{}, fmt.Errorf("expiry %q is not a date (2026-12-31), an RFC 3339 time (2026-12-31T18:00:00Z) "+
		"or a duration from now (72h, 30d)", s)
}
