package config

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
)

// fieldError is one problem with one key of the configuration. key is the
// key path ("upstreams[1].url"); line is set when the problem was found in
// the YAML itself rather than in the decoded values.
type fieldError struct {
	key  string
	line int
	msg  string
}

func (e *fieldError) Error() string {
	if e.key == "" {
		return e.msg
	}
	return e.key + ": " + e.msg
}

func (e *fieldError) Unwrap() error { return ErrInvalid }

// problems collects every validation failure, so a user fixes them in one
// pass instead of one restart per mistake.
type problems []error

func (p *problems) add(key, format string, args ...any) {
	*p = append(*p, &fieldError{key: key, msg: fmt.Sprintf(format, args...)})
}

// Validate reports every problem in c, joined with errors.Join; each names
// the key path it concerns and wraps ErrInvalid. Load and Parse call it
// after filling defaults; call it again after changing a Config in code.
func (c *Config) Validate() error { return errors.Join(c.problems()...) }

func (c *Config) problems() []error {
	var p problems
	p.addr("listen", c.Listen)
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		p.add("tls", "certFile and keyFile must be set together; set both to serve HTTPS, or neither for plain HTTP")
	}
	c.Storage.check(&p)
	c.Metadata.check(&p)
	c.checkCluster(&p)
	p.duration("cache.tagTTL", c.Cache.TagTTL)
	if c.Cache.MaxManifestBytes <= 0 || c.Cache.MaxManifestBytes > MaxManifestBytes {
		p.add("cache.maxManifestBytes", "%d is out of range; set a byte count from 1 to %d (4 MiB)", c.Cache.MaxManifestBytes, MaxManifestBytes)
	}
	if c.Cache.MaxSize < 0 {
		p.add("cache.maxSize", "%d is negative; set a size such as \"500GiB\", or 0 for no limit", c.Cache.MaxSize)
	}
	p.duration("cache.evictInterval", c.Cache.EvictInterval)
	p.addr("admin.listen", c.Admin.Listen)
	if sameListener(c.Listen, c.Admin.Listen) {
		p.add("admin.listen", "%q is also the registry listen address; give the admin API its own port", c.Admin.Listen)
	}
	switch c.Log.Level {
	case LevelDebug, LevelInfo, LevelWarn, LevelError:
	default:
		p.add("log.level", "unknown level %q; use debug, info, warn or error", c.Log.Level)
	}
	switch c.Log.Format {
	case FormatJSON, FormatText:
	default:
		p.add("log.format", "unknown format %q; use json or text", c.Log.Format)
	}
	p.duration("shutdown.drainTimeout", c.Shutdown.DrainTimeout)
	p.duration("shutdown.readyDelay", c.Shutdown.ReadyDelay)
	if c.Tracing.SampleRatio < 0 || c.Tracing.SampleRatio > 1 {
		p.add("tracing.sampleRatio", "%v is out of range; use a fraction from 0 to 1", c.Tracing.SampleRatio)
	}
	if c.Tracing.Endpoint != "" {
		if _, _, err := net.SplitHostPort(c.Tracing.Endpoint); err != nil {
			p.add("tracing.endpoint", "%q is not host:port (the OTLP/HTTP collector, e.g. otel-collector:4318)", c.Tracing.Endpoint)
		}
	}
	c.checkUpstreams(&p)
	c.Auth.check(&p, c.Upstreams)
	c.checkPolicies(&p)
	c.Scanner.check(&p)
	c.checkAlerts(&p)
	return p
}

func (s *Storage) check(p *problems) {
	if s.Path == "" {
		p.add("storage.path", "required; set a local directory for the metadata database (and the blobs, with the filesystem driver)")
	}
	switch s.Driver {
	case DriverFilesystem:
		s.checkFilesystem(p)
		if s.DisableRedirects {
			p.add("storage.disableRedirects", "the filesystem driver never redirects; remove the key")
		}
		if s.LocalCacheSize != 0 {
			p.add("storage.localCacheSize", "the filesystem driver's blobs are local files already; remove the key")
		}
	case DriverS3, DriverGCS, DriverAzure:
		if s.LocalCacheSize < 0 {
			p.add("storage.localCacheSize", "%d is negative; set a size such as \"50GiB\", or 0 for no local copies", s.LocalCacheSize)
		}
	default:
		p.add("storage.driver", "unknown driver %q; use filesystem, s3, gcs or azure", s.Driver)
	}
}

// checkFilesystem checks the filesystem driver's parameters as serve reads
// them, with the driver's own parser, so that a file check passes is one
// serve opens. The other drivers' parameters are checked by their
// factories, which need their cloud to answer.
func (s *Storage) checkFilesystem(p *problems) {
	for _, k := range slices.Sorted(maps.Keys(s.Parameters)) {
		switch k {
		case filesystemRootParameter:
			if root, ok := s.Parameters[k].(string); !ok || root == "" {
				p.add("storage.parameters."+k, "want the path of a directory, got %v", s.Parameters[k])
			}
		case "maxthreads":
		default:
			p.add("storage.parameters."+k, "unknown parameter of the filesystem driver; it takes rootdirectory and maxthreads")
		}
	}
	if _, err := filesystem.FromParameters(s.Parameters); err != nil {
		p.add("storage.parameters.maxthreads", "%v; set an integer, 25 or more", err)
	}
}

func (c *Config) checkUpstreams(p *problems) {
	if len(c.Upstreams) == 0 {
		p.add("upstreams", "at least one upstream is required; add an entry with a name and a url")
		return
	}
	names := map[string]int{}   // upstream name -> index
	aliases := map[string]int{} // alias or URL host -> index
	defaults := 0
	for i := range c.Upstreams {
		u := &c.Upstreams[i]
		key := fmt.Sprintf("upstreams[%d]", i)
		u.check(p, key)
		if j, dup := names[u.Name]; dup && u.Name != "" {
			p.add(key+".name", "%q is already the name of upstreams[%d]; names must be unique", u.Name, j)
		} else {
			names[u.Name] = i
		}
		if u.Default {
			defaults++
			if defaults > 1 {
				p.add(key+".default", "only one upstream may be the default; remove default: true from all but one")
			}
		}
	}
	// Hosts a client may name with ?ns= must lead to exactly one upstream,
	// or airlock would have to guess which registry a pull means.
	for i := range c.Upstreams {
		for a, alias := range c.Upstreams[i].Aliases {
			key := fmt.Sprintf("upstreams[%d].aliases[%d]", i, a)
			alias = strings.ToLower(alias)
			if j, ok := names[alias]; ok && j != i {
				p.add(key, "%q is the name of upstreams[%d]; an alias must not equal another upstream's name", alias, j)
			}
			if j, ok := aliases[alias]; ok && j != i {
				p.add(key, "%q is already an alias of upstreams[%d]; each alias routes to one upstream", alias, j)
				continue
			}
			aliases[alias] = i
		}
	}
	hosts := map[string]int{} // URL host -> index
	for i := range c.Upstreams {
		host := c.Upstreams[i].Host()
		if host == "" {
			continue
		}
		if j, ok := aliases[host]; ok && j != i {
			p.add(fmt.Sprintf("upstreams[%d].url", i), "host %q is an alias of upstreams[%d]; remove that alias so the host routes to one upstream", host, j)
		}
		if j, ok := hosts[host]; ok {
			p.add(fmt.Sprintf("upstreams[%d].url", i), "host %q is already the host of upstreams[%d]; a pull naming it (?ns=%s) would have two upstreams to go to, so give each registry one entry and list every repository it serves there", host, j, host)
			continue
		}
		hosts[host] = i
	}
}

// maxRetryAttempts bounds upstreams[].retry.maxAttempts.
const maxRetryAttempts = 100

// nameRE is one path segment of a repository name, as the distribution
// spec's path components are, so /v2/<name>/... parses unambiguously.
var nameRE = regexp.MustCompile(`^[a-z0-9](?:[a-z0-9._-]*[a-z0-9])?$`)

func (u *Upstream) check(p *problems, key string) {
	switch {
	case u.Name == "":
		p.add(key+".name", "required; it becomes the path prefix /v2/<name>/...")
	case u.Name == "v2":
		p.add(key+".name", `"v2" is reserved by the registry API; choose another name`)
	case !nameRE.MatchString(u.Name):
		p.add(key+".name", "%q is not a single path segment; use lowercase letters, digits, '.', '_' and '-', starting and ending with a letter or digit", u.Name)
	}
	u.checkURL(p, key+".url")
	for a, alias := range u.Aliases {
		if alias == "" || strings.ContainsAny(alias, "/ ") || strings.Contains(alias, "://") {
			p.add(fmt.Sprintf("%s.aliases[%d]", key, a), "%q is not a registry host; write a host or host:port such as docker.io", alias)
		}
	}
	for h, host := range u.InternalRedirectHosts {
		if !validRedirectHost(host) {
			p.add(fmt.Sprintf("%s.internalRedirectHosts[%d]", key, h), "%q is not a host name or IP address; write only the host, such as cdn.internal.example or 10.0.0.7, without scheme, port or path", host)
		}
	}
	if u.Repositories != nil && len(u.Repositories) == 0 {
		p.add(key+".repositories", "an empty list allows nothing; remove the key to allow every repository")
	}
	for r, pattern := range u.Repositories {
		if err := checkGlob(pattern); err != nil {
			p.add(fmt.Sprintf("%s.repositories[%d]", key, r), "%v", err)
		}
	}
	u.Auth.check(p, key+".auth")
	p.duration(key+".tagTTL", u.TagTTL)
	p.duration(key+".timeouts.header", u.Timeouts.Header)
	p.duration(key+".timeouts.idle", u.Timeouts.Idle)
	if u.MaxBlobTransfers < 0 {
		p.add(key+".maxBlobTransfers", "%d is negative; set 0 for no bound, or a number of concurrent blob downloads", u.MaxBlobTransfers)
	}
	if u.Retry.MaxAttempts < 1 {
		p.add(key+".retry.maxAttempts", "%d is too small; set 1 to disable retries, or more", u.Retry.MaxAttempts)
	} else if u.Retry.MaxAttempts > maxRetryAttempts {
		// Each attempt may wait maxDelay, and the count also bounds the
		// resumes of one blob body: beyond this a failing upstream holds
		// pulls for hours instead of failing them.
		p.add(key+".retry.maxAttempts", "%d is more than %d; a failing upstream would hold pulls for hours, so set a smaller number", u.Retry.MaxAttempts, maxRetryAttempts)
	}
	p.duration(key+".retry.baseDelay", u.Retry.BaseDelay)
	p.duration(key+".retry.maxDelay", u.Retry.MaxDelay)
	if u.Retry.BaseDelay > u.Retry.MaxDelay {
		p.add(key+".retry", "baseDelay %s exceeds maxDelay %s; raise maxDelay or lower baseDelay", u.Retry.BaseDelay, u.Retry.MaxDelay)
	}
}

// validRedirectHost accepts a DNS name or an IP literal: what a redirect's
// URL carries as its host, without the port.
func validRedirectHost(h string) bool {
	if _, err := netip.ParseAddr(strings.Trim(h, "[]")); err == nil {
		return true
	}
	if h == "" || len(h) > 253 || strings.HasPrefix(h, ".") || strings.HasSuffix(h, ".") {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || strings.HasPrefix(label, "-") || strings.HasSuffix(label, "-") {
			return false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

func (u *Upstream) checkURL(p *problems, key string) {
	if u.URL == "" {
		p.add(key, "required; set the registry's base URL, such as https://registry-1.docker.io")
		return
	}
	parsed, err := url.Parse(u.URL)
	if err != nil {
		p.add(key, "%q does not parse (%v); write it as https://host[:port]", u.URL, errors.Unwrap(err))
		return
	}
	switch {
	case parsed.Scheme != "http" && parsed.Scheme != "https":
		p.add(key, "scheme must be http or https, as in https://%s", strings.TrimPrefix(u.URL, parsed.Scheme+"://"))
	case parsed.Host == "":
		p.add(key, "%q has no host; write it as https://host[:port]", u.URL)
	case parsed.User != nil:
		p.add(key, "credentials in the URL are not allowed; move them to auth.usernameFile and auth.passwordFile")
	case parsed.RawQuery != "" || parsed.Fragment != "":
		p.add(key, "%q has a query or fragment; give only the scheme, host and port", u.URL)
	case strings.HasSuffix(strings.TrimSuffix(parsed.Path, "/"), "/v2"):
		p.add(key, "%q ends in /v2; give the base URL without it", u.URL)
	case strings.Trim(parsed.Path, "/") != "":
		// The registry API lives at /v2/ on the host itself, and the
		// upstream client refuses a path: a mirror under a path prefix
		// cannot be an upstream.
		p.add(key, "%q has a path; give only the scheme, host and port, as in %s://%s", u.URL, parsed.Scheme, parsed.Host)
	}
	if port := parsed.Port(); port != "" {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			p.add(key, "port %q is not a number from 1 to 65535", port)
		}
	}
}

func (a Auth) check(p *problems, key string) {
	if (a.UsernameFile == "") != (a.PasswordFile == "") {
		p.add(key, "usernameFile and passwordFile must be set together")
	}
	if (a.UsernameEnv == "") != (a.PasswordEnv == "") {
		p.add(key, "usernameEnv and passwordEnv must be set together")
	}
}

func (p *problems) addr(key, addr string) {
	if addr == "" {
		p.add(key, "required; set host:port, such as 127.0.0.1:5000 or :5000 for all interfaces")
		return
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		reason := err.Error()
		if ae, ok := errors.AsType[*net.AddrError](err); ok {
			reason = ae.Err
		}
		p.add(key, "%q is not host:port (%s); write it as 127.0.0.1:5000, [::1]:5000 or :5000", addr, reason)
		return
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		p.add(key, "port %q is not a number from 0 to 65535", port)
	}
}

// sameListener reports whether listen addresses a and b would bind the
// same port: the same host, or either on every interface (":5000" and
// "127.0.0.1:5000" collide). Port 0 picks a free port each time.
func sameListener(a, b string) bool {
	ha, pa, errA := net.SplitHostPort(a)
	hb, pb, errB := net.SplitHostPort(b)
	if errA != nil || errB != nil || pa != pb || pa == "0" {
		return false
	}
	any := func(h string) bool {
		ip, err := netip.ParseAddr(h)
		return h == "" || (err == nil && ip.IsUnspecified())
	}
	return strings.EqualFold(ha, hb) || any(ha) || any(hb)
}

func (p *problems) duration(key string, d Duration) {
	if d < 0 {
		p.add(key, "%s is negative; durations must be zero or more", d)
	}
}
