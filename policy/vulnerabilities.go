package policy

import (
	"cmp"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// severityRank orders the normalised severities; a severity not listed
// (empty, or one a newer scanner invented) is unknown.
var severityRank = map[string]int{
	metadata.SeverityUnknown:    0,
	metadata.SeverityNegligible: 1,
	metadata.SeverityLow:        2,
	metadata.SeverityMedium:     3,
	metadata.SeverityHigh:       4,
	metadata.SeverityCritical:   5,
}

// normalSeverity is s if it is a known severity, else unknown.
func normalSeverity(s string) string {
	if _, ok := severityRank[s]; ok {
		return s
	}
	return metadata.SeverityUnknown
}

// vulnCheck is a policy's compiled vulnerability check.
type vulnCheck struct {
	block          string
	unknown        string
	ignoreUnfixed  bool
	unscannedAllow bool
	waivers        []waiver
	vex            []*VEX
}

// waiver is one entry of a policy's allow list, compiled.
type waiver struct {
	id     string
	repos  []*regexp.Regexp
	ends   time.Time
	reason string
}

func compileVulnerabilities(c config.Vulnerabilities, read func(string) ([]byte, error)) (*vulnCheck, error) {
	v := &vulnCheck{block: c.BlockSeverity, unknown: cmp.Or(c.UnknownSeverity, config.DefaultUnknownSeverity),
		ignoreUnfixed: c.IgnoreUnfixed}
	for _, s := range []struct{ key, sev string }{{"blockSeverity", v.block}, {"unknownSeverity", v.unknown}} {
		if !slices.Contains(config.Severities(), s.sev) {
			return nil, fmt.Errorf("%s %q is not one of %s", s.key, s.sev, strings.Join(config.Severities(), ", "))
		}
	}
	switch c.Unscanned {
	case "", config.UnscannedDeny:
	case config.UnscannedAllow:
		v.unscannedAllow = true
	default:
		return nil, fmt.Errorf("unscanned %q is neither deny nor allow", c.Unscanned)
	}
	for i, a := range c.Allow {
		w := waiver{id: a.ID, reason: a.Reason}
		if a.ID == "" {
			return nil, fmt.Errorf("allow[%d]: no id", i)
		}
		var err error
		if w.ends, err = a.Ends(); err != nil {
			return nil, fmt.Errorf("allow[%d] (%s): until: %w", i, a.ID, err)
		}
		for _, m := range a.Repositories {
			re, err := Glob(m)
			if err != nil {
				return nil, fmt.Errorf("allow[%d] (%s): %w", i, a.ID, err)
			}
			w.repos = append(w.repos, re)
		}
		v.waivers = append(v.waivers, w)
	}
	for _, path := range c.VEX {
		data, err := read(path)
		if err != nil {
			return nil, fmt.Errorf("reading VEX document: %w", err)
		}
		doc, err := ParseVEX(path, data)
		if err != nil {
			return nil, fmt.Errorf("VEX document %w", err)
		}
		v.vex = append(v.vex, doc)
	}
	return v, nil
}

// effective is the severity a finding of severity sev counts as.
func (v *vulnCheck) effective(sev string) string {
	if sev == metadata.SeverityUnknown {
		return v.unknown
	}
	return sev
}

// judgement is what a vulnerability check concluded about a subject.
type judgement struct {
	// waiting is set when the check has no result yet and holds the
	// image: why, as a reason.
	waiting *metadata.Reason
	reasons []metadata.Reason
	waived  []metadata.Waived
	// recheck is when the first waiver applied ends; zero if none does.
	recheck time.Time
}

// judge applies the check of policy p to sub at now. A policy in audit
// mode never holds an image, so a scan it waits for holds nothing.
func (v *vulnCheck) judge(p *Policy, sub *Subject, now time.Time) judgement {
	scan := sub.Scan
	if scan == nil || scan.State != metadata.ScanDone {
		if v.unscannedAllow || p.Mode == config.ModeAudit {
			return judgement{}
		}
		return judgement{waiting: &metadata.Reason{Type: metadata.ReasonVulnerability, Policy: p.Name,
			Message: fmt.Sprintf("policy %s: %s", p.Name, scanStatus(scan))}}
	}
	var j judgement
	// One advisory matched by two sources (a distribution's and OSV) is
	// one finding, at the worse of their severities. Whether it is
	// waived depends on its id, package and image only: the same for
	// both.
	blocked := map[string]int{} // finding key -> index in j.reasons
	waived := map[string]int{}  // finding key -> index in j.waived
	for _, f := range scan.Findings {
		sev := normalSeverity(f.Severity)
		eff := v.effective(sev)
		if severityRank[eff] < severityRank[v.block] || v.ignoreUnfixed && f.Fixed == "" {
			continue
		}
		key := f.ID + "\x00" + f.Package + "\x00" + f.Installed
		if w, until, ok := v.waiver(p, &f, sub, now); ok {
			w.Severity = sev
			if i, dup := waived[key]; !dup {
				waived[key] = len(j.waived)
				j.waived = append(j.waived, w)
			} else if severityRank[v.effective(sev)] > severityRank[v.effective(j.waived[i].Severity)] {
				j.waived[i] = w
			}
			if !until.IsZero() && (j.recheck.IsZero() || until.Before(j.recheck)) {
				j.recheck = until
			}
			continue
		}
		r := metadata.Reason{Type: metadata.ReasonVulnerability, Policy: p.Name, ID: f.ID, Package: f.Package,
			Installed: f.Installed, Fixed: f.Fixed, Severity: sev, Message: v.message(p.Name, &f, sev)}
		if i, dup := blocked[key]; dup {
			// The worse, and of two as bad the first in text order (their
			// fixed versions may differ), whatever order they came in.
			old := j.reasons[i]
			if c := cmp.Compare(severityRank[v.effective(sev)], severityRank[v.effective(old.Severity)]); c > 0 || c == 0 && r.Message < old.Message {
				j.reasons[i] = r
			}
			continue
		}
		blocked[key] = len(j.reasons)
		j.reasons = append(j.reasons, r)
	}
	slices.SortStableFunc(j.reasons, func(a, b metadata.Reason) int {
		if c := cmp.Compare(severityRank[v.effective(b.Severity)], severityRank[v.effective(a.Severity)]); c != 0 {
			return c
		}
		return cmp.Or(strings.Compare(a.ID, b.ID), strings.Compare(a.Package, b.Package), strings.Compare(a.Installed, b.Installed))
	})
	slices.SortStableFunc(j.waived, func(a, b metadata.Waived) int {
		return cmp.Or(strings.Compare(a.ID, b.ID), strings.Compare(a.Package, b.Package))
	})
	if n := len(j.reasons) - maxVulnReasons; n > 0 {
		// Reasons travel in every audit record and alert of the image:
		// an image with thousands of findings (an upstream can make one)
		// would make each of them megabytes. The worst are kept; the scan
		// itself keeps every finding.
		j.reasons = append(j.reasons[:maxVulnReasons:maxVulnReasons], metadata.Reason{Type: metadata.ReasonVulnerability, Policy: p.Name,
			Message: fmt.Sprintf("policy %s: %d more findings at or above %s; the image's scan lists them all", p.Name, n, v.block)})
	}
	return j
}

// maxVulnReasons bounds the findings one policy gives as reasons.
const maxVulnReasons = 100

// scanStatus words why a scan has no result, for a pending image's
// reason (the gate shows it in its 403 answer).
func scanStatus(s *metadata.Scan) string {
	switch {
	case s == nil:
		return "vulnerability scan not started yet"
	case s.State == metadata.ScanQueued:
		return "vulnerability scan queued"
	case s.State == metadata.ScanRunning:
		return "vulnerability scan running"
	case s.State == metadata.ScanFailed:
		msg := "vulnerability scan failed"
		if s.Attempts > 0 {
			msg += fmt.Sprintf(" after %d attempts", s.Attempts)
		}
		if e := strings.TrimSpace(s.Error); e != "" {
			if len(e) > maxScanError {
				e = e[:maxScanError] + "..."
			}
			msg += ": " + e
		}
		return msg
	}
	return fmt.Sprintf("vulnerability scan %s", cmp.Or(s.State, "without a state"))
}

// maxScanError bounds the scan error quoted in a reason: the reason
// travels in 403 answers and alerts.
const maxScanError = 200

// message is the reason a blocking finding gives.
func (v *vulnCheck) message(policy string, f *metadata.Finding, sev string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "policy %s: %s", policy, f.ID)
	if f.Package != "" {
		fmt.Fprintf(&b, " in %s", f.Package)
		if f.Installed != "" {
			fmt.Fprintf(&b, " %s", f.Installed)
		}
	}
	b.WriteString(" (")
	b.WriteString(sev)
	if sev == metadata.SeverityUnknown {
		fmt.Fprintf(&b, ", counted as %s", v.unknown)
	}
	if f.Fixed != "" {
		fmt.Fprintf(&b, "; fixed in %s)", f.Fixed)
	} else {
		b.WriteString("; no fixed version yet)")
	}
	return b.String()
}

// waiver finds what waives f in sub at now: a VEX statement, which lasts
// as long as its document says, before an allow entry; among allow
// entries the one that ends last. until is when the waiver found ends
// (zero for VEX).
func (v *vulnCheck) waiver(p *Policy, f *metadata.Finding, sub *Subject, now time.Time) (w metadata.Waived, until time.Time, ok bool) {
	if st, doc := v.vexFor(f, sub); st != nil && (st.status == StatusNotAffected || st.status == StatusFixed) {
		return metadata.Waived{ID: f.ID, Package: f.Package, Policy: p.Name, Reason: st.reason, Source: doc.Path}, time.Time{}, true
	}
	var best *waiver
	for i := range v.waivers {
		a := &v.waivers[i]
		if !strings.EqualFold(a.id, f.ID) || !now.Before(a.ends) || !a.covers(sub.Repository) {
			continue
		}
		if best == nil || a.ends.After(best.ends) {
			best = a
		}
	}
	if best == nil {
		return w, until, false
	}
	return metadata.Waived{ID: f.ID, Package: f.Package, Policy: p.Name, Reason: best.reason,
		Source: config.WaiverSourcePolicy, Until: best.ends}, best.ends, true
}

func (a *waiver) covers(repo string) bool {
	if len(a.repos) == 0 {
		return true
	}
	for _, re := range a.repos {
		if re.MatchString(repo) {
			return true
		}
	}
	return false
}

// vexFor finds the statement in force about f in sub: the latest of those
// naming its id, an image sub is, and its package; on a tie the last in
// document order.
func (v *vulnCheck) vexFor(f *metadata.Finding, sub *Subject) (*vexStatement, *VEX) {
	var (
		best    *vexStatement
		bestDoc *VEX
	)
	id := strings.ToUpper(f.ID)
	for _, doc := range v.vex {
		for i := range doc.statements {
			st := &doc.statements[i]
			if !slices.Contains(st.ids, id) || !st.about(sub, f.Package) {
				continue
			}
			if best == nil || !st.at.Before(best.at) {
				best, bestDoc = st, doc
			}
		}
	}
	return best, bestDoc
}

// about reports whether one of st's products is sub, for pkg.
func (st *vexStatement) about(sub *Subject, pkg string) bool {
	for i := range st.products {
		if p := &st.products[i]; p.matches(sub) && p.covers(pkg) {
			return true
		}
	}
	return false
}
