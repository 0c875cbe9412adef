package proxy

import (
	"fmt"
	"net/url"
	"strings"

	"github.com/opencontainers/go-digest"
)

// Kind is the registry endpoint a request addresses.
type Kind int

const (
	KindBase      Kind = iota // /v2/
	KindManifest              // /v2/<name>/manifests/<reference>
	KindBlob                  // /v2/<name>/blobs/<digest>
	KindUpload                // /v2/<name>/blobs/uploads/...
	KindTags                  // /v2/<name>/tags/list
	KindReferrers             // /v2/<name>/referrers/<digest>
	KindCatalog               // /v2/_catalog
)

func (k Kind) String() string {
	switch k {
	case KindBase:
		return "base"
	case KindManifest:
		return "manifest"
	case KindBlob:
		return "blob"
	case KindUpload:
		return "upload"
	case KindTags:
		return "tags"
	case KindReferrers:
		return "referrers"
	case KindCatalog:
		return "catalog"
	}
	return "unknown"
}

// Endpoint is a parsed registry API path: what is asked for and of which
// repository name, as the client wrote it. It knows nothing of upstreams yet.
type Endpoint struct {
	Kind Kind
	// Name is the repository name from the path, e.g. "dockerhub/library/nginx".
	Name string
	// Reference is a tag or digest for manifests, a digest for blobs and referrers.
	Reference string
}

// maxNameLength bounds repository names as the distribution spec advises
// (255 characters for the whole name including any prefix).
const maxNameLength = 255

// ParseEndpoint parses the escaped path of a registry API request.
func ParseEndpoint(path string) (Endpoint, error) {
	rest, ok := strings.CutPrefix(path, "/v2/")
	if !ok {
		if path == "/v2" {
			return Endpoint{Kind: KindBase}, nil
		}
		return Endpoint{}, errNotFoundPath(path)
	}
	if rest == "" {
		return Endpoint{Kind: KindBase}, nil
	}
	if rest == "_catalog" {
		return Endpoint{Kind: KindCatalog}, nil
	}
	// Repository names may contain path components equal to the endpoint
	// words, so the endpoint is found from the end of the path.
	if name, ok := strings.CutSuffix(rest, "/tags/list"); ok {
		return endpoint(KindTags, name, "")
	}
	if i := strings.LastIndex(rest, "/blobs/uploads"); i > 0 && (len(rest) == i+len("/blobs/uploads") || rest[i+len("/blobs/uploads")] == '/') {
		return endpoint(KindUpload, rest[:i], "")
	}
	for _, e := range []struct {
		sep  string
		kind Kind
	}{
		{"/manifests/", KindManifest},
		{"/blobs/", KindBlob},
		{"/referrers/", KindReferrers},
	} {
		i := strings.LastIndex(rest, e.sep)
		if i <= 0 {
			continue
		}
		ref := rest[i+len(e.sep):]
		if ref == "" || strings.Contains(ref, "/") {
			continue
		}
		return endpoint(e.kind, rest[:i], ref)
	}
	return Endpoint{}, errNotFoundPath(path)
}

func endpoint(kind Kind, name, ref string) (Endpoint, error) {
	if err := validateName(name); err != nil {
		return Endpoint{}, err
	}
	switch kind {
	case KindBlob, KindReferrers:
		if _, err := parseDigest(ref); err != nil {
			return Endpoint{}, err
		}
	case KindManifest:
		if strings.Contains(ref, ":") {
			if _, err := parseDigest(ref); err != nil {
				return Endpoint{}, err
			}
		} else if !validTag(ref) {
			return Endpoint{}, &Error{Status: 400, Code: CodeManifestInvalid,
				Message: fmt.Sprintf("invalid tag %q: tags are 1-128 characters of [A-Za-z0-9_.-], not starting with . or -", ref)}
		}
	}
	return Endpoint{Kind: kind, Name: name, Reference: ref}, nil
}

// validateName checks a repository name against the distribution spec's
// grammar: path components of [a-z0-9] separated by ".", "_", "__" or "-"s.
func validateName(name string) error {
	if name == "" || len(name) > maxNameLength {
		return errNameInvalid(name, "names are 1 to 255 characters")
	}
	for rest := name; ; {
		comp, tail, more := strings.Cut(rest, "/")
		if !validComponent(comp) {
			return errNameInvalid(name, fmt.Sprintf("path component %q is not lowercase letters and digits joined by '.', '_', '__' or '-'", comp))
		}
		if !more {
			return nil
		}
		rest = tail
	}
}

func validComponent(c string) bool {
	if c == "" || !isAlnum(c[0]) || !isAlnum(c[len(c)-1]) {
		return false
	}
	for i := 0; i < len(c); i++ {
		ch := c[i]
		if isAlnum(ch) {
			continue
		}
		switch ch {
		case '.':
			if !isAlnum(c[i-1]) || !isAlnum(c[i+1]) {
				return false
			}
		case '_':
			// "_" or "__" between alphanumerics.
			if i+1 < len(c) && c[i+1] == '_' {
				if !isAlnum(c[i-1]) || i+2 >= len(c) || !isAlnum(c[i+2]) {
					return false
				}
				i++
				continue
			}
			if !isAlnum(c[i-1]) || !isAlnum(c[i+1]) {
				return false
			}
		case '-':
			// Any run of dashes between alphanumerics.
			if !isAlnum(c[i-1]) {
				return false
			}
			for i+1 < len(c) && c[i+1] == '-' {
				i++
			}
			if !isAlnum(c[i+1]) {
				return false
			}
		default:
			return false
		}
	}
	return true
}

func isAlnum(b byte) bool { return ('a' <= b && b <= 'z') || ('0' <= b && b <= '9') }

// validTag reports whether t matches [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}.
func validTag(t string) bool {
	if t == "" || len(t) > 128 || t[0] == '.' || t[0] == '-' {
		return false
	}
	for i := 0; i < len(t); i++ {
		b := t[i]
		if !(isAlnum(b) || ('A' <= b && b <= 'Z') || b == '_' || b == '.' || b == '-') {
			return false
		}
	}
	return true
}

// parseDigest validates an untrusted digest string. Only algorithms airlock
// can verify are accepted, so nothing is ever stored unverified.
//
// It checks the form by hand (algorithm, then lowercase hex of the right
// length) rather than with go-digest's regular expression, which cost as
// much as the rest of routing a request.
func parseDigest(s string) (digest.Digest, error) {
	alg, hex, ok := strings.Cut(s, ":")
	var want int
	switch {
	case !ok:
		return "", &Error{Status: 400, Code: CodeDigestInvalid, Message: fmt.Sprintf("invalid digest %q: want <algorithm>:<hex>", s)}
	case alg == "sha256":
		want = 64
	case alg == "sha512":
		want = 128
	default:
		return "", &Error{Status: 400, Code: CodeDigestInvalid, Message: fmt.Sprintf("unsupported digest algorithm %q in %q: use sha256 or sha512", alg, s)}
	}
	if len(hex) != want {
		return "", &Error{Status: 400, Code: CodeDigestInvalid, Message: fmt.Sprintf("invalid digest %q: %s takes %d hex digits", s, alg, want)}
	}
	for i := 0; i < len(hex); i++ {
		if c := hex[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return "", &Error{Status: 400, Code: CodeDigestInvalid, Message: fmt.Sprintf("invalid digest %q: %q is not a lowercase hex digit", s, c)}
		}
	}
	return digest.Digest(s), nil
}

func errNameInvalid(name, why string) error {
	return &Error{Status: 400, Code: CodeNameInvalid, Message: fmt.Sprintf("invalid repository name %q: %s", name, why)}
}

func errNotFoundPath(path string) error {
	return &Error{Status: 404, Code: CodeNotFound, Message: fmt.Sprintf("no registry API endpoint at %q", path)}
}

// Upstream is one configured upstream as the router sees it.
type Upstream struct {
	// Name is the path prefix clients use: /v2/<Name>/<repo>/...
	Name string
	// Hosts are the ?ns= values routed here: the aliases and the upstream's own host.
	Hosts []string
	// Default takes un-prefixed requests without ?ns=.
	Default bool
	// Library maps single-component names to library/<name>, as Docker Hub does.
	Library bool
	// Allowed reports whether a repository may be pulled; nil allows all.
	Allowed func(repo string) bool
}

// Route is an Endpoint resolved to an upstream and a repository there.
type Route struct {
	Endpoint
	Upstream *Upstream
	// Repo is the repository at the upstream, e.g. "library/nginx".
	Repo string
	// Namespace is the ?ns= value the route was chosen by, if any.
	Namespace string
}

// Router chooses the upstream for a request. It is immutable; reloading the
// configuration builds a new Router.
type Router struct {
	byName   map[string]*Upstream
	byHost   map[string]*Upstream
	fallback *Upstream
}

// NewRouter indexes upstreams by name and host. Names and hosts must be
// unique (the config package validates this); a later duplicate is an error.
func NewRouter(ups []Upstream) (*Router, error) {
	rt := &Router{byName: map[string]*Upstream{}, byHost: map[string]*Upstream{}}
	for i := range ups {
		u := &ups[i]
		if _, dup := rt.byName[u.Name]; dup {
			return nil, fmt.Errorf("upstream %q is configured twice", u.Name)
		}
		rt.byName[u.Name] = u
		for _, h := range u.Hosts {
			h = strings.ToLower(h)
			if other, dup := rt.byHost[h]; dup && other != u {
				return nil, fmt.Errorf("host %q is routed to both %q and %q", h, other.Name, u.Name)
			}
			rt.byHost[h] = u
		}
		if u.Default {
			if rt.fallback != nil {
				return nil, fmt.Errorf("upstreams %q and %q are both the default", rt.fallback.Name, u.Name)
			}
			rt.fallback = u
		}
	}
	return rt, nil
}

// Route resolves an endpoint with the request's query. The order is: ?ns=
// (containerd mirrors), then a path prefix naming an upstream, then the
// default upstream. A name whose first component is an upstream's name is
// always taken as a prefix.
func (rt *Router) Route(ep Endpoint, query url.Values) (Route, error) {
	r := Route{Endpoint: ep}
	if ep.Kind == KindBase || ep.Kind == KindCatalog {
		return r, nil
	}
	name := ep.Name
	if ns := query.Get("ns"); ns != "" {
		u, ok := rt.byHost[strings.ToLower(ns)]
		if !ok {
			return r, &Error{Status: 404, Code: CodeNameUnknown,
				Message: fmt.Sprintf("namespace %q is not an upstream of this gateway: add it to an upstream's aliases to pull from it", ns)}
		}
		r.Upstream, r.Namespace = u, ns
	} else if first, rest, ok := strings.Cut(name, "/"); ok && rt.byName[first] != nil {
		r.Upstream, name = rt.byName[first], rest
	} else if rt.byName[name] != nil {
		return r, &Error{Status: 404, Code: CodeNameUnknown,
			Message: fmt.Sprintf("%q names an upstream but no repository: use /v2/%s/<repository>/...", name, name)}
	} else if rt.fallback != nil {
		r.Upstream = rt.fallback
	} else {
		return r, &Error{Status: 404, Code: CodeNameUnknown,
			Message: fmt.Sprintf("repository %q does not start with an upstream name and no upstream is the default", name)}
	}
	if r.Upstream.Library && !strings.Contains(name, "/") {
		name = "library/" + name
	}
	r.Repo = name
	if r.Upstream.Allowed != nil && !r.Upstream.Allowed(name) {
		return r, &Error{Status: 403, Code: CodeDenied,
			Message: fmt.Sprintf("repository %q is not on the allow-list of upstream %q", name, r.Upstream.Name)}
	}
	return r, nil
}

// Key is the repository's identity in the metadata store: "<upstream>/<repo>".
func (r Route) Key() string { return r.Upstream.Name + "/" + r.Repo }

// Known reports whether key ("<upstream>/<repository>", as Route.Key gives
// it) names a repository the router serves: a configured upstream and a
// valid name on its allow-list. On a Docker Hub-style upstream a
// one-component name is not a key: requests for it route to
// "library/<name>", so a decision recorded under it would apply to nothing.
func (rt *Router) Known(key string) bool {
	name, repo, ok := strings.Cut(key, "/")
	u := rt.byName[name]
	if !ok || u == nil || validateName(repo) != nil || u.Library && !strings.Contains(repo, "/") {
		return false
	}
	return u.Allowed == nil || u.Allowed(repo)
}
