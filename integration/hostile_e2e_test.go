package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/airlock-registry/airlock/integration/airlocktest"
	"github.com/airlock-registry/airlock/integration/upstreamtest"
)

// hostile is an upstream that misbehaves on purpose, one way per
// repository, in front of a real registry for everything else. It records
// what reaches it and its "CDN" and token listeners.
type hostile struct {
	reg   *upstreamtest.Upstream
	srv   *httptest.Server
	cdn   *httptest.Server
	realm *httptest.Server

	mu        sync.Mutex
	redirect  string // where /v2/redirect/... blobs are sent
	cdnAuthz  []string
	realmHits int
	tagPages  int
	// endless counts the bytes of the endless blob that were sent.
	endless int64
}

func newHostile(t *testing.T) *hostile {
	t.Helper()
	h := &hostile{reg: upstreamtest.New(t, upstreamtest.Options{})}
	h.realm = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		h.realmHits++
		h.mu.Unlock()
		_ = json.NewEncoder(w).Encode(map[string]string{"token": "stolen"})
	}))
	t.Cleanup(h.realm.Close)
	// The CDN answers every request with its own challenge, as a
	// misconfigured or hostile edge would.
	h.cdn = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		h.cdnAuthz = append(h.cdnAuthz, r.Header.Get("Authorization"))
		h.mu.Unlock()
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm=%q,service="cdn"`, h.realm.URL+"/token"))
		w.Header().Add("WWW-Authenticate", `Basic realm="cdn"`)
		http.Error(w, "who are you", http.StatusUnauthorized)
	}))
	t.Cleanup(h.cdn.Close)
	target, _ := http.NewRequest(http.MethodGet, h.reg.URL, nil)
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "bot" || p != "s3cret" {
			if r.URL.Path != "/v2/" {
				w.Header().Set("WWW-Authenticate", `Basic realm="hostile"`)
				http.Error(w, "credentials please", http.StatusUnauthorized)
				return
			}
		}
		repo, kind, _, _ := splitV2(r.URL.Path)
		switch {
		case repo == "redirect" && kind == "blobs":
			h.mu.Lock()
			to := h.redirect
			h.mu.Unlock()
			http.Redirect(w, r, to, http.StatusTemporaryRedirect)
		case repo == "cdn401" && kind == "blobs":
			http.Redirect(w, r, h.cdn.URL+r.URL.Path, http.StatusTemporaryRedirect)
		case repo == "endless" && kind == "blobs" && r.Method == http.MethodGet:
			w.Header().Set("Content-Type", "application/octet-stream")
			w.WriteHeader(http.StatusOK)
			chunk := bytes.Repeat([]byte{0x5a}, 64<<10)
			for range 4096 { // 256 MiB at most: the test ends even if airlock does not stop it
				n, err := w.Write(chunk)
				h.mu.Lock()
				h.endless += int64(n)
				h.mu.Unlock()
				if err != nil {
					return
				}
			}
		case repo == "manytags" && kind == "tags":
			h.mu.Lock()
			h.tagPages++
			page := h.tagPages
			h.mu.Unlock()
			tags := make([]string, 1000)
			for i := range tags {
				tags[i] = fmt.Sprintf("p%05d-%04d-%s", page, i, strings.Repeat("x", 64))
			}
			if page < 400 {
				w.Header().Set("Link", fmt.Sprintf(`</v2/manytags/tags/list?last=p%05d>; rel="next"`, page))
			}
			_ = json.NewEncoder(w).Encode(map[string]any{"name": "manytags", "tags": tags})
		default:
			r.URL.Scheme, r.URL.Host = target.URL.Scheme, target.URL.Host
			r.Header.Del("Authorization")
			proxyTo(w, r)
		}
	}))
	t.Cleanup(h.srv.Close)
	return h
}

// proxyTo forwards r to the URL it names and copies the answer back.
func proxyTo(w http.ResponseWriter, r *http.Request) {
	out, _ := http.NewRequestWithContext(r.Context(), r.Method, r.URL.String(), r.Body)
	out.Header = r.Header.Clone()
	resp, err := http.DefaultTransport.RoundTrip(out)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, resp.Body)
}

// splitV2 splits /v2/<repo>/<kind>/<ref>.
func splitV2(p string) (repo, kind, ref string, ok bool) {
	rest, ok := strings.CutPrefix(p, "/v2/")
	if !ok {
		return "", "", "", false
	}
	for _, k := range []string{"/blobs/", "/manifests/", "/tags/"} {
		if i := strings.LastIndex(rest, k); i > 0 {
			return rest[:i], strings.Trim(k, "/"), rest[i+len(k):], true
		}
	}
	return "", "", "", false
}

// TestHostileUpstream drives airlock against an upstream that redirects
// blobs to airlock's own admin listener, sends them to a CDN that answers
// with its own challenge, streams a blob forever, pages through an endless
// tag list and publishes manifests with sha384 references, while a client
// sends a megabyte of Accept header. airlock stays up, sends credentials
// nowhere but the upstream, caches nothing it should not, and answers each
// with a short OCI error.
func TestHostileUpstream(t *testing.T) {
	t.Parallel()
	h := newHostile(t)
	dir := t.TempDir()
	auth := &airlocktest.Auth{UsernameFile: filepath.Join(dir, "user"), PasswordFile: filepath.Join(dir, "pass")}
	for f, v := range map[string]string{auth.UsernameFile: "bot", auth.PasswordFile: "s3cret"} {
		if err := os.WriteFile(f, []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	al := e2eStart(t, airlocktest.Config{MaxBlobSize: "4MiB", Upstreams: []airlocktest.Upstream{
		{Name: "vendor", URL: h.srv.URL, Default: true, Auth: auth, Retry: airlocktest.FastRetry()},
	}})
	h.mu.Lock()
	h.redirect = al.AdminURL + "/metrics"
	h.mu.Unlock()
	digest := "sha256:" + strings.Repeat("ab", 32)

	expectError := func(label, url string, header ...string) e2eResponse {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		r, err := e2eGet(ctx, url, header...)
		if err != nil {
			return r // a broken transfer: nothing served whole
		}
		if r.Status < 400 {
			t.Errorf("%s: %d, want an error", label, r.Status)
		}
		if r.Status != http.StatusRequestHeaderFieldsTooLarge {
			var body struct {
				Errors []struct{ Code, Message string }
			}
			if json.Unmarshal(r.Body, &body) != nil || len(body.Errors) == 0 {
				t.Errorf("%s: %d with a body that is not an OCI error: %.200s", label, r.Status, r.Body)
			}
		}
		for _, leak := range []string{"127.0.0.1", "dial tcp", dir, "s3cret"} {
			if bytes.Contains(r.Body, []byte(leak)) {
				t.Errorf("%s: the client was told %q: %s", label, leak, r.Body)
			}
		}
		return r
	}

	// A redirect to airlock's own admin listener is refused, not followed.
	expectError("redirect to the admin listener", al.URL+"/v2/redirect/blobs/"+digest)
	// A CDN's 401 is not the registry's challenge: no credentials, no realm.
	expectError("401 from the CDN", al.URL+"/v2/cdn401/blobs/"+digest)
	// An endless blob stops at cache.maxBlobSize.
	expectError("endless blob", al.URL+"/v2/endless/blobs/"+digest)
	// A tag list without end is refused as a whole, not gathered into memory.
	r := expectError("endless tag list", al.URL+"/v2/manytags/tags/list")
	if !bytes.Contains(r.Body, []byte("pull by tag or digest")) {
		t.Errorf("endless tag list: the error does not say what to do: %s", r.Body)
	}
	// Nearly a megabyte of distinct Accept types is refused before it is
	// parsed (below net/http's own 1 MiB limit, so the cap is airlock's).
	var accept strings.Builder
	for i := 0; accept.Len() < 900<<10; i++ {
		fmt.Fprintf(&accept, "application/x-%d, ", i)
	}
	if r := expectError("900 KiB Accept", al.URL+"/v2/app/manifests/v1", "Accept", accept.String()); r.Status != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("900 KiB Accept: %d, want 431", r.Status)
	}

	// A manifest listing a sha384 layer is served, not a 500.
	img := h.reg.PushImage(t, "odd", "base", 4<<10, 1)
	var m map[string]any
	if err := json.Unmarshal(img.Manifest, &m); err != nil {
		t.Fatal(err)
	}
	m["layers"] = append(m["layers"].([]any), map[string]any{
		"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha384:" + strings.Repeat("cd", 48), "size": 1})
	odd, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	pushRawManifest(t, h.reg.URL, "odd", "sha384", odd)
	if got := e2eMustGet(t, http.StatusOK, al.URL+"/v2/odd/manifests/sha384", "Accept", manifestAccept); !bytes.Equal(got.Body, odd) {
		t.Fatalf("sha384 manifest served altered")
	}

	if log := strings.Join(logRaw(al), "\n"); !strings.Contains(log, "own listener") {
		t.Error("the log does not say the redirect to airlock's own listener was refused")
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.endless > 64<<20 {
		t.Errorf("airlock read %d MiB of an endless blob with cache.maxBlobSize 4MiB", h.endless>>20)
	}
	for _, a := range h.cdnAuthz {
		if a != "" {
			t.Errorf("the CDN received an Authorization header: %q", a)
		}
	}
	if h.realmHits != 0 {
		t.Errorf("airlock asked the CDN's token realm %d times", h.realmHits)
	}
	if h.tagPages > 1000 {
		t.Errorf("airlock read %d tag pages", h.tagPages)
	}
	// Nothing partial or wrong was left in storage.
	_ = filepath.Walk(al.DataDir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && fi.Size() >= 4<<20 {
			t.Errorf("a file of %d bytes is left in storage: %s", fi.Size(), p)
		}
		return nil
	})
	// airlock is still up and serves honest content.
	e2eMustGet(t, http.StatusOK, al.URL+"/v2/odd/blobs/"+img.Layers[0].String())
	if resp, err := http.Get(al.AdminURL + "/readyz"); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("airlock is not ready after the hostile upstream: %v", err)
	}
}
