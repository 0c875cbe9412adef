package main

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/admin"
	"github.com/airlock-registry/airlock/storage/metadata"
)

var cliNow = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

func cliImage(repo, hexPrefix string, state metadata.State, tags []string, reasons ...string) admin.Image {
	img := metadata.Image{
		Repository: repo,
		Digest:     digest.Digest("sha256:" + hexPrefix + strings.Repeat("0", 64-len(hexPrefix))),
		State:      state,
		Tags:       tags,
		FirstSeen:  cliNow.Add(-48 * time.Hour),
		UpdatedAt:  cliNow.Add(-5 * time.Minute),
	}
	for _, r := range reasons {
		img.Reasons = append(img.Reasons, metadata.Reason{Type: metadata.ReasonPolicy, Message: r, Policy: "hcl-pinned"})
	}
	return admin.Image{Image: img}
}

// TestCLIImageTableFits checks the table of quarantine list and images
// list: aligned columns, short digests, and at most 100 columns however
// long the reasons and names are.
func TestCLIImageTableFits(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("digest not pinned by policy hcl-pinned for tag 1.25 ", 5)
	images := []admin.Image{
		cliImage("dockerhub/library/nginx", "1a2b3c4d5e6f77", metadata.StateQuarantined, []string{"1.25", "latest"}, long, "second"),
		cliImage("hcl/"+strings.Repeat("very-long-repository-name/", 4)+"app", "abcdef012345", metadata.StateApproved, nil),
		cliImage("ghcr/org/tool", "ffff", metadata.StateBlocked, []string{"v1"}, "blocked by hand"),
	}
	var out bytes.Buffer
	if err := writeImageTable(&out, images, cliNow, tableWidth); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 4 {
		t.Fatalf("got %d lines; want a header and 3 rows:\n%s", len(lines), out.String())
	}
	for _, l := range lines {
		if n := utf8.RuneCountInString(l); n > tableWidth {
			t.Errorf("line is %d columns, more than %d:\n%s", n, tableWidth, l)
		}
	}
	header := lines[0]
	for _, col := range []string{"REPOSITORY", "DIGEST", "TAGS", "STATE", "UPDATED", "REASON"} {
		if !strings.Contains(header, col) {
			t.Errorf("header %q lacks %s", header, col)
		}
	}
	// Aligned: every row's state starts where the header's STATE does.
	at := strings.Index(header, "STATE")
	for i, state := range []string{"quarantined", "approved", "blocked"} {
		row := []rune(lines[i+1])
		if got := string(row[at : at+len(state)]); got != state {
			t.Errorf("row %d has %q under STATE; want %q:\n%s", i+1, got, state, out.String())
		}
	}
	for _, want := range []string{" 1a2b3c4d5e6f ", "1.25,latest", "5m ago", "digest not pinned", "…", "hcl/ver…itory-name/app"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(lines[2], "…") && !strings.Contains(lines[2], "approved") {
		t.Errorf("truncation cut into the state column:\n%s", lines[2])
	}
	if !strings.HasSuffix(strings.TrimSpace(lines[2]), "-") {
		t.Errorf("an image with no reason shows no '-':\n%s", lines[2])
	}
}

func TestCLISince(t *testing.T) {
	t.Parallel()
	tests := []struct {
		ago  time.Duration
		want string
	}{
		{30 * time.Second, "30s ago"},
		{5 * time.Minute, "5m ago"},
		{3 * time.Hour, "3h ago"},
		{50 * time.Hour, "2d ago"},
		{8 * 24 * time.Hour, "2026-11-22"},
		{-time.Hour, "2026-11-30"},
	}
	for _, tc := range tests {
		if got := since(cliNow.Add(-tc.ago), cliNow); got != tc.want {
			t.Errorf("since(now-%v) = %q; want %q", tc.ago, got, tc.want)
		}
	}
	if got := since(time.Time{}, cliNow); got != "-" {
		t.Errorf("since(zero) = %q; want -", got)
	}
}

func TestCLIHumanBytes(t *testing.T) {
	t.Parallel()
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536: "1.5 KiB", 5 << 20: "5.0 MiB", 3 << 30: "3.0 GiB"} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %q; want %q", n, got, want)
		}
	}
}

func TestCLIImageShow(t *testing.T) {
	t.Parallel()
	img := cliImage("dockerhub/library/nginx", "1a2b", metadata.StateQuarantined, []string{"1.25"}, "digest not pinned for tag 1.25")
	img.Reasons[0].Tag = "1.25"
	img.MediaType = "application/vnd.oci.image.index.v1+json"
	img.Platforms = []metadata.Platform{
		{Digest: digest.Digest("sha256:" + strings.Repeat("a", 64)), OS: "linux", Architecture: "amd64", Fetched: true},
		{Digest: digest.Digest("sha256:" + strings.Repeat("b", 64)), OS: "linux", Architecture: "arm64", Variant: "v8"},
	}
	img.Pulls = 3
	img.LastPulled = cliNow.Add(-time.Hour)
	n := int64(5 << 20)
	img.CachedBytes = &n
	var out bytes.Buffer
	if err := writeImage(&out, img, cliNow); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"Repository: dockerhub/library/nginx\n",
		"State:      quarantined\n",
		"Tags:       1.25\n",
		"Cached:     5.0 MiB\n",
		"Pulls:      3, last 2026-11-30 11:00:00 UTC (1h ago)\n",
		"  - policy: digest not pinned for tag 1.25 [policy hcl-pinned]\n",
		"linux/amd64     sha256:" + strings.Repeat("a", 64) + "  fetched\n",
		"linux/arm64/v8  sha256:",
		"To let it through: airlock release dockerhub/library/nginx@" + string(img.Digest) + " --reason TEXT",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("images show lacks %q:\n%s", want, out.String())
		}
	}
}

func TestCLIAuditTable(t *testing.T) {
	t.Parallel()
	d := digest.Digest("sha256:" + strings.Repeat("c", 64))
	recs := []metadata.AuditRecord{
		{Seq: 1, Time: cliNow.Add(-time.Hour), Actor: "policy", Action: "decide", Repository: "dockerhub/library/nginx", Digest: d,
			From: metadata.StateNone, To: metadata.StateQuarantined,
			Reasons: []metadata.Reason{{Type: "policy", Message: "digest not pinned"}}},
		{Seq: 2, Time: cliNow, Actor: "admin:alice", Action: "release", Repository: "dockerhub/library/nginx", Digest: d,
			From: metadata.StateQuarantined, To: metadata.StateReleased, Reason: strings.Repeat("vendor confirmed the build ", 6),
			Expires: time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)},
		{Seq: 3, Time: cliNow, Actor: "admin:bob", Action: "delete", Repository: "dockerhub/library/nginx", Digest: d,
			From: metadata.StateReleased, To: metadata.StateNone},
	}
	var out bytes.Buffer
	if err := writeAuditTable(&out, recs, tableWidth); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 4 {
		t.Fatalf("got %d lines; want 4:\n%s", len(lines), out.String())
	}
	// Six columns crowd 100: the image is cut to its minimum (keeping the
	// digest) so the reason starts within the terminal, and the reason
	// itself is never cut.
	reasonAt := utf8.RuneCountInString(lines[0][:strings.Index(lines[0], "REASON")])
	if reasonAt > tableWidth-8 {
		t.Errorf("REASON starts at column %d; want at most %d:\n%s", reasonAt, tableWidth-8, out.String())
	}
	if !strings.Contains(out.String(), strings.TrimSpace(recs[1].Reason)+" (until 2027-01-01)") {
		t.Errorf("the long reason was cut:\n%s", out.String())
	}
	at := strings.Index(lines[0], "FROM→TO")
	for i, want := range []string{"new→quarantined", "quarantined→released", "released→deleted"} {
		if got := string([]rune(lines[i+1])[at : at+utf8.RuneCountInString(want)]); got != want {
			t.Errorf("row %d has %q under FROM→TO; want %q:\n%s", i+1, got, want, out.String())
		}
	}
	for _, want := range []string{"TIME", "admin:alice", "dock…rary/nginx@cccccccccccc", "digest not pinned", "2026-11-30 11:00", "vendor confirmed"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("audit table lacks %q:\n%s", want, out.String())
		}
	}
}

func TestCLIAuditCheckText(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	writeAuditCheck(&out, metadata.AuditCheck{Records: 7, Head: "sha256:abc", OK: true})
	// A broken check counts the records before the break (3), as the
	// store reports it; the break is not "record 4 of 3".
	writeAuditCheck(&out, metadata.AuditCheck{Records: 3, Head: "sha256:abc", BrokenAt: 4, Problem: "record 4 was edited: its hash does not match its content"})
	writeAuditCheck(&out, metadata.AuditCheck{BrokenAt: 1, Problem: "record 1 is missing: it was deleted"})
	want := "audit log OK: 7 records, head sha256:abc\n" +
		"audit log BROKEN at record 4: record 4 was edited: its hash does not match its content\n" +
		"records 1 to 3 are chained correctly, up to hash sha256:abc\n" +
		"audit log BROKEN at record 1: record 1 is missing: it was deleted\n"
	if out.String() != want {
		t.Fatalf("got:\n%s\nwant:\n%s", out.String(), want)
	}
}

// scannedImage is a quarantined image with a finished scan: two critical
// findings that a policy refuses, one high finding waived until a date,
// and an unrated one.
func scannedImage() admin.Image {
	img := cliImage("dockerhub/library/nginx", "9f8e", metadata.StateQuarantined, []string{"1.27"})
	img.Index = digest.Digest("sha256:" + strings.Repeat("d", 64))
	img.Scan = &metadata.Scan{State: metadata.ScanDone, Queued: cliNow.Add(-3 * time.Minute), Started: cliNow.Add(-170 * time.Second),
		Finished: cliNow.Add(-2 * time.Minute), Attempts: 1, Distribution: "Debian GNU/Linux 12 (bookworm)", Packages: 97, Layers: 3,
		Size: 30 << 20, Data: "debian/updater/bookworm@2026-11-30",
		Findings: []metadata.Finding{
			{ID: "CVE-2026-0003", Package: "curl", Installed: "7.88.1-10", Fixed: "7.88.1-10+deb12u8", Severity: "high",
				Link: "https://security-tracker.debian.org/tracker/CVE-2026-0003"},
			{ID: "CVE-2026-0001", Package: "openssl", Installed: "3.0.11-1", Fixed: "3.0.15-1", Severity: "critical",
				Link: "https://security-tracker.debian.org/tracker/CVE-2026-0001"},
			{ID: "CVE-2026-0002", Package: "libssl3", Installed: "3.0.11-1", Severity: "critical"},
			{ID: "CVE-2026-0009", Package: "tar", Installed: "1.34", Fixed: "1.35", Severity: "unknown"},
		}}
	for _, f := range img.Scan.Findings[1:3] {
		img.Reasons = append(img.Reasons, metadata.Reason{Type: metadata.ReasonVulnerability, Policy: "no-critical",
			Message: f.ID + " (" + f.Severity + ") in " + f.Package, ID: f.ID, Package: f.Package, Installed: f.Installed,
			Fixed: f.Fixed, Severity: f.Severity})
	}
	img.Verdict = metadata.Verdict{State: metadata.StateQuarantined, Reasons: img.Reasons, Policies: []string{"no-critical"},
		DecidedAt: cliNow.Add(-2 * time.Minute), Waived: []metadata.Waived{{ID: "CVE-2026-0003", Package: "curl", Severity: "high",
			Policy: "no-critical", Reason: "not reachable: we never call curl", Source: "policy",
			Until: time.Date(2027, 2, 1, 0, 0, 0, 0, time.UTC)}}}
	return img
}

// TestCLIImageShowScan: images show prints the scan, the findings worst
// first in one group per severity with what each does to the image, and
// each waiver with its end.
func TestCLIImageShowScan(t *testing.T) {
	t.Parallel()
	img := scannedImage()
	var out bytes.Buffer
	if err := writeImage(&out, img, cliNow); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	for _, want := range []string{
		"Index:          dockerhub/library/nginx@sha256:" + strings.Repeat("d", 64) + " (this platform was pulled through it)\n",
		"  - vulnerability: 2 critical vulnerabilities: CVE-2026-0001 and CVE-2026-0002 [policy no-critical] (listed under Findings)\n",
		"Vulnerability scan:\n",
		"  State:        done\n",
		"  Started:      2026-11-30 11:57:10 UTC (waited 10s)\n",
		"  Finished:     2026-11-30 11:58:00 UTC (2m ago, took 50s)\n",
		"  Distribution: Debian GNU/Linux 12 (bookworm)\n",
		"  Packages:     97 in 3 layers (30.0 MiB)\n",
		"Findings: 4 (2 critical, 1 high, 1 unknown); 2 refused by policy; 1 waived\n",
		"  critical:\n" +
			"    CVE-2026-0001  openssl  3.0.11-1 → 3.0.15-1            refused  https://security-tracker.debian.org/tracker/CVE-2026-0001\n" +
			"    CVE-2026-0002  libssl3  3.0.11-1 → no fix              refused\n" +
			"  high:\n" +
			"    CVE-2026-0003  curl     7.88.1-10 → 7.88.1-10+deb12u8  waived   https://security-tracker.debian.org/tracker/CVE-2026-0003\n" +
			"  unknown:\n" +
			"    CVE-2026-0009  tar      1.34 → 1.35\n",
		"Waived:\n  CVE-2026-0003 (high) in curl: allowed by policy no-critical, until 2027-02-01 00:00:00 UTC (in 62d): not reachable: we never call curl\n",
		"To let it through: airlock release dockerhub/library/nginx@",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("images show lacks %q:\n%s", want, s)
		}
	}
	// Each finding is listed once, in the findings.
	if n := strings.Count(s, "CVE-2026-0002"); n != 2 {
		t.Errorf("CVE-2026-0002 appears %d times; want twice (the reason's summary and its finding):\n%s", n, s)
	}

	// A scan still running, and one that failed.
	img.Scan = &metadata.Scan{State: metadata.ScanRunning, Queued: cliNow.Add(-time.Minute), Started: cliNow.Add(-30 * time.Second), Attempts: 1}
	img.Reasons, img.Verdict.Waived = nil, nil
	out.Reset()
	if err := writeImage(&out, img, cliNow); err != nil {
		t.Fatal(err)
	}
	if s := out.String(); !strings.Contains(s, "  State:   scanning\n") || strings.Contains(s, "Findings") || strings.Contains(s, "Packages") {
		t.Errorf("a running scan:\n%s", s)
	}
	img.Scan = &metadata.Scan{State: metadata.ScanFailed, Attempts: 5, Error: "layer sha256:77\nis not a tar archive"}
	out.Reset()
	if err := writeImage(&out, img, cliNow); err != nil {
		t.Fatal(err)
	}
	if s := out.String(); !strings.Contains(s, "  State: failed (attempt 5)\n  Error: layer sha256:77 is not a tar archive\n") ||
		!strings.Contains(s, "To scan it again: airlock rescan dockerhub/library/nginx@") {
		t.Errorf("a failed scan:\n%s", s)
	}
}

// TestCLIImageTableVulnerabilities: the table's reason names the worst
// advisories and counts the rest, in its 100 columns.
func TestCLIImageTableVulnerabilities(t *testing.T) {
	t.Parallel()
	img := scannedImage()
	for i := range 40 {
		img.Reasons = append(img.Reasons, metadata.Reason{Type: metadata.ReasonVulnerability, ID: fmt.Sprintf("CVE-2025-%04d", i),
			Package: "pkg", Severity: "high", Message: "x"})
	}
	var out bytes.Buffer
	if err := writeImageTable(&out, []admin.Image{img}, cliNow, tableWidth); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "quarantined  5m ago   42 vulnerabilities ≥ high: CVE-2…") {
		t.Errorf("table:\n%s", out.String())
	}
	for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		if n := utf8.RuneCountInString(l); n > tableWidth {
			t.Errorf("line of %d columns: %s", n, l)
		}
	}
	if got := firstReason(img.Reasons); got != "42 vulnerabilities ≥ high: CVE-2026-0001, CVE-2026-0002 and 40 more" {
		t.Errorf("firstReason = %q", got)
	}
}
