package config

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Severities are the severities a policy names, from least to most
// severe: the normalised severities of scan findings, without unknown.
func Severities() []string {
	return []string{"negligible", "low", "medium", "high", "critical"}
}

// DefaultUnknownSeverity is what a finding its source did not rate counts
// as when a policy does not say: neither waved through by a strict policy
// nor enough to trip a high one.
const DefaultUnknownSeverity = "medium"

// WaiverSourcePolicy is the Source of a finding waived by a policy's
// allow list (a VEX document's is its path).
const WaiverSourcePolicy = "policy"

// Ends returns the first instant the waiver no longer counts: the start
// of the day after Until, UTC, for a date (YYYY-MM-DD counts through that
// day), or the RFC 3339 time itself.
func (w Waiver) Ends() (time.Time, error) {
	if d, err := time.Parse(time.DateOnly, w.Until); err == nil {
		return d.AddDate(0, 0, 1), nil
	}
	if t, err := time.Parse(time.RFC3339, w.Until); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("%q is neither a date (YYYY-MM-DD, counted through the end of that day UTC) nor an RFC 3339 time (2027-01-31T18:00:00Z)", w.Until)
}

// advisoryID is the form of a waiver's id: a CVE id, a GitHub advisory, a
// distribution's advisory (DSA-5678-1, RHSA-2024:1234, ALPINE-13661), an
// OSV id (GO-2024-2687, PYSEC-2024-1). It refuses spaces and commas, so
// that two ids in one entry are caught instead of matching nothing.
var advisoryID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:/+-]{0,127}$`)

func (v *Vulnerabilities) applyDefaults() {
	setDefault(&v.UnknownSeverity, DefaultUnknownSeverity)
	setDefault(&v.Unscanned, UnscannedDeny)
}

// check checks the vulnerabilities section of a policy at key.
func (v *Vulnerabilities) check(p *problems, key string, c *Config) {
	if !c.Scanner.Enabled() {
		p.add(key, "needs the scanner, which is off; set scanner.database to a PostgreSQL DSN; see README")
	}
	switch {
	case v.BlockSeverity == "":
		p.add(key+".blockSeverity", "required; the least severity that quarantines an image: %s", strings.Join(Severities(), ", "))
	case !slices.Contains(Severities(), v.BlockSeverity):
		p.add(key+".blockSeverity", "unknown severity %q; use %s", v.BlockSeverity, strings.Join(Severities(), ", "))
	}
	if !slices.Contains(Severities(), v.UnknownSeverity) {
		p.add(key+".unknownSeverity", "unknown severity %q; use %s", v.UnknownSeverity, strings.Join(Severities(), ", "))
	}
	switch v.Unscanned {
	case UnscannedDeny, UnscannedAllow:
	default:
		p.add(key+".unscanned", "unknown value %q; use deny (refuse pulls until the first scan is done) or allow (serve them meanwhile)", v.Unscanned)
	}
	for i, w := range v.Allow {
		w.check(p, fmt.Sprintf("%s.allow[%d]", key, i), c)
	}
	for i, f := range v.VEX {
		if f == "" {
			p.add(fmt.Sprintf("%s.vex[%d]", key, i), "empty path; name an OpenVEX JSON document")
		}
	}
}

func (w Waiver) check(p *problems, key string, c *Config) {
	switch {
	case w.ID == "":
		p.add(key+".id", "required; the CVE or advisory id the waiver lets through, such as CVE-2024-5535")
	case !advisoryID.MatchString(w.ID):
		p.add(key+".id", "%q is not one advisory id; write one id per waiver, without spaces, such as CVE-2024-5535, GHSA-xxxx-xxxx-xxxx or DSA-5678-1", w.ID)
	}
	if w.Until == "" {
		p.add(key+".until", "required; the last day the waiver counts, as YYYY-MM-DD (through that day, UTC), or an RFC 3339 time it ends at")
	} else if _, err := w.Ends(); err != nil {
		p.add(key+".until", "%v", err)
	}
	if strings.TrimSpace(w.Reason) == "" {
		p.add(key+".reason", "required; say why the finding is accepted: it is recorded with every image the waiver lets through")
	}
	if w.Repositories != nil && len(w.Repositories) == 0 {
		p.add(key+".repositories", "an empty list waives nothing; remove the key to waive in every repository the policy matches")
	}
	for j, m := range w.Repositories {
		err := CheckGlob(m)
		if err == nil {
			err = c.checkGlobReach(m)
		}
		if err != nil {
			p.add(fmt.Sprintf("%s.repositories[%d]", key, j), "%v", err)
		}
	}
}
