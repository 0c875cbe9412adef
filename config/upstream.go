package config

import (
	"errors"
	"net/url"
	"path"
	"slices"
	"strings"
)

// Allowed reports whether repo may be pulled through u. repo is the
// repository name as the upstream knows it (for Docker Hub official images,
// "library/nginx", not "nginx").
//
// With no Repositories every repository is allowed. Otherwise repo must
// match one of the globs, where:
//
//   - "*" matches any run of characters within one path segment, never a
//     "/", so "library/*" allows "library/nginx" but not "library/a/b";
//   - "?" and "[...]" match one character, as in path.Match;
//   - a final "/**" matches one or more further segments, so "grafana/**"
//     allows "grafana/loki" and "grafana/x/y" but not "grafana" itself;
//   - "**" alone allows every repository.
func (u *Upstream) Allowed(repo string) bool {
	if len(u.Repositories) == 0 {
		return true
	}
	for _, pattern := range u.Repositories {
		if globMatch(pattern, repo) {
			return true
		}
	}
	return false
}

func globMatch(pattern, repo string) bool {
	if pattern == "**" {
		return repo != ""
	}
	if prefix, ok := strings.CutSuffix(pattern, "/**"); ok {
		// Compare the prefix with as many leading segments of repo as it
		// has, and require at least one segment after them.
		n := strings.Count(prefix, "/") + 1
		segs := strings.SplitN(repo, "/", n+1)
		if len(segs) <= n {
			return false
		}
		ok, err := path.Match(prefix, strings.Join(segs[:n], "/"))
		return err == nil && ok
	}
	ok, err := path.Match(pattern, repo)
	return err == nil && ok
}

// checkGlob explains why pattern cannot be used in Repositories.
func checkGlob(pattern string) error {
	if pattern == "**" {
		return nil
	}
	body := strings.TrimSuffix(pattern, "/**")
	switch {
	case pattern == "":
		return errors.New("empty pattern; remove it or write a glob such as library/*")
	case strings.HasPrefix(pattern, "/") || strings.HasSuffix(pattern, "/"):
		return errors.New("a pattern must not start or end with '/'; write library/* rather than /library/*")
	case strings.Contains(body, "**"):
		return errors.New(`"**" is allowed only as the whole last segment, as in grafana/**`)
	}
	if _, err := path.Match(body, ""); err != nil {
		return errors.New("malformed glob (check '[' and '\\' pairs); see path.Match for the syntax")
	}
	return nil
}

// Host returns the host[:port] of u's URL in lower case, the name a client
// gives when it asks for this registry with containerd's ?ns=. It is "" for
// a URL that does not parse.
func (u *Upstream) Host() string {
	parsed, err := url.Parse(u.URL)
	if err != nil {
		return ""
	}
	return strings.ToLower(parsed.Host)
}

// ServesHost reports whether a pull that names registry host (as with
// ?ns=docker.io) is routed to u: host is u's own URL host or one of its
// aliases, compared case-insensitively.
func (u *Upstream) ServesHost(host string) bool {
	if host == "" {
		return false
	}
	if strings.EqualFold(host, u.Host()) {
		return true
	}
	for _, a := range u.Aliases {
		if strings.EqualFold(host, a) {
			return true
		}
	}
	return false
}

// UpstreamForHost returns the upstream a pull naming registry host is
// routed to (as with ?ns=quay.io), or nil: the upstream with that alias,
// else the one with that URL host. Validation guarantees at most one
// upstream matches either way.
func (c *Config) UpstreamForHost(host string) *Upstream {
	if host == "" {
		return nil
	}
	for i := range c.Upstreams {
		if slices.ContainsFunc(c.Upstreams[i].Aliases, func(a string) bool { return strings.EqualFold(a, host) }) {
			return &c.Upstreams[i]
		}
	}
	for i := range c.Upstreams {
		if strings.EqualFold(c.Upstreams[i].Host(), host) {
			return &c.Upstreams[i]
		}
	}
	return nil
}

// DefaultUpstream returns the upstream marked default, or nil when
// un-prefixed paths are not served.
func (c *Config) DefaultUpstream() *Upstream {
	for i := range c.Upstreams {
		if c.Upstreams[i].Default {
			return &c.Upstreams[i]
		}
	}
	return nil
}

// Upstream returns the upstream called name, or nil.
func (c *Config) Upstream(name string) *Upstream {
	for i := range c.Upstreams {
		if c.Upstreams[i].Name == name {
			return &c.Upstreams[i]
		}
	}
	return nil
}
