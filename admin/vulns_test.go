package admin_test

import (
	"slices"
	"testing"

	"github.com/airlock-registry/airlock/admin"
	"github.com/airlock-registry/airlock/storage/metadata"
)

func vuln(id, pkg, sev string) metadata.Reason {
	return metadata.Reason{Type: metadata.ReasonVulnerability, Message: id + " in " + pkg, ID: id, Package: pkg, Severity: sev}
}

// TestShortReasons: a table row names the worst advisories and counts the
// rest, whatever order the reasons come in.
func TestShortReasons(t *testing.T) {
	t.Parallel()
	pin := metadata.Reason{Type: metadata.ReasonPolicy, Message: "policy hcl-pinned:\n tag 1.1 is not pinned"}
	audit := vuln("CVE-2026-0009", "curl", "low")
	audit.Mode = "audit"
	tests := []struct {
		name    string
		reasons []metadata.Reason
		want    []string
	}{
		{"none", nil, nil},
		{"one", []metadata.Reason{vuln("CVE-2026-1", "openssl", "critical")},
			[]string{"vulnerability CVE-2026-1 (critical) in openssl"}},
		{"one in two packages", []metadata.Reason{vuln("CVE-2026-1", "openssl", "high"), vuln("CVE-2026-1", "libssl3", "critical")},
			[]string{"vulnerability CVE-2026-1 (critical) in openssl and 1 more packages"}},
		{"two", []metadata.Reason{vuln("CVE-2026-2", "zlib", "high"), vuln("CVE-2026-1", "openssl", "critical")},
			[]string{"2 vulnerabilities ≥ high: CVE-2026-1 and CVE-2026-2"}},
		{"three, worst first", []metadata.Reason{vuln("CVE-2026-3", "a", "high"), vuln("CVE-2026-1", "b", "high"),
			vuln("CVE-2026-2", "c", "critical")},
			[]string{"3 vulnerabilities ≥ high: CVE-2026-2, CVE-2026-1 and 1 more"}},
		{"all alike", []metadata.Reason{vuln("CVE-2026-3", "a", "critical"), vuln("CVE-2026-1", "b", "critical"),
			vuln("CVE-2026-2", "c", "critical"), vuln("CVE-2026-4", "d", "critical")},
			[]string{"4 critical vulnerabilities: CVE-2026-1, CVE-2026-2 and 2 more"}},
		{"unrated", []metadata.Reason{vuln("ALPINE-1", "musl", ""), vuln("CVE-2026-1", "b", "bogus")},
			[]string{"2 vulnerabilities of unknown severity: ALPINE-1 and CVE-2026-1"}},
		{"rated and unrated", []metadata.Reason{vuln("CVE-2026-7", "musl", "unknown"), vuln("CVE-2026-1", "b", "high"),
			vuln("CVE-2026-2", "c", "high")},
			[]string{"3 vulnerabilities ≥ high or of unknown severity: CVE-2026-1, CVE-2026-2 and 1 more"}},
		{"rated and unrated, mixed", []metadata.Reason{vuln("CVE-2026-7", "musl", "unknown"), vuln("CVE-2026-1", "b", "critical"),
			vuln("CVE-2026-2", "c", "high")},
			[]string{"3 vulnerabilities ≥ high or of unknown severity: CVE-2026-1, CVE-2026-2 and 1 more"}},
		{"mixed with a pin and an audit finding", []metadata.Reason{pin, vuln("CVE-2026-1", "openssl", "critical"), audit,
			vuln("CVE-2026-2", "zlib", "high"), {Type: metadata.ReasonVulnerability, Message: "scan failed: no layers"}},
			[]string{"policy hcl-pinned: tag 1.1 is not pinned", "2 vulnerabilities ≥ high: CVE-2026-1 and CVE-2026-2",
				"vulnerability CVE-2026-0009 (low) in curl (audit only)", "scan failed: no layers"}},
	}
	for _, tc := range tests {
		if got := admin.ShortReasons(tc.reasons); !slices.Equal(got, tc.want) {
			t.Errorf("%s: ShortReasons = %q; want %q", tc.name, got, tc.want)
		}
	}
	if got, want := admin.ShortReason(tests[len(tests)-1].reasons), "policy hcl-pinned: tag 1.1 is not pinned (+3 more)"; got != want {
		t.Errorf("ShortReason = %q; want %q", got, want)
	}
}

// TestFindings: worst first, each with its reason and its waiver.
func TestFindings(t *testing.T) {
	t.Parallel()
	img := metadata.Image{
		Scan: &metadata.Scan{State: metadata.ScanDone, Findings: []metadata.Finding{
			{ID: "CVE-2026-5", Package: "zlib", Severity: "low"},
			{ID: "ALPINE-1", Package: "musl", Severity: "unknown"},
			{ID: "CVE-2026-2", Package: "openssl", Severity: "critical"},
			{ID: "CVE-2026-2", Package: "libssl3", Severity: "critical"},
			{ID: "CVE-2026-3", Package: "curl", Severity: "high"},
		}},
		Reasons: []metadata.Reason{vuln("CVE-2026-2", "openssl", "critical"), vuln("CVE-2026-2", "libssl3", "critical")},
		Verdict: metadata.Verdict{Waived: []metadata.Waived{{ID: "CVE-2026-3", Policy: "p", Reason: "r", Source: "policy"}}},
	}
	var got []string
	for _, f := range admin.Findings(img) {
		s := f.ID + " " + f.Package
		if f.Blocking {
			s += " blocks"
		}
		if f.Waiver != nil {
			s += " waived by " + f.Waiver.Policy
		}
		got = append(got, s)
	}
	want := []string{"CVE-2026-2 libssl3 blocks", "CVE-2026-2 openssl blocks", "CVE-2026-3 curl waived by p", "CVE-2026-5 zlib", "ALPINE-1 musl"}
	if !slices.Equal(got, want) {
		t.Fatalf("Findings = %q; want %q", got, want)
	}
	if s := admin.Summarize(img); s.Findings != 5 || s.Worst != "critical" || s.Blocking != 2 || s.Waived != 1 || s.BySeverity["critical"] != 2 {
		t.Fatalf("Summarize = %+v", s)
	}
	if admin.Summarize(metadata.Image{}) != nil || admin.Findings(metadata.Image{}) != nil {
		t.Fatal("an image without a scan has a summary or findings")
	}
}
