package console

import (
	"testing"
	"time"

	"github.com/airlock-registry/airlock/storage/metadata"
)

func TestAdvisoryURL(t *testing.T) {
	t.Parallel()
	for id, want := range map[string]string{
		"CVE-2024-3094":       "https://nvd.nist.gov/vuln/detail/CVE-2024-3094",
		"GHSA-xxxx-yyyy-zzzz": "https://github.com/advisories/GHSA-xxxx-yyyy-zzzz",
		"GO-2024-2687":        "https://osv.dev/vulnerability/GO-2024-2687",
		"DSA-5678-1":          "https://osv.dev/vulnerability/DSA-5678-1",
		"":                    "",
		"javascript:alert(1)": "",
		"CVE-1/../../x":       "",
		"no dash":             "",
	} {
		if got := advisoryURL(id); got != want {
			t.Errorf("advisoryURL(%q) = %q; want %q", id, got, want)
		}
	}
}

func TestSafeNext(t *testing.T) {
	t.Parallel()
	for next, want := range map[string]string{
		"/ui/images?state=quarantined": "/ui/images?state=quarantined",
		"/ui/audit":                    "/ui/audit",
		"":                             "/ui/",
		"//evil.example/ui/":           "/ui/",
		"https://evil.example/ui/":     "/ui/",
		"/ui/login":                    "/ui/",
		"/ui/logout":                   "/ui/",
		"/ui/\\evil":                   "/ui/",
		"/api/v1/images":               "/ui/",
	} {
		if got := safeNext(next); got != want {
			t.Errorf("safeNext(%q) = %q; want %q", next, got, want)
		}
	}
}

func TestSummaryAndAgo(t *testing.T) {
	t.Parallel()
	img := metadata.Image{Reasons: []metadata.Reason{
		{Type: "policy", Message: "audit only", Mode: "audit"},
		{Type: "policy", Message: "policy hcl-pinned: tag 1.1 resolved to sha256:3c2aeb8a604e, which is not pinned by the vendor's list of release digests"},
		{Type: "vulnerability", Message: "CVE-2024-3094"},
	}}
	if got, want := summary(img), "policy hcl-pinned: tag 1.1 resolved to sha256:3c2aeb8a604e, which is not pinned… (+1 more)"; got != want {
		t.Errorf("summary = %q; want %q", got, want)
	}
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	for d, want := range map[time.Duration]string{
		-30 * time.Second: "30s ago", -5 * time.Minute: "5m ago", -3 * time.Hour: "3h ago",
		-72 * time.Hour: "3d ago", 30 * 24 * time.Hour: "in 30d",
	} {
		if got := ago(now, now.Add(d)); got != want {
			t.Errorf("ago(%v) = %q; want %q", d, got, want)
		}
	}
	if got := formatBytes(1536); got != "1.5 KiB" {
		t.Errorf("formatBytes(1536) = %q", got)
	}
}

// TestFindingLink: only a plain http(s) address from the data is a link;
// anything else falls back to the advisory database the id names.
func TestFindingLink(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ id, link, want string }{
		{"CVE-2026-1", "https://security-tracker.debian.org/tracker/CVE-2026-1", "https://security-tracker.debian.org/tracker/CVE-2026-1"},
		{"DSA-5678-1", "http://www.debian.org/security/2026/dsa-5678", "http://www.debian.org/security/2026/dsa-5678"},
		{"CVE-2026-1", "", "https://nvd.nist.gov/vuln/detail/CVE-2026-1"},
		{"CVE-2026-1", "javascript:alert(1)", "https://nvd.nist.gov/vuln/detail/CVE-2026-1"},
		{"CVE-2026-1", "JaVaScRiPt:alert(1)", "https://nvd.nist.gov/vuln/detail/CVE-2026-1"},
		{"CVE-2026-1", "data:text/html,<b>x</b>", "https://nvd.nist.gov/vuln/detail/CVE-2026-1"},
		{"CVE-2026-1", "//evil.example/x", "https://nvd.nist.gov/vuln/detail/CVE-2026-1"},
		{"CVE-2026-1", "/ui/logout", "https://nvd.nist.gov/vuln/detail/CVE-2026-1"},
		{"CVE-2026-1", "https://a.example/x y", "https://nvd.nist.gov/vuln/detail/CVE-2026-1"},
		{"CVE-2026-1", "https://a.example/\nx", "https://nvd.nist.gov/vuln/detail/CVE-2026-1"},
		{"CVE-2026-1", "https://user:pw@a.example/", "https://nvd.nist.gov/vuln/detail/CVE-2026-1"},
		{"CVE-2026-1", "https:///no-host", "https://nvd.nist.gov/vuln/detail/CVE-2026-1"},
		{"javascript:alert(1)", "javascript:alert(1)", ""},
	} {
		if got := findingLink(metadata.Finding{ID: tc.id, Link: tc.link}); got != tc.want {
			t.Errorf("findingLink(%q, %q) = %q; want %q", tc.id, tc.link, got, tc.want)
		}
	}
	for sev, want := range map[string]string{"critical": "sev-critical", "negligible": "sev-negligible", "": "sev-unknown",
		`x" onclick="y`: "sev-unknown", "CRITICAL": "sev-unknown"} {
		if got := sevClass(sev); got != want {
			t.Errorf("sevClass(%q) = %q; want %q", sev, got, want)
		}
	}
}

// TestSummaryVulnerabilities: the images table names the worst advisories
// and counts the rest, leaving out a policy in audit mode.
func TestSummaryVulnerabilities(t *testing.T) {
	t.Parallel()
	v := func(id, sev, mode string) metadata.Reason {
		return metadata.Reason{Type: "vulnerability", ID: id, Package: "p", Severity: sev, Mode: mode, Message: id}
	}
	img := metadata.Image{Reasons: []metadata.Reason{v("CVE-2026-3", "high", ""), v("CVE-2026-9", "low", "audit"),
		v("CVE-2026-1", "critical", ""), v("CVE-2026-2", "high", ""), {Type: "policy", Message: "tag 1.1 is not pinned"}}}
	if got, want := summary(img), "3 vulnerabilities ≥ high: CVE-2026-1, CVE-2026-2 and 1 more (+1 more)"; got != want {
		t.Errorf("summary = %q; want %q", got, want)
	}
	pending := metadata.Image{Scan: &metadata.Scan{State: metadata.ScanRunning}}
	if got := summary(pending); got != "being scanned for vulnerabilities" {
		t.Errorf("summary of an image being scanned = %q", got)
	}
}
