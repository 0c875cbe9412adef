package policy

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// Policy is one compiled policy.
type Policy struct {
	Name      string
	Mode      string
	match     []*regexp.Regexp
	pins      *Pins
	signature SignatureCheck
	vuln      *vulnCheck
}

// SignatureCheck is a policy's compiled signature check
// (verify/signature's Verifier). Evaluation only compares its Hash with
// the evidence's: the gate gathers the evidence by running the check.
type SignatureCheck interface {
	// Hash identifies the trust material and settings, so evidence found
	// under other ones is not reused.
	Hash() string
}

// Signature returns the policy's signature check, or nil.
func (p *Policy) Signature() SignatureCheck { return p.signature }

// NewSignatureCheck compiles the signature section of the named policy.
type NewSignatureCheck func(policy string, cfg config.Signature) (SignatureCheck, error)

// Matches reports whether the policy covers repo ("<upstream>/<repository>").
func (p *Policy) Matches(repo string) bool {
	for _, re := range p.match {
		if re.MatchString(repo) {
			return true
		}
	}
	return false
}

// Set is the configured policies, compiled. The zero Set and a nil *Set
// have no policies: every image is approved.
type Set struct {
	policies []*Policy
}

// Compile builds the policies of cfg. read returns a file's content (pin
// files, VEX documents); its errors, a pin file's and a VEX document's
// name the policy and the file. newCheck compiles signature sections; a
// policy with one and a nil newCheck is an error.
func Compile(cfg []config.Policy, read func(path string) ([]byte, error), newCheck NewSignatureCheck) (*Set, error) {
	s := &Set{}
	for i, c := range cfg {
		p := &Policy{Name: c.Name, Mode: c.Mode}
		if p.Mode == "" {
			p.Mode = config.ModeEnforce
		}
		for _, m := range c.Match {
			re, err := Glob(m)
			if err != nil {
				return nil, fmt.Errorf("policies[%d] (%s): %w", i, c.Name, err)
			}
			p.match = append(p.match, re)
		}
		if c.Pins != "" {
			data, err := read(c.Pins)
			if err != nil {
				return nil, fmt.Errorf("policies[%d] (%s): reading pins: %w", i, c.Name, err)
			}
			if p.pins, err = ParsePins(c.Pins, data); err != nil {
				return nil, fmt.Errorf("policies[%d] (%s): %w", i, c.Name, err)
			}
		}
		if c.Signature != nil {
			if newCheck == nil {
				return nil, fmt.Errorf("policies[%d] (%s): signature checks are not available here", i, c.Name)
			}
			var err error
			if p.signature, err = newCheck(c.Name, *c.Signature); err != nil {
				return nil, fmt.Errorf("policies[%d] (%s): signature: %w", i, c.Name, err)
			}
		}
		if c.Vulnerabilities != nil {
			var err error
			if p.vuln, err = compileVulnerabilities(*c.Vulnerabilities, read); err != nil {
				return nil, fmt.Errorf("policies[%d] (%s): vulnerabilities: %w", i, c.Name, err)
			}
		}
		s.policies = append(s.policies, p)
	}
	return s, nil
}

// Glob compiles a repository glob: "*" matches any run of characters, "/"
// included, "?" one character; everything else is literal.
func Glob(m string) (*regexp.Regexp, error) {
	if err := config.CheckGlob(m); err != nil {
		return nil, err
	}
	var b strings.Builder
	b.WriteString("^")
	for _, r := range m {
		switch r {
		case '*':
			b.WriteString(".*")
		case '?':
			b.WriteString(".")
		default:
			b.WriteString(regexp.QuoteMeta(string(r)))
		}
	}
	b.WriteString("$")
	return regexp.Compile(b.String())
}

// Len is the number of policies.
func (s *Set) Len() int {
	if s == nil {
		return 0
	}
	return len(s.policies)
}

// Governs reports whether any policy matches repo.
func (s *Set) Governs(repo string) bool { return len(s.Matching(repo)) > 0 }

// Scans reports whether a policy matching repo checks vulnerabilities:
// an image there needs a scan (its platforms do, for an index) before
// those policies can pass it.
func (s *Set) Scans(repo string) bool {
	for _, p := range s.Matching(repo) {
		if p.vuln != nil {
			return true
		}
	}
	return false
}

// Vulnerabilities reports whether the policy checks vulnerabilities.
func (p *Policy) Vulnerabilities() bool { return p.vuln != nil }

// Kind is what a Subject's manifest is, which decides the checks that
// apply to it.
type Kind string

const (
	// KindImage is a manifest pulled on its own (by tag or digest): every
	// check applies, and its content is what a scan looks at.
	KindImage Kind = ""
	// KindIndex is an image index: pins and signatures are judged on it;
	// vulnerability checks do not apply, since each of its platforms is
	// scanned and judged on its own (as KindPlatform).
	KindIndex Kind = "index"
	// KindPlatform is a platform manifest pulled through an index whose
	// pins and signature were judged on the index: only vulnerability
	// checks apply.
	KindPlatform Kind = "platform"
)

// Subject is what a verdict is about.
type Subject struct {
	// Repository is "<upstream>/<repository>".
	Repository string
	Digest     digest.Digest
	// Kind says which checks apply; the zero value is KindImage.
	Kind Kind
	// Tags are the tags that resolve to Digest here, the one being pulled
	// first.
	Tags []string
	// Signatures are the results of the matching policies' signature
	// checks; a check without a result under its current Hash leaves the
	// verdict pending.
	Signatures []metadata.SignatureEvidence
	// Scan is the vulnerability scan of Digest, or nil when there is none
	// yet. A policy with vulnerabilities leaves the verdict pending until
	// it is done, unless its unscanned is allow.
	Scan *metadata.Scan
	// Indexes are, for KindPlatform, the digests of the image indexes it
	// is pulled through: a VEX statement about an index holds for its
	// platforms.
	Indexes []digest.Digest
}

// judges reports whether one of p's checks applies to a subject of kind
// k: pins and signatures to images and indexes, vulnerabilities to images
// and platforms.
func (p *Policy) judges(k Kind) bool {
	switch k {
	case KindIndex:
		return p.pins != nil || p.signature != nil
	case KindPlatform:
		return p.vuln != nil
	}
	return true
}

// Matching returns the policies that match repo.
func (s *Set) Matching(repo string) []*Policy {
	if s == nil {
		return nil
	}
	var out []*Policy
	for _, p := range s.policies {
		if p.Matches(repo) {
			out = append(out, p)
		}
	}
	return out
}

// Evaluate judges sub against every matching policy whose checks apply
// to its Kind (those are the verdict's Policies). The verdict is approved
// when every enforcing policy passes, quarantined when one fails, and
// pending when none fails but a check has no result yet; its reasons are
// the findings of every failing policy, enforcing or auditing, each
// policy's signature and pin findings first, then its vulnerabilities,
// worst first. The signature evidence used is kept in the verdict, and so
// are the findings waivers let through, with Recheck set to when the
// first of those waivers ends.
//
// A pending verdict that waits for vulnerability scans carries, as its
// reasons, one reason per enforcing policy waiting (type vulnerability,
// no ID): "policy P: vulnerability scan queued" (or "not started yet",
// "running", "failed after N attempts: ..."), so that the answer to a
// refused pull says what it waits for. A quarantined verdict does not:
// its reasons are what refuses it.
//
// It reads nothing but its arguments: the same subject, policies and
// time give the same verdict.
func (s *Set) Evaluate(sub Subject, now time.Time) metadata.Verdict {
	v := metadata.Verdict{State: metadata.StateApproved, DecidedAt: now}
	pending := false
	var waiting []metadata.Reason
	for _, p := range s.Matching(sub.Repository) {
		if !p.judges(sub.Kind) {
			continue
		}
		v.Policies = append(v.Policies, p.Name)
		reasons := p.findings(sub)
		if p.signature != nil && sub.Kind != KindPlatform {
			ev, ok := evidenceFor(sub.Signatures, p)
			if ok {
				v.Signatures = append(v.Signatures, ev)
			} else if p.Mode != config.ModeAudit {
				pending = true
			}
		}
		if p.vuln != nil && sub.Kind != KindIndex {
			j := p.vuln.judge(p, &sub, now)
			if j.waiting != nil {
				pending = true
				waiting = append(waiting, *j.waiting)
			}
			reasons = append(reasons, j.reasons...)
			v.Waived = append(v.Waived, j.waived...)
			if !j.recheck.IsZero() && (v.Recheck.IsZero() || j.recheck.Before(v.Recheck)) {
				v.Recheck = j.recheck
			}
		}
		for _, r := range reasons {
			if p.Mode == config.ModeAudit {
				r.Mode = config.ModeAudit
			} else {
				v.State = metadata.StateQuarantined
			}
			v.Reasons = append(v.Reasons, r)
		}
	}
	if pending && v.State == metadata.StateApproved {
		v.State = metadata.StatePending
		v.Reasons = append(waiting, v.Reasons...)
	}
	return v
}

// TagMoved reports whether a policy matching repo pins tag to digests
// other than d: by the pins' word the tag no longer resolves to d, whatever
// airlock last saw. The gate forgets such a tag on an image when it decides
// it again without a pull, so that an old release keeps being judged by
// the pins of its own tags.
func (s *Set) TagMoved(repo string, d digest.Digest, tag string) bool {
	if s == nil {
		return false
	}
	for _, p := range s.policies {
		if p.pins != nil && p.Matches(repo) && p.pins.moved(repo, d, tag) {
			return true
		}
	}
	return false
}

// evidenceFor finds p's signature result in evs, under p's current trust.
func evidenceFor(evs []metadata.SignatureEvidence, p *Policy) (metadata.SignatureEvidence, bool) {
	h := p.signature.Hash()
	for _, ev := range evs {
		if ev.Policy == p.Name && ev.Hash == h {
			return ev, true
		}
	}
	return metadata.SignatureEvidence{}, false
}

// findings are the signature and pin checks of p that sub fails; none
// for a platform, whose index they were judged on.
func (p *Policy) findings(sub Subject) []metadata.Reason {
	if sub.Kind == KindPlatform {
		return nil
	}
	var out []metadata.Reason
	if p.signature != nil {
		if ev, ok := evidenceFor(sub.Signatures, p); ok && !ev.Verified {
			out = append(out, metadata.Reason{Type: metadata.ReasonSignature, Policy: p.Name,
				KeyID: ev.KeyID, Identity: ev.Identity, Message: fmt.Sprintf("policy %s: %s", p.Name, ev.Message)})
		}
	}
	if p.pins != nil {
		if msg, tag := p.pins.check(sub.Repository, sub.Digest, sub.Tags); msg != "" {
			out = append(out, metadata.Reason{Type: metadata.ReasonPolicy, Policy: p.Name, Tag: tag,
				Message: fmt.Sprintf("policy %s: %s", p.Name, msg)})
		}
	}
	return out
}

// Servable reports whether an image in state st may be served.
func Servable(st metadata.State) bool {
	return st == metadata.StateApproved || st == metadata.StateReleased
}

// Effective is the state an image with verdict v and override o has at
// now, with its reasons: a block wins over everything; a release that has
// not expired lets a quarantined or pending image through; otherwise the
// verdict stands. An expired release no longer counts (the gate then
// removes it and records the expiry).
func Effective(v metadata.Verdict, o *metadata.Override, now time.Time) (metadata.State, []metadata.Reason) {
	reasons := slices.Clone(v.Reasons)
	if o != nil {
		manual := metadata.Reason{Type: metadata.ReasonManual, Actor: o.By, Message: o.Reason}
		switch {
		case o.Action == metadata.ActionBlock:
			manual.Message = fmt.Sprintf("blocked by %s: %s", o.By, o.Reason)
			return metadata.StateBlocked, append([]metadata.Reason{manual}, reasons...)
		case o.Action == metadata.ActionRelease && !Expired(o, now) && v.State != metadata.StateApproved:
			manual.Message = fmt.Sprintf("released by %s: %s", o.By, o.Reason)
			if !o.Expires.IsZero() {
				e := o.Expires
				manual.Expires = &e
			}
			return metadata.StateReleased, append([]metadata.Reason{manual}, reasons...)
		}
	}
	if v.State == "" {
		return metadata.StatePending, reasons
	}
	return v.State, reasons
}

// Expired reports whether a release has ended at now.
func Expired(o *metadata.Override, now time.Time) bool {
	return o != nil && o.Action == metadata.ActionRelease && !o.Expires.IsZero() && !now.Before(o.Expires)
}
