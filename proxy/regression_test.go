package proxy

import (
	"bytes"
	"context"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/airlock-registry/airlock/proxy/upstream"
	"github.com/airlock-registry/airlock/storage"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// newOriginWrapped is newOrigin with a handler of the test's own between the
// counting and the real registry, for upstream behaviour go-containerregistry's
// registry does not have (content negotiation, odd headers, partial outages).
func newOriginWrapped(t *testing.T, wrap func(next http.Handler) http.Handler) *origin {
	t.Helper()
	o := &origin{counts: map[string]int{}}
	reg := wrap(registry.New(registry.Logger(log.New(io.Discard, "", 0)), registry.WithReferrersSupport(true)))
	o.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		o.mu.Lock()
		o.counts[r.Method+" "+r.URL.Path]++
		o.mu.Unlock()
		if o.down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(o.srv.Close)
	return o
}

// openFilesContaining lists this process's open file descriptors whose
// target path contains s.
func openFilesContaining(t *testing.T, s string) []string {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	var out []string
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err == nil && strings.Contains(target, s) {
			out = append(out, target)
		}
	}
	return out
}

// TestAbortedFillReaderReleasesSpool: a client that hangs up while reading a
// fill makes serveFill panic with http.ErrAbortHandler; the fill reference
// it holds must still be released so the spool's file is closed.
func TestAbortedFillReaderReleasesSpool(t *testing.T) {
	// Not parallel: the garbage collector is off so that os.File's finalizer
	// cannot close a leaked descriptor behind the test's back.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	o := newOrigin(t, true)
	img, _ := random.Image(256<<10, 1)
	o.push(t, "library/app:1", img)
	ld, _ := layerOf(t, img, 0)
	o.slowBlob.Store(int64(5 * time.Millisecond))
	e := newEnv(t, o)
	path := "/v2/library/app/blobs/" + ld.String()

	ctx, cancel := context.WithCancel(t.Context())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.srv.URL+path, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 1024)); err != nil {
		t.Fatal(err)
	}
	cancel()
	resp.Body.Close()
	waitCommitted(t, e, ld.String())

	hex := ld.Hex
	deadline := time.Now().Add(3 * time.Second)
	for {
		open := openFilesContaining(t, hex[:16])
		if len(open) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("fill done and its only client gone, yet the spool is still open: %v", open)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestStaleTagSurvivesUnfetchableNewDigest: the tag moved upstream, and the
// upstream then answers HEAD (Docker Hub does not count it) but refuses the
// GET of the new manifest (429: the pull limit). The last mapping airlock can
// actually serve must keep being served, and must not be replaced by a
// digest it never managed to fetch.
func TestStaleTagSurvivesUnfetchableNewDigest(t *testing.T) {
	t.Parallel()
	var limitGets atomic.Bool
	o := newOriginWrapped(t, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if limitGets.Load() && r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/manifests/") {
				w.Header().Set("Retry-After", "3600")
				http.Error(w, `{"errors":[{"code":"TOOMANYREQUESTS","message":"pull limit"}]}`, http.StatusTooManyRequests)
				return
			}
			next.ServeHTTP(w, r)
		})
	})
	img1, _ := random.Image(512, 1)
	o.push(t, "library/app:1", img1)
	raw1, _ := img1.RawManifest()
	e := newEnv(t, o)
	if resp, body := e.get(t, "/v2/app/manifests/1"); resp.StatusCode != 200 || !bytes.Equal(body, raw1) {
		t.Fatalf("first pull: %d", resp.StatusCode)
	}

	img2, _ := random.Image(512, 1)
	o.push(t, "library/app:1", img2) // the tag moves upstream
	settle(t, e)                     // the clock jump must not outrun the background writes
	later := time.Now().Add(2 * time.Minute)
	e.now.Store(&later)
	limitGets.Store(true)
	resp, body := e.get(t, "/v2/app/manifests/1")
	if resp.StatusCode != 200 || !bytes.Equal(body, raw1) {
		t.Errorf("rate-limited GET of the new digest: %d %s; want the cached manifest served stale", resp.StatusCode, body)
	}

	o.down.Store(true) // and then the upstream is gone altogether
	resp, body = e.get(t, "/v2/app/manifests/1")
	if resp.StatusCode != 200 || !bytes.Equal(body, raw1) {
		t.Errorf("upstream down: %d %s; want the cached manifest served stale", resp.StatusCode, body)
	}
}

// TestNarrowAcceptDoesNotPoisonTag: an upstream that, like Docker Hub,
// answers a client that does not accept indexes with one platform's
// manifest. One such client must not make airlock hand that single-platform
// manifest to every multi-arch client for the tag's TTL.
func TestNarrowAcceptDoesNotPoisonTag(t *testing.T) {
	t.Parallel()
	var child atomic.Value // digest string of the index's first manifest
	o := newOriginWrapped(t, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			accept := strings.Join(r.Header.Values("Accept"), ",")
			c, _ := child.Load().(string)
			if c != "" && (r.Method == http.MethodGet || r.Method == http.MethodHead) && strings.HasSuffix(r.URL.Path, "/manifests/multi") &&
				!strings.Contains(accept, mediaOCIIndex) && !strings.Contains(accept, mediaDockerList) {
				r.URL.Path = strings.TrimSuffix(r.URL.Path, "multi") + c
			}
			next.ServeHTTP(w, r)
		})
	})
	idx, _ := random.Index(512, 1, 2)
	pushIndex(t, o.host()+"/library/app:multi", idx)
	im, _ := idx.IndexManifest()
	child.Store(im.Manifests[0].Digest.String())
	idxDigest, _ := idx.Digest()
	e := newEnv(t, o)

	// An old client that takes only single image manifests.
	resp, _ := e.get(t, "/v2/app/manifests/multi", "Accept", mediaDockerV2, "Accept", mediaOCIManifest)
	if got := resp.Header.Get("Docker-Content-Digest"); resp.StatusCode != 200 || got != child.Load().(string) {
		t.Fatalf("narrow client: %d %s", resp.StatusCode, got)
	}
	// A multi-arch client right after it.
	resp, _ = e.get(t, "/v2/app/manifests/multi",
		"Accept", strings.Join([]string{mediaOCIIndex, mediaOCIManifest, mediaDockerList, mediaDockerV2}, ","))
	if got := resp.Header.Get("Docker-Content-Digest"); resp.StatusCode != 200 || got != idxDigest.String() {
		t.Fatalf("multi-arch client got %d %s, want the index %s", resp.StatusCode, got, idxDigest)
	}
}

// TestTagMediaTypeParametersKeepCacheAndStaleServe: an upstream whose
// Content-Type carries a parameter. Clients sending Accept (containerd,
// docker) must still be served within the tag TTL from the cache, and stale
// when the upstream is down.
func TestTagMediaTypeParametersKeepCacheAndStaleServe(t *testing.T) {
	t.Parallel()
	o := newOriginWrapped(t, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.Contains(r.URL.Path, "/manifests/") && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
				next.ServeHTTP(&paramWriter{ResponseWriter: w}, r)
				return
			}
			next.ServeHTTP(w, r)
		})
	})
	img, _ := random.Image(512, 1)
	o.push(t, "library/app:1", img)
	raw, _ := img.RawManifest()
	mt, _ := img.MediaType()
	e := newEnv(t, o)
	accept := strings.Join([]string{mediaOCIIndex, mediaOCIManifest, mediaDockerList, mediaDockerV2}, ",")
	if resp, body := e.get(t, "/v2/app/manifests/1", "Accept", accept); resp.StatusCode != 200 || !bytes.Equal(body, raw) ||
		resp.Header.Get("Content-Type") != string(mt) {
		t.Fatalf("first pull: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	o.reset()
	e.get(t, "/v2/app/manifests/1", "Accept", accept)
	if n := o.total(); n != 0 {
		t.Errorf("a pull within the tag TTL asked the upstream: %v", o.counts)
	}
	o.down.Store(true)
	settle(t, e) // the clock jump must not outrun the background writes
	later := time.Now().Add(2 * time.Minute)
	e.now.Store(&later)
	if resp, body := e.get(t, "/v2/app/manifests/1", "Accept", accept); resp.StatusCode != 200 || !bytes.Equal(body, raw) {
		t.Errorf("upstream down: %d %s; want the cached manifest served stale", resp.StatusCode, body)
	}
}

// paramWriter adds a charset parameter to the Content-Type an upstream sends.
type paramWriter struct {
	http.ResponseWriter
	wrote bool
}

func (p *paramWriter) WriteHeader(code int) {
	if p.wrote {
		return
	}
	p.wrote = true
	if ct := p.Header().Get("Content-Type"); ct != "" && !strings.Contains(ct, ";") {
		p.Header().Set("Content-Type", ct+"; charset=utf-8")
	}
	p.ResponseWriter.WriteHeader(code)
}

func (p *paramWriter) Write(b []byte) (int, error) {
	p.WriteHeader(http.StatusOK)
	return p.ResponseWriter.Write(b)
}

// TestOfflineManifestByDigestStaysInItsRepository: online, a manifest is
// served by digest only where the upstream has it in that repository.
// When the upstream is down, a manifest cached for one repository must not
// become readable through any other repository name.
func TestOfflineManifestByDigestStaysInItsRepository(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, true)
	img, _ := random.Image(512, 1)
	d := o.push(t, "library/app:1", img)
	e := newEnv(t, o)
	if resp, _ := e.get(t, "/v2/app/manifests/"+d.String()); resp.StatusCode != 200 {
		t.Fatalf("pull: %d", resp.StatusCode)
	}
	if resp, _ := e.get(t, "/v2/other/manifests/"+d.String()); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("online, another repository: %d, want 404", resp.StatusCode)
	}
	o.down.Store(true)
	if resp, _ := e.get(t, "/v2/other/manifests/"+d.String()); resp.StatusCode == 200 {
		t.Fatalf("offline, a repository that never had %s served it", d)
	}
}

// TestColdRangeIsNotServedUnverified: a Range request on a cold blob that
// ends before the blob does. If the upstream's bytes do not match the digest,
// the client must not receive a complete 206 with them.
func TestColdRangeIsNotServedUnverified(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, true)
	img, _ := random.Image(64<<10, 1)
	o.push(t, "library/app:1", img)
	ld, want := layerOf(t, img, 0)
	o.tamper.Store(ld.String(), true) // flips byte len/2
	o.slowBlob.Store(int64(20 * time.Millisecond))
	e := newEnv(t, o)
	mid := len(want) / 2
	resp, err := http.DefaultClient.Do(mustRequest(t, e.srv.URL+"/v2/library/app/blobs/"+ld.String(), "Range", "bytes=0-"+strconv.Itoa(mid)))
	if err != nil {
		return // a broken transfer is the right answer
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode == http.StatusPartialContent && !bytes.Equal(body, want[:mid+1]) {
		t.Fatalf("a complete 206 of %d bytes carried tampered content", len(body))
	}
}

func mustRequest(t *testing.T, url string, hdr ...string) *http.Request {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	return req
}

// slowStatBlobs is the real blob store with a Stat that can be held for
// one digest, standing in for an object store that is slow to answer.
type slowStatBlobs struct {
	*storage.Blobs
	hold    digest.Digest
	release chan struct{}
	entered chan struct{}
}

func (s *slowStatBlobs) Stat(ctx context.Context, d digest.Digest) (int64, error) {
	if d == s.hold {
		close(s.entered)
		select {
		case <-s.release:
		case <-ctx.Done():
		}
	}
	return s.Blobs.Stat(ctx, d)
}

// TestSlowStoreStatDoesNotBlockOtherFills: one cold blob whose store lookup
// is slow (an object store having a bad moment) must not hold up cold
// pulls of every other blob.
func TestSlowStoreStatDoesNotBlockOtherFills(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, true)
	imgA, _ := random.Image(1024, 1)
	imgB, _ := random.Image(1024, 1)
	o.push(t, "library/a:1", imgA)
	o.push(t, "library/b:1", imgB)
	la, _ := layerOf(t, imgA, 0)
	lb, wantB := layerOf(t, imgB, 0)
	fs, err := storage.NewFilesystem(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	blobs := &slowStatBlobs{Blobs: fs, hold: digest.Digest(la.String()), release: make(chan struct{}), entered: make(chan struct{})}
	meta, err := metadata.Open(t.TempDir() + "/metadata.db")
	if err != nil {
		t.Fatal(err)
	}
	defer meta.Close()
	reg, err := upstream.New(upstream.Options{Name: "hub", URL: o.srv.URL, MaxAttempts: 1, IdleTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	rt, err := NewRouter([]Upstream{{Name: "hub", Default: true, Library: true}})
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(Options{Router: rt, Registries: map[string]Registry{"hub": reg}, Blobs: blobs, Meta: meta})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(p)
	defer srv.Close()
	defer p.Close(context.Background())
	defer close(blobs.release) // before srv.Close, which waits for the held request

	go func() {
		if resp, err := http.Get(srv.URL + "/v2/a/blobs/" + la.String()); err == nil {
			resp.Body.Close()
		}
	}()
	<-blobs.entered
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	resp, err := http.DefaultClient.Do(mustRequest(t, srv.URL+"/v2/b/blobs/"+lb.String()).WithContext(ctx))
	if err != nil {
		t.Fatalf("cold pull of b while the store is slow for a: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 || !bytes.Equal(body, wantB) {
		t.Fatalf("cold pull of b: %d, %v", resp.StatusCode, err)
	}
}

// TestBrokenTransferIsLoggedAndCounted: a blob transfer airlock aborts (here
// because the upstream's bytes do not match the digest) is the request an
// operator most needs to see; it must still produce its request log line
// and its airlock_http_requests_total sample.
func TestBrokenTransferIsLoggedAndCounted(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, true)
	img, _ := random.Image(64<<10, 1)
	o.push(t, "library/app:1", img)
	ld, _ := layerOf(t, img, 0)
	o.tamper.Store(ld.String(), true)
	o.slowBlob.Store(int64(2 * time.Millisecond))
	e := newEnv(t, o)
	path := "/v2/library/app/blobs/" + ld.String()
	resp, err := http.DefaultClient.Do(mustRequest(t, e.srv.URL+path))
	if err == nil {
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	if err == nil {
		t.Fatal("the tampered transfer was not broken")
	}
	deadline := time.Now().Add(2 * time.Second)
	for !strings.Contains(e.logText(), `"msg":"request","method":"GET","path":"`+path+`"`) {
		if time.Now().After(deadline) {
			t.Fatalf("no request log line for the broken transfer; log:\n%s", e.logText())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := testutil.CollectAndCount(e.metrics.requests); n == 0 {
		t.Fatal("the broken transfer was not counted in airlock_http_requests_total")
	}
}
