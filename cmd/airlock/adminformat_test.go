package main

import (
	"bytes"
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
