package proxy

import (
	"bytes"
	"context"
	"fmt"
	"github.com/airlock-registry/airlock/storage/metadata"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"
)

// TestFollowersJoiningMidFillGetTheWholeBlob starts a slow fill and has
// clients join it at different points, with and without ranges: each gets
// exactly its bytes from the one upstream transfer.
func TestFollowersJoiningMidFillGetTheWholeBlob(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, true)
	img, _ := random.Image(200<<10, 1)
	o.push(t, "library/app:1", img)
	ld, want := layerOf(t, img, 0)
	o.slowBlob.Store(int64(10 * time.Millisecond))
	e := newEnv(t, o)
	o.reset()
	path := "/v2/library/app/blobs/" + ld.String()

	type result struct {
		rng    string
		status int
		body   []byte
		err    error
	}
	ranges := []string{"", "bytes=0-0", "bytes=5000-", "bytes=-100", "bytes=100-199", "", "bytes=1000-1000000000"}
	results := make([]result, len(ranges))
	var wg sync.WaitGroup
	for i, rng := range ranges {
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(time.Duration(i) * 25 * time.Millisecond) // join at different points
			req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, e.srv.URL+path, nil)
			if rng != "" {
				req.Header.Set("Range", rng)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				results[i] = result{rng: rng, err: err}
				return
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			results[i] = result{rng, resp.StatusCode, body, err}
		}()
	}
	wg.Wait()
	n := int64(len(want))
	for _, r := range results {
		if r.err != nil {
			t.Errorf("Range %q: %v", r.rng, r.err)
			continue
		}
		wantStatus, wantBody := http.StatusOK, want
		if r.rng != "" {
			first, last, err := parseRange(r.rng, n)
			if err != nil {
				t.Fatal(err)
			}
			wantStatus, wantBody = http.StatusPartialContent, want[first:last+1]
		}
		if r.status != wantStatus || !bytes.Equal(r.body, wantBody) {
			t.Errorf("Range %q: status %d, %d bytes; want %d, %d bytes", r.rng, r.status, len(r.body), wantStatus, len(wantBody))
		}
	}
	if got := o.count("GET", "/v2/library/app/blobs/"+ld.String()); got != 1 {
		t.Fatalf("upstream blob GETs = %d, want 1", got)
	}
}

// TestTamperedBlobReachesNoFollowerWhole has many clients read along a fill
// whose bytes do not match the digest: none of them may end up with a
// complete, successful response of the announced length.
func TestTamperedBlobReachesNoFollowerWhole(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, true)
	img, _ := random.Image(128<<10, 1)
	o.push(t, "library/app:1", img)
	ld, want := layerOf(t, img, 0)
	o.tamper.Store(ld.String(), true)
	o.slowBlob.Store(int64(2 * time.Millisecond))
	e := newEnv(t, o)
	path := "/v2/library/app/blobs/" + ld.String()

	const clients = 8
	var wg sync.WaitGroup
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(time.Duration(i) * 3 * time.Millisecond)
			req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, e.srv.URL+path, nil)
			if i%2 == 1 {
				req.Header.Set("Range", "bytes=1000-") // open ranges end at the held-back byte too
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err == nil && resp.StatusCode < 300 {
				t.Errorf("client %d got a complete %d response of %d bytes from a tampered blob", i, resp.StatusCode, len(body))
			}
		}()
	}
	wg.Wait()
	if _, err := e.blobs.Stat(t.Context(), digest.Digest(ld.String())); err == nil {
		t.Fatal("tampered blob was committed")
	}
	if l, _ := e.meta.BlobLink(t.Context(), "hub/library/app", digest.Digest(ld.String())); l.Has(metadata.Confirmed) {
		t.Fatal("a tampered blob was linked to the repository")
	}
	o.tamper.Delete(ld.String())
	resp, body := e.get(t, path)
	if resp.StatusCode != 200 || !bytes.Equal(body, want) {
		t.Fatalf("pull after the upstream was repaired: %d, %d bytes", resp.StatusCode, len(body))
	}
}

// TestBlobHeadersHotAndCold compares what HEAD, GET and unsatisfiable ranges
// answer on a cold miss (from the fill) and on a hit (from the store).
func TestBlobHeadersHotAndCold(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, true)
	img, _ := random.Image(64<<10, 1)
	o.push(t, "library/app:1", img)
	ld, want := layerOf(t, img, 0)
	size := fmt.Sprint(len(want))
	e := newEnv(t, o)
	path := "/v2/library/app/blobs/" + ld.String()

	check := func(state string) {
		t.Helper()
		resp, body := e.do(t, http.MethodHead, path)
		if resp.StatusCode != 200 || len(body) != 0 || resp.Header.Get("Content-Length") != size ||
			resp.Header.Get("Docker-Content-Digest") != ld.String() {
			t.Errorf("%s HEAD: %d, body %d bytes, Content-Length %q, digest %q", state, resp.StatusCode, len(body),
				resp.Header.Get("Content-Length"), resp.Header.Get("Docker-Content-Digest"))
		}
		resp, body = e.get(t, path, "Range", fmt.Sprintf("bytes=%d-", len(want)))
		if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable || resp.Header.Get("Content-Range") != "bytes */"+size {
			t.Errorf("%s range past the end: %d, Content-Range %q, body %q", state, resp.StatusCode, resp.Header.Get("Content-Range"), body)
		}
		resp, body = e.get(t, path, "Range", "bytes=0-9,20-29")
		if resp.StatusCode != 200 && resp.StatusCode != http.StatusPartialContent {
			t.Errorf("%s multiple ranges: %d", state, resp.StatusCode)
		}
		if resp.StatusCode == 200 && !bytes.Equal(body, want) {
			t.Errorf("%s multiple ranges answered 200 with %d bytes", state, len(body))
		}
	}
	check("cold")
	waitCommitted(t, e, ld.String())
	check("hot")
}

// TestBlobUpstreamFailuresAreOCIErrorsAndCacheNothing checks the answers to
// a blob the upstream does not have and to an upstream that is down, and
// that neither leaves anything behind that a later pull would trip over.
func TestBlobUpstreamFailuresAreOCIErrorsAndCacheNothing(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, true)
	img, _ := random.Image(4096, 1)
	o.push(t, "library/app:1", img)
	ld, want := layerOf(t, img, 0)
	e := newEnv(t, o)
	missing := "sha256:" + strings.Repeat("ab", 32)

	for _, method := range []string{http.MethodGet, http.MethodHead} {
		resp, body := e.do(t, method, "/v2/library/app/blobs/"+missing)
		if resp.StatusCode != http.StatusNotFound || resp.Header.Get("Content-Type") != "application/json" {
			t.Errorf("%s missing blob: %d %q", method, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		if method == http.MethodGet && ociCode(t, body) != CodeBlobUnknown {
			t.Errorf("missing blob: code %s", ociCode(t, body))
		}
	}
	o.down.Store(true)
	resp, body := e.get(t, "/v2/library/app/blobs/"+ld.String())
	if resp.StatusCode != http.StatusServiceUnavailable || ociCode(t, body) != CodeUnavailable {
		t.Fatalf("blob with the upstream down: %d %s", resp.StatusCode, body)
	}
	o.down.Store(false)
	resp, body = e.get(t, "/v2/library/app/blobs/"+ld.String())
	if resp.StatusCode != 200 || !bytes.Equal(body, want) {
		t.Fatalf("blob after the upstream came back: %d, %d bytes", resp.StatusCode, len(body))
	}
}

// TestHostileRequestsNeverCrashOrReachUpstream sends malformed and hostile
// paths and queries: each is answered with a 4xx OCI error, none reaches
// the upstream and the server keeps serving.
func TestHostileRequestsNeverCrashOrReachUpstream(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, true)
	e := newEnv(t, o)
	o.reset()
	d := "sha256:" + strings.Repeat("0", 64)
	paths := []string{
		"/v2/library/app/manifests/1?ns=127.0.0.1:1",
		"/v2/library/app/manifests/1?ns=http://evil.example",
		"/v2/library/app/blobs/" + d + "?ns=localhost",
		"/v2/library/app/manifests/..%2f..%2fx",
		"/v2/library%2fapp/manifests/1",
		"/v2/library/../app/manifests/1",
		"/v2/library/app/manifests/sha256:" + strings.Repeat("G", 64),
		"/v2/library/app/manifests/sha384:" + strings.Repeat("0", 96),
		"/v2/library/app/manifests/" + strings.Repeat("a", 129),
		"/v2/library/app/blobs/sha256:",
		"/v2/library/app/blobs/sha256",
		"/v2/library/app/referrers/notadigest",
		"/v2/library/app/tags/list?n=-1",
		"/v2/library/app/tags/list?n=99999999999999999999",
		"/v2/" + strings.Repeat("a/", 200) + "manifests/1",
		"/v2/-a/manifests/1",
		"/v2/a-/manifests/1",
		"/v2/a__/manifests/1",
		"/v2/a._b/manifests/1",
		"/v2/hub/manifests/1",
		"/v2/library/app/manifests/",
		"/v2/library/app/blobs/uploads/x/y",
	}
	for _, p := range paths {
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			resp, body := e.do(t, method, p)
			if resp.StatusCode < 400 || resp.StatusCode >= 500 {
				t.Errorf("%s %s: %d %s", method, p, resp.StatusCode, body)
			}
			if method == http.MethodGet {
				ociCode(t, body)
			}
		}
	}
	if n := o.total(); n != 0 {
		t.Fatalf("hostile requests reached the upstream: %v", o.counts)
	}
	if resp, _ := e.get(t, "/v2/"); resp.StatusCode != 200 {
		t.Fatalf("GET /v2/ after hostile requests: %d", resp.StatusCode)
	}
}

// TestTagsLinkKeepsNamespaceAndRoute pages through tags/list on the ?ns=
// route: every Link must stay on the route the client used.
func TestTagsLinkKeepsNamespaceAndRoute(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, true)
	img, _ := random.Image(100, 1)
	for _, tag := range []string{"1", "2", "3"} {
		o.push(t, "library/app:"+tag, img)
	}
	e := newEnv(t, o)
	resp, body := e.get(t, "/v2/app/tags/list?ns=docker.io&n=1&last=1")
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"tags":["2"]`) {
		t.Fatalf("first page: %d %s", resp.StatusCode, body)
	}
	link := resp.Header.Get("Link")
	if link != `</v2/app/tags/list?last=2&n=1&ns=docker.io>; rel="next"` {
		t.Fatalf("Link = %q", link)
	}
	resp, body = e.get(t, link[1:strings.Index(link, ">")])
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"tags":["3"]`) || resp.Header.Get("Link") != "" {
		t.Fatalf("last page: %d %s, Link %q", resp.StatusCode, body, resp.Header.Get("Link"))
	}
	if resp.Header.Get("OCI-Namespace") != "docker.io" {
		t.Fatalf("OCI-Namespace = %q", resp.Header.Get("OCI-Namespace"))
	}
}

// TestManifestHeadMatchesGet checks that HEAD and GET of a manifest carry
// the same headers, and that HEAD sends no body.
func TestManifestHeadMatchesGet(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, true)
	idx, _ := random.Index(512, 1, 2)
	ref := o.host() + "/library/multi:1"
	pushIndex(t, ref, idx)
	raw, _ := idx.RawManifest()
	d, _ := idx.Digest()
	mt, _ := idx.MediaType()
	e := newEnv(t, o)
	for _, method := range []string{http.MethodHead, http.MethodGet} {
		for _, p := range []string{"/v2/multi/manifests/1", "/v2/multi/manifests/" + d.String()} {
			resp, body := e.do(t, method, p, "Accept", string(mt))
			wantBody := raw
			if method == http.MethodHead {
				wantBody = nil
			}
			if resp.StatusCode != 200 || !bytes.Equal(body, wantBody) || resp.Header.Get("Content-Length") != fmt.Sprint(len(raw)) ||
				resp.Header.Get("Content-Type") != string(mt) || resp.Header.Get("Docker-Content-Digest") != d.String() {
				t.Errorf("%s %s: %d, %d bytes, headers %v", method, p, resp.StatusCode, len(body), resp.Header)
			}
		}
	}
}

// TestProxyCloseEndsAfterFills checks Close returns once a running fill has
// finished, and that a fill started by a hung-up client still commits.
// A HEAD starts no fill: it is answered by the upstream's HEAD.
func TestProxyCloseEndsAfterFills(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, true)
	img, _ := random.Image(64<<10, 1)
	o.push(t, "library/app:1", img)
	ld, _ := layerOf(t, img, 0)
	o.slowBlob.Store(int64(5 * time.Millisecond))
	e := newEnv(t, o)
	path := "/v2/library/app/blobs/" + ld.String()
	o.reset()
	resp, _ := e.do(t, http.MethodHead, path)
	if resp.StatusCode != 200 || o.count("GET", "/v2/library/app/blobs/"+ld.String()) != 0 {
		t.Fatalf("HEAD: %d, upstream saw %v (a HEAD must not transfer the blob)", resp.StatusCode, o.counts)
	}
	rctx, hangUp := context.WithCancel(t.Context())
	req, _ := http.NewRequestWithContext(rctx, http.MethodGet, e.srv.URL+path, nil)
	gresp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(gresp.Body, make([]byte, 100)); err != nil {
		t.Fatal(err)
	}
	hangUp()
	gresp.Body.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := e.proxy.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := e.blobs.Stat(t.Context(), digest.Digest(ld.String())); err != nil {
		t.Fatalf("the fill of a client that hung up was not committed by Close: %v", err)
	}
}

func pushIndex(t *testing.T, ref string, idx v1.ImageIndex) {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(r, idx, remote.WithContext(t.Context())); err != nil {
		t.Fatal(err)
	}
}
