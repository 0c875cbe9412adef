package upstream

import (
	"net/http"
	"net/url"
	"strings"

	"github.com/opencontainers/go-digest"
)

// Registry is a client for one upstream registry. It is safe for concurrent
// use; it holds the token cache and the remembered authentication scheme of
// its upstream, so one Registry should be shared by all requests to it.
type Registry struct {
	o    Options
	base *url.URL
	auth *authenticator
	// guard and hops carry every round trip off the upstream's own origin
	// (redirect targets, token realms on other hosts); see hopGuard.
	guard *hopGuard
	hops  http.RoundTripper
	// ownTransport: o.Transport is the default made by New.
	ownTransport bool
	// blobSlots holds one token per blob body being streamed; nil when
	// Options.MaxBlobTransfers is 0.
	blobSlots chan struct{}
}

// New validates o and returns a Registry for it. It does not contact the
// upstream.
func New(o Options) (*Registry, error) {
	own := o.Transport == nil
	o, base, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	r := &Registry{o: o, base: base, guard: newHopGuard(o, base), ownTransport: own}
	r.hops = r.guard.transport(o.Transport)
	if o.MaxBlobTransfers > 0 {
		r.blobSlots = make(chan struct{}, o.MaxBlobTransfers)
	}
	r.auth = newAuthenticator(r)
	return r, nil
}

// CloseIdleConnections closes the idle connections of the transport the
// Registry made for itself: the default one when Options.Transport is nil,
// and the one for hops off the upstream's origin. A Transport given in
// Options is the caller's to close.
func (r *Registry) CloseIdleConnections() {
	switch t := r.hops.(type) {
	case *http.Transport:
		t.CloseIdleConnections()
	case *markProxyDials:
		t.next.CloseIdleConnections()
	}
	if r.ownTransport {
		r.o.Transport.(*http.Transport).CloseIdleConnections()
	}
}

// Name returns the upstream's configured name.
func (r *Registry) Name() string { return r.o.Name }

// Descriptor is what an upstream claims about a manifest. The caller verifies
// it against the bytes.
type Descriptor struct {
	MediaType string
	// Digest is empty if the upstream sent no Docker-Content-Digest.
	Digest digest.Digest
	// Size is -1 if unknown.
	Size int64
}

// endpoint returns the absolute URL of /v2/<repo>/<kind>/<ref>.
func (r *Registry) endpoint(repo, kind, ref string) string {
	u := *r.base
	u.Path = "/v2/" + repo + "/" + kind
	if ref != "" {
		u.Path += "/" + ref
	}
	return u.String()
}

// validRepo rejects repository names that would change the request path
// instead of naming a repository; the proxy validates names fully, this only
// guards the URL we build.
func validRepo(repo string) bool {
	if repo == "" || strings.HasPrefix(repo, "/") || strings.HasSuffix(repo, "/") {
		return false
	}
	for _, part := range strings.Split(repo, "/") {
		if part == "" || part == "." || part == ".." {
			return false
		}
	}
	return !strings.ContainsAny(repo, "?#% \t\r\n")
}

// validRef accepts a tag or a digest, rejecting anything that would alter the
// request path or query.
func validRef(ref string) bool {
	return ref != "" && !strings.ContainsAny(ref, "/?#% \t\r\n")
}
