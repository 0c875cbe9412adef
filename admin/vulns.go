package admin

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/airlock-registry/airlock/storage/metadata"
)

// SeverityRank orders normalised severities: critical is 5, unknown (or
// anything not a severity) 0. Unknown sorts last because its source rated
// nothing; the policies count it as their unknownSeverity, which shows in
// the reasons they write.
func SeverityRank(s string) int {
	switch s {
	case metadata.SeverityCritical:
		return 5
	case metadata.SeverityHigh:
		return 4
	case metadata.SeverityMedium:
		return 3
	case metadata.SeverityLow:
		return 2
	case metadata.SeverityNegligible:
		return 1
	}
	return 0
}

// severities are the normalised severities, worst first.
var severities = []string{metadata.SeverityCritical, metadata.SeverityHigh, metadata.SeverityMedium,
	metadata.SeverityLow, metadata.SeverityNegligible, metadata.SeverityUnknown}

// Severities returns the normalised severities, worst first.
func Severities() []string { return slices.Clone(severities) }

// severityOf is s, or unknown for a severity no source should have
// written: counts and groups stay to the six known ones.
func severityOf(s string) string {
	if SeverityRank(s) == 0 {
		return metadata.SeverityUnknown
	}
	return s
}

// VulnerabilitySummary counts an image's findings. The image list carries
// it in place of the findings themselves, which may be thousands per
// image; GET one image for all of them.
type VulnerabilitySummary struct {
	// Findings counts the scan's findings: one per advisory and package.
	Findings int `json:"findings"`
	// BySeverity counts them per normalised severity; absent severities
	// are left out.
	BySeverity map[string]int `json:"bySeverity,omitempty"`
	// Worst is the highest severity found; empty without findings.
	Worst string `json:"worst,omitempty"`
	// Blocking counts the findings a policy refuses the image for (its
	// reasons of type vulnerability).
	Blocking int `json:"blocking"`
	// Waived counts the findings a waiver let through.
	Waived int `json:"waived"`
}

// Summarize counts img's findings; nil when img has no scan.
func Summarize(img metadata.Image) *VulnerabilitySummary {
	if img.Scan == nil {
		return nil
	}
	s := &VulnerabilitySummary{Findings: len(img.Scan.Findings), Waived: len(img.Verdict.Waived)}
	for _, f := range img.Scan.Findings {
		sev := severityOf(f.Severity)
		if s.BySeverity == nil {
			s.BySeverity = map[string]int{}
		}
		s.BySeverity[sev]++
		if s.Worst == "" || SeverityRank(sev) > SeverityRank(s.Worst) {
			s.Worst = sev
		}
	}
	for _, r := range img.Reasons {
		if r.Type == metadata.ReasonVulnerability && r.ID != "" && r.Mode != "audit" {
			s.Blocking++
		}
	}
	return s
}

// Finding is a scan's finding as an admin reads it: with whether a policy
// refuses the image for it and the waiver that let it through, if any.
type Finding struct {
	metadata.Finding
	// Blocking is set when a reason of the image names the finding.
	Blocking bool
	// Waiver is the waiver that let it through.
	Waiver *metadata.Waived
}

// Findings returns img's findings worst first (then by advisory and
// package), each with its reason and waiver.
func Findings(img metadata.Image) []Finding {
	if img.Scan == nil {
		return nil
	}
	type key struct{ id, pkg string }
	blocking := map[key]bool{}
	for _, r := range img.Reasons {
		if r.Type == metadata.ReasonVulnerability && r.ID != "" {
			blocking[key{r.ID, r.Package}] = true
		}
	}
	out := make([]Finding, 0, len(img.Scan.Findings))
	for _, f := range img.Scan.Findings {
		v := Finding{Finding: f, Blocking: blocking[key{f.ID, f.Package}]}
		for i, w := range img.Verdict.Waived {
			// A waiver names the advisory, and the package when it is
			// about one.
			if w.ID == f.ID && (w.Package == "" || w.Package == f.Package) {
				v.Waiver = &img.Verdict.Waived[i]
				break
			}
		}
		out = append(out, v)
	}
	slices.SortStableFunc(out, func(a, b Finding) int {
		return cmp.Or(cmp.Compare(SeverityRank(b.Severity), SeverityRank(a.Severity)),
			cmp.Compare(a.ID, b.ID), cmp.Compare(a.Package, b.Package))
	})
	return out
}

// ShortReasons puts reasons in a few words each, for a table row: every
// reason its message on one line, except that the vulnerabilities (which
// can be hundreds) are one entry, "3 vulnerabilities ≥ high: CVE-…, CVE-…
// and 1 more", worst first, where the first of them was. Those of a policy
// in audit mode are an entry of their own, marked so.
func ShortReasons(reasons []metadata.Reason) []string {
	var out []string
	groups := map[string]*vulnGroup{} // by mode
	for _, r := range reasons {
		if r.Type != metadata.ReasonVulnerability || r.ID == "" {
			out = append(out, oneLine(cmp.Or(r.Message, r.Type)))
			continue
		}
		g := groups[r.Mode]
		if g == nil {
			g = &vulnGroup{audit: r.Mode == "audit", at: len(out)}
			groups[r.Mode] = g
			out = append(out, "")
		}
		g.add(r)
	}
	for _, g := range groups {
		out[g.at] = g.String()
	}
	return out
}

// vulnGroup collects the vulnerability reasons ShortReasons makes one
// entry of.
type vulnGroup struct {
	audit bool
	at    int
	// worst is each advisory's highest severity among its reasons.
	worst map[string]string
	// first is an advisory's package when it has one only.
	first map[string]string
	pkgs  map[string]int
}

func (g *vulnGroup) add(r metadata.Reason) {
	if g.worst == nil {
		g.worst, g.first, g.pkgs = map[string]string{}, map[string]string{}, map[string]int{}
	}
	sev := severityOf(r.Severity)
	if cur, ok := g.worst[r.ID]; !ok || SeverityRank(sev) > SeverityRank(cur) {
		g.worst[r.ID] = sev
	}
	if _, ok := g.first[r.ID]; !ok {
		g.first[r.ID] = r.Package
	}
	g.pkgs[r.ID]++
}

// maxIDs is how many advisory ids a short form names.
const maxIDs = 2

func (g *vulnGroup) String() string {
	ids := make([]string, 0, len(g.worst))
	for id := range g.worst {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, func(a, b string) int {
		return cmp.Or(cmp.Compare(SeverityRank(g.worst[b]), SeverityRank(g.worst[a])), cmp.Compare(a, b))
	})
	var s string
	if len(ids) == 1 {
		id := ids[0]
		s = "vulnerability " + id + " (" + g.worst[id] + ")"
		if pkg := g.first[id]; pkg != "" {
			s += " in " + pkg
			if n := g.pkgs[id]; n > 1 {
				s += fmt.Sprintf(" and %d more packages", n-1)
			}
		}
	} else {
		// Unknown sorts last, but the policies count it at a severity of
		// their own: "≥" speaks of the rated ones only.
		rated, unrated := "", 0
		for _, id := range ids {
			if sev := g.worst[id]; sev == metadata.SeverityUnknown {
				unrated++
			} else {
				rated = sev
			}
		}
		switch {
		case unrated == len(ids):
			s = fmt.Sprintf("%d vulnerabilities of unknown severity: ", len(ids))
		case g.worst[ids[0]] == rated && unrated == 0:
			s = fmt.Sprintf("%d %s vulnerabilities: ", len(ids), rated)
		case unrated == 0:
			s = fmt.Sprintf("%d vulnerabilities ≥ %s: ", len(ids), rated)
		default:
			s = fmt.Sprintf("%d vulnerabilities ≥ %s or of unknown severity: ", len(ids), rated)
		}
		shown := ids[:min(maxIDs, len(ids))]
		switch rest := len(ids) - len(shown); rest {
		case 0:
			s += strings.Join(shown[:len(shown)-1], ", ") + " and " + shown[len(shown)-1]
		default:
			s += strings.Join(shown, ", ") + fmt.Sprintf(" and %d more", rest)
		}
	}
	if g.audit {
		s += " (audit only)"
	}
	return s
}

// ShortReason is the reason a table row shows: the first of ShortReasons,
// with a count of the others; "" without reasons.
func ShortReason(reasons []metadata.Reason) string {
	short := ShortReasons(reasons)
	if len(short) == 0 {
		return ""
	}
	if len(short) > 1 {
		return fmt.Sprintf("%s (+%d more)", short[0], len(short)-1)
	}
	return short[0]
}

// oneLine keeps a message on its table row.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
