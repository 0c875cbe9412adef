package policy

import (
	"fmt"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/storage/metadata"
)

var now = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

func done(fs ...metadata.Finding) *metadata.Scan {
	return &metadata.Scan{State: metadata.ScanDone, Findings: fs}
}

func finding(id, pkg, sev, fixed string) metadata.Finding {
	return metadata.Finding{ID: id, Package: pkg, Installed: "1.0", Fixed: fixed, Severity: sev}
}

func vulnPolicy(name string, v config.Vulnerabilities) config.Policy {
	return config.Policy{Name: name, Match: []string{"hub/*"}, Mode: config.ModeEnforce, Vulnerabilities: &v}
}

func messages(rs []metadata.Reason) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.Message
	}
	return out
}

func TestSeveritiesAgree(t *testing.T) {
	t.Parallel()
	// config lists what a policy may name; the ranks here must know each,
	// in the same order, with unknown below them all.
	prev := severityRank[metadata.SeverityUnknown]
	for _, s := range config.Severities() {
		r, ok := severityRank[s]
		if !ok || r <= prev {
			t.Errorf("severity %q ranks %d (known %v) after %d", s, r, ok, prev)
		}
		prev = r
	}
	if len(severityRank) != len(config.Severities())+1 {
		t.Errorf("ranks %v, config %v", severityRank, config.Severities())
	}
}

func TestEvaluateSeverities(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		v        config.Vulnerabilities
		findings []metadata.Finding
		want     []string // reason messages, in order; nil: approved
	}{
		{"at the threshold", config.Vulnerabilities{BlockSeverity: "high"},
			[]metadata.Finding{finding("CVE-2024-1", "openssl", "high", "3.0.14")},
			[]string{"policy p: CVE-2024-1 in openssl 1.0 (high; fixed in 3.0.14)"}},
		{"below the threshold", config.Vulnerabilities{BlockSeverity: "high"},
			[]metadata.Finding{finding("CVE-2024-1", "openssl", "medium", "3.0.14")}, nil},
		{"above the threshold", config.Vulnerabilities{BlockSeverity: "medium"},
			[]metadata.Finding{finding("CVE-2024-1", "openssl", "critical", "")},
			[]string{"policy p: CVE-2024-1 in openssl 1.0 (critical; no fixed version yet)"}},
		{"negligible blocks at negligible", config.Vulnerabilities{BlockSeverity: "negligible"},
			[]metadata.Finding{finding("CVE-2024-1", "zlib", "negligible", "")},
			[]string{"policy p: CVE-2024-1 in zlib 1.0 (negligible; no fixed version yet)"}},
		{"unknown counts as medium by default: below high", config.Vulnerabilities{BlockSeverity: "high"},
			[]metadata.Finding{finding("ALPINE-1", "musl", "unknown", "1.2")}, nil},
		{"unknown counts as medium by default: at medium", config.Vulnerabilities{BlockSeverity: "medium"},
			[]metadata.Finding{finding("CVE-2024-2", "musl", "unknown", "1.2")},
			[]string{"policy p: CVE-2024-2 in musl 1.0 (unknown, counted as medium; fixed in 1.2)"}},
		{"unknown counts as configured", config.Vulnerabilities{BlockSeverity: "high", UnknownSeverity: "critical"},
			[]metadata.Finding{finding("CVE-2024-2", "musl", "unknown", "1.2")},
			[]string{"policy p: CVE-2024-2 in musl 1.0 (unknown, counted as critical; fixed in 1.2)"}},
		{"unknown counted low passes medium", config.Vulnerabilities{BlockSeverity: "medium", UnknownSeverity: "low"},
			[]metadata.Finding{finding("CVE-2024-2", "musl", "unknown", "1.2")}, nil},
		{"an unrated or unheard-of severity is unknown", config.Vulnerabilities{BlockSeverity: "medium"},
			[]metadata.Finding{finding("CVE-2024-3", "a", "", ""), finding("CVE-2024-4", "b", "Important", "")},
			[]string{"policy p: CVE-2024-3 in a 1.0 (unknown, counted as medium; no fixed version yet)",
				"policy p: CVE-2024-4 in b 1.0 (unknown, counted as medium; no fixed version yet)"}},
		{"ignoreUnfixed leaves out findings without a fix", config.Vulnerabilities{BlockSeverity: "high", IgnoreUnfixed: true},
			[]metadata.Finding{finding("CVE-2024-1", "openssl", "critical", ""), finding("CVE-2024-5", "curl", "high", "8.9")},
			[]string{"policy p: CVE-2024-5 in curl 1.0 (high; fixed in 8.9)"}},
		{"unfixed count without ignoreUnfixed", config.Vulnerabilities{BlockSeverity: "high"},
			[]metadata.Finding{finding("CVE-2024-1", "openssl", "critical", "")},
			[]string{"policy p: CVE-2024-1 in openssl 1.0 (critical; no fixed version yet)"}},
		{"worst first, then id", config.Vulnerabilities{BlockSeverity: "low"},
			[]metadata.Finding{finding("CVE-2024-9", "a", "low", "2"), finding("CVE-2024-10", "b", "high", "2"),
				finding("CVE-2023-7", "c", "critical", "2"), finding("CVE-2024-1", "d", "high", "2"), finding("CVE-2024-0", "e", "unknown", "2")},
			[]string{"policy p: CVE-2023-7 in c 1.0 (critical; fixed in 2)", "policy p: CVE-2024-1 in d 1.0 (high; fixed in 2)",
				"policy p: CVE-2024-10 in b 1.0 (high; fixed in 2)", "policy p: CVE-2024-0 in e 1.0 (unknown, counted as medium; fixed in 2)",
				"policy p: CVE-2024-9 in a 1.0 (low; fixed in 2)"}},
		{"one advisory from two sources is one finding, at the worse severity", config.Vulnerabilities{BlockSeverity: "medium"},
			[]metadata.Finding{finding("CVE-2024-1", "openssl", "medium", "3"), finding("CVE-2024-1", "openssl", "high", "3"), finding("CVE-2024-1", "openssl", "low", "3")},
			[]string{"policy p: CVE-2024-1 in openssl 1.0 (high; fixed in 3)"}},
		{"the same advisory in two packages is two findings", config.Vulnerabilities{BlockSeverity: "medium"},
			[]metadata.Finding{finding("CVE-2024-1", "libssl3", "high", "3"), finding("CVE-2024-1", "openssl", "high", "3")},
			[]string{"policy p: CVE-2024-1 in libssl3 1.0 (high; fixed in 3)", "policy p: CVE-2024-1 in openssl 1.0 (high; fixed in 3)"}},
		{"no package", config.Vulnerabilities{BlockSeverity: "high"},
			[]metadata.Finding{{ID: "CVE-2024-1", Severity: "high"}},
			[]string{"policy p: CVE-2024-1 (high; no fixed version yet)"}},
		{"nothing found", config.Vulnerabilities{BlockSeverity: "negligible"}, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			set := compile(t, []config.Policy{vulnPolicy("p", tc.v)}, nil)
			v := set.Evaluate(Subject{Repository: "hub/library/nginx", Digest: dA, Scan: done(tc.findings...)}, now)
			wantState := metadata.StateApproved
			if tc.want != nil {
				wantState = metadata.StateQuarantined
			}
			if v.State != wantState || !slices.Equal(messages(v.Reasons), tc.want) {
				t.Fatalf("verdict %s %q, want %s %q", v.State, messages(v.Reasons), wantState, tc.want)
			}
			for _, r := range v.Reasons {
				if r.Type != metadata.ReasonVulnerability || r.Policy != "p" || r.ID == "" || r.Installed != "1.0" && r.Package != "" || r.Mode != "" {
					t.Errorf("reason %+v lacks its detail", r)
				}
				if !slices.ContainsFunc(tc.findings, func(f metadata.Finding) bool {
					return f.ID == r.ID && f.Package == r.Package && f.Fixed == r.Fixed && normalSeverity(f.Severity) == r.Severity
				}) {
					t.Errorf("reason %+v carries no finding of %+v", r, tc.findings)
				}
			}
			if len(v.Waived) != 0 || !v.Recheck.IsZero() || !slices.Equal(v.Policies, []string{"p"}) {
				t.Errorf("waived %+v, recheck %v, policies %v", v.Waived, v.Recheck, v.Policies)
			}
		})
	}
}

func TestEvaluateScanStates(t *testing.T) {
	t.Parallel()
	deny := config.Vulnerabilities{BlockSeverity: "high"}
	allow := config.Vulnerabilities{BlockSeverity: "high", Unscanned: config.UnscannedAllow}
	set := compile(t, []config.Policy{
		vulnPolicy("deny", deny),
		{Name: "allow", Match: []string{"hub/allow/*"}, Vulnerabilities: &allow},
		{Name: "audit", Match: []string{"hub/audit/*"}, Mode: config.ModeAudit, Vulnerabilities: &deny},
	}, nil)
	failed := &metadata.Scan{State: metadata.ScanFailed, Attempts: 5, Error: "indexing layer sha256:ab: " + strings.Repeat("x", 300)}
	vulnerable := done(finding("CVE-2024-1", "openssl", "high", "3"))
	for _, tc := range []struct {
		name   string
		repo   string
		scan   *metadata.Scan
		state  metadata.State
		reason string
	}{
		{"deny, no scan yet", "hub/app", nil, metadata.StatePending, "policy deny: vulnerability scan not started yet"},
		{"deny, queued", "hub/app", &metadata.Scan{State: metadata.ScanQueued}, metadata.StatePending, "policy deny: vulnerability scan queued"},
		{"deny, running", "hub/app", &metadata.Scan{State: metadata.ScanRunning}, metadata.StatePending, "policy deny: vulnerability scan running"},
		{"deny, failed", "hub/app", failed, metadata.StatePending, "policy deny: vulnerability scan failed after 5 attempts: indexing layer sha256:ab: " + strings.Repeat("x", 174) + "..."},
		{"deny, failed without detail", "hub/app", &metadata.Scan{State: metadata.ScanFailed}, metadata.StatePending, "policy deny: vulnerability scan failed"},
		{"deny, done and clean", "hub/app", done(), metadata.StateApproved, ""},
		{"deny, done and vulnerable", "hub/app", vulnerable, metadata.StateQuarantined, "policy deny: CVE-2024-1 in openssl 1.0 (high; fixed in 3)"},
		// The allow policy's repositories are under hub/*, so deny judges
		// them too: only where allow alone matches does it decide.
		{"allow, no scan yet, deny also matches", "hub/allow/app", nil, metadata.StatePending, "policy deny: vulnerability scan not started yet"},
		{"audit, no scan yet, deny also matches", "hub/audit/app", &metadata.Scan{State: metadata.ScanQueued}, metadata.StatePending, "policy deny: vulnerability scan queued"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			v := set.Evaluate(Subject{Repository: tc.repo, Digest: dA, Scan: tc.scan}, now)
			if v.State != tc.state {
				t.Errorf("state %s, want %s (%q)", v.State, tc.state, messages(v.Reasons))
			}
			if tc.reason == "" {
				if len(v.Reasons) != 0 {
					t.Errorf("reasons %q, want none", messages(v.Reasons))
				}
				return
			}
			if len(v.Reasons) == 0 || v.Reasons[0].Message != tc.reason || v.Reasons[0].Type != metadata.ReasonVulnerability || v.Reasons[0].Policy != "deny" {
				t.Errorf("reasons %+v, want first %q", v.Reasons, tc.reason)
			}
		})
	}

	// Alone, unscanned: allow passes until the scan is done, a failed one
	// included; audit never holds.
	alone := compile(t, []config.Policy{
		{Name: "allow", Match: []string{"hub/allow/*"}, Vulnerabilities: &allow},
		{Name: "audit", Match: []string{"hub/audit/*"}, Mode: config.ModeAudit, Vulnerabilities: &deny},
	}, nil)
	for _, repo := range []string{"hub/allow/app", "hub/audit/app"} {
		for _, scan := range []*metadata.Scan{nil, {State: metadata.ScanQueued}, {State: metadata.ScanRunning}, failed} {
			if v := alone.Evaluate(Subject{Repository: repo, Digest: dA, Scan: scan}, now); v.State != metadata.StateApproved || len(v.Reasons) != 0 {
				t.Errorf("%s with scan %+v: %s %q, want approved without reasons", repo, scan, v.State, messages(v.Reasons))
			}
		}
	}
	if v := alone.Evaluate(Subject{Repository: "hub/allow/app", Digest: dA, Scan: vulnerable}, now); v.State != metadata.StateQuarantined {
		t.Errorf("unscanned allow, then vulnerable: %s", v.State)
	}
	v := alone.Evaluate(Subject{Repository: "hub/audit/app", Digest: dA, Scan: vulnerable}, now)
	if v.State != metadata.StateApproved || len(v.Reasons) != 1 || v.Reasons[0].Mode != config.ModeAudit || v.Reasons[0].ID != "CVE-2024-1" {
		t.Errorf("audit, vulnerable: %s %+v", v.State, v.Reasons)
	}
}

// A pending verdict says what it waits for; a quarantined one only why it
// is refused.
func TestWaitingReasonsOnlyWhenPending(t *testing.T) {
	t.Parallel()
	set := compile(t, []config.Policy{
		{Name: "pinned", Match: []string{"hub/*"}, Pins: "/pins"},
		vulnPolicy("vulns", config.Vulnerabilities{BlockSeverity: "high"}),
		{Name: "signed", Match: []string{"hub/signed/*"}, Signature: &config.Signature{TrustedRoot: "r"}},
	}, map[string]string{"/pins": dA.String()})
	queued := &metadata.Scan{State: metadata.ScanQueued}
	v := set.Evaluate(Subject{Repository: "hub/app", Digest: dB, Scan: queued}, now)
	if v.State != metadata.StateQuarantined || !slices.Equal(messages(v.Reasons), []string{"policy pinned: " + short(dB) + " is not pinned"}) {
		t.Errorf("unpinned while queued: %s %q", v.State, messages(v.Reasons))
	}
	v = set.Evaluate(Subject{Repository: "hub/app", Digest: dA, Scan: queued}, now)
	if v.State != metadata.StatePending || !slices.Equal(messages(v.Reasons), []string{"policy vulns: vulnerability scan queued"}) {
		t.Errorf("pinned while queued: %s %q", v.State, messages(v.Reasons))
	}
	// Waiting for a signature check alone gives no reason, as before.
	v = set.Evaluate(Subject{Repository: "hub/signed/app", Digest: dA, Scan: done()}, now)
	if v.State != metadata.StatePending || len(v.Reasons) != 0 {
		t.Errorf("waiting for a signature: %s %q", v.State, messages(v.Reasons))
	}
}

func TestWaivers(t *testing.T) {
	t.Parallel()
	day := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC) // the first instant after "2026-11-30"
	v := config.Vulnerabilities{BlockSeverity: "high", Allow: []config.Waiver{
		{ID: "CVE-2024-5535", Until: "2026-11-30", Reason: "not reachable", Repositories: []string{"hub/library/nginx"}},
		{ID: "cve-2024-0001", Until: "2026-11-30T18:00:00+02:00", Reason: "lower case id"},
		{ID: "CVE-2024-0002", Until: "2026-12-24", Reason: "short"},
		{ID: "CVE-2024-0002", Until: "2027-03-01", Reason: "long"},
		{ID: "CVE-2024-0003", Until: "2026-11-29", Reason: "expired"},
	}}
	set := compile(t, []config.Policy{vulnPolicy("p", v)}, nil)
	scan := done(
		finding("CVE-2024-5535", "openssl", "high", "3.0.14"),
		finding("CVE-2024-0001", "curl", "critical", ""),
		finding("CVE-2024-0002", "zlib", "high", "1.3"),
		finding("CVE-2024-0003", "expat", "high", "2.6"),
		finding("CVE-2024-0004", "bash", "low", ""),
	)
	for _, tc := range []struct {
		name    string
		repo    string
		at      time.Time
		blocked []string // ids refused
		waived  []string // id:reason
		recheck time.Time
	}{
		{"all waivers in force", "hub/library/nginx", now, []string{"CVE-2024-0003"},
			[]string{"CVE-2024-0001:lower case id", "CVE-2024-0002:long", "CVE-2024-5535:not reachable"}, time.Date(2026, 11, 30, 16, 0, 0, 0, time.UTC)},
		{"waiver limited to another repository", "hub/library/redis", now, []string{"CVE-2024-0003", "CVE-2024-5535"},
			[]string{"CVE-2024-0001:lower case id", "CVE-2024-0002:long"}, time.Date(2026, 11, 30, 16, 0, 0, 0, time.UTC)},
		{"an RFC 3339 end: its last nanosecond", "hub/library/nginx", time.Date(2026, 11, 30, 15, 59, 59, 999999999, time.UTC), []string{"CVE-2024-0003"},
			[]string{"CVE-2024-0001:lower case id", "CVE-2024-0002:long", "CVE-2024-5535:not reachable"}, time.Date(2026, 11, 30, 16, 0, 0, 0, time.UTC)},
		{"an RFC 3339 end: at it", "hub/library/nginx", time.Date(2026, 11, 30, 16, 0, 0, 0, time.UTC), []string{"CVE-2024-0001", "CVE-2024-0003"},
			[]string{"CVE-2024-0002:long", "CVE-2024-5535:not reachable"}, day},
		{"a date counts through its last second", "hub/library/nginx", day.Add(-time.Nanosecond), []string{"CVE-2024-0001", "CVE-2024-0003"},
			[]string{"CVE-2024-0002:long", "CVE-2024-5535:not reachable"}, day},
		{"a date ends at the next midnight UTC", "hub/library/nginx", day, []string{"CVE-2024-0001", "CVE-2024-0003", "CVE-2024-5535"},
			[]string{"CVE-2024-0002:long"}, time.Date(2027, 3, 2, 0, 0, 0, 0, time.UTC)},
		{"the longer of two waivers holds after the shorter", "hub/library/nginx", time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC),
			[]string{"CVE-2024-0001", "CVE-2024-0003", "CVE-2024-5535"}, []string{"CVE-2024-0002:long"}, time.Date(2027, 3, 2, 0, 0, 0, 0, time.UTC)},
		{"all ended", "hub/library/nginx", time.Date(2027, 3, 2, 0, 0, 0, 0, time.UTC),
			[]string{"CVE-2024-0001", "CVE-2024-0002", "CVE-2024-0003", "CVE-2024-5535"}, nil, time.Time{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			v := set.Evaluate(Subject{Repository: tc.repo, Digest: dA, Scan: scan}, tc.at)
			var blocked, waived []string
			for _, r := range v.Reasons {
				blocked = append(blocked, r.ID)
			}
			slices.Sort(blocked)
			for _, w := range v.Waived {
				waived = append(waived, w.ID+":"+w.Reason)
				if w.Policy != "p" || w.Source != config.WaiverSourcePolicy || w.Until.IsZero() || w.Package == "" || w.Severity == "" {
					t.Errorf("waived %+v lacks its detail", w)
				}
			}
			if !slices.Equal(blocked, tc.blocked) || !slices.Equal(waived, tc.waived) || !v.Recheck.Equal(tc.recheck) {
				t.Errorf("blocked %q, waived %q, recheck %v; want %q, %q, %v", blocked, waived, v.Recheck, tc.blocked, tc.waived, tc.recheck)
			}
			if wantState := metadata.StateQuarantined; len(tc.blocked) > 0 && v.State != wantState {
				t.Errorf("state %s", v.State)
			}
		})
	}

	// A waived finding records its waiver's end and the finding's
	// severity; a waiver for a finding below the threshold is not used.
	v2 := set.Evaluate(Subject{Repository: "hub/library/nginx", Digest: dA, Scan: scan}, now)
	want := metadata.Waived{ID: "CVE-2024-5535", Package: "openssl", Severity: "high", Policy: "p", Reason: "not reachable", Source: "policy", Until: day}
	if i := slices.IndexFunc(v2.Waived, func(w metadata.Waived) bool { return w.ID == want.ID }); i < 0 || v2.Waived[i] != want {
		t.Errorf("waived = %+v, want %+v among them", v2.Waived, want)
	}
}

func TestKinds(t *testing.T) {
	t.Parallel()
	set := compile(t, []config.Policy{
		{Name: "pinned", Match: []string{"hub/*"}, Pins: "/pins", Vulnerabilities: &config.Vulnerabilities{BlockSeverity: "high"}},
		{Name: "signed", Match: []string{"hub/*"}, Signature: &config.Signature{TrustedRoot: "r"}},
		{Name: "vulns", Match: []string{"hub/*"}, Vulnerabilities: &config.Vulnerabilities{BlockSeverity: "critical"}},
	}, map[string]string{"/pins": dA.String()})
	signed := []metadata.SignatureEvidence{{Policy: "signed", Hash: "r", Verified: true}}
	unsigned := []metadata.SignatureEvidence{{Policy: "signed", Hash: "r", Message: "no signature found"}}
	high := done(finding("CVE-2024-1", "openssl", "high", "3"))
	critical := done(finding("CVE-2024-2", "glibc", "critical", "2.40"))
	for _, tc := range []struct {
		name     string
		sub      Subject
		state    metadata.State
		reasons  []string
		policies []string
	}{
		{"image: every check", Subject{Digest: dA, Signatures: signed, Scan: done()}, metadata.StateApproved, nil, []string{"pinned", "signed", "vulns"}},
		{"image: vulnerabilities", Subject{Digest: dA, Signatures: signed, Scan: critical}, metadata.StateQuarantined,
			[]string{"policy pinned: CVE-2024-2 in glibc 1.0 (critical; fixed in 2.40)", "policy vulns: CVE-2024-2 in glibc 1.0 (critical; fixed in 2.40)"}, []string{"pinned", "signed", "vulns"}},
		{"image: unpinned, unsigned, unscanned", Subject{Digest: dB, Signatures: unsigned}, metadata.StateQuarantined,
			[]string{"policy pinned: " + short(dB) + " is not pinned", "policy signed: no signature found"}, []string{"pinned", "signed", "vulns"}},
		{"index: no scan needed", Subject{Kind: KindIndex, Digest: dA, Signatures: signed}, metadata.StateApproved, nil, []string{"pinned", "signed"}},
		{"index: its scan is not looked at", Subject{Kind: KindIndex, Digest: dA, Signatures: signed, Scan: critical}, metadata.StateApproved, nil, []string{"pinned", "signed"}},
		{"index: pins and signature as before", Subject{Kind: KindIndex, Digest: dB, Signatures: unsigned}, metadata.StateQuarantined,
			[]string{"policy pinned: " + short(dB) + " is not pinned", "policy signed: no signature found"}, []string{"pinned", "signed"}},
		{"index: signature not checked yet", Subject{Kind: KindIndex, Digest: dA}, metadata.StatePending, nil, []string{"pinned", "signed"}},
		{"platform: pins and signature were the index's", Subject{Kind: KindPlatform, Digest: dC, Scan: done()}, metadata.StateApproved, nil, []string{"pinned", "vulns"}},
		{"platform: its own scan", Subject{Kind: KindPlatform, Digest: dC, Scan: high}, metadata.StateQuarantined,
			[]string{"policy pinned: CVE-2024-1 in openssl 1.0 (high; fixed in 3)"}, []string{"pinned", "vulns"}},
		{"platform: waits for its scan", Subject{Kind: KindPlatform, Digest: dC}, metadata.StatePending,
			[]string{"policy pinned: vulnerability scan not started yet", "policy vulns: vulnerability scan not started yet"}, []string{"pinned", "vulns"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.sub.Repository = "hub/app"
			v := set.Evaluate(tc.sub, now)
			if v.State != tc.state || !slices.Equal(messages(v.Reasons), tc.reasons) || !slices.Equal(v.Policies, tc.policies) {
				t.Errorf("verdict %s %q by %q, want %s %q by %q", v.State, messages(v.Reasons), v.Policies, tc.state, tc.reasons, tc.policies)
			}
			if tc.sub.Kind == KindPlatform && len(v.Signatures) != 0 {
				t.Errorf("a platform's verdict keeps signature evidence %+v", v.Signatures)
			}
		})
	}

	// Policies with no check for the kind judge nothing: an index under
	// vulnerability policies alone is approved, its platforms decide.
	only := compile(t, []config.Policy{vulnPolicy("vulns", config.Vulnerabilities{BlockSeverity: "high"})}, nil)
	if v := only.Evaluate(Subject{Repository: "hub/app", Digest: dA, Kind: KindIndex}, now); v.State != metadata.StateApproved || len(v.Policies) != 0 {
		t.Errorf("index under a vulnerability policy: %s by %q", v.State, v.Policies)
	}
	pins := compile(t, []config.Policy{{Name: "pinned", Match: []string{"hub/*"}, Pins: "/pins"}}, map[string]string{"/pins": dA.String()})
	if v := pins.Evaluate(Subject{Repository: "hub/app", Digest: dB, Kind: KindPlatform}, now); v.State != metadata.StateApproved || len(v.Policies) != 0 {
		t.Errorf("platform under a pin policy: %s by %q", v.State, v.Policies)
	}
}

func TestScans(t *testing.T) {
	t.Parallel()
	set := compile(t, []config.Policy{
		{Name: "pinned", Match: []string{"hub/*"}, Pins: "/pins"},
		{Name: "watch", Match: []string{"hub/library/*", "quay/x"}, Mode: config.ModeAudit, Vulnerabilities: &config.Vulnerabilities{BlockSeverity: "low"}},
	}, map[string]string{"/pins": ""})
	for repo, want := range map[string]bool{"hub/library/nginx": true, "quay/x": true, "hub/app": false, "quay/y": false, "gcr/x": false} {
		if got := set.Scans(repo); got != want {
			t.Errorf("Scans(%q) = %v, want %v", repo, got, want)
		}
	}
	var none *Set
	if none.Scans("hub/library/nginx") {
		t.Error("a nil Set scans")
	}
	if p := set.Matching("quay/x"); len(p) != 1 || !p[0].Vulnerabilities() || set.Matching("hub/app")[0].Vulnerabilities() {
		t.Error("Policy.Vulnerabilities disagrees with the configuration")
	}
}

func TestMultiplePolicies(t *testing.T) {
	t.Parallel()
	set := compile(t, []config.Policy{
		vulnPolicy("strict", config.Vulnerabilities{BlockSeverity: "medium", Allow: []config.Waiver{
			{ID: "CVE-2024-2", Until: "2027-01-31", Reason: "strict waives it"}}}),
		vulnPolicy("lenient", config.Vulnerabilities{BlockSeverity: "critical", IgnoreUnfixed: true, Allow: []config.Waiver{
			{ID: "CVE-2024-3", Until: "2026-12-15", Reason: "lenient waives it"}}}),
		{Name: "audit", Match: []string{"hub/*"}, Mode: config.ModeAudit, Vulnerabilities: &config.Vulnerabilities{BlockSeverity: "low",
			Allow: []config.Waiver{{ID: "CVE-2024-4", Until: "2026-12-10", Reason: "audit waives it"}}}},
	}, nil)
	scan := done(
		finding("CVE-2024-1", "a", "medium", "2"),
		finding("CVE-2024-2", "b", "critical", "2"),
		finding("CVE-2024-3", "c", "critical", "2"),
		finding("CVE-2024-4", "d", "low", ""),
		finding("CVE-2024-5", "e", "critical", ""),
	)
	v := set.Evaluate(Subject{Repository: "hub/app", Digest: dA, Scan: scan}, now)
	var got []string
	for _, r := range v.Reasons {
		got = append(got, r.Policy+" "+r.ID+" "+r.Mode)
	}
	want := []string{
		"strict CVE-2024-3 ", "strict CVE-2024-5 ", "strict CVE-2024-1 ",
		"lenient CVE-2024-2 ",
		"audit CVE-2024-2 audit", "audit CVE-2024-3 audit", "audit CVE-2024-5 audit", "audit CVE-2024-1 audit",
	}
	if v.State != metadata.StateQuarantined || !slices.Equal(got, want) {
		t.Errorf("verdict %s with\n%q\nwant quarantined with\n%q", v.State, got, want)
	}
	var waived []string
	for _, w := range v.Waived {
		waived = append(waived, w.Policy+" "+w.ID)
	}
	if !slices.Equal(waived, []string{"strict CVE-2024-2", "lenient CVE-2024-3", "audit CVE-2024-4"}) {
		t.Errorf("waived %q", waived)
	}
	if want := time.Date(2026, 12, 11, 0, 0, 0, 0, time.UTC); !v.Recheck.Equal(want) {
		t.Errorf("recheck %v, want the first end, %v", v.Recheck, want)
	}
	if !slices.Equal(v.Policies, []string{"strict", "lenient", "audit"}) {
		t.Errorf("policies %q", v.Policies)
	}
}

// Evaluate is a function of its arguments: the same inputs give the same
// verdict, whatever the order the scanner listed findings in.
func TestEvaluateDeterministic(t *testing.T) {
	t.Parallel()
	set := compile(t, []config.Policy{vulnPolicy("p", config.Vulnerabilities{BlockSeverity: "low", Allow: []config.Waiver{
		{ID: "CVE-2024-7", Until: "2027-01-01", Reason: "r"}, {ID: "CVE-2024-8", Until: "2027-01-02", Reason: "r"}}})}, nil)
	var fs []metadata.Finding
	for i, sev := range []string{"low", "high", "critical", "medium", "unknown", "high", "low", "high", "critical"} {
		fs = append(fs, finding("CVE-2024-"+string(rune('0'+i)), "pkg"+string(rune('a'+i%3)), sev, ""))
	}
	// One advisory from two sources that disagree on the fix.
	fs = append(fs, finding("CVE-2024-1", "pkgb", "high", "2.0-1"), finding("CVE-2024-1", "pkgb", "high", "2.0"))
	first := set.Evaluate(Subject{Repository: "hub/app", Digest: dA, Scan: done(fs...)}, now)
	for i := range 20 {
		shuffled := slices.Clone(fs)
		for j := range shuffled {
			k := (j*7 + i*3) % len(shuffled)
			shuffled[j], shuffled[k] = shuffled[k], shuffled[j]
		}
		again := set.Evaluate(Subject{Repository: "hub/app", Digest: dA, Scan: done(shuffled...)}, now)
		if !reflect.DeepEqual(first, again) {
			t.Fatalf("verdicts differ:\n%+v\n%+v", first, again)
		}
	}
}

func TestCompileVulnerabilityErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		v    config.Vulnerabilities
		want string
	}{
		{"no block severity", config.Vulnerabilities{}, `policies[0] (p): vulnerabilities: blockSeverity "" is not one of negligible, low, medium, high, critical`},
		{"bad unknown severity", config.Vulnerabilities{BlockSeverity: "high", UnknownSeverity: "unknown"}, `unknownSeverity "unknown" is not one of`},
		{"bad unscanned", config.Vulnerabilities{BlockSeverity: "high", Unscanned: "maybe"}, `unscanned "maybe" is neither deny nor allow`},
		{"waiver without id", config.Vulnerabilities{BlockSeverity: "high", Allow: []config.Waiver{{Until: "2027-01-01"}}}, "allow[0]: no id"},
		{"waiver until", config.Vulnerabilities{BlockSeverity: "high", Allow: []config.Waiver{{ID: "CVE-1", Until: "soon"}}}, `allow[0] (CVE-1): until: "soon" is neither`},
		{"waiver glob", config.Vulnerabilities{BlockSeverity: "high", Allow: []config.Waiver{{ID: "CVE-1", Until: "2027-01-01", Repositories: []string{"hub/x:1"}}}}, `allow[0] (CVE-1): "hub/x:1" contains`},
		{"vex missing", config.Vulnerabilities{BlockSeverity: "high", VEX: []string{"/absent.json"}}, "policies[0] (p): vulnerabilities: reading VEX document: file does not exist"},
		{"vex broken", config.Vulnerabilities{BlockSeverity: "high", VEX: []string{"/broken.json"}}, "policies[0] (p): vulnerabilities: VEX document /broken.json: line 3: not OpenVEX JSON"},
	} {
		_, err := Compile([]config.Policy{vulnPolicy("p", tc.v)}, func(path string) ([]byte, error) {
			if path == "/broken.json" {
				return []byte("{\n  \"@context\": \"https://openvex.dev/ns/v0.2.0\",\n  \"statements\": [,]\n}"), nil
			}
			return nil, os.ErrNotExist
		}, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Compile error %v, want %q", tc.name, err, tc.want)
		}
	}
}

// TestFindingReasonsAreBounded: an image with thousands of findings gives
// the worst hundred as reasons and one that counts the rest; the reasons
// travel in every audit record and alert.
func TestFindingReasonsAreBounded(t *testing.T) {
	t.Parallel()
	set, err := Compile([]config.Policy{vulnPolicy("p", config.Vulnerabilities{BlockSeverity: "low"})}, os.ReadFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	var fs []metadata.Finding
	for i := range 5000 {
		sev := "low"
		if i%1000 == 7 {
			sev = "critical"
		}
		fs = append(fs, finding(fmt.Sprintf("CVE-2024-%05d", i), "pkg", sev, "2.0"))
	}
	v := set.Evaluate(Subject{Repository: "hub/app", Digest: digest.FromString("many"), Scan: done(fs...)}, now)
	if v.State != metadata.StateQuarantined || len(v.Reasons) != 101 {
		t.Fatalf("state %s with %d reasons, want quarantined with 101", v.State, len(v.Reasons))
	}
	if v.Reasons[0].Severity != "critical" || v.Reasons[4].Severity != "critical" || v.Reasons[5].Severity != "low" {
		t.Fatalf("the worst do not come first: %v", messages(v.Reasons[:6]))
	}
	last := v.Reasons[100]
	if last.ID != "" || last.Type != metadata.ReasonVulnerability || last.Message != "policy p: 4900 more findings at or above low; the image's scan lists them all" {
		t.Fatalf("summary reason: %+v", last)
	}
}
