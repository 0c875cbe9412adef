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
	Name  string
	Mode  string
	match []*regexp.Regexp
	pins  *Pins
}

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

// Compile builds the policies of cfg. read returns a file's content (the
// pin files); its errors, and a pin file's, name the policy.
func Compile(cfg []config.Policy, read func(path string) ([]byte, error)) (*Set, error) {
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
func (s *Set) Governs(repo string) bool {
	if s == nil {
		return false
	}
	for _, p := range s.policies {
		if p.Matches(repo) {
			return true
		}
	}
	return false
}

// Subject is what a verdict is about.
type Subject struct {
	// Repository is "<upstream>/<repository>".
	Repository string
	Digest     digest.Digest
	// Tags are the tags that resolve to Digest here, the one being pulled
	// first.
	Tags []string
}

// Evaluate judges s against every matching policy. The verdict is
// approved when every enforcing policy passes, quarantined otherwise; its
// reasons are the findings of every failing policy, enforcing or auditing.
func (s *Set) Evaluate(sub Subject, now time.Time) metadata.Verdict {
	v := metadata.Verdict{State: metadata.StateApproved, DecidedAt: now}
	if s == nil {
		return v
	}
	for _, p := range s.policies {
		if !p.Matches(sub.Repository) {
			continue
		}
		v.Policies = append(v.Policies, p.Name)
		for _, r := range p.findings(sub) {
			if p.Mode == config.ModeAudit {
				r.Mode = config.ModeAudit
			} else {
				v.State = metadata.StateQuarantined
			}
			v.Reasons = append(v.Reasons, r)
		}
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

// findings are the checks of p that sub fails.
func (p *Policy) findings(sub Subject) []metadata.Reason {
	var out []metadata.Reason
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
