package scanner

import (
	"cmp"
	"net/url"
	"regexp"
	"slices"
	"strings"

	"github.com/opencontainers/go-digest"
	"github.com/quay/claircore"
	"github.com/quay/claircore/toolkit/types"

	"github.com/airlock-registry/airlock/storage/metadata"
)

// severities maps claircore's normalised severities to airlock's.
var severities = map[claircore.Severity]string{
	claircore.Unknown:    metadata.SeverityUnknown,
	claircore.Negligible: metadata.SeverityNegligible,
	claircore.Low:        metadata.SeverityLow,
	claircore.Medium:     metadata.SeverityMedium,
	claircore.High:       metadata.SeverityHigh,
	claircore.Critical:   metadata.SeverityCritical,
}

var severityRank = map[string]int{
	metadata.SeverityUnknown:    0,
	metadata.SeverityNegligible: 1,
	metadata.SeverityLow:        2,
	metadata.SeverityMedium:     3,
	metadata.SeverityHigh:       4,
	metadata.SeverityCritical:   5,
}

var cveRE = regexp.MustCompile(`CVE-\d{4}-\d{4,}`)

// findingID is the id a finding is known by: the vulnerability's name
// when it is a CVE id; else the one CVE id its name and links mention (a
// distribution advisory fixing one CVE); else its name (an advisory
// covering several CVEs, a GHSA with no CVE).
func findingID(v *claircore.Vulnerability) string {
	if m := cveRE.FindString(v.Name); m == v.Name && m != "" {
		return m
	}
	seen := map[string]bool{}
	for _, m := range cveRE.FindAllString(v.Name+" "+v.Links, -1) {
		seen[m] = true
	}
	if len(seen) == 1 {
		for id := range seen {
			return id
		}
	}
	if v.Name != "" {
		return v.Name
	}
	return v.ID
}

// fixedVersion returns the first fixed version; some updaters (OSV for
// language ecosystems) encode a range as a query string.
func fixedVersion(s string) string {
	if strings.Contains(s, "=") {
		if q, err := url.ParseQuery(s); err == nil && q.Get("fixed") != "" {
			return q.Get("fixed")
		}
	}
	return s
}

func firstLink(links string) string {
	f := strings.Fields(links)
	if len(f) == 0 {
		return ""
	}
	return f[0]
}

// convert turns claircore's reports into airlock's scan result: one
// finding per vulnerability and installed package, worst first.
func convert(ir *claircore.IndexReport, vr *claircore.VulnerabilityReport) metadata.Scan {
	sc := metadata.Scan{State: metadata.ScanDone, Distribution: distribution(ir)}
	for _, p := range ir.Packages {
		if p.Kind != types.SourcePackage {
			sc.Packages++
		}
	}
	type key struct{ id, pkg, installed string }
	at := map[key]int{}
	for pkgID, vulnIDs := range vr.PackageVulnerabilities {
		p := vr.Packages[pkgID]
		if p == nil {
			continue
		}
		layer := introducedIn(vr.Environments[pkgID])
		for _, vid := range vulnIDs {
			v := vr.Vulnerabilities[vid]
			if v == nil {
				continue
			}
			f := metadata.Finding{
				ID:             findingID(v),
				Package:        p.Name,
				Installed:      p.Version,
				Fixed:          fixedVersion(v.FixedInVersion),
				Severity:       severities[v.NormalizedSeverity],
				SourceSeverity: v.Severity,
				Link:           firstLink(v.Links),
				Updater:        v.Updater,
				Layer:          layer,
			}
			if f.Severity == "" {
				f.Severity = metadata.SeverityUnknown
			}
			// Two sources reporting one vulnerability of one package
			// (a distribution's tracker and OSV) make one finding: the
			// worse rating, and a fix when either knows one.
			k := key{f.ID, f.Package, f.Installed}
			if i, ok := at[k]; ok {
				old := &sc.Findings[i]
				if severityRank[f.Severity] > severityRank[old.Severity] {
					f.Fixed = cmp.Or(f.Fixed, old.Fixed)
					*old = f
				} else if old.Fixed == "" {
					old.Fixed = f.Fixed
				}
				continue
			}
			at[k] = len(sc.Findings)
			sc.Findings = append(sc.Findings, f)
		}
	}
	slices.SortFunc(sc.Findings, func(a, b metadata.Finding) int {
		return cmp.Or(
			cmp.Compare(severityRank[b.Severity], severityRank[a.Severity]),
			cmp.Compare(a.ID, b.ID),
			cmp.Compare(a.Package, b.Package),
			cmp.Compare(a.Installed, b.Installed),
		)
	})
	return sc
}

// distribution names the operating system the index found: the first by
// id when layers disagree.
func distribution(ir *claircore.IndexReport) string {
	ids := make([]string, 0, len(ir.Distributions))
	for id := range ir.Distributions {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		d := ir.Distributions[id]
		if n := cmp.Or(d.PrettyName, strings.TrimSpace(d.Name+" "+d.Version)); n != "" {
			return n
		}
	}
	return ""
}

func introducedIn(envs []*claircore.Environment) digest.Digest {
	for _, e := range envs {
		if e != nil && e.IntroducedIn.String() != "" {
			return digest.Digest(e.IntroducedIn.String())
		}
	}
	return ""
}
