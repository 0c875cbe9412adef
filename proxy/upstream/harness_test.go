package upstream

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// realRegistry is go-containerregistry's in-process registry, the upstream
// under test; wrappers in front of it add what real upstreams do.
func realRegistry(referrers bool) http.Handler {
	return registry.New(registry.Logger(log.New(io.Discard, "", 0)), registry.WithReferrersSupport(referrers))
}

// seeded holds an image pushed into a real registry.
type seeded struct {
	repo, tag string
	img       v1.Image
	digest    string
	manifest  []byte
	layers    []v1.Layer
}

// seed pushes a random image as repo:tag into h (through a short-lived
// server of its own) and tags it with any extra tags.
func seed(t *testing.T, h http.Handler, repo, tag string, extraTags ...string) seeded {
	t.Helper()
	img, err := random.Image(64<<10, 3)
	if err != nil {
		t.Fatal(err)
	}
	push(t, h, repo+":"+tag, img, extraTags...)
	d, _ := img.Digest()
	raw, _ := img.RawManifest()
	layers, _ := img.Layers()
	return seeded{repo: repo, tag: tag, img: img, digest: d.String(), manifest: raw, layers: layers}
}

// push writes img to h under ref ("repo:tag" or "repo@digest").
func push(t *testing.T, h http.Handler, ref string, img v1.Image, extraTags ...string) {
	t.Helper()
	srv := httptest.NewServer(h)
	defer srv.Close()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	host := strings.TrimPrefix(srv.URL, "http://")
	r, err := name.ParseReference(host+"/"+ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	opts := []remote.Option{remote.WithContext(t.Context()), remote.WithTransport(tr)}
	if err := remote.Write(r, img, opts...); err != nil {
		t.Fatalf("seeding %s: %v", ref, err)
	}
	for _, extra := range extraTags {
		tag := r.Context().Tag(extra)
		if err := remote.Tag(tag, img, opts...); err != nil {
			t.Fatalf("tagging %s: %v", extra, err)
		}
	}
}

// layerBytes returns a layer's compressed bytes and digest.
func layerBytes(t *testing.T, l v1.Layer) ([]byte, string) {
	t.Helper()
	rc, err := l.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	d, _ := l.Digest()
	return b, d.String()
}

// serve starts h on a loopback listener for the test's duration.
func serve(t *testing.T, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

// newClient builds a Registry for url with test-friendly delays. Its
// transport is closed at cleanup so goleak sees no idle connections.
func newClient(t *testing.T, url string, edit ...func(*Options)) *Registry {
	t.Helper()
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DisableCompression = true
	t.Cleanup(tr.CloseIdleConnections)
	o := Options{Name: "test", URL: url, Transport: tr, BaseDelay: time.Millisecond, MaxDelay: 50 * time.Millisecond}
	for _, e := range edit {
		e(&o)
	}
	r, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.CloseIdleConnections)
	return r
}

// tokenServer is a Docker-Hub-style token endpoint on its own listener. It
// issues a fresh token per request and remembers the scopes it granted.
type tokenServer struct {
	*httptest.Server
	user, pass string // required Basic credentials, if set
	expiresIn  int
	delay      time.Duration
	useAccess  bool // answer with access_token instead of token

	requests atomic.Int64
	mu       sync.Mutex
	granted  map[string][]string // token -> scopes
	scopes   [][]string          // scopes of each request, in order
}

func newTokenServer(t *testing.T, user, pass string) *tokenServer {
	ts := &tokenServer{user: user, pass: pass, expiresIn: 300, granted: map[string][]string{}}
	ts.Server = serve(t, http.HandlerFunc(ts.serveHTTP))
	return ts
}

func (ts *tokenServer) serveHTTP(w http.ResponseWriter, r *http.Request) {
	n := ts.requests.Add(1)
	time.Sleep(ts.delay)
	if ts.user != "" {
		u, p, ok := r.BasicAuth()
		if !ok || u != ts.user || p != ts.pass {
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprint(w, `{"details":"incorrect username or password"}`)
			return
		}
	}
	if r.URL.Query().Get("service") != "test-registry" {
		http.Error(w, "wrong service", http.StatusBadRequest)
		return
	}
	scopes := r.URL.Query()["scope"]
	tok := fmt.Sprintf("tok-%d", n)
	ts.mu.Lock()
	ts.granted[tok] = scopes
	ts.scopes = append(ts.scopes, scopes)
	ts.mu.Unlock()
	field := "token"
	if ts.useAccess {
		field = "access_token"
	}
	_ = json.NewEncoder(w).Encode(map[string]any{field: tok, "expires_in": ts.expiresIn})
}

// allows reports whether tok grants pull on repo.
func (ts *tokenServer) allows(tok, repo string) bool {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	for _, s := range ts.granted[tok] {
		if s == "repository:"+repo+":pull" {
			return true
		}
	}
	return false
}

// repoOf extracts the repository from a /v2/<repo>/<kind>/... path.
func repoOf(path string) string {
	p := strings.TrimPrefix(path, "/v2/")
	for _, kind := range []string{"/manifests/", "/blobs/", "/tags/", "/referrers/"} {
		if i := strings.LastIndex(p, kind); i >= 0 {
			return p[:i]
		}
	}
	return ""
}

// bearerGate demands a token from ts for the repository a request names,
// like Docker Hub. It counts the 401s it sends.
type bearerGate struct {
	next       http.Handler
	ts         *tokenServer
	realm      string // the realm to announce; "" means ts.URL + "/token"
	challenges atomic.Int64
}

func (g *bearerGate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	repo := repoOf(r.URL.Path)
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || !g.ts.allows(tok, repo) {
		g.challenges.Add(1)
		realm := g.realm
		if realm == "" {
			realm = g.ts.URL + "/token"
		}
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm=%q,service="test-registry",scope="repository:%s:pull"`, realm, repo))
		w.WriteHeader(http.StatusUnauthorized)
		fmt.Fprint(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
		return
	}
	g.next.ServeHTTP(w, r)
}

// basicGate demands Basic credentials, like many vendor registries.
func basicGate(next http.Handler, user, pass string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		if !ok || u != user || p != pass {
			w.Header().Set("WWW-Authenticate", `Basic realm="vendor"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// cdnRedirect sends blob GETs to a separate CDN listener, which serves the
// bytes from the real registry and fails the test if it ever sees an
// Authorization header.
func cdnRedirect(t *testing.T, next http.Handler) (http.Handler, *atomic.Int64) {
	var hits atomic.Int64
	cdn := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if a := r.Header.Get("Authorization"); a != "" {
			t.Errorf("CDN received Authorization %q", a)
			http.Error(w, "credentials leaked to CDN", http.StatusForbidden)
			return
		}
		inner := r.Clone(r.Context())
		inner.URL.Path = strings.TrimPrefix(r.URL.Path, "/cdn")
		inner.Header.Del("Authorization")
		next.ServeHTTP(w, inner)
	}))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			http.Redirect(w, r, cdn.URL+"/cdn"+r.URL.Path+"?sig=abc", http.StatusTemporaryRedirect)
			return
		}
		next.ServeHTTP(w, r)
	}), &hits
}

func basicHeader(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

// readAll reads a body fully and closes it.
func readAll(t *testing.T, rc io.ReadCloser) []byte {
	t.Helper()
	defer rc.Close()
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, rc); err != nil {
		t.Fatalf("reading body: %v", err)
	}
	return buf.Bytes()
}

func staticCreds(user, pass string) func(context.Context) (string, string, error) {
	return func(context.Context) (string, string, error) { return user, pass, nil }
}
