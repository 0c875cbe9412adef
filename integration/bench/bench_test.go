package main

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
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

	// The timed pulls check a CRC-32C instead of the digest; it must
	// catch wrong bytes as well, whatever the read size.
	for _, rd := range []*client{newReader(32 << 10), newReader(1 << 20)} {
		l := img.Blobs[1]
		if _, err := rd.fetchBlobCRC(t.Context(), o.URL, img.Repo, l); err != nil {
			t.Fatalf("%s: %v", readLabel(rd.readSize), err)
		}
		l.CRC++
		if _, err := rd.fetchBlobCRC(t.Context(), o.URL, img.Repo, l); err == nil {
			t.Fatalf("%s: a wrong CRC-32C passed the check", readLabel(rd.readSize))
		}
	}
	for _, b := range img.Blobs {
		o.waitBlobIdle(b.Digest, 10*time.Second)
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

// TestSignSeedsWhereVerifiersLook signs an image in each of scenario 12's
// formats through the fixture adapter and checks the origin serves each
// signature where a verifier looks: cosign's signature tag, or the
// referrers API with the artifact type of a bundle or a Notation
// signature.
func TestSignSeedsWhereVerifiersLook(t *testing.T) {
	t.Parallel()
	o, err := startOrigin()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(o.close)
	dir := t.TempDir()
	sg, err := newSigners(t.Context(), dir)
	if err != nil {
		t.Fatal(err)
	}
	b := &bench{dir: dir, origin: o, seed: &seeder{dir: dir, origin: o}, client: newClient(), signers: sg}
	for _, tc := range []struct {
		kind, artifactType string
	}{
		{sigKey, ""},
		{sigKeyless, "application/vnd.dev.sigstore.bundle.v0.3+json"},
		{sigNotation, "application/vnd.cncf.notary.signature"},
	} {
		img, err := b.seed.image("bench/"+tc.kind+"/test", "v1", 1024, 1)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.sign(t.Context(), tc.kind, img); err != nil {
			t.Fatalf("%s: %v", tc.kind, err)
		}
		if tc.artifactType == "" {
			tag := "sha256-" + strings.TrimPrefix(img.Digest, "sha256:") + ".sig"
			if _, _, err := b.client.manifest(t.Context(), o.URL, img.Repo, tag); err != nil {
				t.Fatalf("%s: signature tag: %v", tc.kind, err)
			}
			continue
		}
		for _, at := range []string{"", tc.artifactType, "application/other"} {
			var idx struct {
				Manifests []referrer `json:"manifests"`
			}
			r, err := b.client.http.Get(o.URL + "/v2/" + img.Repo + "/referrers/" + img.Digest + "?artifactType=" + url.QueryEscape(at))
			if err != nil {
				t.Fatal(err)
			}
			err = json.NewDecoder(r.Body).Decode(&idx)
			r.Body.Close()
			if err != nil || r.StatusCode != http.StatusOK {
				t.Fatalf("%s: referrers: HTTP %d, %v", tc.kind, r.StatusCode, err)
			}
			want := 1
			if at == "application/other" {
				want = 0
			}
			if len(idx.Manifests) != want || want == 1 && idx.Manifests[0].ArtifactType != tc.artifactType {
				t.Fatalf("%s: referrers filtered by %q = %+v, want %d of type %s", tc.kind, at, idx.Manifests, want, tc.artifactType)
			}
		}
	}
}

// TestFixtureFailureIsAnError checks that a fixture's Fatal ends the
// fixture with an error instead of ending the benchmark.
func TestFixtureFailureIsAnError(t *testing.T) {
	t.Parallel()
	err := fixtures(t.Context(), t.TempDir(), func(tb testing.TB) {
		tb.Helper()
		tb.Fatalf("signing %s failed", "x")
		t.Error("the fixture went on after Fatalf")
	})
	if err == nil || err.Error() != "signing x failed" {
		t.Fatalf("fixtures returned %v, want the fixture's message", err)
	}
}
