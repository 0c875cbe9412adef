package admin

import (
	"strings"
	"testing"
	"time"
)

func TestAdminParseExpiry(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC)
	tests := []struct {
		in      string
		want    time.Time
		wantErr string
	}{
		{in: "", want: time.Time{}},
		{in: "  ", want: time.Time{}},
		// A date holds through that day: it ends at the next midnight UTC.
		{in: "2026-12-31", want: time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)},
		{in: "2026-11-30", want: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)},
		{in: "2026-12-31T18:00:00Z", want: time.Date(2026, 12, 31, 18, 0, 0, 0, time.UTC)},
		{in: "2026-12-31T18:00:00+01:00", want: time.Date(2026, 12, 31, 17, 0, 0, 0, time.UTC)},
		{in: "72h", want: now.Add(72 * time.Hour)},
		{in: "90m", want: now.Add(90 * time.Minute)},
		{in: "30d", want: now.Add(30 * 24 * time.Hour)},
		{in: "2026-11-29", wantErr: "in the past"},
		{in: "2026-11-30T09:59:59Z", wantErr: "in the past"},
		{in: "2026-11-30T10:00:00Z", wantErr: "in the past"},
		{in: "-1h", wantErr: "not a positive duration"},
		{in: "0s", wantErr: "not a positive duration"},
		{in: "0d", wantErr: "not a date"},
		{in: "tomorrow", wantErr: "not a date (2026-12-31)"},
		{in: "31/12/2026", wantErr: "not a date"},
		{in: "2026-02-30", wantErr: "not a date"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseExpiry(tc.in, now)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseExpiry(%q) = %v, %v; want error containing %q", tc.in, got, err, tc.wantErr)
				}
				return
			}
			if err != nil || !got.Equal(tc.want) {
				t.Fatalf("ParseExpiry(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
			}
			if !got.IsZero() && got.Location() != time.UTC {
				t.Fatalf("ParseExpiry(%q) location = %v; want UTC", tc.in, got.Location())
			}
		})
	}
}
