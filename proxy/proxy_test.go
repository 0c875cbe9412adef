package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/airlock-registry/airlock/proxy/upstream"
	"github.com/airlock-registry/airlock/storage"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// origin is a real registry (go-containerregistry's) behind a handler that
// counts requests and can misbehave on demand.
type origin struct {
	srv    *httptest.Server
	mu     sync.Mutex
	counts map[string]int // "METHOD path"
	down   atomic.Bool
	tamper sync.Map // digest string -> true
	// hidden paths answer 404, standing in for a registry that scopes blobs
	// per repository (go-containerregistry's does not).
	hidden   sync.Map
	slowBlob atomic.Int64
	// gate, when set, holds blob bodies until closed.
	gate chan struct{}
}

func newOrigin(t *testing.T, referrers bool) *origin {
	t.Helper()
	o := &origin{counts: map[string]int{}}
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)), registry.WithReferrersSupport(referrers))
	o.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		o.mu.Lock()
		o.counts[r.Method+" "+r.URL.Path]++
		o.mu.Unlock()
		if o.down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		if _, ok := o.hidden.Load(r.URL.Path); ok {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			if r.Method != http.MethodHead {
				_, _ = io.WriteString(w, `{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}`)
			}
			return
		}
		if strings.Contains(r.URL.Path, "/blobs/") && r.Method == http.MethodGet {
			d := r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]
			_, bad := o.tamper.Load(d)
			rec := httptest.NewRecorder()
			reg.ServeHTTP(rec, r)
			body := rec.Body.Bytes()
			if bad && len(body) > 0 {
				body = bytes.Clone(body)
				body[len(body)/2] ^= 0xff
			}
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.Code)
			o.writeSlowly(w, body)
			return
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(o.srv.Close)
	return o
}

func (o *origin) writeSlowly(w http.ResponseWriter, body []byte) {
	chunk := len(body)
	delay := time.Duration(o.slowBlob.Load())
	if delay > 0 {
		chunk = max(1, len(body)/20)
	}
	for len(body) > 0 {
		n := min(chunk, len(body))
		if _, err := w.Write(body[:n]); err != nil {
			return
		}
		w.(http.Flusher).Flush()
		body = body[n:]
		if o.gate != nil {
			<-o.gate
			o.gate = nil
		}
		time.Sleep(delay)
	}
}

func (o *origin) count(method, path string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.counts[method+" "+path]
}

func (o *origin) total() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, c := range o.counts {
		n += c
	}
	return n
}

func (o *origin) reset() {
	o.mu.Lock()
	o.counts = map[string]int{}
	o.mu.Unlock()
}

func (o *origin) host() string { return strings.TrimPrefix(o.srv.URL, "http://") }

func (o *origin) push(t *testing.T, repoTag string, img v1.Image) v1.Hash {
	t.Helper()
	ref, err := name.ParseReference(o.host()+"/"+repoTag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, remote.WithContext(t.Context())); err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

type env struct {
	origin  *origin
	proxy   *Proxy
	srv     *httptest.Server
	blobs   *storage.Blobs
	meta    *metadata.DB
	metrics *Metrics
	logs    *bytes.Buffer
	logMu   sync.Mutex
	now     atomic.Pointer[time.Time]
}

func newEnv(t *testing.T, o *origin) *env {
	t.Helper()
	blobs, err := storage.NewFilesystem(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return newEnvWith(t, o, blobs)
}

// newEnvWith builds the proxy over a given blob store, to run the same
// pulls against the filesystem fast path and a remote driver's path.
func newEnvWith(t *testing.T, o *origin, blobs *storage.Blobs) *env {
	t.Helper()
	dir := t.TempDir()
	meta, err := metadata.Open(dir + "/metadata.db")
	if err != nil {
		t.Fatal(err)
	}
	reg, err := upstream.New(upstream.Options{Name: "hub", URL: o.srv.URL, MaxAttempts: 1, IdleTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	rt, err := NewRouter([]Upstream{
		{Name: "hub", Hosts: []string{"docker.io", o.host()}, Default: true, Library: true,
			Allowed: func(repo string) bool { return !strings.HasPrefix(repo, "forbidden/") }},
	})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{origin: o, blobs: blobs, meta: meta, logs: &bytes.Buffer{}}
	now := time.Now()
	e.now.Store(&now)
	e.metrics = NewMetrics(prometheus.NewRegistry())
	logger := slog.New(slog.NewJSONHandler(lockedWriter{&e.logMu, e.logs}, nil))
	e.proxy, err = New(Options{Router: rt, Registries: map[string]Registry{"hub": reg}, DefaultTagTTL: time.Minute,
		Blobs: blobs, Meta: meta, Logger: logger, Metrics: e.metrics, Now: func() time.Time { return *e.now.Load() }})
	if err != nil {
		t.Fatal(err)
	}
	e.srv = httptest.NewServer(e.proxy)
	t.Cleanup(func() {
		e.srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := e.proxy.Close(ctx); err != nil {
			t.Errorf("closing proxy: %v", err)
		}
		meta.Close()
	})
	return e
}

func (e *env) logText() string {
	e.logMu.Lock()
	defer e.logMu.Unlock()
	return e.logs.String()
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (e *env) get(t *testing.T, path string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	return e.do(t, http.MethodGet, path, hdr...)
}

func (e *env) do(t *testing.T, method, path string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, e.srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, body
}

func ociCode(t *testing.T, body []byte) Code {
	t.Helper()
	var errs ociErrors
	if err := json.Unmarshal(body, &errs); err != nil || len(errs.Errors) == 0 {
		t.Fatalf("body %q is not an OCI error: %v", body, err)
	}
	return errs.Errors[0].Code
}

func layerOf(t *testing.T, img v1.Image, i int) (v1.Hash, []byte) {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	d, err := layers[i].Digest()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := layers[i].Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return d, b
}

func TestManifestByTagCachedWithinTTL(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, true)
	img, _ := random.Image(1024, 2)
	d := o.push(t, "library/app:1.0", img)
	raw, _ := img.RawManifest()
	mt, _ := img.MediaType()
	e := newEnv(t, o)
	o.reset()

	for i, path := range []string{"/v2/hub/library/app/manifests/1.0", "/v2/app/manifests/1.0", "/v2/library/app/manifests/1.0?ns=docker.io"} {
		resp, body := e.get(t, path)
		if resp.StatusCode != 200 || !bytes.Equal(body, raw) {
			t.Fatalf("GET %s: %d %q", path, resp.StatusCode, body)
		}
		if got := resp.Header.Get("Docker-Content-Digest"); got != d.String() {
			t.Fatalf("Docker-Content-Digest = %q, want %s", got, d)
		}
		if got := resp.Header.Get("Content-Type"); got != string(mt) {
			t.Fatalf("Content-Type = %q, want %s", got, mt)
		}
		if i == 2 && resp.Header.Get("OCI-Namespace") != "docker.io" {
			t.Fatalf("OCI-Namespace = %q on a ?ns= request", resp.Header.Get("OCI-Namespace"))
		}
	}
	// One HEAD to resolve the tag, one GET by digest; the later pulls, by
	// every route, were answered from the cache within the TTL.
	if h, g := o.count("HEAD", "/v2/library/app/manifests/1.0"), o.count("GET", "/v2/library/app/manifests/"+d.String()); h != 1 || g != 1 {
		t.Fatalf("upstream saw %d HEAD by tag and %d GET by digest, want 1 and 1 (all: %v)", h, g, o.counts)
	}
	if n := o.total(); n != 2 {
		t.Fatalf("upstream saw %d requests, want 2: %v", n, o.counts)
	}

	// After the TTL the tag is checked with one HEAD; the manifest is not re-fetched.
	settle(t, e) // the clock jump must not outrun the background writes
	later := time.Now().Add(2 * time.Minute)
	e.now.Store(&later)
	o.reset()
	resp, _ := e.do(t, http.MethodHead, "/v2/app/manifests/1.0")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Length") != fmt.Sprint(len(raw)) {
		t.Fatalf("HEAD after TTL: %d, Content-Length %s", resp.StatusCode, resp.Header.Get("Content-Length"))
	}
	if n := o.total(); n != 1 || o.count("HEAD", "/v2/library/app/manifests/1.0") != 1 {
		t.Fatalf("after the TTL the upstream saw %v, want exactly one HEAD", o.counts)
	}
}

func TestBlobStreamThroughAndHit(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, true)
	img, _ := random.Image(256<<10, 1)
	o.push(t, "library/app:1", img)
	ld, want := layerOf(t, img, 0)
	e := newEnv(t, o)
	o.reset()
	path := "/v2/hub/library/app/blobs/" + ld.String()
	for i := range 3 {
		resp, body := e.get(t, path)
		if resp.StatusCode != 200 || !bytes.Equal(body, want) {
			t.Fatalf("GET %d: status %d, %d bytes (want %d)", i, resp.StatusCode, len(body), len(want))
		}
		if resp.Header.Get("Docker-Content-Digest") != ld.String() {
			t.Fatalf("Docker-Content-Digest = %q", resp.Header.Get("Docker-Content-Digest"))
		}
		if i == 0 {
			// The client has every byte once the digest matched; the
			// commit to the store may finish a moment later.
			waitCommitted(t, e, ld.String())
		}
	}
	if n := o.count("GET", "/v2/library/app/blobs/"+ld.String()); n != 1 {
		t.Fatalf("upstream blob GETs = %d, want 1", n)
	}
	// A request is counted once its handler returns, which may be a moment
	// after the client read the last byte.
	waitFor(t, func() bool { return testutil.ToFloat64(e.metrics.cache.WithLabelValues("hub", "blob", "hit")) >= 2 })
	if got := testutil.ToFloat64(e.metrics.cache.WithLabelValues("hub", "blob", "hit")); got != 2 {
		t.Fatalf("blob cache hits = %v, want 2", got)
	}
	// Ranges on a hit: closed, open and suffix.
	for _, tc := range []struct{ rng, want string }{
		{"bytes=10-19", string(want[10:20])},
		{fmt.Sprintf("bytes=%d-", len(want)-5), string(want[len(want)-5:])},
		{"bytes=-3", string(want[len(want)-3:])},
	} {
		resp, body := e.get(t, path, "Range", tc.rng)
		if resp.StatusCode != http.StatusPartialContent || string(body) != tc.want {
			t.Fatalf("Range %s: %d, %d bytes", tc.rng, resp.StatusCode, len(body))
		}
	}
	// An unsatisfiable range on a hit is an OCI error, as on a miss.
	resp, body := e.get(t, path, "Range", fmt.Sprintf("bytes=%d-", len(want)))
	if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable || ociCode(t, body) != CodeRangeUnsatisfied ||
		resp.Header.Get("Content-Range") != fmt.Sprintf("bytes */%d", len(want)) {
		t.Fatalf("unsatisfiable range on a hit: %d %q, Content-Range %q", resp.StatusCode, body, resp.Header.Get("Content-Range"))
	}
}

func TestConcurrentColdPullsShareOneTransfer(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, true)
	img, _ := random.Image(512<<10, 1)
	o.push(t, "library/app:1", img)
	ld, want := layerOf(t, img, 0)
	o.slowBlob.Store(int64(10 * time.Millisecond))
	e := newEnv(t, o)
	o.reset()

	const clients = 16
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			path := "/v2/hub/library/app/blobs/" + ld.String()
			if i%2 == 1 {
				path = "/v2/library/app/blobs/" + ld.String() + "?ns=docker.io"
			}
			resp, err := http.Get(e.srv.URL + path)
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil || !bytes.Equal(body, want) {
				errs <- fmt.Errorf("client %d: %v, %d bytes", i, err, len(body))
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := o.count("GET", "/v2/library/app/blobs/"+ld.String()); n != 1 {
		t.Fatalf("%d concurrent cold pulls caused %d upstream GETs, want exactly 1", clients, n)
	}
}

func TestTamperedBlobIsNeverServedWhole(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, true)
	img, _ := random.Image(64<<10, 1)
	o.push(t, "library/app:1", img)
	ld, want := layerOf(t, img, 0)
	o.tamper.Store(ld.String(), true)
	e := newEnv(t, o)
	path := "/v2/library/app/blobs/" + ld.String()

	// The transfer may break before the headers leave (the fill failed
	// before this client's first byte) or after; either way it must break.
	if resp, err := http.Get(e.srv.URL + path); err == nil {
		body, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		if rerr == nil && resp.StatusCode == 200 && len(body) == len(want) {
			t.Fatalf("a tampered blob was delivered whole (status %d, %d bytes)", resp.StatusCode, len(body))
		}
	}
	if _, err := e.blobs.Stat(t.Context(), digest.Digest(ld.String())); err == nil {
		t.Fatal("tampered blob was committed to the store")
	}
	// The fill counts the mismatch when it ends, which may be a moment
	// after the client saw the transfer break.
	waitFor(t, func() bool { return testutil.ToFloat64(e.metrics.mismatches.WithLabelValues("hub", "blob")) >= 1 })
	if got := testutil.ToFloat64(e.metrics.mismatches.WithLabelValues("hub", "blob")); got != 1 {
		t.Fatalf("digest mismatch counter = %v, want 1", got)
	}
	// Once the upstream is honest again the same pull succeeds.
	o.tamper.Delete(ld.String())
	resp2, body2 := e.get(t, path)
	if resp2.StatusCode != 200 || !bytes.Equal(body2, want) {
		t.Fatalf("pull after repair: %d, %d bytes", resp2.StatusCode, len(body2))
	}
}

func TestRangeOnColdBlob(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, true)
	img, _ := random.Image(128<<10, 1)
	o.push(t, "library/app:1", img)
	ld, want := layerOf(t, img, 0)
	e := newEnv(t, o)
	resp, body := e.get(t, "/v2/library/app/blobs/"+ld.String(), "Range", "bytes=1000-")
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, want[1000:]) {
		t.Fatalf("cold open range: %d, %d bytes (want %d)", resp.StatusCode, len(body), len(want)-1000)
	}
	if got, wantCR := resp.Header.Get("Content-Range"), fmt.Sprintf("bytes 1000-%d/%d", len(want)-1, len(want)); got != wantCR {
		t.Fatalf("Content-Range = %q, want %q", got, wantCR)
	}
}

func TestClientHangUpDoesNotWasteTheFill(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, true)
	img, _ := random.Image(256<<10, 1)
	o.push(t, "library/app:1", img)
	ld, want := layerOf(t, img, 0)
	o.slowBlob.Store(int64(5 * time.Millisecond))
	e := newEnv(t, o)
	o.reset()
	path := "/v2/library/app/blobs/" + ld.String()

	ctx, cancel := context.WithCancel(t.Context())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.srv.URL+path, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1024)
	if _, err := io.ReadFull(resp.Body, buf); err != nil {
		t.Fatal(err)
	}
	cancel()
	resp.Body.Close()

	// The fill finishes on its own.
	waitCommitted(t, e, ld.String())
	resp2, body := e.get(t, path)
	if resp2.StatusCode != 200 || !bytes.Equal(body, want) {
		t.Fatalf("pull after hang-up: %d", resp2.StatusCode)
	}
	if n := o.count("GET", "/v2/library/app/blobs/"+ld.String()); n != 1 {
		t.Fatalf("upstream blob GETs = %d, want 1", n)
	}
}

func TestOfflineServesCachedContent(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, true)
	img, _ := random.Image(1024, 1)
	d := o.push(t, "library/app:1", img)
	raw, _ := img.RawManifest()
	ld, want := layerOf(t, img, 0)
	e := newEnv(t, o)
	e.get(t, "/v2/app/manifests/1")
	e.get(t, "/v2/app/blobs/"+ld.String())

	o.down.Store(true)
	settle(t, e)                       // the clock jump must not outrun the background writes
	later := time.Now().Add(time.Hour) // the tag's TTL has passed
	e.now.Store(&later)
	for _, path := range []string{"/v2/app/manifests/1", "/v2/app/manifests/" + d.String()} {
		resp, body := e.get(t, path)
		if resp.StatusCode != 200 || !bytes.Equal(body, raw) {
			t.Fatalf("offline GET %s: %d %s", path, resp.StatusCode, body)
		}
	}
	resp, body := e.get(t, "/v2/app/blobs/"+ld.String())
	if resp.StatusCode != 200 || !bytes.Equal(body, want) {
		t.Fatalf("offline blob: %d", resp.StatusCode)
	}
	if !strings.Contains(e.logText(), "serving stale content") {
		t.Fatal("a stale serve was not logged")
	}
	// Something never cached is an honest error.
	resp, body = e.get(t, "/v2/app/manifests/2")
	if resp.StatusCode != http.StatusServiceUnavailable || ociCode(t, body) != CodeUnavailable {
		t.Fatalf("offline miss: %d %s", resp.StatusCode, body)
	}
}

func TestRefusalsContactNoUpstream(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, true)
	e := newEnv(t, o)
	o.reset()
	tests := []struct {
		method, path string
		status       int
		code         Code
	}{
		{"GET", "/v2/forbidden/app/manifests/1", 403, CodeDenied},
		{"GET", "/v2/hub/forbidden/app/blobs/" + testDigest, 403, CodeDenied},
		{"GET", "/v2/library/app/manifests/1?ns=evil.example.com", 404, CodeNameUnknown},
		{"GET", "/v2/Bad/manifests/1", 400, CodeNameInvalid},
		{"PUT", "/v2/app/manifests/1", 405, CodeUnsupported},
		{"DELETE", "/v2/app/blobs/" + testDigest, 405, CodeUnsupported},
		{"POST", "/v2/app/blobs/uploads/", 405, CodeUnsupported},
		{"GET", "/v2/_catalog", 404, CodeUnsupported},
	}
	for _, tc := range tests {
		resp, body := e.do(t, tc.method, tc.path)
		if resp.StatusCode != tc.status || ociCode(t, body) != tc.code {
			t.Errorf("%s %s: %d %s; want %d %s", tc.method, tc.path, resp.StatusCode, body, tc.status, tc.code)
		}
		if resp.Header.Get("Content-Type") != "application/json" {
			t.Errorf("%s %s: error Content-Type %q", tc.method, tc.path, resp.Header.Get("Content-Type"))
		}
	}
	if n := o.total(); n != 0 {
		t.Fatalf("refused requests reached the upstream: %v", o.counts)
	}
}

func TestTagsListPaginates(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, true)
	img, _ := random.Image(100, 1)
	for _, tag := range []string{"c", "a", "e", "b", "d"} {
		o.push(t, "library/app:"+tag, img)
	}
	e := newEnv(t, o)
	var got []string
	path := "/v2/hub/library/app/tags/list?n=2"
	for pages := 0; path != ""; pages++ {
		if pages > 5 {
			t.Fatal("pagination does not end")
		}
		resp, body := e.get(t, path)
		var tl struct {
			Name string
			Tags []string
		}
		if err := json.Unmarshal(body, &tl); err != nil || resp.StatusCode != 200 {
			t.Fatalf("%s: %d %s", path, resp.StatusCode, body)
		}
		if tl.Name != "hub/library/app" {
			t.Fatalf("name = %q", tl.Name)
		}
		got = append(got, tl.Tags...)
		path = ""
		if link := resp.Header.Get("Link"); link != "" {
			path = link[1:strings.Index(link, ">")]
		}
	}
	if strings.Join(got, ",") != "a,b,c,d,e" {
		t.Fatalf("paginated tags = %v", got)
	}
}

func TestReferrers(t *testing.T) {
	t.Parallel()
	for _, native := range []bool{true, false} {
		t.Run(fmt.Sprintf("native=%v", native), func(t *testing.T) {
			t.Parallel()
			o := newOrigin(t, native)
			img, _ := random.Image(100, 1)
			subject := o.push(t, "library/app:1", img)
			e := newEnv(t, o)
			path := "/v2/library/app/referrers/" + subject.String()
			resp, body := e.get(t, path+"?artifactType=application/vnd.example.sbom")
			var idx struct {
				MediaType string            `json:"mediaType"`
				Manifests []json.RawMessage `json:"manifests"`
			}
			if resp.StatusCode != 200 || json.Unmarshal(body, &idx) != nil || idx.MediaType != mediaOCIIndex {
				t.Fatalf("referrers: %d %s", resp.StatusCode, body)
			}
			if len(idx.Manifests) != 0 {
				t.Fatalf("referrers of an image without any: %s", body)
			}
			if resp.Header.Get("OCI-Filters-Applied") != "artifactType" {
				t.Fatalf("OCI-Filters-Applied = %q", resp.Header.Get("OCI-Filters-Applied"))
			}
		})
	}
}

// TestRemoteDriverStore pulls through a store without the local fast path
// (the way S3, GCS or Azure are used): fills commit through the driver and
// hits, ranges included, are read back through it.
func TestRemoteDriverStore(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, true)
	img, _ := random.Image(300<<10, 1)
	o.push(t, "library/app:1", img)
	ld, want := layerOf(t, img, 0)
	blobs, err := storage.NewBlobs(inmemory.New(), "", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	e := newEnvWith(t, o, blobs)
	path := "/v2/app/blobs/" + ld.String()
	for i := range 2 {
		resp, body := e.get(t, path)
		if resp.StatusCode != 200 || !bytes.Equal(body, want) {
			t.Fatalf("pull %d: %d, %d bytes", i, resp.StatusCode, len(body))
		}
	}
	resp, body := e.get(t, path, "Range", "bytes=100000-100009")
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, want[100000:100010]) {
		t.Fatalf("range from the driver: %d %q", resp.StatusCode, body)
	}
	if n := o.count("GET", "/v2/library/app/blobs/"+ld.String()); n != 1 {
		t.Fatalf("upstream GETs = %d, want 1", n)
	}
}

// waitCommitted waits until blob d is in the store.
func waitCommitted(t *testing.T, e *env, d string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := e.blobs.Stat(t.Context(), digest.Digest(d)); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("blob %s was never committed", d)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestStoredBlobStaysInItsRepository: a blob stored for one repository is
// served to another only after the upstream confirms, with a HEAD and no
// transfer, that the other repository has it too.
func TestStoredBlobStaysInItsRepository(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, true)
	img, _ := random.Image(8<<10, 1)
	o.push(t, "library/a:1", img)
	ld, want := layerOf(t, img, 0)
	e := newEnv(t, o)
	if resp, body := e.get(t, "/v2/library/a/blobs/"+ld.String()); resp.StatusCode != 200 || !bytes.Equal(body, want) {
		t.Fatalf("pull in library/a: %d", resp.StatusCode)
	}
	waitCommitted(t, e, ld.String())

	o.reset()
	o.hidden.Store("/v2/library/b/blobs/"+ld.String(), true)
	resp, body := e.get(t, "/v2/library/b/blobs/"+ld.String())
	if resp.StatusCode != http.StatusNotFound || ociCode(t, body) != CodeBlobUnknown {
		t.Fatalf("blob of library/a read through library/b: %d %s", resp.StatusCode, body)
	}
	if n := o.count("HEAD", "/v2/library/b/blobs/"+ld.String()); n != 1 || o.count("GET", "/v2/library/b/blobs/"+ld.String()) != 0 {
		t.Fatalf("upstream saw %v; want one HEAD in library/b and no GET", o.counts)
	}

	o.hidden.Delete("/v2/library/b/blobs/" + ld.String())
	o.reset()
	for range 2 {
		if resp, body := e.get(t, "/v2/library/b/blobs/"+ld.String()); resp.StatusCode != 200 || !bytes.Equal(body, want) {
			t.Fatalf("pull in library/b once it has the blob: %d", resp.StatusCode)
		}
	}
	if n := o.count("HEAD", "/v2/library/b/blobs/"+ld.String()); n != 1 || o.total() != 1 {
		t.Fatalf("upstream saw %v; want exactly one HEAD, then the link serves", o.counts)
	}
}

// settle waits until the metadata writes that requests left to the
// background have landed, for tests that go on to read the store (or a
// path that reads only the store) rather than the proxy's memory. Taking
// every slot of the write bound orders this after each write's end.
func settle(t *testing.T, e *env) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for range cap(e.proxy.writes) {
		select {
		case e.proxy.writes <- struct{}{}:
		case <-timeout:
			t.Fatal("background metadata writes never landed")
		}
	}
	for range cap(e.proxy.writes) {
		<-e.proxy.writes
	}
}
