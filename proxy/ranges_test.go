package proxy

import (
	"errors"
	"fmt"
	"testing"
)

func TestParseRange(t *testing.T) {
	t.Parallel()
	tests := []struct {
		header      string
		size        int64
		first, last int64
		err         string // "", "ignored" or "invalid"
	}{
		{"bytes=0-99", 1000, 0, 99, ""},
		{"bytes=100-", 1000, 100, 999, ""},
		{"bytes=-100", 1000, 900, 999, ""},
		{"bytes=-5000", 1000, 0, 999, ""},
		{"bytes=990-5000", 1000, 990, 999, ""},
		{"bytes= 5 - 9 ", 10, 5, 9, ""},
		{"bytes=999-999", 1000, 999, 999, ""},
		{"bytes=0-1,5-6", 1000, 0, 0, "ignored"},
		{"items=0-1", 1000, 0, 0, "ignored"},
		{"bytes=1000-", 1000, 0, 0, "invalid"},
		{"bytes=5-4", 1000, 0, 0, "invalid"},
		{"bytes=-0", 1000, 0, 0, "invalid"},
		{"bytes=-", 1000, 0, 0, "invalid"},
		{"bytes=x-1", 1000, 0, 0, "invalid"},
		{"bytes=0-", 0, 0, 0, "invalid"},
		{"bytes=-1", 0, 0, 0, "invalid"},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%s/%d", tc.header, tc.size), func(t *testing.T) {
			first, last, err := parseRange(tc.header, tc.size)
			switch tc.err {
			case "ignored":
				if !errors.Is(err, errRangeIgnored) {
					t.Fatalf("got %v, want errRangeIgnored", err)
				}
			case "invalid":
				var e *Error
				if !errors.As(err, &e) || e.Status != 416 {
					t.Fatalf("got %v, want a 416 error", err)
				}
			default:
				if err != nil || first != tc.first || last != tc.last {
					t.Fatalf("got %d-%d, %v; want %d-%d", first, last, err, tc.first, tc.last)
				}
			}
		})
	}
}

func FuzzParseRange(f *testing.F) {
	f.Add("bytes=0-99", int64(1000))
	f.Add("bytes=-1", int64(1))
	f.Add("bytes=5-", int64(6))
	f.Fuzz(func(t *testing.T, header string, size int64) {
		if size < 0 {
			return // sizes come from Content-Length, never negative here
		}
		first, last, err := parseRange(header, size)
		if err != nil {
			return
		}
		if first < 0 || last < first || last >= size {
			t.Fatalf("parseRange(%q, %d) = %d-%d outside the body", header, size, first, last)
		}
	})
}
