package console_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/admin/admintest"
	"github.com/airlock-registry/airlock/admin/console"
	"github.com/airlock-registry/airlock/scanner"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// sbomSource serves an SBOM for the digests it holds, as the scanner
// does from its index; it can be made unavailable, as the scanner is when
// its database is down.
type sbomSource struct {
	docs        map[digest.Digest]string
	unavailable atomic.Bool
	asked       atomic.Int32
}

func (s *sbomSource) SBOM(_ context.Context, d digest.Digest, format string) ([]byte, error) {
	s.asked.Add(1)
	if s.unavailable.Load() {
		return nil, fmt.Errorf("reading the index of %s: %w: dial tcp 10.0.0.7:5432: connection refused", d, scanner.ErrUnavailable)
	}
	doc, ok := s.docs[d]
	if !ok {
		return nil, fmt.Errorf("no index of %s: %w", d, scanner.ErrNotScanned)
	}
	return []byte(`{"format":"` + format + `",` + doc + `}`), nil
}

// serveConsole replaces the fixture's console with one built with
// sboms, as serve builds it when scanning is on.
func (f *fixture) serveConsole(sboms *sbomSource) {
	f.t.Helper()
	o := console.Options{Store: f.h.Meta, Decider: f.h.Gate, TokenFile: f.h.TokenFile, Cache: f.h.Proxy,
		Manifests: f.h.Meta, Denials: f.h.Gate.RecentDenials, Stats: console.StatsFrom(f.h.Metrics), Now: f.h.Clock.Now}
	if sboms != nil {
		o.SBOMs = sboms
	}
	c, err := console.New(o)
	if err != nil {
		f.t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(console.Prefix, c)
	srv := httptest.NewServer(mux)
	f.t.Cleanup(srv.Close)
	f.srv = srv
}

// seed writes an image of vulnRepo.
func (f *fixture) seed(d digest.Digest, fill func(img *metadata.Image)) {
	f.t.Helper()
	_, err := f.h.Meta.UpdateImage(context.Background(), vulnRepo, d, f.h.Clock.Now(), func(img *metadata.Image) (metadata.Change, error) {
		img.State = metadata.StateApproved
		img.MediaType = "application/vnd.oci.image.manifest.v1+json"
		fill(img)
		return metadata.Change{Actor: "scanner", Action: "decide"}, nil
	})
	if err != nil {
		f.t.Fatal(err)
	}
}

// TestVulnerabilityPages: the SBOM downloads in both formats from the
// image page, the reasons of a platform and its index link to each other,
// the overview counts the images waiting for a scan, and the images table
// filters by scan and finds an advisory among the findings.
func TestVulnerabilityPages(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	now := f.h.Clock.Now()
	index, platform, queued, failed, many := digest.FromString("index"), digest.FromString("platform"),
		digest.FromString("queued"), digest.FromString("failed"), digest.FromString("many")
	f.seed(index, func(img *metadata.Image) {
		img.MediaType = "application/vnd.oci.image.index.v1+json"
		img.Tags = []string{"3.0"}
		img.Platforms = []metadata.Platform{{Digest: platform, OS: "linux", Architecture: "arm64", Variant: "v8", Fetched: true},
			{Digest: digest.FromString("no record"), OS: "linux", Architecture: "amd64"}}
	})
	f.seed(platform, func(img *metadata.Image) {
		img.Index = index
		img.Scan = &metadata.Scan{State: metadata.ScanDone, Finished: now, Packages: 12, Layers: 1, Size: 3 << 20,
			Distribution: "Alpine Linux v3.20"}
	})
	f.seed(queued, func(img *metadata.Image) {
		img.State = metadata.StatePending
		img.Scan = &metadata.Scan{State: metadata.ScanQueued, Queued: now.Add(-time.Minute)}
	})
	f.seed(failed, func(img *metadata.Image) {
		img.State = metadata.StatePending
		img.Scan = &metadata.Scan{State: metadata.ScanFailed, Attempts: 5, Error: "layer sha256:77 is not a tar archive"}
	})
	f.seed(many, func(img *metadata.Image) {
		img.State = metadata.StateQuarantined
		img.Scan = &metadata.Scan{State: metadata.ScanDone, Finished: now, Packages: 400}
		for i := range 700 {
			sev := metadata.SeverityMedium
			if i < 3 {
				sev = metadata.SeverityHigh
			}
			fd := metadata.Finding{ID: fmt.Sprintf("CVE-2025-%04d", i), Package: fmt.Sprintf("lib%d", i), Installed: "1", Severity: sev}
			img.Scan.Findings = append(img.Scan.Findings, fd)
			if sev == metadata.SeverityHigh {
				img.Reasons = append(img.Reasons, metadata.Reason{Type: metadata.ReasonVulnerability, Policy: "no-high", ID: fd.ID,
					Package: fd.Package, Installed: fd.Installed, Severity: sev, Message: fd.ID + " in " + fd.Package})
			}
		}
	})
	src := &sbomSource{docs: map[digest.Digest]string{f.scanned: `"packages":97`, platform: `"packages":12`}}
	f.serveConsole(src)
	b := f.browser()
	b.signIn(admintest.AliceToken)
	page := imagePath(vulnRepo, f.scanned)

	wantStatus(t, "scanned image", b.get(page), http.StatusOK,
		`<a href="`+page+`/sbom?format=spdx" download>SPDX</a>`, `<a href="`+page+`/sbom?format=cyclonedx" download>CycloneDX</a>`)
	hex12 := f.scanned.Encoded()[:12]
	for _, tc := range []struct{ query, contentType, file string }{
		{"?format=spdx", "application/spdx+json", "scanned-" + hex12 + ".spdx.json"},
		{"", "application/spdx+json", "scanned-" + hex12 + ".spdx.json"},
		{"?format=cyclonedx", "application/vnd.cyclonedx+json", "scanned-" + hex12 + ".cdx.json"},
	} {
		a := b.get(page + "/sbom" + tc.query)
		if a.status != http.StatusOK || a.header.Get("Content-Type") != tc.contentType ||
			a.header.Get("Content-Disposition") != "attachment; filename="+tc.file || !strings.Contains(a.body, `"packages":97`) {
			t.Fatalf("SBOM%s = %d %v %s", tc.query, a.status, a.header, a.body)
		}
	}
	asked := src.asked.Load()
	for _, tc := range []struct {
		name, method, path string
		status             int
		says               string
	}{
		{"unknown format", "GET", page + "/sbom?format=swid", 400, "Unknown SBOM format &#34;swid&#34;; the formats are spdx and cyclonedx."},
		{"an index", "GET", imagePath(vulnRepo, index) + "/sbom", 404, "is an image index: airlock scans its platforms one by one"},
		{"unknown image", "GET", imagePath(vulnRepo, digest.FromString("nothing")) + "/sbom", 404, "has not seen"},
		{"POST", "POST", page + "/sbom", 405, "use GET"},
	} {
		wantStatus(t, tc.name, b.do(tc.method, tc.path, nil), tc.status, tc.says)
	}
	if src.asked.Load() != asked {
		t.Fatal("refused requests asked the scanner")
	}
	wantStatus(t, "SBOM of a queued image", b.get(imagePath(vulnRepo, queued)+"/sbom"), http.StatusNotFound, "its scan is queued")
	src.unavailable.Store(true)
	a := b.get(page + "/sbom")
	wantStatus(t, "scanner unavailable", a, http.StatusServiceUnavailable, "the vulnerability scanner&#39;s database cannot be reached")
	if a.header.Get("Retry-After") != "30" || strings.Contains(a.body, "10.0.0.7") {
		t.Fatalf("503: Retry-After %q; the page names the database: %v", a.header.Get("Retry-After"), strings.Contains(a.body, "10.0.0.7"))
	}
	src.unavailable.Store(false)
	// Signed out, the document is not served.
	if a := f.browser().get(page + "/sbom"); a.status != http.StatusSeeOther || strings.Contains(a.body, "packages") {
		t.Fatalf("an unsigned SBOM request = %d %s", a.status, a.body)
	}

	// A platform links to its index, the index to its platforms.
	wantStatus(t, "platform", b.get(imagePath(vulnRepo, platform)), http.StatusOK, "platform of an index",
		`<a href="`+imagePath(vulnRepo, index)+`" id="index-link">`, "Alpine Linux v3.20", "No known vulnerability in the packages found.",
		`/sbom?format=cyclonedx`)
	a = b.get(imagePath(vulnRepo, index))
	wantStatus(t, "index", a, http.StatusOK, `<a href="`+imagePath(vulnRepo, platform)+`">linux/arm64/v8</a> <span class="badge approved">approved</span>`,
		"linux/amd64<br>", "an index is not scanned itself")
	if strings.Contains(a.body, "/sbom?format=") || strings.Contains(a.body, `id="vulns-h"`) {
		t.Fatal("the index page offers an SBOM or a scan")
	}

	// A scan still running, one that failed, and one of 700 findings.
	wantStatus(t, "queued", b.get(imagePath(vulnRepo, queued)), http.StatusOK, `<span class="badge scan-queued">queued</span>`,
		"pulls wait for it")
	a = b.get(imagePath(vulnRepo, failed))
	wantStatus(t, "failed", a, http.StatusOK, `<span class="badge scan-failed">failed</span> <span class="muted small">attempt 5</span>`,
		"layer sha256:77 is not a tar archive")
	if strings.Contains(a.body, "/sbom?format=") {
		t.Fatal("a failed scan offers an SBOM")
	}
	a = b.get(imagePath(vulnRepo, many))
	wantStatus(t, "700 findings", a, http.StatusOK, "700 findings:", "3 high vulnerabilities: CVE-2025-0000, CVE-2025-0001 and 1 more",
		`id="more-findings">And 200 more findings`)
	if n := strings.Count(a.body, "<td class=\"mono\">lib"); n != 500 {
		t.Fatalf("the page lists %d findings; want 500", n)
	}

	// The overview counts what waits for a scan.
	wantStatus(t, "overview", b.get("/ui/"), http.StatusOK, `<h2 id="scans-h">Vulnerability scans</h2>`,
		`<a href="/ui/images?scan=pending"><span class="figure">1</span></a> image pending a scan <span class="muted small">(1 queued, 0 running)</span>`,
		`<a href="/ui/images?scan=failed">1</a>`, `<dt>Refused for vulnerabilities</dt><dd>2</dd>`)

	// The images table: the short form, the scan filter and a search for
	// an advisory that refuses nothing.
	wantStatus(t, "images", b.get("/ui/images?repository="+vulnRepo), http.StatusOK,
		"3 high vulnerabilities: CVE-2025-0000, CVE-2025-0001 and 1 more", "waiting for a vulnerability scan",
		"vulnerability scan failed: layer sha256:77 is not a tar archive")
	a = b.get("/ui/images?scan=pending")
	wantStatus(t, "pending scans", a, http.StatusOK, "1 image.", queued.String()[:19])
	a = b.get("/ui/images?q=CVE-2026-0100")
	wantStatus(t, "search for a finding", a, http.StatusOK, "1 image.", f.scanned.String()[:19])
	wantStatus(t, "bad scan filter", b.get("/ui/images?scan=bogus"), http.StatusBadRequest, "Unknown scan filter")

	// Without an SBOM source the page offers none, and the address says why.
	f.serveConsole(nil)
	b = f.browser()
	b.signIn(admintest.AliceToken)
	if a := b.get(page); strings.Contains(a.body, "/sbom?format=") {
		t.Fatal("a console without scanning offers an SBOM")
	}
	wantStatus(t, "SBOM with scanning off", b.get(page+"/sbom"), http.StatusNotFound, "vulnerability scanning is off")
}
