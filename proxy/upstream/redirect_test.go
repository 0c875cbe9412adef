package upstream

import (
	"errors"
	"net/http"
	"sync"
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
