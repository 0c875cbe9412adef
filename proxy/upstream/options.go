package upstream

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Options configure one upstream registry. The zero value of every field other
// than Name and URL selects the documented default.
type Options struct {
	// Name identifies the upstream in logs and errors ("dockerhub"). Required.
	Name string
	// URL is the registry's base URL, "https://registry-1.docker.io" or
	// "http://127.0.0.1:1234". Required; only http and https are accepted, and
	// a path is not allowed because the API lives at /v2/.
	URL string
	// Credentials returns the username and password for this upstream, or
	// ("", "", nil) for anonymous access. It is called each time a challenge
	// needs credentials (not once at start), so rotated secret files are
	// picked up. Nil means anonymous.
	Credentials func(ctx context.Context) (username, password string, err error)
	// Transport carries the HTTP round trips. Nil: a clone of
	// http.DefaultTransport with compression disabled (so Range offsets are
	// byte offsets of the blob) and HeaderTimeout as response header timeout.
	// Round trips off the upstream's origin (redirect targets, token realms
	// elsewhere) go through a clone of it whose dialer checks each address
	// (see InternalRedirectHosts); a Transport that is not an
	// *http.Transport cannot be hooked so, and its hops are checked by
	// resolving the name just before the round trip instead.
	Transport http.RoundTripper
	// InternalRedirectHosts names hosts (DNS names or IP literals, without
	// port) that redirects and token realms of this upstream may lead to
	// although they are on loopback or private addresses. Without an entry
	// such a hop is refused unless the upstream itself is on an address of
	// the same kind. Link-local and unspecified addresses and cloud
	// metadata endpoints are refused whatever this says. Default: none.
	InternalRedirectHosts []string
	// SelfAddrs are airlock's own listen addresses, host:port as configured
	// (":5001" meaning every interface). A redirect or token realm leading
	// to one of them is refused whatever else allows it, so an upstream
	// cannot turn airlock against its own admin API. Default: none.
	SelfAddrs []string
	// Logger receives retry and authentication diagnostics. Nil: discard.
	Logger *slog.Logger
	// MaxAttempts is the total number of attempts for a retryable failure,
	// and also bounds how often one blob body is resumed. 0 means 4.
	MaxAttempts int
	// BaseDelay is the first backoff; each retry doubles it, with jitter,
	// up to MaxDelay. 0 means 200ms.
	BaseDelay time.Duration
	// MaxDelay caps one backoff. A Retry-After longer than MaxDelay is not
	// waited for: the error (with its Retry-After) is returned at once so the
	// caller can serve cached content or tell its client. 0 means 10s.
	MaxDelay time.Duration
	// IdleTimeout is the longest a body read may go without receiving a byte.
	// It is never a deadline for the whole body. 0 means 60s.
	IdleTimeout time.Duration
	// HeaderTimeout is the time allowed from sending a request to receiving
	// its response headers. 0 means 30s.
	HeaderTimeout time.Duration
	// MaxBlobTransfers bounds how many blob bodies are streamed from this
	// upstream at once; a further GetBlob waits for a slot (or its ctx).
	// Manifests, tags, referrers and tokens never wait for blob slots, so
	// resolving an image stays fast while layers queue. 0 means no bound.
	MaxBlobTransfers int
	// Observe, if set, is called once per HTTP round trip (each redirect hop
	// and each token request is one), for metrics. It must not block.
	Observe func(Event)
}

// Event describes one HTTP round trip to the upstream or its token realm.
type Event struct {
	Upstream string
	// Op is one of "manifest", "blob", "tags", "referrers", "token".
	Op string
	// Status is the HTTP status, or 0 when no response arrived.
	Status int
	// Err is the transport error, if no response arrived.
	Err      error
	Duration time.Duration
	// Header is the response header (nil when no response arrived). It must
	// not be modified.
	Header http.Header
}

// MaxResponseHeaderBytes bounds the response headers of an upstream, as the
// default transport sets it; a registry's are a few KiB (net/http would
// allow 10 MiB per response).
const MaxResponseHeaderBytes = 1 << 20

const (
	defaultMaxAttempts   = 4
	defaultBaseDelay     = 200 * time.Millisecond
	defaultMaxDelay      = 10 * time.Second
	defaultIdleTimeout   = 60 * time.Second
	defaultHeaderTimeout = 30 * time.Second
)

// withDefaults validates o and fills in defaults, returning the parsed base URL.
func (o Options) withDefaults() (Options, *url.URL, error) {
	if o.Name == "" {
		return o, nil, fmt.Errorf("upstream: Name is required")
	}
	base, err := url.Parse(strings.TrimSuffix(o.URL, "/"))
	if err != nil {
		// The parse error quotes the URL, which may hold a password.
		return o, nil, fmt.Errorf("upstream %s: URL is not a valid URL", o.Name)
	}
	if (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		return o, nil, fmt.Errorf("upstream %s: URL %q must be http:// or https:// followed by a host", o.Name, base.Redacted())
	}
	if base.Path != "" || base.RawQuery != "" || base.User != nil {
		return o, nil, fmt.Errorf("upstream %s: URL %q must not contain a path, query or user info; configure credentials separately", o.Name, base.Redacted())
	}
	if o.MaxAttempts < 0 || o.MaxBlobTransfers < 0 || o.BaseDelay < 0 || o.MaxDelay < 0 || o.IdleTimeout < 0 || o.HeaderTimeout < 0 {
		return o, nil, fmt.Errorf("upstream %s: attempts, delays and timeouts must not be negative", o.Name)
	}
	if o.MaxAttempts == 0 {
		o.MaxAttempts = defaultMaxAttempts
	}
	if o.BaseDelay == 0 {
		o.BaseDelay = defaultBaseDelay
	}
	if o.MaxDelay == 0 {
		o.MaxDelay = defaultMaxDelay
	}
	if o.IdleTimeout == 0 {
		o.IdleTimeout = defaultIdleTimeout
	}
	if o.HeaderTimeout == 0 {
		o.HeaderTimeout = defaultHeaderTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Transport == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		// Transparent gzip would make Range offsets refer to encoded bytes
		// and hide Content-Length; blobs are already compressed anyway.
		t.DisableCompression = true
		t.ResponseHeaderTimeout = o.HeaderTimeout
		t.MaxIdleConnsPerHost = 32
		t.MaxResponseHeaderBytes = MaxResponseHeaderBytes
		o.Transport = t
	}
	return o, base, nil
}
