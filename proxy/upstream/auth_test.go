package upstream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// pull fetches a seeded image's manifest and first layer and checks them.
func pull(t *testing.T, r *Registry, s seeded) error {
	t.Helper()
	desc, body, err := r.GetManifest(t.Context(), s.repo, s.tag, nil)
	if err != nil {
		return err
	}
	if got := readAll(t, body); !bytes.Equal(got, s.manifest) {
		t.Fatalf("manifest bytes differ")
	}
	if desc.Digest.String() != s.digest {
		t.Fatalf("manifest digest %s, want %s", desc.Digest, s.digest)
	}
	want, d := layerBytes(t, s.layers[0])
	blob, size, err := r.GetBlob(t.Context(), s.repo, digestOf(t, d))
	if err != nil {
		return err
	}
	if got := readAll(t, blob); !bytes.Equal(got, want) || size != int64(len(want)) {
		t.Fatalf("blob: got %d bytes (size %d), want %d", len(got), size, len(want))
	}
	return nil
}

func TestAuthentication(t *testing.T) {
	t.Parallel()
	const user, pass = "puller", "s3cret-Pa55"
	tests := []struct {
		name      string
		basic     bool   // Basic-only registry instead of bearer tokens
		tsUser    string // credentials the token server demands
		creds     [2]string
		useAccess bool
		wantErr   error
	}{
		{name: "bearer anonymous"},
		{name: "bearer with credentials", tsUser: user, creds: [2]string{user, pass}},
		{name: "bearer access_token field", useAccess: true},
		{name: "bearer wrong password", tsUser: user, creds: [2]string{user, "wrong-" + pass}, wantErr: ErrDenied},
		{name: "bearer credentials missing", tsUser: user, wantErr: ErrDenied},
		{name: "basic", basic: true, creds: [2]string{user, pass}},
		{name: "basic wrong password", basic: true, creds: [2]string{user, "wrong-" + pass}, wantErr: ErrDenied},
		{name: "basic credentials missing", basic: true, wantErr: ErrDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			inner := realRegistry(false)
			s := seed(t, inner, "library/app", "v1")
			var h http.Handler
			ts := newTokenServer(t, tt.tsUser, pass)
			ts.useAccess = tt.useAccess
			if tt.basic {
				h = basicGate(inner, user, pass)
			} else {
				h = &bearerGate{next: inner, ts: ts}
			}
			var logs bytes.Buffer
			srv := serve(t, h)
			r := newClient(t, srv.URL, func(o *Options) {
				o.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
				if tt.creds[0] != "" {
					o.Credentials = staticCreds(tt.creds[0], tt.creds[1])
				}
			})
			err := pull(t, r, s)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Fatalf("pull: %v, want %v", err, tt.wantErr)
			}
			for _, secret := range []string{pass, "tok-", basicHeader(user, pass)} {
				if err != nil && strings.Contains(err.Error(), secret) {
					t.Errorf("error %q reveals a secret", err)
				}
				if strings.Contains(logs.String(), secret) {
					t.Errorf("logs reveal a secret: %s", logs.String())
				}
			}
			var e *Error
			if err != nil && (!errors.As(err, &e) || e.Upstream != "test" || e.Repo != "library/app") {
				t.Errorf("error lacks context: %#v", err)
			}
		})
	}
}

// TestTokenCache proves that tokens are fetched once per scope and reused,
// that an upstream known to want tokens gets them pre-emptively, and that an
// expiring token is replaced.
func TestTokenCache(t *testing.T) {
	t.Parallel()
	inner := realRegistry(false)
	a := seed(t, inner, "team/a", "v1")
	b := seed(t, inner, "team/b", "v1")
	ts := newTokenServer(t, "", "")
	ts.delay = 20 * time.Millisecond // widen the window for duplicate fetches
	gate := &bearerGate{next: inner, ts: ts}
	r := newClient(t, serve(t, gate).URL)
	now := time.Now()
	var clock sync.Mutex
	r.auth.now = func() time.Time { clock.Lock(); defer clock.Unlock(); return now }

	// A burst of concurrent pulls, none of which knows the upstream yet.
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			if err := pull(t, r, a); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	for range 5 {
		if err := pull(t, r, a); err != nil {
			t.Fatal(err)
		}
	}
	if n := ts.requests.Load(); n != 1 {
		t.Errorf("21 pulls of one repository made %d token requests, want 1", n)
	}
	challenged := gate.challenges.Load()

	// Another repository: a token for its scope, fetched before asking.
	if err := pull(t, r, b); err != nil {
		t.Fatal(err)
	}
	if n := ts.requests.Load(); n != 2 {
		t.Errorf("token requests after second repository: %d, want 2", n)
	}
	if n := gate.challenges.Load(); n != challenged {
		t.Errorf("second repository met %d more 401s, want 0: auth is not pre-emptive", n-challenged)
	}
	if got := ts.scopes[1]; len(got) != 1 || got[0] != "repository:team/b:pull" {
		t.Errorf("second token scopes %v", got)
	}

	// Past the token's lifetime (300s minus margin) a new one is fetched.
	clock.Lock()
	now = now.Add(290 * time.Second)
	clock.Unlock()
	if err := pull(t, r, a); err != nil {
		t.Fatal(err)
	}
	if n := ts.requests.Load(); n != 3 {
		t.Errorf("token requests after expiry: %d, want 3", n)
	}
}

// TestRevokedToken: a cached token the upstream stops accepting is dropped
// and replaced once, without failing the request.
func TestRevokedToken(t *testing.T) {
	t.Parallel()
	inner := realRegistry(false)
	s := seed(t, inner, "app", "v1")
	ts := newTokenServer(t, "", "")
	r := newClient(t, serve(t, &bearerGate{next: inner, ts: ts}).URL)
	if err := pull(t, r, s); err != nil {
		t.Fatal(err)
	}
	ts.mu.Lock()
	clear(ts.granted)
	ts.mu.Unlock()
	if err := pull(t, r, s); err != nil {
		t.Fatalf("pull after revocation: %v", err)
	}
	if n := ts.requests.Load(); n != 2 {
		t.Errorf("token requests: %d, want 2", n)
	}
}

// TestCredentialsRotation: credentials are read when needed, so a rotated
// secret is used without rebuilding the Registry.
func TestCredentialsRotation(t *testing.T) {
	t.Parallel()
	inner := realRegistry(false)
	s := seed(t, inner, "app", "v1")
	var mu sync.Mutex
	pass := "old"
	srvPass := "old"
	h := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		mu.Lock()
		p := srvPass
		mu.Unlock()
		basicGate(inner, "u", p).ServeHTTP(w, req)
	})
	r := newClient(t, serve(t, h).URL, func(o *Options) {
		o.Credentials = func(context.Context) (string, string, error) {
			mu.Lock()
			defer mu.Unlock()
			return "u", pass, nil
		}
	})
	if err := pull(t, r, s); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	pass, srvPass = "new", "new"
	mu.Unlock()
	if err := pull(t, r, s); err != nil {
		t.Fatalf("pull after rotation: %v", err)
	}
}

func TestCredentialsFailure(t *testing.T) {
	t.Parallel()
	inner := realRegistry(false)
	s := seed(t, inner, "app", "v1")
	cause := errors.New("open /run/secrets/vendor: permission denied")
	r := newClient(t, serve(t, basicGate(inner, "u", "p")).URL, func(o *Options) {
		o.Credentials = func(context.Context) (string, string, error) { return "", "", cause }
	})
	err := pull(t, r, s)
	if !errors.Is(err, ErrDenied) || !errors.Is(err, cause) {
		t.Fatalf("pull: %v, want ErrDenied wrapping the credentials error", err)
	}
}

// TestPlainHTTPRealm: credentials for a TLS upstream are never sent to a
// token realm over plain HTTP.
func TestPlainHTTPRealm(t *testing.T) {
	t.Parallel()
	inner := realRegistry(false)
	s := seed(t, inner, "app", "v1")
	ts := newTokenServer(t, "u", "p")
	srv := httptest.NewTLSServer(&bearerGate{next: inner, ts: ts})
	t.Cleanup(srv.Close)
	tr := srv.Client().Transport.(*http.Transport)
	t.Cleanup(tr.CloseIdleConnections)
	r := newClient(t, srv.URL, func(o *Options) {
		o.Credentials = staticCreds("u", "p")
		o.Transport = tr
	})
	if err := pull(t, r, s); !errors.Is(err, ErrDenied) {
		t.Fatalf("pull: %v, want ErrDenied", err)
	}
	if n := ts.requests.Load(); n != 0 {
		t.Errorf("plain-HTTP realm received %d requests", n)
	}
}

func TestReadAfterClose(t *testing.T) {
	t.Parallel()
	inner := realRegistry(false)
	s := seed(t, inner, "app", "v1")
	_, d := layerBytes(t, s.layers[0])
	h, count := misbehave(inner, func(int64, http.ResponseWriter, *http.Request) bool { return false })
	r := newClient(t, serve(t, h).URL)
	body, _, err := r.GetBlob(t.Context(), "app", digestOf(t, d))
	if err != nil {
		t.Fatal(err)
	}
	body.Close()
	if _, err := body.Read(make([]byte, 10)); err == nil {
		t.Error("Read after Close succeeded")
	}
	if n := count.Load(); n != 1 {
		t.Errorf("Read after Close made %d requests, want 1", n)
	}
}

// TestTokenCacheBounded: the cache holds at most maxTokens tokens however
// many repositories are asked for, keeps the freshest, and drops expired
// ones.
func TestTokenCacheBounded(t *testing.T) {
	t.Parallel()
	ts := newTokenServer(t, "", "")
	r := newClient(t, serve(t, &bearerGate{next: realRegistry(false), ts: ts}).URL)
	r.auth.maxTokens = 4
	now := time.Now()
	var clock sync.Mutex
	r.auth.now = func() time.Time { clock.Lock(); defer clock.Unlock(); return now }
	ask := func(repo string) {
		t.Helper()
		// The repository does not exist: a token is fetched for it, then
		// the registry answers 404.
		if _, err := r.HeadManifest(t.Context(), repo, "v1", nil); !errors.Is(err, ErrNotFound) {
			t.Fatalf("HeadManifest %s: %v, want ErrNotFound", repo, err)
		}
	}
	cached := func() int {
		r.auth.mu.Lock()
		defer r.auth.mu.Unlock()
		return len(r.auth.tokens)
	}
	for i := range 10 {
		ask(fmt.Sprintf("team/r%d", i))
		clock.Lock()
		now = now.Add(time.Second) // each token expires a little later
		clock.Unlock()
	}
	if n := cached(); n != 4 {
		t.Errorf("%d tokens cached after 10 repositories, want the bound 4", n)
	}
	before := ts.requests.Load()
	ask("team/r9")
	if n := ts.requests.Load(); n != before {
		t.Errorf("the newest token was evicted: %d more token requests", n-before)
	}
	clock.Lock()
	now = now.Add(time.Hour)
	clock.Unlock()
	ask("team/other")
	if n := cached(); n != 1 {
		t.Errorf("%d tokens cached after all expired and one was added, want 1", n)
	}
}

// TestTokenLifetimeOverflow: an absurd expires_in is capped, not turned
// into a token that is stale at once (and fetched again for every request).
func TestTokenLifetimeOverflow(t *testing.T) {
	t.Parallel()
	ts := newTokenServer(t, "", "")
	ts.expiresIn = 9223372037 // seconds; as a time.Duration it overflows
	r := newClient(t, serve(t, &bearerGate{next: realRegistry(false), ts: ts}).URL)
	for range 3 {
		if _, err := r.HeadManifest(t.Context(), "app", "v1", nil); !errors.Is(err, ErrNotFound) {
			t.Fatalf("HeadManifest: %v, want ErrNotFound", err)
		}
	}
	if n := ts.requests.Load(); n != 1 {
		t.Errorf("%d token requests for one repository, want 1", n)
	}
}

// TestTokenInputsBounded: what a challenge and a token response contribute
// to the token cache is bounded.
func TestTokenInputsBounded(t *testing.T) {
	t.Parallel()
	t.Run("huge scope", func(t *testing.T) {
		t.Parallel()
		ts := newTokenServer(t, "", "")
		scope := strings.Repeat("repository:x:pull ", 1000)
		up := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm=%q,service="test-registry",scope=%q`, ts.URL+"/token", scope))
			w.WriteHeader(http.StatusUnauthorized)
		}))
		r := newClient(t, up.URL)
		if _, err := r.HeadManifest(t.Context(), "app", "v1", nil); !errors.Is(err, ErrInvalid) {
			t.Fatalf("HeadManifest: %v, want ErrInvalid", err)
		}
		if n := ts.requests.Load(); n != 0 {
			t.Errorf("token server asked %d times with an 18 KB scope", n)
		}
	})
	t.Run("huge token", func(t *testing.T) {
		t.Parallel()
		realm := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, `{"token":%q}`, strings.Repeat("t", 100<<10))
		}))
		up := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm=%q`, realm.URL))
			w.WriteHeader(http.StatusUnauthorized)
		}))
		r := newClient(t, up.URL)
		if _, err := r.HeadManifest(t.Context(), "app", "v1", nil); !errors.Is(err, ErrInvalid) {
			t.Fatalf("HeadManifest: %v, want ErrInvalid", err)
		}
	})
}

// TestTokenTimeoutOverflow: the bound on one token fetch is computed from
// the retry settings; settings whose product overflows a time.Duration
// must not turn it into a deadline already past.
func TestTokenTimeoutOverflow(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		edit func(*Options)
	}{
		{"long maxDelay", func(o *Options) { o.MaxDelay = 1_000_000 * time.Hour }},
		{"many attempts", func(o *Options) { o.MaxAttempts = 1_000_000_000 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ts := newTokenServer(t, "", "")
			r := newClient(t, serve(t, &bearerGate{next: realRegistry(false), ts: ts}).URL, tc.edit)
			if _, err := r.HeadManifest(t.Context(), "app", "v1", nil); !errors.Is(err, ErrNotFound) {
				t.Fatalf("HeadManifest: %v, want ErrNotFound", err)
			}
		})
	}
}
