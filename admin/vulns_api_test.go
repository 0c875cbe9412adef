package admin_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/admin"
	"github.com/airlock-registry/airlock/admin/admintest"
	"github.com/airlock-registry/airlock/scanner"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// scannedRepo holds images whose scans the tests write into the store, as
// the gate records the scanner's results.
const scannedRepo = "hub/team/scanned"

// seed writes an image of scannedRepo with its scan.
func seed(t *testing.T, h *admintest.Harness, d digest.Digest, fill func(img *metadata.Image)) {
	t.Helper()
	_, err := h.Meta.UpdateImage(context.Background(), scannedRepo, d, h.Clock.Now(), func(img *metadata.Image) (metadata.Change, error) {
		img.State = metadata.StateApproved
		img.MediaType = "application/vnd.oci.image.manifest.v1+json"
		fill(img)
		return metadata.Change{Actor: "scanner", Action: "decide", Reason: "vulnerability scan"}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// findings makes n findings, a fifth of them critical.
func findings(n int) []metadata.Finding {
	sevs := []string{metadata.SeverityCritical, metadata.SeverityHigh, metadata.SeverityMedium, metadata.SeverityLow, metadata.SeverityUnknown}
	out := make([]metadata.Finding, n)
	for i := range out {
		out[i] = metadata.Finding{ID: fmt.Sprintf("CVE-2026-%05d", i), Package: fmt.Sprintf("pkg%d", i%40), Installed: "1.0-1",
			Fixed: "1.0-2", Severity: sevs[i%len(sevs)], Link: "https://security-tracker.debian.org/tracker/CVE-2026-" + fmt.Sprint(i),
			Updater: "debian/updater/bookworm"}
	}
	return out
}

// sbomSource answers SBOMs from a map, as the scanner does from its
// index, and counts the questions.
type sbomSource struct {
	mu          sync.Mutex
	docs        map[digest.Digest]string
	unavailable bool
	asked       []string
}

func (s *sbomSource) SBOM(_ context.Context, d digest.Digest, format string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.asked = append(s.asked, string(d)+" "+format)
	if s.unavailable {
		return nil, fmt.Errorf("reading the index of %s: %w: dial tcp 10.0.0.7:5432: connect: connection refused", d, scanner.ErrUnavailable)
	}
	doc, ok := s.docs[d]
	if !ok {
		return nil, fmt.Errorf("no index report for %s: %w", d, scanner.ErrNotScanned)
	}
	return []byte(fmt.Sprintf(`{"format":%q,%s}`, format, doc)), nil
}

func (s *sbomSource) questions() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.asked...)
}

// TestAdminAPIScan: one image carries its whole scan, its waived findings
// and a count; the list carries the count in place of the findings, so a
// page of images with thousands of findings each stays small.
func TestAdminAPIScan(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	now := f.Clock.Now()
	d := digest.FromString("scanned")
	until := now.Add(72 * time.Hour).UTC()
	all := findings(5000)
	seed(t, f.Harness, d, func(img *metadata.Image) {
		img.State = metadata.StateQuarantined
		img.Tags = []string{"2.4"}
		img.Scan = &metadata.Scan{State: metadata.ScanDone, Queued: now.Add(-time.Minute), Started: now.Add(-50 * time.Second),
			Finished: now, Attempts: 1, Distribution: "Debian GNU/Linux 12 (bookworm)", Packages: 97, Layers: 3, Size: 30 << 20,
			Findings: all}
		img.Reasons = []metadata.Reason{{Type: metadata.ReasonVulnerability, Message: "CVE-2026-00000 in pkg0", Policy: "no-critical",
			ID: all[0].ID, Package: all[0].Package, Installed: all[0].Installed, Fixed: all[0].Fixed, Severity: all[0].Severity}}
		img.Verdict = metadata.Verdict{State: metadata.StateQuarantined, Reasons: img.Reasons, DecidedAt: now,
			Waived: []metadata.Waived{{ID: all[5].ID, Package: all[5].Package, Severity: all[5].Severity, Policy: "no-critical",
				Reason: "not reachable", Source: "policy", Until: until}}}
	})

	var one admin.Image
	f.ok("GET", "/api/v1/images/"+scannedRepo+"@"+string(d), "", &one)
	if one.Scan == nil || len(one.Scan.Findings) != 5000 || one.Scan.Distribution != "Debian GNU/Linux 12 (bookworm)" ||
		one.Scan.Packages != 97 || !one.Scan.Finished.Equal(now) || one.Scan.Findings[3].Link == "" {
		t.Fatalf("one image's scan = %+v", one.Scan)
	}
	if len(one.Verdict.Waived) != 1 || !one.Verdict.Waived[0].Until.Equal(until) || one.Verdict.Waived[0].Reason != "not reachable" {
		t.Fatalf("waived = %+v", one.Verdict.Waived)
	}
	want := admin.VulnerabilitySummary{Findings: 5000, Worst: "critical", Blocking: 1, Waived: 1,
		BySeverity: map[string]int{"critical": 1000, "high": 1000, "medium": 1000, "low": 1000, "unknown": 1000}}
	if got := one.Vulnerabilities; got == nil || fmt.Sprint(*got) != fmt.Sprint(want) {
		t.Fatalf("vulnerabilities = %+v; want %+v", got, want)
	}

	status, _, raw := f.call("GET", "/api/v1/images?repository="+scannedRepo, admintest.AliceToken, "")
	var list struct {
		Images []map[string]json.RawMessage `json:"images"`
	}
	if status != http.StatusOK || json.Unmarshal(raw, &list) != nil || len(list.Images) != 1 {
		t.Fatalf("list = %d %.300s", status, raw)
	}
	var scan map[string]json.RawMessage
	if err := json.Unmarshal(list.Images[0]["scan"], &scan); err != nil {
		t.Fatal(err)
	}
	if _, ok := scan["findings"]; ok || string(scan["state"]) != `"done"` || string(scan["packages"]) != "97" {
		t.Fatalf("the list's scan = %s; want it without findings", list.Images[0]["scan"])
	}
	if !strings.Contains(string(list.Images[0]["vulnerabilities"]), `"findings":5000`) {
		t.Fatalf("the list lacks the count: %s", list.Images[0]["vulnerabilities"])
	}
	if len(raw) > 8<<10 {
		t.Fatalf("the list of one image with 5000 findings is %d bytes", len(raw))
	}
	// The store still has every finding: only the answer left them out.
	if img, err := f.Meta.Image(t.Context(), scannedRepo, d); err != nil || len(img.Scan.Findings) != 5000 {
		t.Fatalf("the stored image lost findings: %v", err)
	}
	// An image without a scan has no count.
	_, _, raw = f.call("GET", "/api/v1/images/"+f.pinnedRef, admintest.AliceToken, "")
	if strings.Contains(string(raw), `"vulnerabilities"`) || strings.Contains(string(raw), `"scan"`) {
		t.Fatalf("an image never scanned shows a scan: %s", raw)
	}
}

// TestAdminAPISBOM: the SBOM of a scanned image in both formats, by digest
// and by tag, and every way of not having one answered with its status
// and a sentence, asking the scanner only when the question is sound.
func TestAdminAPISBOM(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	now := f.Clock.Now()
	done := &metadata.Scan{State: metadata.ScanDone, Finished: now, Packages: 3}
	scanned, queued, failed, never, lost := digest.FromString("scanned"), digest.FromString("queued"),
		digest.FromString("failed"), digest.FromString("never"), digest.FromString("lost")
	index, platform := digest.FromString("index"), digest.FromString("platform")
	seed(t, f.Harness, scanned, func(img *metadata.Image) { img.Tags = []string{"2.4"}; img.Scan = done })
	seed(t, f.Harness, queued, func(img *metadata.Image) {
		img.State = metadata.StatePending
		img.Scan = &metadata.Scan{State: metadata.ScanQueued, Queued: now}
	})
	seed(t, f.Harness, failed, func(img *metadata.Image) {
		img.State = metadata.StatePending
		img.Scan = &metadata.Scan{State: metadata.ScanFailed, Error: "layer sha256:77 is not a tar archive", Attempts: 5}
	})
	seed(t, f.Harness, never, func(*metadata.Image) {})
	seed(t, f.Harness, lost, func(img *metadata.Image) { img.Scan = done })
	seed(t, f.Harness, index, func(img *metadata.Image) {
		img.MediaType = "application/vnd.oci.image.index.v1+json"
		img.Platforms = []metadata.Platform{{Digest: platform, OS: "linux", Architecture: "arm64", Variant: "v8"}}
	})
	seed(t, f.Harness, platform, func(img *metadata.Image) { img.Index = index; img.Scan = done })
	ref := func(d digest.Digest) string { return "/api/v1/images/" + scannedRepo + "@" + string(d) + "/sbom" }

	// Without an SBOM source scanning is off, and the answer says so.
	status, _, data := f.call("GET", ref(scanned), admintest.AliceToken, "")
	wantError(t, "SBOM with scanning off", status, data, 404, "NOT_FOUND", "vulnerability scanning is off (set scanner.database")

	src := &sbomSource{docs: map[digest.Digest]string{scanned: `"packages":3`, platform: `"packages":1`}}
	f.UseSBOMs(src)
	for _, tc := range []struct{ path, contentType, format string }{
		{ref(scanned), "application/spdx+json", "spdx"},
		{ref(scanned) + "?format=spdx", "application/spdx+json", "spdx"},
		{ref(scanned) + "?format=cyclonedx", "application/vnd.cyclonedx+json", "cyclonedx"},
		{"/api/v1/images/" + scannedRepo + ":2.4/sbom?format=cyclonedx", "application/vnd.cyclonedx+json", "cyclonedx"},
		{ref(platform), "application/spdx+json", "spdx"},
	} {
		status, h, data := f.call("GET", tc.path, admintest.AliceToken, "")
		if status != http.StatusOK || h.Get("Content-Type") != tc.contentType || !strings.Contains(string(data), `"format":"`+tc.format+`"`) ||
			h.Get("Cache-Control") != "no-store" {
			t.Fatalf("GET %s = %d %s %s", tc.path, status, h.Get("Content-Type"), data)
		}
	}
	asked := len(src.questions())

	for _, tc := range []struct {
		name, method, path string
		status             int
		code, msg          string
	}{
		{"unknown format", "GET", ref(scanned) + "?format=xml", 400, "INVALID", `unknown SBOM format "xml"; the formats are spdx and cyclonedx`},
		{"unknown image", "GET", ref(digest.FromString("nothing")), 404, "NOT_FOUND", "airlock has not seen it"},
		{"unknown tag", "GET", "/api/v1/images/" + scannedRepo + ":9.9/sbom", 404, "NOT_FOUND", "no tag " + scannedRepo + ":9.9"},
		{"an index", "GET", ref(index), 404, "NOT_FOUND", "is an image index: airlock scans its platforms one by one; ask for the SBOM of one of them: " +
			scannedRepo + "@" + string(platform) + " (linux/arm64/v8)"},
		{"POST", "POST", ref(scanned), 405, "METHOD_NOT_ALLOWED", "use GET"},
		{"a repository named sbom", "GET", "/api/v1/images/" + scannedRepo + "/sbom", 400, "INVALID", "names a repository but no image"},
	} {
		status, h, data := f.call(tc.method, tc.path, admintest.AliceToken, "")
		wantError(t, tc.name, status, data, tc.status, tc.code, tc.msg)
		if tc.status == 405 && h.Get("Allow") != "GET" {
			t.Errorf("%s: Allow %q", tc.name, h.Get("Allow"))
		}
	}
	if got := src.questions(); len(got) != asked {
		t.Fatalf("refused requests asked the scanner: %v", got[asked:])
	}

	// What the scanner does not know is explained from the image's scan.
	for _, tc := range []struct {
		name string
		d    digest.Digest
		msg  string
	}{
		{"queued", queued, "has no SBOM yet: its scan is queued; ask again when `airlock images show " + scannedRepo + "@" + string(queued) + "` says done"},
		{"failed", failed, "its scan failed (layer sha256:77 is not a tar archive); `airlock rescan " + scannedRepo + "@" + string(failed) + "` scans it again"},
		{"never scanned", never, "has not been scanned: airlock scans the images of repositories a policy with vulnerability checks covers"},
		{"index lost", lost, "the scanner holds no index of its packages"},
	} {
		status, _, data := f.call("GET", ref(tc.d), admintest.AliceToken, "")
		wantError(t, tc.name, status, data, 404, "NOT_FOUND", tc.msg)
	}

	// A scanner whose database is down: 503 with when to retry, and the
	// cause (which names the database) only in the log.
	src.mu.Lock()
	src.unavailable = true
	src.mu.Unlock()
	status, h, data := f.call("GET", ref(scanned), admintest.AliceToken, "")
	wantError(t, "scanner unavailable", status, data, 503, "UNAVAILABLE", "the vulnerability scanner's database cannot be reached; try again shortly")
	if h.Get("Retry-After") != "30" || strings.Contains(string(data), "10.0.0.7") {
		t.Fatalf("503: Retry-After %q, body %s", h.Get("Retry-After"), data)
	}
	if logs := f.Logs(); !strings.Contains(logs, "10.0.0.7:5432") {
		t.Fatalf("the log lacks the cause:\n%s", logs)
	}

	// The client reads the document and passes the server's sentences on.
	c, err := admin.NewClient(f.Admin.URL, admintest.AliceToken, nil)
	if err != nil {
		t.Fatal(err)
	}
	src.mu.Lock()
	src.unavailable = false
	src.mu.Unlock()
	doc, err := c.SBOM(t.Context(), admin.Reference{Repository: scannedRepo, Tag: "2.4"}, "cyclonedx")
	if err != nil || string(doc) != `{"format":"cyclonedx","packages":3}` {
		t.Fatalf("client SBOM = %s, %v", doc, err)
	}
	_, err = c.SBOM(t.Context(), admin.Reference{Repository: scannedRepo, Digest: queued}, "")
	if apiErr, ok := errors.AsType[*admin.APIError](err); !ok || apiErr.Status != 404 || !strings.Contains(apiErr.Message, "its scan is queued") {
		t.Fatalf("client SBOM of a queued image: %v", err)
	}
	if _, err := c.SBOM(t.Context(), admin.Reference{Repository: scannedRepo, Digest: scanned}, "pdf"); err == nil ||
		!strings.Contains(err.Error(), `unknown SBOM format "pdf"`) {
		t.Fatalf("client SBOM in an unknown format: %v", err)
	}
}

// TestAdminAPIScannerUnavailable: a scanner error reaching the API from
// any action (a rescan the gate could not queue) is a 503 with
// Retry-After, as the console shows it too.
func TestAdminAPIScannerUnavailable(t *testing.T) {
	t.Parallel()
	err := fmt.Errorf("queuing a new vulnerability scan of hub/a@sha256:1: %w", scanner.ErrUnavailable)
	status, msg := admin.Describe(err)
	if status != http.StatusServiceUnavailable || !strings.Contains(msg, "try again shortly") || admin.RetryAfter(err) != 30 {
		t.Fatalf("Describe = %d %q, Retry-After %d", status, msg, admin.RetryAfter(err))
	}
	if admin.RetryAfter(errors.New("other")) != 0 {
		t.Fatal("an internal error carries a Retry-After")
	}
}
