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

// shortDigest is enough of a digest to tell images apart in a table: 12
// hex digits, as `docker images` shows image IDs, with the algorithm only
// when it is not sha256. The full digest is in -o wide, -o json and
// `images show`.
func shortDigest(d fmt.Stringer) string {
	s := d.String()
	alg, hex, ok := strings.Cut(s, ":")
	if !ok {
		return s
	}
	if len(hex) > 12 {
		hex = hex[:12]
	}
	if alg == "sha256" {
		return hex
	}
	return alg + ":" + hex
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
// others; the vulnerabilities, which can be hundreds, count as one reason
// that names the worst ("3 vulnerabilities ≥ high: CVE-…, CVE-… and 1
// more").
func firstReason(reasons []metadata.Reason) string {
	return orDash(admin.ShortReason(reasons))
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

// column describes one table column for fitTable.
type column struct {
	header string
	// min is how narrow the column may be cut when the table is too wide;
	// 0 means never cut.
	min int
	// middle cuts in the middle rather than at the end: repository names
	// differ at their end and are recognised by their start.
	middle bool
	// overflow, for the last column, is never cut: the others are fitted
	// as if it took min, and it runs on past width when it must.
	overflow bool
}

// fitTable writes rows under the columns' headers, aligned, cutting the
// columns that allow it (the widest first) until the table fits width.
// The last column is never padded, so a line is only as long as it must be.
func fitTable(w io.Writer, cols []column, rows [][]string, width int) error {
	widths := make([]int, len(cols))
	for i, c := range cols {
		widths[i] = utf8.RuneCountInString(c.header)
	}
	for _, row := range rows {
		for i, cell := range row {
			widths[i] = maxInt(widths[i], utf8.RuneCountInString(cell))
		}
	}
	for i, c := range cols {
		if c.overflow && widths[i] > c.min {
			widths[i] = c.min
		}
	}
	total := colGap * (len(cols) - 1)
	for _, wd := range widths {
		total += wd
	}
	for total > width {
		widest, slack := -1, 0
		for i, c := range cols {
			if c.min > 0 && !c.overflow && widths[i]-c.min > slack {
				widest, slack = i, widths[i]-c.min
			}
		}
		if widest < 0 {
			break // every column is at its minimum: wider than width it is
		}
		widths[widest]--
		total--
	}
	tw := tabwriter.NewWriter(w, 0, 0, colGap, ' ', 0)
	header := make([]string, len(cols))
	for i, c := range cols {
		header[i] = c.header
	}
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, row := range rows {
		for i, c := range cols {
			if c.overflow {
				continue
			}
			if c.middle {
				row[i] = truncateMiddle(row[i], widths[i])
			} else {
				row[i] = truncate(row[i], widths[i])
			}
		}
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	return tw.Flush()
}

// truncateMiddle shortens s to n characters by cutting out its middle,
// keeping more of the end, which tells repositories apart. In
// "repository@digest" only the repository is cut.
func truncateMiddle(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	if at := strings.LastIndexByte(s, '@'); at > 0 {
		suffix := s[at:]
		if keep := n - utf8.RuneCountInString(suffix); keep >= 5 {
			return truncateMiddle(s[:at], keep) + suffix
		}
	}
	if n < 5 {
		return truncate(s, n)
	}
	head := (n - 1) / 3
	tail := n - 1 - head
	return string(r[:head]) + "…" + string(r[len(r)-tail:])
}

func maxInt(a, b int) int {
	if a > b {
		return a
	}
	return b
}

// writeImageTable is the table of quarantine list and images list.
func writeImageTable(w io.Writer, images []admin.Image, now time.Time, width int) error {
	cols := []column{{header: "REPOSITORY", min: 20, middle: true}, {header: "DIGEST"}, {header: "TAGS", min: 10},
		{header: "STATE"}, {header: "UPDATED"}, {header: "REASON", min: 24}}
	rows := make([][]string, 0, len(images))
	for _, img := range images {
		rows = append(rows, []string{img.Repository, shortDigest(img.Digest), tagList(img.Tags),
			string(img.State), since(img.UpdatedAt, now), firstReason(img.Reasons)})
	}
	return fitTable(w, cols, rows, width)
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
	if img.Index != "" {
		field("Index", img.Repository+"@"+string(img.Index)+" (this platform was pulled through it)")
	}
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
	writeReasons(w, img)
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
	if img.Scan != nil {
		if err := writeScan(w, img.Scan, now); err != nil {
			return err
		}
		if err := writeFindings(w, img); err != nil {
			return err
		}
		writeWaived(w, img.Verdict.Waived, now)
	}
	ref := img.Repository + "@" + string(img.Digest)
	if img.Scan != nil && img.Scan.State == metadata.ScanFailed {
		fmt.Fprintf(w, "\nTo scan it again: airlock rescan %s\n", ref)
	}
	switch img.State {
	case metadata.StateQuarantined:
		fmt.Fprintf(w, "\nTo let it through: airlock release %s --reason TEXT [--expires YYYY-MM-DD]\n", ref)
	case metadata.StateBlocked:
		fmt.Fprintf(w, "\nTo lift the block: airlock unblock %s --reason TEXT\n", ref)
	}
	return nil
}

// reasonDetail lists the reason's detail fields that its message does not
// already spell out.
func reasonDetail(r metadata.Reason) string {
	var parts []string
	add := func(k, v string) {
		if v != "" && !strings.Contains(r.Message, k+" "+v) {
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

// writeAuditTable is the audit verb's table, oldest first. The reason is
// printed whole: the log is the record of why, and a cut reason hides it.
// The other columns are fitted to leave it 20 columns within width.
func writeAuditTable(w io.Writer, recs []metadata.AuditRecord, width int) error {
	cols := []column{{header: "TIME"}, {header: "ACTOR", min: 12}, {header: "ACTION"}, {header: "IMAGE", min: 28, middle: true},
		{header: "FROM→TO"}, {header: "REASON", min: 20, overflow: true}}
	rows := make([][]string, 0, len(recs))
	for _, r := range recs {
		image := r.Repository + "@" + shortDigest(r.Digest)
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
		rows = append(rows, []string{r.Time.UTC().Format("2006-01-02 15:04"), r.Actor, orDash(r.Action), image,
			stateName(r.From, "new") + "→" + stateName(r.To, "deleted"), reason})
	}
	return fitTable(w, cols, rows, width)
}

func writeAuditCheck(w io.Writer, c metadata.AuditCheck) {
	if c.OK {
		fmt.Fprintf(w, "audit log OK: %d records, head %s\n", c.Records, orDash(c.Head))
		return
	}
	// Records counts the records whose chain checks, not the log's
	// length: "BROKEN at record 5 of 4" would read as nonsense.
	fmt.Fprintf(w, "audit log BROKEN at record %d: %s\n", c.BrokenAt, c.Problem)
	if c.Records > 0 {
		fmt.Fprintf(w, "records 1 to %d are chained correctly, up to hash %s\n", c.Records, c.Head)
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// writeReasons lists an image's reasons, one a line with its detail. The
// vulnerabilities of a policy are one line that names the worst: the
// findings below list each of them.
func writeReasons(w io.Writer, img admin.Image) {
	if len(img.Reasons) == 0 {
		return
	}
	fmt.Fprintln(w, "Reasons:")
	listed := img.Scan != nil && len(img.Scan.Findings) > 0
	grouped := map[string]bool{}
	for _, r := range img.Reasons {
		if listed && r.Type == metadata.ReasonVulnerability && r.ID != "" {
			key := r.Policy + "\x00" + r.Mode
			if grouped[key] {
				continue
			}
			grouped[key] = true
			var group []metadata.Reason
			for _, o := range img.Reasons {
				if o.Type == metadata.ReasonVulnerability && o.ID != "" && o.Policy == r.Policy && o.Mode == r.Mode {
					group = append(group, o)
				}
			}
			detail := ""
			if r.Policy != "" {
				detail = " [policy " + r.Policy + "]"
			}
			fmt.Fprintf(w, "  - vulnerability: %s%s (listed under Findings)\n", admin.ShortReason(group), detail)
			continue
		}
		msg := reasonText(r)
		if !strings.HasPrefix(strings.ToLower(msg), r.Type) {
			msg = r.Type + ": " + msg
		}
		fmt.Fprintf(w, "  - %s%s\n", msg, reasonDetail(r))
	}
}

// writeScan is the vulnerability scan's block of images show.
func writeScan(w io.Writer, s *metadata.Scan, now time.Time) error {
	fmt.Fprintln(w, "Vulnerability scan:")
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)
	field := func(k, v string) { fmt.Fprintf(tw, "  %s:\t%s\n", k, v) }
	state := s.State
	if s.Attempts > 1 {
		state += fmt.Sprintf(" (attempt %d)", s.Attempts)
	}
	field("State", state)
	if !s.Queued.IsZero() {
		field("Queued", fmt.Sprintf("%s (%s)", stamp(s.Queued), since(s.Queued, now)))
	}
	if !s.Started.IsZero() {
		v := stamp(s.Started)
		if !s.Queued.IsZero() && !s.Started.Before(s.Queued) {
			v += " (waited " + s.Started.Sub(s.Queued).Round(time.Second).String() + ")"
		}
		field("Started", v)
	}
	if !s.Finished.IsZero() {
		v := fmt.Sprintf("%s (%s", stamp(s.Finished), since(s.Finished, now))
		if !s.Started.IsZero() && !s.Finished.Before(s.Started) {
			v += ", took " + s.Finished.Sub(s.Started).Round(time.Second).String()
		}
		field("Finished", v+")")
	}
	if s.Error != "" {
		field("Error", oneLine(s.Error))
	}
	if s.Note != "" {
		field("Note", oneLine(s.Note))
	}
	if s.State == metadata.ScanDone || s.Packages > 0 || s.Distribution != "" {
		field("Distribution", orDash(s.Distribution))
		field("Packages", fmt.Sprintf("%d in %d layers (%s)", s.Packages, s.Layers, humanBytes(s.Size)))
	}
	if s.Data != "" {
		field("Data", s.Data)
	}
	return tw.Flush()
}

// writeFindings lists the findings worst first, a group per severity,
// each with its versions, what it does to the image and its advisory.
func writeFindings(w io.Writer, img admin.Image) error {
	if img.Scan.State != metadata.ScanDone && len(img.Scan.Findings) == 0 {
		return nil
	}
	sum := admin.Summarize(img.Image)
	if sum.Findings == 0 {
		fmt.Fprintln(w, "Findings: none")
		return nil
	}
	var counts []string
	for _, sev := range admin.Severities() {
		if n := sum.BySeverity[sev]; n > 0 {
			counts = append(counts, fmt.Sprintf("%d %s", n, sev))
		}
	}
	head := fmt.Sprintf("Findings: %d (%s)", sum.Findings, strings.Join(counts, ", "))
	if sum.Blocking > 0 {
		head += fmt.Sprintf("; %d refused by policy", sum.Blocking)
	}
	if sum.Waived > 0 {
		head += fmt.Sprintf("; %d waived", sum.Waived)
	}
	fmt.Fprintln(w, head)
	rows := admin.Findings(img.Image)
	cells := make([][4]string, len(rows))
	var widths [4]int
	for i, f := range rows {
		fixed := f.Fixed
		if fixed == "" {
			fixed = "no fix"
		}
		status := ""
		switch {
		case f.Blocking:
			status = "refused"
		case f.Waiver != nil:
			status = "waived"
		}
		cells[i] = [4]string{oneLine(f.ID), oneLine(f.Package), oneLine(f.Installed) + " → " + oneLine(fixed), status}
		for j, c := range cells[i] {
			widths[j] = maxInt(widths[j], utf8.RuneCountInString(c))
		}
	}
	pad := func(s string, n int) string { return s + strings.Repeat(" ", n-utf8.RuneCountInString(s)) }
	group := ""
	for i, f := range rows {
		if sev := severityName(f.Severity); sev != group {
			group = sev
			fmt.Fprintf(w, "  %s:\n", group)
		}
		c := cells[i]
		line := "    " + pad(c[0], widths[0]) + "  " + pad(c[1], widths[1]) + "  " + pad(c[2], widths[2])
		if widths[3] > 0 {
			line += "  " + pad(c[3], widths[3])
		}
		if link := oneLine(f.Link); link != "" {
			line += "  " + link
		}
		fmt.Fprintln(w, strings.TrimRight(line, " "))
	}
	return nil
}

// severityName is a finding's severity as its group is headed.
func severityName(s string) string {
	if admin.SeverityRank(s) == 0 {
		return metadata.SeverityUnknown
	}
	return s
}

// writeWaived lists the findings waivers let through, each with its
// waiver and its end.
func writeWaived(w io.Writer, waived []metadata.Waived, now time.Time) {
	if len(waived) == 0 {
		return
	}
	fmt.Fprintln(w, "Waived:")
	for _, wv := range waived {
		s := "  " + oneLine(wv.ID)
		if wv.Severity != "" {
			s += " (" + oneLine(wv.Severity) + ")"
		}
		if wv.Package != "" {
			s += " in " + oneLine(wv.Package)
		}
		switch wv.Source {
		case "", "policy":
			s += ": allowed by policy " + oneLine(wv.Policy)
		default:
			s += ": not affected per " + oneLine(wv.Source) + " (policy " + oneLine(wv.Policy) + ")"
		}
		if wv.Until.IsZero() {
			s += ", no end"
		} else {
			s += fmt.Sprintf(", until %s (%s)", stamp(wv.Until), until(wv.Until, now))
		}
		if wv.Reason != "" {
			s += ": " + oneLine(wv.Reason)
		}
		fmt.Fprintln(w, s)
	}
}

// until says how long is left before t.
func until(t, now time.Time) string {
	d := t.Sub(now)
	switch {
	case d <= 0:
		return "ended"
	case d < time.Hour:
		return "in " + strconv.Itoa(int(d/time.Minute)) + "m"
	case d < 48*time.Hour:
		return "in " + strconv.Itoa(int(d/time.Hour)) + "h"
	}
	return "in " + strconv.Itoa(int(d/(24*time.Hour))) + "d"
}
