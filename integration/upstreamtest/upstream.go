package upstreamtest

import (
	"bytes"
	"context"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Auth selects how an Upstream authenticates its clients.
type Auth int

const (
	// Plain serves everyone without credentials.
	Plain Auth = iota
	// Basic demands HTTP Basic credentials on every request.
	Basic
	// DockerHubStyle demands Bearer tokens issued by a token endpoint on a
	// separate listener and redirects blob GETs to a separate CDN listener.
	DockerHubStyle
)

// String names the mode for test names and messages.
func (a Auth) String() string {
	switch a {
	case Plain:
		return "plain"
	case Basic:
		return "basic"
	case DockerHubStyle:
		return "dockerhub-style"
	}
	return "unknown"
}

// Options configures an Upstream. The zero value is a Plain registry.
type Options struct {
	Auth Auth
	// Username and Password are the credentials Basic demands. For
	// DockerHubStyle they are demanded by the token endpoint when Username
	// is set; otherwise tokens are issued anonymously, as Docker Hub does
	// for public repositories.
	Username, Password string
	// Service is the service name in DockerHubStyle challenges;
	// "registry.test" when empty.
	Service string
}

// Listener names which of an Upstream's listeners saw a request.
type Listener string

// The listeners an Upstream may own.
const (
	RegistryListener Listener = "registry"
	TokenListener    Listener = "token"
	CDNListener      Listener = "cdn"
)

// Request is one request an Upstream received.
type Request struct {
	Listener Listener
	Method   string
	Path     string
	// Status is the status written, or 0 when the connection was dropped
	// because the upstream was Down.
	Status int
	// Bytes is how many body bytes were written back.
	Bytes int64
	// Authorization is the Authorization header the request carried.
	Authorization string
}

// Upstream is one in-process registry with its token and CDN listeners.
type Upstream struct {
	// URL is the registry's base URL, "http://127.0.0.1:PORT".
	URL string
	// Host is URL without the scheme, usable in image references.
	Host string
	// TokenURL and CDNURL are set for DockerHubStyle only.
	TokenURL, CDNURL string

	opts  Options
	inner http.Handler
	srv   *httptest.Server
	token *httptest.Server
	cdn   *httptest.Server

	mu         sync.Mutex
	requests   []Request
	violations []string
	tampered   map[v1.Hash]bool
	down       bool
	delay      time.Duration
	rate       int64
	tokens     map[string]string // token -> repository it grants pull on
	written    atomic.Int64
}

// New starts an Upstream on 127.0.0.1 and closes it when tb's test ends.
func New(tb testing.TB, opts Options) *Upstream {
	tb.Helper()
	if opts.Service == "" {
		opts.Service = "registry.test"
	}
	u := &Upstream{
		opts:     opts,
		inner:    registry.New(registry.Logger(log.New(io.Discard, "", 0)), registry.WithReferrersSupport(true)),
		tampered: map[v1.Hash]bool{},
		tokens:   map[string]string{},
	}
	u.srv = httptest.NewServer(http.HandlerFunc(u.serveRegistry))
	tb.Cleanup(u.srv.Close)
	u.URL = u.srv.URL
	u.Host = strings.TrimPrefix(u.srv.URL, "http://")
	if opts.Auth == DockerHubStyle {
		u.token = httptest.NewServer(http.HandlerFunc(u.serveToken))
		tb.Cleanup(u.token.Close)
		u.cdn = httptest.NewServer(http.HandlerFunc(u.serveCDN))
		tb.Cleanup(u.cdn.Close)
		u.TokenURL, u.CDNURL = u.token.URL, u.cdn.URL
	}
	return u
}

// Tamper makes every later response whose body is the content of d (a blob
// or a manifest, by digest or by a tag that resolves to it) carry altered
// bytes of the same length, while still claiming digest d.
func (u *Upstream) Tamper(d v1.Hash) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.tampered[d] = true
}

// Untamper undoes Tamper for d.
func (u *Upstream) Untamper(d v1.Hash) {
	u.mu.Lock()
	defer u.mu.Unlock()
	delete(u.tampered, d)
}

// Down makes every listener drop every new connection's request without an
// answer, and cuts the transfers already in flight, until Up.
func (u *Upstream) Down() {
	u.mu.Lock()
	u.down = true
	u.mu.Unlock()
	for _, s := range u.servers() {
		s.CloseClientConnections()
	}
}

// Up undoes Down.
func (u *Upstream) Up() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.down = false
}

// Throttle limits every later response body to bytesPerSecond; 0 removes
// the limit.
func (u *Upstream) Throttle(bytesPerSecond int64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.rate = bytesPerSecond
}

// Delay holds every later request for d before answering it; 0 removes it.
func (u *Upstream) Delay(d time.Duration) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.delay = d
}

func (u *Upstream) servers() []*httptest.Server {
	out := []*httptest.Server{u.srv}
	if u.token != nil {
		out = append(out, u.token, u.cdn)
	}
	return out
}

// serveRegistry is the front of the registry listener: it records the
// request, then applies Down, Delay and authentication before the content.
func (u *Upstream) serveRegistry(w http.ResponseWriter, r *http.Request) {
	rw := u.begin(w, r, RegistryListener)
	defer u.end(rw)
	if u.dropIfDown(rw) || !u.wait(r.Context()) {
		return
	}
	if !u.authorize(rw, r) {
		return
	}
	repo, kind, target, ok := splitPath(r.URL.Path)
	if ok && kind == "blobs" && r.Method == http.MethodGet && u.opts.Auth == DockerHubStyle {
		// Docker Hub answers blob GETs with a redirect to a CDN that knows
		// nothing of registry tokens; clients must not forward them there.
		http.Redirect(rw, r, u.CDNURL+"/"+repo+"/blobs/"+target, http.StatusTemporaryRedirect)
		return
	}
	u.serveContent(rw, r)
}

// serveContent answers from the inner registry, applying Tamper and Throttle
// to the body. The whole response is recorded first so that the digest it
// answers for is known before the first byte goes out.
func (u *Upstream) serveContent(w *recordingWriter, r *http.Request) {
	rec := httptest.NewRecorder()
	u.inner.ServeHTTP(rec, r)
	body := rec.Body.Bytes()
	if u.isTampered(r.URL.Path, rec.Header().Get("Docker-Content-Digest")) && len(body) > 0 && rec.Code < 300 {
		body = bytes.Clone(body)
		body[len(body)/2] ^= 0xff
	}
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	if r.Method == http.MethodHead {
		return
	}
	u.writeThrottled(r.Context(), w, body)
}

func (u *Upstream) isTampered(path, claimed string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.tampered) == 0 {
		return false
	}
	if h, err := v1.NewHash(claimed); err == nil && u.tampered[h] {
		return true
	}
	_, _, target, ok := splitPath(path)
	if !ok {
		return false
	}
	h, err := v1.NewHash(target)
	return err == nil && u.tampered[h]
}

// writeThrottled writes body in small chunks, sleeping between them to keep
// to the configured rate; it stops when the client goes away.
func (u *Upstream) writeThrottled(ctx context.Context, w *recordingWriter, body []byte) {
	const chunk = 16 << 10
	for len(body) > 0 {
		n := min(chunk, len(body))
		if _, err := w.Write(body[:n]); err != nil {
			return
		}
		body = body[n:]
		u.mu.Lock()
		rate := u.rate
		u.mu.Unlock()
		if rate <= 0 {
			continue
		}
		if f, ok := w.ResponseWriter.(http.Flusher); ok {
			f.Flush()
		}
		pause := time.Duration(float64(n) / float64(rate) * float64(time.Second))
		select {
		case <-ctx.Done():
			return
		case <-time.After(pause):
		}
	}
}

// dropIfDown closes the connection without an answer when the upstream is
// Down, which clients see as a network failure.
func (u *Upstream) dropIfDown(w *recordingWriter) bool {
	u.mu.Lock()
	down := u.down
	u.mu.Unlock()
	if !down {
		return false
	}
	if hj, ok := w.ResponseWriter.(http.Hijacker); ok {
		if conn, _, err := hj.Hijack(); err == nil {
			_ = conn.Close()
			return true
		}
	}
	w.WriteHeader(http.StatusServiceUnavailable)
	return true
}

// wait applies Delay; it reports false when the client gave up meanwhile.
func (u *Upstream) wait(ctx context.Context) bool {
	u.mu.Lock()
	d := u.delay
	u.mu.Unlock()
	if d <= 0 {
		return true
	}
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

// splitPath splits "/v2/<repo>/<kind>/<target>" where kind is manifests,
// blobs, tags or referrers. It reports false for any other path.
func splitPath(p string) (repo, kind, target string, ok bool) {
	rest, found := strings.CutPrefix(p, "/v2/")
	if !found {
		return "", "", "", false
	}
	for _, k := range []string{"manifests", "blobs", "tags", "referrers"} {
		i := strings.LastIndex(rest, "/"+k+"/")
		if i <= 0 {
			continue
		}
		return rest[:i], k, rest[i+len(k)+2:], true
	}
	return "", "", "", false
}
