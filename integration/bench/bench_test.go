package main

import (
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	t.Parallel()
	ms := func(v ...int) []time.Duration {
		var out []time.Duration
		for _, x := range v {
			out = append(out, time.Duration(x)*time.Millisecond)
		}
		return out
	}
	tests := []struct {
		name string
		in   []time.Duration
		p    float64
		want time.Duration
	}{
		{"empty", nil, 50, 0},
		{"median of three", ms(9, 1, 5), 50, 5 * time.Millisecond},
		{"median of four takes the lower middle", ms(4, 1, 3, 2), 50, 2 * time.Millisecond},
		{"p99 of 100 is the 99th", ms(100, 99, 98, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 83, 84, 85, 86, 87, 88, 89, 90, 91, 92, 93, 94, 95, 96, 97), 99, 99 * time.Millisecond},
		{"p99 of few is the maximum", ms(1, 2, 3), 99, 3 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := percentile(tt.in, tt.p); got != tt.want {
				t.Fatalf("percentile(%v, %v) = %v, want %v", tt.in, tt.p, got, tt.want)
			}
		})
	}
}

// TestSpreadPairsRounds checks that taking medians leaves the per-round
// values in round order, so that the spread pairs the two contenders of
// the same round: here airlock was 2× slower in round 1 and 2× faster in
// round 2, which sorted pairs would hide as 1.00–1.00×.
func TestSpreadPairsRounds(t *testing.T) {
	t.Parallel()
	a := []time.Duration{2, 1}
	b := []time.Duration{1, 2}
	if m, n := median(a), medianFloat(durations(b)); m != 1 || n != 1 {
		t.Fatalf("medians %v and %v, want 1 and 1", m, n)
	}
	if got, want := roundSpread(durations(a), durations(b)), "0.50–2.00×"; got != want {
		t.Fatalf("spread after taking medians = %q, want %q", got, want)
	}
}

// TestOriginServesCountsAndThrottles pulls a seeded image from the origin
// and checks what the scenarios rely on: correct bytes, one counted GET per
// blob, ended transfers, and a throttle that really slows a response.
func TestOriginServesCountsAndThrottles(t *testing.T) {
	t.Parallel()
	o, err := startOrigin()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(o.close)
	s := &seeder{dir: t.TempDir(), origin: o}
	img, err := s.image("bench/test", "v1", 256<<10, 2)
	if err != nil {
		t.Fatal(err)
	}
	c := newClient()
	if _, err := c.pull(t.Context(), o.URL, img); err != nil {
		t.Fatalf("pull from the origin: %v", err)
	}
	for _, b := range img.Blobs {
		// The client has the whole body before the origin's handler
		// returns and counts the GET as ended.
		o.waitBlobIdle(b.Digest, 10*time.Second)
		if started, ended, full := o.blobState(b.Digest); started != 1 || ended != 1 || full != 1 {
			t.Fatalf("blob %s: %d GETs started, %d ended, %d whole; want 1, 1, 1", b.Digest, started, ended, full)
		}
	}

	const rate = 1 << 20 // 256 KiB at 1 MiB/s takes about 250 ms
	o.rate.Store(rate)
	start := time.Now()
	if _, err := c.fetchBlob(t.Context(), o.URL, img.Repo, img.Blobs[1]); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < 200*time.Millisecond {
		t.Fatalf("a 256 KiB blob at 1 MiB/s arrived in %v; the throttle does not work", el)
	}
}
