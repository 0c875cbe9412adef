package pullauth

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/crypto/bcrypt"

	"github.com/airlock-registry/airlock/proxy"
	"github.com/airlock-registry/airlock/storage"
	"github.com/airlock-registry/airlock/storage/metadata"
)

const layer = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// routingProxy is a real proxy with three upstreams, used as the Resolver
// so restrictions are tested against airlock's own routing: dockerhub (the
// default, docker.io), vendor (vendor.example) and quay (quay.io).
func routingProxy(t *testing.T) *proxy.Proxy {
	t.Helper()
	rt, err := proxy.NewRouter([]proxy.Upstream{
		{Name: "dockerhub", Hosts: []string{"docker.io"}, Default: true, Library: true},
		{Name: "vendor", Hosts: []string{"vendor.example"}},
		{Name: "quay", Hosts: []string{"quay.io"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	blobs, err := storage.NewFilesystem(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	meta, err := metadata.Open(t.TempDir() + "/metadata.db")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { meta.Close() })
	p, err := proxy.New(proxy.Options{Router: rt, Blobs: blobs, Meta: meta})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close(context.Background()) })
	return p
}

// served records what reached the wrapped handler.
type served struct {
	mu    sync.Mutex
	users []string
	auth  []string
}

func (s *served) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u, _ := User(r.Context())
	s.mu.Lock()
	s.users = append(s.users, u)
	s.auth = append(s.auth, r.Header.Get("Authorization"))
	s.mu.Unlock()
	w.WriteHeader(http.StatusOK)
}

func (s *served) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.users)
}

type fixture struct {
	auth     *Authenticator
	next     *served
	compares atomic.Int64
	log      *bytes.Buffer
}

// newFixture serves users alice, bob and ci-bot; vendor is restricted to
// alice, the default upstream dockerhub to alice and ci-bot, quay is open.
func newFixture(t *testing.T, o Options) *fixture {
	t.Helper()
	f := &fixture{next: &served{}, log: &bytes.Buffer{}}
	file := "alice:" + htpasswdHash(t, "alice-pw") + "\nbob:" + htpasswdHash(t, "bob-pw") + "\nci-bot:" + htpasswdHash(t, "ci-pw") + "\n"
	users, err := ParseHtpasswd("htpasswd", strings.NewReader(file))
	if err != nil {
		t.Fatal(err)
	}
	o.Next, o.Resolver = f.next, routingProxy(t)
	o.Logger = slog.New(slog.NewTextHandler(&lockedWriter{w: f.log}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if o.Policy.Users == nil {
		o.Policy = Policy{Users: users, Realm: "test-realm", Upstreams: map[string][]string{
			"vendor": {"alice"}, "dockerhub": {"alice", "ci-bot"}}}
	}
	f.auth, err = New(o)
	if err != nil {
		t.Fatal(err)
	}
	f.auth.compare = func(hash, pw []byte) error {
		f.compares.Add(1)
		return bcrypt.CompareHashAndPassword(hash, pw)
	}
	return f
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func basicHeader(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

func (f *fixture) do(t *testing.T, method, target string, auth ...string) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequestWithContext(t.Context(), method, target, nil)
	for _, a := range auth {
		r.Header.Add("Authorization", a)
	}
	w := httptest.NewRecorder()
	f.auth.ServeHTTP(w, r)
	return w
}

// ociCode returns the code of the first error in an OCI error body.
func ociCode(t *testing.T, w *httptest.ResponseRecorder) string {
	t.Helper()
	var body struct {
		Errors []struct{ Code, Message string }
	}
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || len(body.Errors) != 1 {
		t.Fatalf("body %q is not one OCI error: %v", w.Body.String(), err)
	}
	return body.Errors[0].Code
}

func TestAuthenticator(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{})
	alice, bob, ci := basicHeader("alice", "alice-pw"), basicHeader("bob", "bob-pw"), basicHeader("ci-bot", "ci-pw")
	const challenge = `Basic realm="test-realm", charset="UTF-8"`
	for _, tc := range []struct {
		name, method, target string
		auth                 []string
		status               int
		code                 string
	}{
		{"no credentials on the base endpoint", "GET", "/v2/", nil, 401, "UNAUTHORIZED"},
		{"no credentials, HEAD", "HEAD", "/v2/", nil, 401, ""},
		{"no credentials on a manifest", "GET", "/v2/quay/org/app/manifests/v1", nil, 401, "UNAUTHORIZED"},
		{"wrong password", "GET", "/v2/", []string{basicHeader("alice", "bob-pw")}, 401, "UNAUTHORIZED"},
		{"unknown user", "GET", "/v2/", []string{basicHeader("mallory", "alice-pw")}, 401, "UNAUTHORIZED"},
		{"empty password", "GET", "/v2/", []string{basicHeader("alice", "")}, 401, "UNAUTHORIZED"},
		{"password of another user", "GET", "/v2/", []string{basicHeader("bob", "alice-pw")}, 401, "UNAUTHORIZED"},
		{"good credentials, base endpoint", "GET", "/v2/", []string{alice}, 200, ""},
		{"good credentials, lower-case scheme", "GET", "/v2/", []string{"basic " + strings.TrimPrefix(bob, "Basic ")}, 200, ""},
		{"malformed: not base64", "GET", "/v2/", []string{"Basic !!!not-base64"}, 401, "UNAUTHORIZED"},
		{"malformed: no colon", "GET", "/v2/", []string{"Basic " + base64.StdEncoding.EncodeToString([]byte("alice"))}, 401, "UNAUTHORIZED"},
		{"malformed: empty user", "GET", "/v2/", []string{basicHeader("", "alice-pw")}, 401, "UNAUTHORIZED"},
		{"empty user and password", "GET", "/v2/", []string{basicHeader("", "")}, 401, "UNAUTHORIZED"},
		{"malformed: bearer", "GET", "/v2/", []string{"Bearer abc.def.ghi"}, 401, "UNAUTHORIZED"},
		{"malformed: scheme only", "GET", "/v2/", []string{"Basic"}, 401, "UNAUTHORIZED"},
		{"malformed: two headers", "GET", "/v2/", []string{alice, alice}, 401, "UNAUTHORIZED"},
		{"malformed: oversized", "GET", "/v2/", []string{"Basic " + strings.Repeat("A", 8<<10)}, 401, "UNAUTHORIZED"},

		{"restricted upstream, prefix route, allowed", "GET", "/v2/vendor/app/manifests/v1", []string{alice}, 200, ""},
		{"restricted upstream, prefix route, refused", "GET", "/v2/vendor/app/manifests/v1", []string{bob}, 403, "DENIED"},
		{"restricted upstream, prefix route, blob", "GET", "/v2/vendor/app/blobs/" + layer, []string{bob}, 403, "DENIED"},
		{"restricted upstream, prefix route, tags", "GET", "/v2/vendor/app/tags/list", []string{ci}, 403, "DENIED"},
		{"restricted upstream, prefix route, HEAD", "HEAD", "/v2/vendor/app/manifests/v1", []string{bob}, 403, ""},
		{"restricted upstream, ns route, allowed", "GET", "/v2/app/manifests/v1?ns=vendor.example", []string{alice}, 200, ""},
		{"restricted upstream, ns route, refused", "GET", "/v2/app/manifests/v1?ns=vendor.example", []string{bob}, 403, "DENIED"},
		{"restricted upstream, ns route in capitals", "GET", "/v2/app/manifests/v1?ns=VENDOR.example", []string{bob}, 403, "DENIED"},
		{"restricted upstream, ns route, blob", "GET", "/v2/app/blobs/" + layer + "?ns=vendor.example", []string{bob}, 403, "DENIED"},
		{"restricted default upstream, allowed", "GET", "/v2/library/app/manifests/v1", []string{ci}, 200, ""},
		{"restricted default upstream, refused", "GET", "/v2/library/app/manifests/v1", []string{bob}, 403, "DENIED"},
		{"restricted default upstream, single name", "GET", "/v2/app/manifests/v1", []string{bob}, 403, "DENIED"},
		{"restricted default upstream by ns", "GET", "/v2/library/app/manifests/v1?ns=docker.io", []string{bob}, 403, "DENIED"},
		{"open upstream", "GET", "/v2/quay/org/app/manifests/v1", []string{bob}, 200, ""},
		{"open upstream by ns", "GET", "/v2/vendor/app/manifests/v1?ns=quay.io", []string{bob}, 200, ""},
		{"unroutable namespace goes on to the proxy's 404", "GET", "/v2/app/manifests/v1?ns=nowhere.example", []string{bob}, 200, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := f.next.count()
			w := f.do(t, tc.method, tc.target, tc.auth...)
			if w.Code != tc.status {
				t.Fatalf("status = %d, want %d; body %s", w.Code, tc.status, w.Body)
			}
			reached := f.next.count() > before
			if reached != (tc.status == 200) {
				t.Fatalf("request reached the registry handler: %v, want %v", reached, tc.status == 200)
			}
			if got := w.Header().Get("WWW-Authenticate"); (tc.status == 401) != (got == challenge) {
				t.Errorf("WWW-Authenticate = %q on a %d", got, tc.status)
			}
			if tc.code != "" {
				if got := ociCode(t, w); got != tc.code {
					t.Errorf("code = %s, want %s", got, tc.code)
				}
			} else if tc.method == "HEAD" && w.Body.Len() != 0 {
				t.Errorf("HEAD answered with a body: %q", w.Body)
			}
		})
	}
	f.next.mu.Lock()
	defer f.next.mu.Unlock()
	for i, a := range f.next.auth {
		if a != "" {
			t.Errorf("request %d reached the registry handler with its Authorization header", i)
		}
		if f.next.users[i] == "" {
			t.Errorf("request %d reached the registry handler without its user", i)
		}
	}
}

func TestAuthenticatorNeverLogsSecrets(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{})
	hdr := basicHeader("alice", "wrong-secret-pw")
	f.do(t, "GET", "/v2/", hdr)
	f.do(t, "GET", "/v2/", "Basic "+base64.StdEncoding.EncodeToString([]byte("nocolon-secret")))
	f.do(t, "GET", "/v2/vendor/app/manifests/v1", basicHeader("bob", "bob-pw"))
	log := f.log.String()
	for _, secret := range []string{"wrong-secret-pw", strings.TrimPrefix(hdr, "Basic "), "nocolon-secret", "bob-pw"} {
		if strings.Contains(log, secret) {
			t.Errorf("log holds a secret %q:\n%s", secret, log)
		}
	}
	for _, want := range []string{"user=alice", "reason=\"wrong password\"", "user=bob", "upstream=vendor"} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %s:\n%s", want, log)
		}
	}
}

func TestVerificationCache(t *testing.T) {
	t.Parallel()
	now := time.Unix(1e9, 0)
	var clock atomic.Pointer[time.Time]
	clock.Store(&now)
	f := newFixture(t, Options{CacheTTL: time.Minute, Now: func() time.Time { return *clock.Load() }})
	alice := basicHeader("alice", "alice-pw")
	// A pull: the base endpoint, a manifest and twenty layers.
	for i := range 22 {
		if w := f.do(t, "GET", "/v2/vendor/app/blobs/"+layer, alice); w.Code != 200 {
			t.Fatalf("request %d: %d", i, w.Code)
		}
	}
	if n := f.compares.Load(); n != 1 {
		t.Fatalf("bcrypt comparisons for one pull = %d, want 1", n)
	}
	// Failures are never cached: each wrong guess pays.
	for range 3 {
		f.do(t, "GET", "/v2/", basicHeader("alice", "guess"))
	}
	if n := f.compares.Load(); n != 4 {
		t.Fatalf("bcrypt comparisons after three wrong guesses = %d, want 4", n)
	}
	// Expired: verified again.
	later := now.Add(2 * time.Minute)
	clock.Store(&later)
	f.do(t, "GET", "/v2/", alice)
	if n := f.compares.Load(); n != 5 {
		t.Fatalf("bcrypt comparisons after expiry = %d, want 5", n)
	}
	// A changed password: the cached verification of the old one is void.
	file := "alice:" + htpasswdHash(t, "new-pw") + "\n"
	users, err := ParseHtpasswd("htpasswd", strings.NewReader(file))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.auth.SetPolicy(Policy{Users: users}); err != nil {
		t.Fatal(err)
	}
	if w := f.do(t, "GET", "/v2/", alice); w.Code != 401 {
		t.Fatalf("old password after reload: %d, want 401", w.Code)
	}
	if w := f.do(t, "GET", "/v2/", basicHeader("alice", "new-pw")); w.Code != 200 {
		t.Fatalf("new password after reload: %d, want 200", w.Code)
	}
}

func TestVerificationCacheBounded(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{CacheSize: 2})
	for _, c := range [][2]string{{"alice", "alice-pw"}, {"bob", "bob-pw"}, {"ci-bot", "ci-pw"}, {"alice", "alice-pw"}} {
		if w := f.do(t, "GET", "/v2/", basicHeader(c[0], c[1])); w.Code != 200 {
			t.Fatalf("%s: %d", c[0], w.Code)
		}
	}
	if n := f.auth.cache.len(); n != 2 {
		t.Errorf("cache entries = %d, want the bound 2", n)
	}
	// alice was evicted by ci-bot, so her second request paid again.
	if n := f.compares.Load(); n != 4 {
		t.Errorf("bcrypt comparisons = %d, want 4", n)
	}
}

// TestConcurrentPullSharesOneComparison: the parallel layer requests that
// open a pull arrive before any verification is cached.
func TestConcurrentPullSharesOneComparison(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{})
	release := make(chan struct{})
	f.auth.compare = func(hash, pw []byte) error {
		f.compares.Add(1)
		<-release
		return bcrypt.CompareHashAndPassword(hash, pw)
	}
	var wg sync.WaitGroup
	codes := make([]int, 20)
	for i := range codes {
		wg.Go(func() { codes[i] = f.do(t, "GET", "/v2/quay/org/app/blobs/"+layer, basicHeader("bob", "bob-pw")).Code })
	}
	for f.compares.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond) // let the others join the comparison
	close(release)
	wg.Wait()
	for i, c := range codes {
		if c != 200 {
			t.Errorf("request %d: %d", i, c)
		}
	}
	if n := f.compares.Load(); n != 1 {
		t.Errorf("bcrypt comparisons for 20 concurrent requests = %d, want 1", n)
	}
}

// TestComparisonsBounded: a flood of bad credentials occupies at most
// MaxVerifications comparisons; beyond MaxWaiting, clients get 429 at once.
func TestComparisonsBounded(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{MaxVerifications: 1, MaxWaiting: 1, MaxWait: time.Minute})
	release := make(chan struct{})
	var running, peak atomic.Int64
	f.auth.compare = func(hash, pw []byte) error {
		if n := running.Add(1); n > peak.Load() {
			peak.Store(n)
		}
		defer running.Add(-1)
		<-release
		return bcrypt.CompareHashAndPassword(hash, pw)
	}
	var wg sync.WaitGroup
	codes := make(chan int, 2)
	for i := range 2 {
		wg.Go(func() { codes <- f.do(t, "GET", "/v2/", basicHeader("mallory", "guess"+string(rune('a'+i)))).Code })
		// One holds the slot, the next waits for it.
		for running.Load() == 0 || (i == 1 && f.auth.waiting.Load() == 0) {
			time.Sleep(time.Millisecond)
		}
	}
	w := f.do(t, "GET", "/v2/", basicHeader("mallory", "guess-c"))
	if w.Code != http.StatusTooManyRequests || ociCode(t, w) != "TOOMANYREQUESTS" || w.Header().Get("Retry-After") == "" {
		t.Fatalf("third concurrent bad login: %d %s (Retry-After %q), want 429 TOOMANYREQUESTS", w.Code, w.Body, w.Header().Get("Retry-After"))
	}
	close(release)
	wg.Wait()
	close(codes)
	for c := range codes {
		if c != 401 {
			t.Errorf("queued bad login: %d, want 401", c)
		}
	}
	if p := peak.Load(); p != 1 {
		t.Errorf("peak concurrent comparisons = %d, want 1", p)
	}
}

// TestUnknownUserPaysAComparison: without the dummy comparison an unknown
// user would be refused faster than a wrong password, revealing which
// names exist.
func TestUnknownUserPaysAComparison(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{})
	var costs []int
	f.auth.compare = func(hash, pw []byte) error {
		c, _ := bcrypt.Cost(hash)
		costs = append(costs, c)
		return bcrypt.CompareHashAndPassword(hash, pw)
	}
	f.do(t, "GET", "/v2/", basicHeader("alice", "wrong"))
	f.do(t, "GET", "/v2/", basicHeader("nobody", "wrong"))
	if len(costs) != 2 || costs[0] != costs[1] {
		t.Fatalf("bcrypt costs for a wrong password and an unknown user = %v, want two equal", costs)
	}
}

func TestNoPolicyPassesEverything(t *testing.T) {
	t.Parallel()
	next := &served{}
	a, err := New(Options{Next: next})
	if err != nil {
		t.Fatal(err)
	}
	w := httptest.NewRecorder()
	a.ServeHTTP(w, httptest.NewRequest("GET", "/v2/", nil))
	if w.Code != 200 || next.count() != 1 {
		t.Fatalf("without a policy: %d, reached %d", w.Code, next.count())
	}
}

func TestSetPolicyRefuses(t *testing.T) {
	t.Parallel()
	users := Users{}
	a, err := New(Options{Next: &served{}})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.SetPolicy(Policy{Users: users, Realm: `a"b`}); err == nil {
		t.Error("a realm with a quote was accepted")
	}
	if err := a.SetPolicy(Policy{Users: users, Upstreams: map[string][]string{"vendor": {"alice"}}}); err == nil {
		t.Error("a restriction without a Resolver was accepted")
	}
	if a.state.Load() != nil {
		t.Error("a refused policy replaced the running one")
	}
	// An empty user list refuses everyone rather than letting everyone in.
	if err := a.SetPolicy(Policy{Users: users}); err != nil {
		t.Fatal(err)
	}
	w := httptest.NewRecorder()
	a.ServeHTTP(w, httptest.NewRequest("GET", "/v2/", nil))
	if w.Code != 401 {
		t.Fatalf("no users: %d, want 401", w.Code)
	}
}

// TestMetrics: refused requests never reach the registry handler, so its
// request counters miss them; the Authenticator's own must not.
func TestMetrics(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	f := newFixture(t, Options{Registerer: reg})
	f.do(t, "GET", "/v2/")
	f.do(t, "GET", "/v2/", "Bearer x")
	f.do(t, "GET", "/v2/", basicHeader("alice", "wrong"))
	f.do(t, "GET", "/v2/", basicHeader("nobody", "wrong"))
	f.do(t, "GET", "/v2/vendor/app/manifests/v1", basicHeader("bob", "bob-pw"))
	f.do(t, "GET", "/v2/vendor/app/manifests/v1", basicHeader("bob", "bob-pw"))
	refusals := f.auth.metrics.refusals
	for reason, want := range map[string]float64{reasonNoCredentials: 1, reasonMalformed: 1, reasonInvalid: 2, reasonDenied: 2, reasonThrottled: 0} {
		if got := testutil.ToFloat64(refusals.WithLabelValues(reason)); got != want {
			t.Errorf("refusals{reason=%q} = %v, want %v", reason, got, want)
		}
	}
	// Two wrong passwords and one good login; bob's second request was cached.
	if got := testutil.ToFloat64(f.auth.metrics.comparisons); got != 3 || f.compares.Load() != 3 {
		t.Errorf("bcrypt comparisons counted %v, run %d; want 3", got, f.compares.Load())
	}
	if n, err := testutil.GatherAndCount(reg, "airlock_pull_auth_refusals_total", "airlock_pull_auth_bcrypt_comparisons_total"); err != nil || n != 6 {
		t.Errorf("registered series = %d, %v; want 6", n, err)
	}
}

// TestPermittedUnderTheCurrentPolicy: the proxy's second check, with the
// upstream it routed to, follows the policy in force, so a request routed
// across a reload cannot reach an upstream restricted by the new policy.
func TestPermittedUnderTheCurrentPolicy(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{})
	as := func(user string) context.Context { return context.WithValue(t.Context(), userKey{}, user) }
	for _, tc := range []struct {
		user, upstream string
		want           bool
	}{
		{"alice", "vendor", true},
		{"bob", "vendor", false},
		{"", "vendor", false},
		{"bob", "quay", true},
		{"ci-bot", "dockerhub", true},
		{"bob", "dockerhub", false},
	} {
		if got := f.auth.Permitted(as(tc.user), tc.upstream); got != tc.want {
			t.Errorf("Permitted(%q, %q) = %v, want %v", tc.user, tc.upstream, got, tc.want)
		}
	}
	// A reload that restricts a renamed upstream applies at once.
	users := f.auth.state.Load().users
	if err := f.auth.SetPolicy(Policy{Users: users, Upstreams: map[string][]string{"vendor2": {"alice"}}}); err != nil {
		t.Fatal(err)
	}
	if f.auth.Permitted(as("bob"), "vendor2") || !f.auth.Permitted(as("bob"), "vendor") {
		t.Error("Permitted does not follow the reloaded policy")
	}
}
