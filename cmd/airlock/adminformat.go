package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/airlock-registry/airlock/admin"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// tableWidth is the width tables are fitted to: a terminal of 100 columns
// shows them without wrapping. The free-text column (the reason) takes what
// the others leave.
const tableWidth = 100

// colGap is the padding tabwriter puts between columns.
const colGap = 2

func writeJSONTo(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// shortDigest is enough of a digest to tell images apart in a table, in
// the form people paste into searches: "sha256:1a2b3c4d5e6f".
func shortDigest(d fmt.Stringer) string {
	s := d.String()
	alg, hex, ok := strings.Cut(s, ":")
	if !ok || len(hex) <= 12 {
		return s
	}
	return alg + ":" + hex[:12]
}

// truncate shortens s to at most n characters, marking the cut with "…".
func truncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	if n <= 1 {
		return "…"
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

// oneLine keeps a message on its table row.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// since says how long ago t was: relative for the last week, a date before.
func since(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t)
	switch {
	case d < 0 || d >= 7*24*time.Hour:
		return t.UTC().Format(time.DateOnly)
	case d < time.Minute:
		return strconv.Itoa(int(d/time.Second)) + "s ago"
	case d < time.Hour:
		return strconv.Itoa(int(d/time.Minute)) + "m ago"
	case d < 24*time.Hour:
		return strconv.Itoa(int(d/time.Hour)) + "h ago"
	}
	return strconv.Itoa(int(d/(24*time.Hour))) + "d ago"
}

// stamp is a full time, for records people may need to correlate with logs.
func stamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04:05 UTC")
}

// humanBytes writes n in binary units, the way `du -h` does.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// firstReason is the reason a table shows: the first, with a count of the
// others.
func firstReason(reasons []metadata.Reason) string {
	if len(reasons) == 0 {
		return "-"
	}
	s := reasonText(reasons[0])
	if len(reasons) > 1 {
		s += fmt.Sprintf(" (+%d more)", len(reasons)-1)
	}
	return s
}

func reasonText(r metadata.Reason) string {
	msg := oneLine(r.Message)
	if msg == "" {
		msg = r.Type
	}
	return msg
}

func tagList(tags []string) string {
	if len(tags) == 0 {
		return "-"
	}
	return strings.Join(tags, ",")
}

// fitTable writes rows under header, truncating the last column so that
// the table fits width; the others are cut to their max first.
func fitTable(w io.Writer, header []string, max []int, rows [][]string, width int) error {
	widths := make([]int, len(header))
	for i, h := range header {
		widths[i] = utf8.RuneCountInString(h)
	}
	for _, row := range rows {
		for i := range row[:len(row)-1] {
			row[i] = truncate(row[i], max[i])
			widths[i] = maxInt(widths[i], utf8.RuneCountInString(row[i]))
		}
	}
	last := width
	for _, wd := range widths[:len(widths)-1] {
		last -= wd + colGap
	}
	last = maxInt(last, 16)
	tw := tabwriter.NewWriter(w, 0, 0, colGap, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, row := range rows {
		row[len(row)-1] = truncate(row[len(row)-1], last)
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	return tw.Flush()
}

func maxInt(a, b int) int {
	if a > b {
		return a
	}
	return b
}

// writeImageTable is the table of quarantine list and images list.
func writeImageTable(w io.Writer, images []admin.Image, now time.Time, width int) error {
	header := []string{"REPOSITORY", "DIGEST", "TAGS", "STATE", "UPDATED", "REASON"}
	max := []int{36, 19, 20, 11, 10, 0}
	rows := make([][]string, 0, len(images))
	for _, img := range images {
		rows = append(rows, []string{img.Repository, shortDigest(img.Digest), tagList(img.Tags),
			string(img.State), since(img.UpdatedAt, now), firstReason(img.Reasons)})
	}
	return fitTable(w, header, max, rows, width)
}

// writeImagesWide is images list -o wide: what the cache holds, with full
// digests to paste into the other verbs.
func writeImagesWide(w io.Writer, images []admin.Image, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 0, colGap, ' ', 0)
	fmt.Fprintln(tw, "REPOSITORY\tDIGEST\tTAGS\tSTATE\tPLATFORMS\tCACHED\tPULLS\tLAST PULLED\tFIRST SEEN")
	for _, img := range images {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", img.Repository, img.Digest, tagList(img.Tags),
			img.State, platformSummary(img.Platforms), cached(img), img.Pulls, since(img.LastPulled, now), since(img.FirstSeen, now))
	}
	return tw.Flush()
}

// platformSummary is "fetched/listed" for an index, "-" for a manifest.
func platformSummary(ps []metadata.Platform) string {
	if len(ps) == 0 {
		return "-"
	}
	fetched := 0
	for _, p := range ps {
		if p.Fetched {
			fetched++
		}
	}
	return fmt.Sprintf("%d/%d", fetched, len(ps))
}

func cached(img admin.Image) string {
	if img.CachedBytes == nil {
		return "-"
	}
	return humanBytes(*img.CachedBytes)
}

func platformName(p metadata.Platform) string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	if s == "/" {
		return "unknown"
	}
	return s
}

// writeImage is images show: one image as a block people read top down,
// ending with the command that changes it.
func writeImage(w io.Writer, img admin.Image, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)
	field := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	field("Repository", img.Repository)
	field("Digest", string(img.Digest))
	if img.MediaType != "" {
		field("Media type", img.MediaType)
	}
	field("State", string(img.State))
	field("Tags", tagList(img.Tags))
	if o := img.Override; o != nil {
		s := fmt.Sprintf("%s by %s at %s: %s", o.Action, o.By, stamp(o.At), oneLine(o.Reason))
		if !o.Expires.IsZero() {
			s += fmt.Sprintf(" (expires %s)", stamp(o.Expires))
		}
		field("Override", s)
	}
	if v := img.Verdict; v.State != "" {
		s := fmt.Sprintf("%s at %s", v.State, stamp(v.DecidedAt))
		if len(v.Policies) > 0 {
			s += " by " + strings.Join(v.Policies, ", ")
		}
		field("Policy verdict", s)
	}
	field("First seen", fmt.Sprintf("%s (%s)", stamp(img.FirstSeen), since(img.FirstSeen, now)))
	field("Updated", fmt.Sprintf("%s (%s)", stamp(img.UpdatedAt), since(img.UpdatedAt, now)))
	if img.LastPulled.IsZero() {
		field("Pulls", strconv.FormatInt(img.Pulls, 10))
	} else {
		field("Pulls", fmt.Sprintf("%d, last %s (%s)", img.Pulls, stamp(img.LastPulled), since(img.LastPulled, now)))
	}
	field("Cached", cached(img))
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(img.Reasons) > 0 {
		fmt.Fprintln(w, "Reasons:")
		for _, r := range img.Reasons {
			fmt.Fprintf(w, "  - %s: %s%s\n", r.Type, reasonText(r), reasonDetail(r))
		}
	}
	if len(img.Platforms) > 0 {
		fmt.Fprintln(w, "Platforms:")
		pw := tabwriter.NewWriter(w, 0, 0, colGap, ' ', 0)
		for _, p := range img.Platforms {
			fetched := "not fetched"
			if p.Fetched {
				fetched = "fetched"
			}
			fmt.Fprintf(pw, "  %s\t%s\t%s\n", platformName(p), p.Digest, fetched)
		}
		if err := pw.Flush(); err != nil {
			return err
		}
	}
	ref := img.Repository + "@" + string(img.Digest)
	switch img.State {
	case metadata.StateQuarantined:
		fmt.Fprintf(w, "\nTo let it through: airlock release %s --reason TEXT [--expires YYYY-MM-DD]\n", ref)
	case metadata.StateBlocked:
		fmt.Fprintf(w, "\nTo lift the block: airlock unblock %s --reason TEXT\n", ref)
	}
	return nil
}

// reasonDetail lists a reason's detail fields that its message may not
// spell out.
func reasonDetail(r metadata.Reason) string {
	var parts []string
	add := func(k, v string) {
		if v != "" {
			parts = append(parts, k+" "+v)
		}
	}
	add("policy", r.Policy)
	add("mode", r.Mode)
	add("tag", r.Tag)
	add("by", r.Actor)
	add("key", r.KeyID)
	add("identity", r.Identity)
	add("id", r.ID)
	add("package", r.Package)
	add("installed", r.Installed)
	add("fixed in", r.Fixed)
	add("severity", r.Severity)
	if r.Expires != nil {
		add("expires", stamp(*r.Expires))
	}
	if len(parts) == 0 {
		return ""
	}
	return " [" + strings.Join(parts, ", ") + "]"
}

// describeChange is the line a change verb prints.
func describeChange(ref admin.Reference, img admin.Image) string {
	s := fmt.Sprintf("%s is now %s", ref, img.State)
	if o := img.Override; o != nil && !o.Expires.IsZero() && img.State == metadata.StateReleased {
		s += " until " + stamp(o.Expires)
	}
	return s
}

func stateName(s metadata.State, none string) string {
	if s == metadata.StateNone {
		return none
	}
	return string(s)
}

// writeAuditTable is the audit verb's table, oldest first.
func writeAuditTable(w io.Writer, recs []metadata.AuditRecord, width int) error {
	header := []string{"TIME", "ACTOR", "ACTION", "IMAGE", "FROM→TO", "REASON"}
	max := []int{20, 20, 10, 44, 24, 0}
	rows := make([][]string, 0, len(recs))
	for _, r := range recs {
		image := truncate(r.Repository, 44-20) + "@" + strings.TrimPrefix(shortDigest(r.Digest), "sha256:")
		reason := oneLine(r.Reason)
		if reason == "" && len(r.Reasons) > 0 {
			reason = firstReason(r.Reasons)
		}
		if reason == "" {
			reason = "-"
		}
		if !r.Expires.IsZero() {
			reason += " (until " + r.Expires.UTC().Format(time.DateOnly) + ")"
		}
		rows = append(rows, []string{r.Time.UTC().Format("2006-01-02 15:04:05"), r.Actor, r.Action, image,
			stateName(r.From, "new") + "→" + stateName(r.To, "deleted"), reason})
	}
	return fitTable(w, header, max, rows, width)
}

func writeAuditCheck(w io.Writer, c metadata.AuditCheck) {
	if c.OK {
		fmt.Fprintf(w, "audit log OK: %d records, head %s\n", c.Records, orDash(c.Head))
		return
	}
	fmt.Fprintf(w, "audit log BROKEN at record %d of %d: %s\n", c.BrokenAt, c.Records, c.Problem)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
