package upstream

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// TestBlobRedirectToCDN follows blob redirects to another listener and
// proves no Authorization reaches it, for both token and Basic upstreams
// (the CDN handler fails the test if it sees one).
func TestBlobRedirectToCDN(t *testing.T) {
	t.Parallel()
	for _, scheme := range []string{"bearer", "basic"} {
		t.Run(scheme, func(t *testing.T) {
			t.Parallel()
			inner := realRegistry(false)
			s := seed(t, inner, "app", "v1")
			front, cdnHits := cdnRedirect(t, inner)
			var h http.Handler
			if scheme == "basic" {
				h = basicGate(front, "u", "p")
			} else {
				h = &bearerGate{next: front, ts: newTokenServer(t, "u", "p")}
			}
			var mu sync.Mutex
			var events []Event
			r := newClient(t, serve(t, h).URL, func(o *Options) {
				o.Credentials = staticCreds("u", "p")
				o.Observe = func(e Event) { mu.Lock(); events = append(events, e); mu.Unlock() }
			})
			if err := pull(t, r, s); err != nil {
				t.Fatal(err)
			}
			if cdnHits.Load() != 1 {
				t.Errorf("CDN served %d requests, want 1", cdnHits.Load())
			}
			mu.Lock()
			defer mu.Unlock()
			var redirects int
			for _, e := range events {
				if e.Op == "blob" && e.Status == http.StatusTemporaryRedirect {
					redirects++
				}
				if e.Upstream != "test" || e.Duration <= 0 {
					t.Errorf("event lacks upstream or duration: %+v", e)
				}
			}
			if redirects != 1 {
				t.Errorf("observed %d blob redirects, want 1", redirects)
			}
		})
	}
}

func TestRedirectLoop(t *testing.T) {
	t.Parallel()
	var hops int
	var mu sync.Mutex
	srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hops++
		mu.Unlock()
		http.Redirect(w, r, r.URL.Path, http.StatusFound)
	}))
	r := newClient(t, srv.URL)
	_, _, err := r.GetBlob(t.Context(), "app", digestOf(t, "sha256:"+sixtyFourA))
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("redirect loop: %v, want ErrInvalid", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if hops != maxRedirects+1 {
		t.Errorf("followed %d hops, want %d and no retries", hops, maxRedirects+1)
	}
}

const sixtyFourA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

// TestCDNChallengeIgnored: a 401 from a redirect target (a CDN refusing a
// signed URL) is not the registry's challenge. Its realm must not replace
// the registry's token endpoint nor receive the upstream's credentials, and
// the request is tried again from the registry, which redirects afresh.
func TestCDNChallengeIgnored(t *testing.T) {
	t.Parallel()
	for _, scheme := range []string{"bearer", "basic"} {
		t.Run(scheme, func(t *testing.T) {
			t.Parallel()
			inner := realRegistry(false)
			a := seed(t, inner, "team/a", "v1")
			b := seed(t, inner, "team/b", "v1")
			evil := newTokenServer(t, "", "")
			var cdnRefusals atomic.Int64
			cdn := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				// The first visit is refused with a challenge naming
				// another realm; later ones are served.
				if cdnRefusals.Add(1) == 1 {
					w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm=%q,service="test-registry"`, evil.URL+"/token"))
					w.WriteHeader(http.StatusUnauthorized)
					return
				}
				inner2 := r.Clone(r.Context())
				inner2.URL.Path = strings.TrimPrefix(r.URL.Path, "/cdn")
				inner.ServeHTTP(w, inner2)
			}))
			front := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
					http.Redirect(w, r, cdn.URL+"/cdn"+r.URL.Path, http.StatusTemporaryRedirect)
					return
				}
				inner.ServeHTTP(w, r)
			})
			ts := newTokenServer(t, "u", "p")
			var h http.Handler = &bearerGate{next: front, ts: ts}
			if scheme == "basic" {
				h = basicGate(front, "u", "p")
			}
			r := newClient(t, serve(t, h).URL, func(o *Options) { o.Credentials = staticCreds("u", "p") })
			for _, s := range []seeded{a, b} {
				if err := pull(t, r, s); err != nil {
					t.Fatalf("pull %s after the CDN's 401: %v", s.repo, err)
				}
			}
			if n := evil.requests.Load(); n != 0 {
				t.Errorf("the realm named by the CDN received %d requests; only the registry's challenge may set the realm", n)
			}
			if n := cdnRefusals.Load(); n != 3 {
				t.Errorf("CDN saw %d requests, want 3 (refused, retried, second repository)", n)
			}
			if scheme == "bearer" && ts.requests.Load() != 2 {
				t.Errorf("registry's realm issued %d tokens, want 2 (one per repository)", ts.requests.Load())
			}
		})
	}
}

// TestRealmCredentialsStayHome: the upstream's credentials go to a token
// realm only over https, or on the upstream's own host when the upstream
// itself is plain HTTP. A plain-HTTP realm on another host gets nothing.
func TestRealmCredentialsStayHome(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		realmHost string // replaces 127.0.0.1 in the token server's URL
		creds     bool
		wantErr   error
	}{
		{name: "same host, other port", realmHost: "127.0.0.1", creds: true},
		{name: "other host over plain HTTP", realmHost: "localhost", creds: true, wantErr: ErrDenied},
		{name: "other host, anonymous", realmHost: "localhost"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			inner := realRegistry(false)
			s := seed(t, inner, "app", "v1")
			user := ""
			if tt.creds {
				user = "u"
			}
			ts := newTokenServer(t, user, "p")
			gate := &bearerGate{next: inner, ts: ts, realm: strings.Replace(ts.URL, "127.0.0.1", tt.realmHost, 1) + "/token"}
			r := newClient(t, serve(t, gate).URL, func(o *Options) {
				if tt.creds {
					o.Credentials = staticCreds("u", "p")
				}
			})
			err := pull(t, r, s)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("pull: %v, want %v", err, tt.wantErr)
			}
			if n := ts.requests.Load(); n != 0 {
				t.Errorf("plain-HTTP realm on another host received %d requests", n)
			}
		})
	}
}

// TestRedirectChainBackToOrigin: a blob redirected to a CDN that sends the
// request back to the registry (a signed-URL check, say). The CDN never
// sees credentials; the registry, asked again on its own origin, gets them
// again, as it would have on the first hop: they are its own, the origin
// is what the operator configured, and a scoped token cannot be used there
// for more than it was issued for. A protocol-relative Location is
// resolved against the hop it came from.
func TestRedirectChainBackToOrigin(t *testing.T) {
	t.Parallel()
	inner := realRegistry(false)
	s := seed(t, inner, "app", "v1")
	var backWithAuth, backWithout atomic.Int64
	var origin string
	cdn := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a := r.Header.Get("Authorization"); a != "" {
			t.Errorf("CDN received Authorization %q", a)
		}
		// Back to the registry, protocol-relative.
		http.Redirect(w, r, "//"+strings.TrimPrefix(origin, "http://")+strings.TrimPrefix(r.URL.Path, "/cdn")+"?back=1", http.StatusFound)
	}))
	front := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			if r.URL.Query().Get("back") == "" {
				http.Redirect(w, r, cdn.URL+"/cdn"+r.URL.Path, http.StatusTemporaryRedirect)
				return
			}
		}
		inner.ServeHTTP(w, r)
	})
	gate := basicGate(front, "u", "p")
	up := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("back") != "" {
			if r.Header.Get("Authorization") != "" {
				backWithAuth.Add(1)
			} else {
				backWithout.Add(1)
			}
		}
		gate.ServeHTTP(w, r)
	}))
	origin = up.URL
	r := newClient(t, up.URL, func(o *Options) { o.Credentials = staticCreds("u", "p") })
	if err := pull(t, r, s); err != nil {
		t.Fatal(err)
	}
	if backWithAuth.Load() != 1 || backWithout.Load() != 0 {
		t.Errorf("back at the origin: %d requests with credentials, %d without; want 1 and 0", backWithAuth.Load(), backWithout.Load())
	}
}
