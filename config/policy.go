package config

import (
	"fmt"
	"net/url"
	"regexp"
	"strings"
)

// Policy modes.
const (
	// ModeEnforce refuses what the policy does not pass.
	ModeEnforce = "enforce"
	// ModeAudit serves it, and records and counts the finding.
	ModeAudit = "audit"
)

// Policy is one admission policy: the repositories it matches and the
// checks an image there must pass. Every policy that matches an image must
// pass for it to be approved; within one policy, each configured check must
// pass.
type Policy struct {
	// Name identifies the policy in reasons, metrics and the audit log.
	// Required and unique.
	Name string `yaml:"name"`
	// Match are globs over "<upstream>/<repository>": "*" matches any run
	// of characters, "/" included ("hcl/*" matches every repository of
	// upstream hcl), "?" one character. Required.
	Match []string `yaml:"match"`
	// Mode is enforce (refuse) or audit (serve, record and count). Default
	// enforce.
	Mode string `yaml:"mode"`
	// Pins is a file of the digests this policy lets through, one per line:
	// "<digest>", or "<upstream>/<repository>:<tag> <digest>" to pin what a
	// tag may resolve to. Blank lines and lines starting with # are
	// ignored. Re-read on SIGHUP. Default "": no pin check.
	Pins string `yaml:"pins"`
	// Signature requires a verified signature. Default: none.
	Signature *Signature `yaml:"signature"`
	// Vulnerabilities quarantines images whose scan finds vulnerabilities
	// at or above a severity. Needs the scanner (scanner.database).
	// Default: none.
	Vulnerabilities *Vulnerabilities `yaml:"vulnerabilities"`
}

// policyNamePattern keeps names usable as metric labels and in sentences.
var policyNamePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

func (c *Config) checkPolicies(p *problems) {
	seen := map[string]bool{}
	for i := range c.Policies {
		pol := &c.Policies[i]
		key := fmt.Sprintf("policies[%d]", i)
		switch {
		case pol.Name == "":
			p.add(key+".name", "required; name the policy (it appears in refusals and the audit log)")
		case !policyNamePattern.MatchString(pol.Name):
			p.add(key+".name", "%q is not a usable name; use letters, digits, '.', '_' and '-', at most 63", pol.Name)
		case seen[pol.Name]:
			p.add(key+".name", "%q is used by another policy; names must be unique", pol.Name)
		}
		seen[pol.Name] = true
		if len(pol.Match) == 0 {
			p.add(key+".match", "required; list globs over <upstream>/<repository> such as \"hcl/*\"")
		}
		for j, m := range pol.Match {
			err := CheckGlob(m)
			if err == nil {
				err = c.checkGlobReach(m)
			}
			if err != nil {
				p.add(fmt.Sprintf("%s.match[%d]", key, j), "%v", err)
			}
		}
		switch pol.Mode {
		case ModeEnforce, ModeAudit:
		default:
			p.add(key+".mode", "unknown mode %q; use enforce or audit", pol.Mode)
		}
		if pol.Pins == "" && pol.Signature == nil && pol.Vulnerabilities == nil {
			p.add(key, "has no check; set pins (a file of allowed digests), signature or vulnerabilities")
		}
		if pol.Signature != nil {
			pol.Signature.check(p, key+".signature")
		}
		if pol.Vulnerabilities != nil {
			pol.Vulnerabilities.check(p, key+".vulnerabilities", c)
		}
	}
}

// CheckGlob reports whether m is a usable repository glob.
func CheckGlob(m string) error {
	if m == "" {
		return fmt.Errorf("empty glob; write one such as \"dockerhub/library/*\"")
	}
	if strings.ContainsAny(m, " \t\n@:") {
		return fmt.Errorf("%q contains a space, '@' or ':'; a glob matches <upstream>/<repository> only, never a tag or digest", m)
	}
	return nil
}

// checkGlobReach refuses a glob that can match no repository airlock
// serves: the policy would govern nothing, and every image it was written
// for would be served unchecked without a word.
func (c *Config) checkGlobReach(m string) error {
	if strings.ToLower(m) != m {
		return fmt.Errorf("%q has uppercase letters; repositories are <upstream>/<repository> in lowercase, so it matches none", m)
	}
	lit := m
	if i := strings.IndexAny(m, "*?"); i >= 0 {
		lit = m[:i]
	}
	name, rest, named := strings.Cut(lit, "/")
	if !named {
		if lit == m {
			return fmt.Errorf("%q names no repository; write <upstream>/<repository>, e.g. %q", m, m+"/*")
		}
		for i := range c.Upstreams {
			if strings.HasPrefix(c.Upstreams[i].Name, lit) {
				return nil
			}
		}
		return fmt.Errorf("%q matches no repository: no upstream name starts with %q", m, lit)
	}
	for i := range c.Upstreams {
		u := &c.Upstreams[i]
		if u.Name != name {
			continue
		}
		if lit == m && !strings.Contains(rest, "/") && dockerHub(u) {
			return fmt.Errorf("%q matches no repository: upstream %s serves Docker Hub, where %s is %s/library/%s", m, name, rest, name, rest)
		}
		return nil
	}
	return fmt.Errorf("%q matches no repository: %q is not an upstream name (globs are over <upstream>/<repository>)", m, name)
}

// dockerHub reports whether u serves Docker Hub, whose one-component
// names are library/<name>.
func dockerHub(u *Upstream) bool {
	for _, h := range append([]string{u.Host()}, u.Aliases...) {
		switch strings.ToLower(h) {
		case "docker.io", "registry-1.docker.io", "index.docker.io":
			return true
		}
	}
	return false
}

// Alerts configures where state changes are reported.
type Alerts struct {
	// Webhooks receive a JSON event per state change they subscribe to.
	Webhooks []Webhook `yaml:"webhooks"`
}

// Webhook event types.
const (
	EventQuarantined    = "image.quarantined"
	EventBlocked        = "image.blocked"
	EventReleased       = "image.released"
	EventReleaseExpired = "image.release_expired"
	EventScanFailed     = "scan.failed"
)

// EventTypes are the events a webhook can subscribe to.
var EventTypes = []string{EventQuarantined, EventBlocked, EventReleased, EventReleaseExpired, EventScanFailed}

// Webhook is one HTTP endpoint that receives events.
type Webhook struct {
	// URL receives a POST per event. Required; http or https.
	URL string `yaml:"url"`
	// SecretFile holds a shared secret: each request then carries
	// X-Airlock-Signature-256: sha256=<hex HMAC-SHA256 of the body>.
	// Default "": unsigned.
	SecretFile string `yaml:"secretFile"`
	// Events limits the events sent; default: all of EventTypes.
	Events []string `yaml:"events"`
}

func (c *Config) checkAlerts(p *problems) {
	seen := map[string]bool{}
	for i, w := range c.Alerts.Webhooks {
		key := fmt.Sprintf("alerts.webhooks[%d]", i)
		u, err := url.Parse(w.URL)
		switch {
		case w.URL == "":
			p.add(key+".url", "required; the URL that receives events")
		case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
			p.add(key+".url", "%q is not an http or https URL", w.URL)
		case seen[w.URL]:
			p.add(key+".url", "%q is listed twice; list each receiver once", w.URL)
		}
		seen[w.URL] = true
		for j, e := range w.Events {
			known := false
			for _, t := range EventTypes {
				known = known || e == t
			}
			if !known {
				p.add(fmt.Sprintf("%s.events[%d]", key, j), "unknown event %q; use %s", e, strings.Join(EventTypes, ", "))
			}
		}
	}
}
