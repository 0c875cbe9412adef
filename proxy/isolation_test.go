package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/airlock-registry/airlock/proxy/upstream"
	"github.com/airlock-registry/airlock/storage"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// pairOptions shape a proxy in front of two upstreams: "hub" (the default,
// public) and "vendor" (reached with the /vendor/ prefix).
type pairOptions struct {
	gate    Gate
	maxBlob int64
	// blobs, when set, is the store to use instead of a new one.
	blobs     *storage.Blobs
	onNoSpace func()
	permit    func(ctx context.Context, upstream string) error
	// metaDir, when set, holds the metadata index instead of a new
	// directory (a small volume, to fill it).
	metaDir string
}

// newPairEnv is newEnv with a second upstream, for content that must not
// cross from one upstream or repository to another.
func newPairEnv(t *testing.T, hub, vendor *origin, po pairOptions) *env {
	t.Helper()
	blobs := po.blobs
	if blobs == nil {
		var err error
		if blobs, err = storage.NewFilesystem(t.TempDir()); err != nil {
			t.Fatal(err)
		}
	}
	metaDir := po.metaDir
	if metaDir == "" {
		metaDir = t.TempDir()
	}
	meta, err := metadata.Open(metaDir + "/metadata.db")
	if err != nil {
		t.Fatal(err)
	}
	regs := map[string]Registry{}
	for name, o := range map[string]*origin{"hub": hub, "vendor": vendor} {
		r, err := upstream.New(upstream.Options{Name: name, URL: o.srv.URL, MaxAttempts: 1, IdleTimeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		regs[name] = r
	}
	rt, err := NewRouter([]Upstream{
		{Name: "hub", Hosts: []string{"docker.io"}, Default: true, Library: true},
		{Name: "vendor", Hosts: []string{"registry.vendor.example"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{origin: hub, blobs: blobs, meta: meta, logs: &bytes.Buffer{}}
	e.metrics = NewMetrics(prometheus.NewRegistry())
	e.proxy, err = New(Options{Router: rt, Registries: regs, DefaultTagTTL: time.Minute, Blobs: blobs, Meta: meta,
		Gate: po.gate, MaxBlobBytes: po.maxBlob, Metrics: e.metrics, OnNoSpace: po.onNoSpace, Permit: po.permit,
		Logger: slog.New(slog.NewJSONHandler(lockedWriter{&e.logMu, e.logs}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	e.srv = httptest.NewServer(e.proxy)
	t.Cleanup(func() {
		e.srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = e.proxy.Close(ctx)
		meta.Close()
	})
	return e
}

// putManifest stores raw manifest bytes in an origin under repo:tag, the way
// a hostile publisher would: go-containerregistry's registry does not check
// that what a manifest lists exists.
func putManifest(t *testing.T, o *origin, repo, tag, mediaType string, body []byte) digest.Digest {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPut, o.srv.URL+"/v2/"+repo+"/manifests/"+tag, bytes.NewReader(body))
	req.Header.Set("Content-Type", mediaType)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("pushing %s:%s: %d", repo, tag, resp.StatusCode)
	}
	return digest.FromBytes(body)
}

// hostileManifest lists the given digests as layers of an image manifest.
func hostileManifest(t *testing.T, config v1.Hash, digests ...string) []byte {
	t.Helper()
	type desc struct {
		MediaType string `json:"mediaType"`
		Digest    string `json:"digest"`
		Size      int64  `json:"size"`
	}
	m := struct {
		SchemaVersion int    `json:"schemaVersion"`
		MediaType     string `json:"mediaType"`
		Config        desc   `json:"config"`
		Layers        []desc `json:"layers"`
	}{2, mediaOCIManifest, desc{"application/vnd.oci.image.config.v1+json", config.String(), 2}, nil}
	for _, d := range digests {
		m.Layers = append(m.Layers, desc{"application/vnd.oci.image.layer.v1.tar+gzip", d, 1})
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestVendorContentStaysWithTheVendor: a repository on the public upstream
// whose manifest lists a vendor's layer and manifest digests reads neither
// from the cache, by any route: by digest, through the foreign manifest's
// references, by digest as a manifest, while the vendor's fill runs, and
// with its own upstream down.
func TestVendorContentStaysWithTheVendor(t *testing.T) {
	t.Parallel()
	hub, vendor := newOrigin(t, true), newOrigin(t, true)
	img, _ := random.Image(64<<10, 2)
	vd := vendor.push(t, "secret/app:1", img)
	l0, want0 := layerOf(t, img, 0)
	l1, _ := layerOf(t, img, 1)
	e := newPairEnv(t, hub, vendor, pairOptions{})

	// The vendor's image is pulled through airlock: manifest and one layer
	// cached. The second layer's fill is held open below.
	if resp, _ := e.get(t, "/v2/vendor/secret/app/manifests/1"); resp.StatusCode != 200 {
		t.Fatalf("vendor manifest: %d", resp.StatusCode)
	}
	if resp, body := e.get(t, "/v2/vendor/secret/app/blobs/"+l0.String()); resp.StatusCode != 200 || !bytes.Equal(body, want0) {
		t.Fatalf("vendor layer: %d", resp.StatusCode)
	}
	waitCommitted(t, e, l0.String())

	// A public repository lists the vendor's digests as its own layers.
	cfg := hub.push(t, "library/decoy:1", img) // any real config blob will do for the public side
	_ = cfg
	pubCfg, _ := img.ConfigName()
	evil := hostileManifest(t, pubCfg, l0.String(), l1.String(), vd.String())
	putManifest(t, hub, "library/evil", "1", mediaOCIManifest, evil)
	if resp, _ := e.get(t, "/v2/library/evil/manifests/1"); resp.StatusCode != 200 {
		t.Fatalf("public manifest: %d", resp.StatusCode)
	}
	// The public upstream does not hold the vendor's content for library/evil.
	for _, d := range []string{l0.String(), l1.String(), vd.String()} {
		hub.hidden.Store("/v2/library/evil/blobs/"+d, true)
		hub.hidden.Store("/v2/library/evil/manifests/"+d, true)
	}

	check := func(label string) {
		t.Helper()
		for _, path := range []string{
			"/v2/library/evil/blobs/" + l0.String(),
			"/v2/evil/blobs/" + l0.String() + "?ns=docker.io",
			"/v2/library/evil/manifests/" + vd.String(),
			"/v2/library/evil/blobs/" + vd.String(),
		} {
			for _, method := range []string{http.MethodGet, http.MethodHead} {
				resp, body := e.do(t, method, path)
				if resp.StatusCode < 400 || bytes.Contains(body, want0) {
					t.Errorf("%s: %s %s = %d: vendor content served through the public upstream", label, method, path, resp.StatusCode)
				}
			}
		}
	}
	check("online")

	// While the vendor's second layer is being filled, a public client asking
	// for it must not read along.
	vendor.slowBlob.Store(int64(20 * time.Millisecond))
	var wg sync.WaitGroup
	wg.Go(func() { e.get(t, "/v2/vendor/secret/app/blobs/"+l1.String()) })
	time.Sleep(50 * time.Millisecond)
	if resp, _ := e.get(t, "/v2/library/evil/blobs/"+l1.String()); resp.StatusCode < 400 {
		t.Errorf("a public client read along the vendor's running fill: %d", resp.StatusCode)
	}
	wg.Wait()
	vendor.slowBlob.Store(0)
	waitCommitted(t, e, l1.String())

	hub.down.Store(true)
	check("public upstream down")
	hub.down.Store(false)

	// The vendor's own clients still get everything.
	if resp, body := e.get(t, "/v2/vendor/secret/app/blobs/"+l0.String()); resp.StatusCode != 200 || !bytes.Equal(body, want0) {
		t.Fatalf("vendor layer after the attempts: %d", resp.StatusCode)
	}
}

// TestCachedManifestIsConfirmedByTheRepositorysUpstream: a manifest cached
// for one repository is served to another only after that repository's
// upstream confirmed it with a HEAD (no transfer), and not at all when it
// answers 404.
func TestCachedManifestIsConfirmedByTheRepositorysUpstream(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, true)
	img, _ := random.Image(1024, 1)
	d := o.push(t, "library/a:1", img)
	o.push(t, "library/b:1", img)
	e := newEnv(t, o)
	if resp, _ := e.get(t, "/v2/library/a/manifests/"+d.String()); resp.StatusCode != 200 {
		t.Fatalf("manifest in library/a: %d", resp.StatusCode)
	}
	// Another repository finds the bytes in the store once their write
	// landed; until then it fetches them, which is the cost only of a pull
	// within that moment.
	settle(t, e)
	o.hidden.Store("/v2/library/c/manifests/"+d.String(), true)
	o.reset()
	if resp, body := e.get(t, "/v2/library/c/manifests/"+d.String()); resp.StatusCode != 404 || ociCode(t, body) != CodeManifestUnknown {
		t.Fatalf("manifest of library/a read through library/c: %d %s", resp.StatusCode, body)
	}
	o.reset()
	for range 2 {
		if resp, _ := e.get(t, "/v2/library/b/manifests/"+d.String()); resp.StatusCode != 200 {
			t.Fatalf("manifest in library/b: %d", resp.StatusCode)
		}
	}
	if o.count(http.MethodHead, "/v2/library/b/manifests/"+d.String()) != 1 || o.total() != 1 {
		t.Fatalf("upstream saw %v; want one HEAD, then the link serves", o.counts)
	}
}

// denyGate governs repositories with a prefix and refuses manifests with
// listed digests.
type denyGate struct {
	prefix string
	mu     sync.Mutex
	deny   map[digest.Digest]bool
}

func (g *denyGate) Governs(_, repo string) bool { return strings.HasPrefix(repo, g.prefix) }

func (g *denyGate) Admit(_ context.Context, s Subject) (Decision, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.Governs(s.Upstream, s.Repository) && g.deny[s.Digest] {
		return Decision{Reasons: []string{"refused by test policy"}}, nil
	}
	return Decision{Allow: true}, nil
}

// TestRefusedImageBlobsAreNotServed: under a policy, a blob is served only
// through a manifest there that the gate admitted; a HEAD confirmation, or
// the blob being cached for an admitted image elsewhere, is not enough.
func TestRefusedImageBlobsAreNotServed(t *testing.T) {
	t.Parallel()
	hub, vendor := newOrigin(t, true), newOrigin(t, true)
	bad, _ := random.Image(4<<10, 1)
	good, _ := random.Image(4<<10, 1)
	badD := hub.push(t, "library/app:bad", bad)
	hub.push(t, "library/app:good", good)
	hub.push(t, "other/app:bad", bad) // a repository no policy governs
	gate := &denyGate{prefix: "library/", deny: map[digest.Digest]bool{digest.Digest(badD.String()): true}}
	e := newPairEnv(t, hub, vendor, pairOptions{gate: gate})
	bl, _ := layerOf(t, bad, 0)
	gl, gwant := layerOf(t, good, 0)

	if resp, body := e.get(t, "/v2/library/app/manifests/bad"); resp.StatusCode != 403 || ociCode(t, body) != CodeDenied {
		t.Fatalf("refused manifest: %d %s", resp.StatusCode, body)
	}
	hub.reset()
	for _, method := range []string{http.MethodGet, http.MethodHead} {
		resp, _ := e.do(t, method, "/v2/library/app/blobs/"+bl.String())
		if resp.StatusCode != 403 {
			t.Fatalf("%s of a refused image's layer: %d, want 403", method, resp.StatusCode)
		}
	}
	if hub.total() != 0 {
		t.Fatalf("a refused image's layer was asked upstream: %v", hub.counts)
	}
	// The same layer, cached through a repository no policy governs, is
	// still refused in the governed one.
	if resp, _ := e.get(t, "/v2/other/app/manifests/bad"); resp.StatusCode != 200 {
		t.Fatalf("ungoverned manifest: %d", resp.StatusCode)
	}
	if resp, _ := e.get(t, "/v2/other/app/blobs/"+bl.String()); resp.StatusCode != 200 {
		t.Fatalf("ungoverned layer: %d", resp.StatusCode)
	}
	waitCommitted(t, e, bl.String())
	if resp, _ := e.get(t, "/v2/library/app/blobs/"+bl.String()); resp.StatusCode != 403 {
		t.Fatalf("cached layer of a refused image in the governed repository: %d, want 403", resp.StatusCode)
	}
	// An admitted image's layers are served.
	if resp, _ := e.get(t, "/v2/library/app/manifests/good"); resp.StatusCode != 200 {
		t.Fatalf("admitted manifest: %d", resp.StatusCode)
	}
	if resp, body := e.get(t, "/v2/library/app/blobs/"+gl.String()); resp.StatusCode != 200 || !bytes.Equal(body, gwant) {
		t.Fatalf("admitted layer: %d", resp.StatusCode)
	}
}

// TestManifestMediaTypeIsTheRepositorysOwn: the same manifest bytes from an
// upstream that labels them text/html change nothing for another
// upstream's clients, and its own clients get the type the body declares.
func TestManifestMediaTypeIsTheRepositorysOwn(t *testing.T) {
	t.Parallel()
	hub := newOrigin(t, true)
	vendor := newOriginWrapped(t, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.Contains(r.URL.Path, "/manifests/") {
				next.ServeHTTP(&typeWriter{ResponseWriter: w, ct: "text/html"}, r)
				return
			}
			next.ServeHTTP(w, r)
		})
	})
	img, _ := random.Image(1024, 1)
	d := hub.push(t, "library/app:1", img)
	vendor.push(t, "app:1", img)
	e := newPairEnv(t, hub, vendor, pairOptions{})
	want, _ := img.MediaType()
	for _, path := range []string{
		"/v2/library/app/manifests/1",
		"/v2/vendor/app/manifests/" + d.String(),
		"/v2/vendor/app/manifests/1",
		"/v2/library/app/manifests/" + d.String(),
		"/v2/library/app/manifests/1",
	} {
		resp, _ := e.get(t, path)
		if got := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || got != string(want) {
			t.Errorf("GET %s: %d with Content-Type %q, want %q", path, resp.StatusCode, got, want)
		}
	}
}

// typeWriter replaces the Content-Type of what it writes.
type typeWriter struct {
	http.ResponseWriter
	ct string
}

func (t *typeWriter) WriteHeader(code int) {
	if code == http.StatusOK {
		t.Header().Set("Content-Type", t.ct)
	}
	t.ResponseWriter.WriteHeader(code)
}

func (t *typeWriter) Write(b []byte) (int, error) { return t.ResponseWriter.Write(b) }

// TestFillsAreKeptPerUpstream: a client of a fast upstream does not join a
// trickling transfer of the same digest from another upstream.
func TestFillsAreKeptPerUpstream(t *testing.T) {
	t.Parallel()
	hub, vendor := newOrigin(t, true), newOrigin(t, true)
	img, _ := random.Image(256<<10, 1)
	hub.push(t, "library/app:1", img)
	vendor.push(t, "app:1", img)
	ld, want := layerOf(t, img, 0)
	vendor.gate = make(chan struct{}) // the vendor's body stalls after its first chunk
	vendor.slowBlob.Store(int64(time.Millisecond))
	e := newPairEnv(t, hub, vendor, pairOptions{})
	stalled := make(chan struct{})
	go func() {
		defer close(stalled)
		e.get(t, "/v2/vendor/app/blobs/"+ld.String())
	}()
	waitFor(t, func() bool { return vendor.count(http.MethodGet, "/v2/app/blobs/"+ld.String()) == 1 })
	resp, body := e.get(t, "/v2/library/app/blobs/"+ld.String())
	if resp.StatusCode != 200 || !bytes.Equal(body, want) {
		t.Fatalf("hub client: %d, %d bytes", resp.StatusCode, len(body))
	}
	if n := hub.count(http.MethodGet, "/v2/library/app/blobs/"+ld.String()); n != 1 {
		t.Fatalf("hub saw %d GETs of the layer, want its own transfer", n)
	}
	close(vendor.gate)
	<-stalled
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatal("condition not met within 10s")
}

// TestUnsupportedDigestReferencesAreNotAnError: a manifest that lists a
// sha384 (or otherwise unsupported) digest is served; the reference is
// simply not readable through airlock.
func TestUnsupportedDigestReferencesAreNotAnError(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, true)
	img, _ := random.Image(1024, 1)
	cfg, _ := img.ConfigName()
	body := hostileManifest(t, cfg, "sha384:"+strings.Repeat("ab", 48), "md5:"+strings.Repeat("0", 32), "sha256:../../x")
	putManifest(t, o, "library/odd", "1", mediaOCIManifest, body)
	e := newEnv(t, o)
	for range 2 {
		resp, got := e.get(t, "/v2/library/odd/manifests/1")
		if resp.StatusCode != 200 || !bytes.Equal(got, body) {
			t.Fatalf("manifest with a sha384 reference: %d %s", resp.StatusCode, got)
		}
	}
	resp, got := e.get(t, "/v2/library/odd/blobs/sha384:"+strings.Repeat("ab", 48))
	if resp.StatusCode != 400 || ociCode(t, got) != CodeDigestInvalid {
		t.Fatalf("sha384 blob: %d %s", resp.StatusCode, got)
	}
}

// TestNoIndexAcceptDoesNotRecordTheTag: a client that takes the Docker list
// but not the OCI index gets one platform's manifest of an OCI-index tag;
// that answer is not the tag's for clients that take indexes.
func TestNoIndexAcceptDoesNotRecordTheTag(t *testing.T) {
	t.Parallel()
	var child sync.Map
	o := newOriginWrapped(t, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			accept := strings.Join(r.Header.Values("Accept"), ",")
			if c, ok := child.Load("c"); ok && strings.HasSuffix(r.URL.Path, "/manifests/multi") && !strings.Contains(accept, mediaOCIIndex) {
				r.URL.Path = strings.TrimSuffix(r.URL.Path, "multi") + c.(string)
			}
			next.ServeHTTP(w, r)
		})
	})
	idx, _ := random.Index(512, 1, 2)
	pushIndex(t, o.host()+"/library/app:multi", idx)
	im, _ := idx.IndexManifest()
	child.Store("c", im.Manifests[0].Digest.String())
	idxDigest, _ := idx.Digest()
	e := newEnv(t, o)
	resp, _ := e.get(t, "/v2/app/manifests/multi", "Accept", strings.Join([]string{mediaDockerList, mediaDockerV2, mediaOCIManifest}, ","))
	if resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != im.Manifests[0].Digest.String() {
		t.Fatalf("client without the OCI index: %d %s", resp.StatusCode, resp.Header.Get("Docker-Content-Digest"))
	}
	if _, err := e.meta.Tag(t.Context(), "hub/library/app", "multi"); err == nil {
		t.Fatal("a platform manifest given to a client without the OCI index was recorded as the tag")
	}
	// Offline, the index client must not get the platform manifest either.
	o.down.Store(true)
	resp, _ = e.get(t, "/v2/app/manifests/multi")
	if resp.Header.Get("Docker-Content-Digest") == im.Manifests[0].Digest.String() {
		t.Fatal("the platform manifest was served stale as the tag")
	}
	o.down.Store(false)
	resp, _ = e.get(t, "/v2/app/manifests/multi")
	if resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != idxDigest.String() {
		t.Fatalf("client taking everything: %d %s, want the index", resp.StatusCode, resp.Header.Get("Docker-Content-Digest"))
	}
}

// TestStaleServeCountsOnce: a manifest served from cache while the upstream
// is down is one "stale" cache result, not also a "hit".
func TestStaleServeCountsOnce(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, true)
	img, _ := random.Image(1024, 1)
	o.push(t, "library/app:1", img)
	e := newEnv(t, o)
	if resp, _ := e.get(t, "/v2/app/manifests/1"); resp.StatusCode != 200 {
		t.Fatal(resp.StatusCode)
	}
	settle(t, e) // the clock jump must not outrun the background writes
	later := e.now.Load().Add(time.Hour)
	e.now.Store(&later)
	o.down.Store(true)
	if resp, _ := e.get(t, "/v2/app/manifests/1"); resp.StatusCode != 200 {
		t.Fatalf("stale serve: %d", resp.StatusCode)
	}
	// A request is counted and logged once its handler returns, which may
	// be a moment after the client read the body; the log line comes last.
	waitFor(t, func() bool { return strings.Contains(e.logText(), `"cache":"stale"`) })
	for result, want := range map[string]float64{"stale": 1, "hit": 0, "miss": 1} {
		if got := testutil.ToFloat64(e.metrics.cache.WithLabelValues("hub", "manifest", result)); got != want {
			t.Errorf("cache %s = %v, want %v", result, got, want)
		}
	}
	if n := strings.Count(e.logText(), `"cache":"stale"`); n != 1 {
		t.Errorf("%d request lines say stale, want 1:\n%s", n, e.logText())
	}
}

// TestFillsAreLogged: a fill says when it starts and ends, with bytes and
// followers; a failed request is one log line.
func TestFillsAreLogged(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, true)
	img, _ := random.Image(32<<10, 1)
	o.push(t, "library/app:1", img)
	ld, layer := layerOf(t, img, 0)
	e := newEnv(t, o)
	if resp, _ := e.get(t, "/v2/app/blobs/"+ld.String()); resp.StatusCode != 200 {
		t.Fatal(resp.StatusCode)
	}
	waitCommitted(t, e, ld.String())
	waitFor(t, func() bool { return strings.Contains(e.logText(), `"msg":"blob fill done"`) })
	logs := e.logText()
	for _, want := range []string{`"msg":"blob fill started"`, fmt.Sprintf(`"bytes":%d`, len(layer)), `"followers":0`} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %s:\n%s", want, logs)
		}
	}
	o.down.Store(true)
	missing := digest.FromString("missing").String()
	before := strings.Count(e.logText(), "\n")
	e.get(t, "/v2/app/blobs/"+missing)
	// The request's line is written after its response, and the fill ends
	// on its own goroutine: wait for both before counting.
	waitFor(t, func() bool {
		e.proxy.fills.mu.Lock()
		running := len(e.proxy.fills.m)
		e.proxy.fills.mu.Unlock()
		return running == 0 && strings.Contains(e.logText(), `"path":"/v2/app/blobs/`+missing)
	})
	lines := strings.Split(strings.TrimSpace(e.logText()), "\n")[before:]
	n := 0
	for _, l := range lines {
		if strings.Contains(l, missing) {
			n++
		}
	}
	if n != 1 {
		t.Errorf("a failed request wrote %d log lines, want 1:\n%s", n, strings.Join(lines, "\n"))
	}
}

// TestEndlessBlobIsBounded: a hostile upstream streams a blob without a
// Content-Length and never stops. The fill ends at the size the admitted
// manifest declared, or at the configured maximum, and caches nothing.
func TestEndlessBlobIsBounded(t *testing.T) {
	t.Parallel()
	endless := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !strings.Contains(r.URL.Path, "/blobs/") || r.Method != http.MethodGet {
				next.ServeHTTP(w, r)
				return
			}
			w.Header().Set("Content-Type", "application/octet-stream")
			w.WriteHeader(http.StatusOK)
			chunk := bytes.Repeat([]byte("x"), 32<<10)
			for i := 0; i < 1<<14; i++ { // 512 MiB at most, so the test ends even if airlock does not stop it
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
		})
	}
	for _, tc := range []struct {
		name    string
		viaMan  bool
		maxBlob int64
	}{
		{"declared by the manifest", true, 0},
		{"bounded by the maximum", false, 1 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			hub, vendor := newOriginWrapped(t, endless), newOrigin(t, true)
			img, _ := random.Image(8<<10, 1)
			hub.push(t, "library/app:1", img)
			ld, _ := layerOf(t, img, 0)
			e := newPairEnv(t, hub, vendor, pairOptions{maxBlob: tc.maxBlob})
			if tc.viaMan {
				if resp, _ := e.get(t, "/v2/app/manifests/1"); resp.StatusCode != 200 {
					t.Fatal(resp.StatusCode)
				}
			}
			resp, err := http.Get(e.srv.URL + "/v2/app/blobs/" + ld.String())
			if err == nil {
				n, rerr := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if (resp.StatusCode < 300 && rerr == nil) || n > 2<<20 {
					t.Fatalf("served %d bytes of an endless blob as a complete response (%v)", n, rerr)
				}
			}
			waitFor(t, func() bool { return strings.Contains(e.logText(), "blob fill failed") })
			if _, err := e.blobs.Stat(t.Context(), digest.Digest(ld.String())); err == nil {
				t.Fatal("an endless blob was committed")
			}
			if !strings.Contains(e.logText(), "too large") && !strings.Contains(e.logText(), "more than") {
				t.Errorf("the failure does not say the blob was too large:\n%s", e.logText())
			}
		})
	}
}

// TestHugeAcceptIsBounded: an Accept header of a megabyte is parsed into at
// most maxAcceptTypes types, and known types still match.
func TestHugeAcceptIsBounded(t *testing.T) {
	t.Parallel()
	var b strings.Builder
	for i := 0; b.Len() < 1<<20; i++ {
		fmt.Fprintf(&b, "application/x-%d, ", i)
	}
	h := http.Header{"Accept": {b.String()}}
	if got := parseAccept(h); len(got) != maxAcceptTypes {
		t.Fatalf("parseAccept kept %d types, want %d", len(got), maxAcceptTypes)
	}
	h = http.Header{"Accept": {mediaOCIIndex + "; q=0.9, " + strings.ToUpper(mediaDockerV2) + ",bogus, a/b/c, " + mediaOCIIndex, "*/*"}}
	want := []string{mediaOCIIndex, mediaDockerV2, "*/*"}
	if got := parseAccept(h); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("parseAccept = %q, want %q", got, want)
	}
}

func BenchmarkParseAcceptHuge(b *testing.B) {
	var s strings.Builder
	for i := 0; s.Len() < 1<<20; i++ {
		fmt.Fprintf(&s, "application/x-%d, ", i)
	}
	h := http.Header{"Accept": {s.String()}}
	for b.Loop() {
		parseAccept(h)
	}
}

// TestReferrersAreSharedAndCached: a burst of referrers requests for one
// image makes one upstream call, later ones within the tag TTL none, and the
// list is served while the upstream is down.
func TestReferrersAreSharedAndCached(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, true)
	img, _ := random.Image(100, 1)
	subject := o.push(t, "library/app:1", img)
	o.slowBlob.Store(0)
	e := newEnv(t, o)
	path := "/v2/library/app/referrers/" + subject.String()
	upstreamPath := "/v2/library/app/referrers/" + subject.String()
	o.reset()
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if resp, _ := e.get(t, path); resp.StatusCode != 200 {
				t.Errorf("referrers: %d", resp.StatusCode)
			}
		})
	}
	wg.Wait()
	if n := o.count(http.MethodGet, upstreamPath); n < 1 || n > 2 {
		t.Fatalf("8 concurrent requests made %d upstream referrers calls", n)
	}
	before := o.count(http.MethodGet, upstreamPath)
	e.get(t, path)
	if n := o.count(http.MethodGet, upstreamPath); n != before {
		t.Fatalf("a request within the tag TTL went upstream (%d calls, was %d)", n, before)
	}
	settle(t, e) // the clock jump must not outrun the background writes
	later := e.now.Load().Add(time.Hour)
	e.now.Store(&later)
	o.down.Store(true)
	if resp, body := e.get(t, path); resp.StatusCode != 200 || !bytes.Contains(body, []byte(mediaOCIIndex)) {
		t.Fatalf("referrers with the upstream down: %d %s", resp.StatusCode, body)
	}
}

func TestReferrersCacheIsBounded(t *testing.T) {
	t.Parallel()
	c := memo[referrersAnswer]{max: 1000, size: func(a referrersAnswer) int { return len(a.body) }}
	exp := time.Now().Add(time.Hour)
	for i := range 100 {
		c.put(fmt.Sprint(i), referrersAnswer{body: make([]byte, 90)}, exp)
	}
	if c.bytes > c.max || len(c.m) > 11 {
		t.Fatalf("cache holds %d bytes in %d entries, over its bound of %d", c.bytes, len(c.m), c.max)
	}
	if _, _, ok := c.get("99", time.Now()); !ok {
		t.Fatal("the newest entry was evicted")
	}
	if _, _, ok := c.get("0", time.Now()); ok {
		t.Fatal("the oldest entry was kept")
	}
	c.put("huge", referrersAnswer{body: make([]byte, 500)}, exp)
	if _, _, ok := c.get("huge", time.Now()); ok {
		t.Fatal("an entry over an eighth of the bound was cached")
	}
}

// TestPermitIsAskedWithTheRoutedUpstream: the client's permission is
// checked against the upstream the request was routed to, on every route,
// before any upstream is contacted.
func TestPermitIsAskedWithTheRoutedUpstream(t *testing.T) {
	t.Parallel()
	hub, vendor := newOrigin(t, true), newOrigin(t, true)
	img, _ := random.Image(1024, 1)
	hub.push(t, "library/app:1", img)
	vendor.push(t, "app:1", img)
	vendor.reset() // the pushes above
	var mu sync.Mutex
	var asked []string
	e := newPairEnv(t, hub, vendor, pairOptions{permit: func(_ context.Context, up string) error {
		mu.Lock()
		asked = append(asked, up)
		mu.Unlock()
		if up == "vendor" {
			return &Error{Status: http.StatusForbidden, Code: CodeDenied, Message: "not for you"}
		}
		return nil
	}})
	for _, path := range []string{"/v2/vendor/app/manifests/1", "/v2/app/manifests/1?ns=registry.vendor.example"} {
		if resp, body := e.get(t, path); resp.StatusCode != 403 || ociCode(t, body) != CodeDenied {
			t.Fatalf("GET %s: %d %s", path, resp.StatusCode, body)
		}
	}
	if resp, _ := e.get(t, "/v2/app/manifests/1"); resp.StatusCode != 200 {
		t.Fatalf("permitted upstream: %d", resp.StatusCode)
	}
	if vendor.total() != 0 {
		t.Fatalf("the refused upstream was contacted: %v", vendor.counts)
	}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(asked) != "[vendor vendor hub]" {
		t.Fatalf("Permit asked for %v", asked)
	}
}

// TestNarrowClientTagIsRememberedForItsAcceptOnly: a client that takes only
// image manifests is answered from memory within the tag TTL, not by a HEAD
// upstream per pull, and its answer reaches no client with another Accept.
func TestNarrowClientTagIsRememberedForItsAcceptOnly(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, true)
	img, _ := random.Image(1024, 1)
	d := o.push(t, "library/app:1", img)
	e := newEnv(t, o)
	o.reset()
	for range 3 {
		resp, _ := e.get(t, "/v2/app/manifests/1", "Accept", mediaOCIManifest)
		if resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != d.String() {
			t.Fatalf("narrow client: %d", resp.StatusCode)
		}
	}
	if n := o.count(http.MethodHead, "/v2/library/app/manifests/1"); n != 1 {
		t.Fatalf("3 narrow pulls within the TTL made %d HEADs, want 1", n)
	}
	if _, err := e.meta.Tag(t.Context(), "hub/library/app", "1"); err == nil {
		t.Fatal("a narrow client's answer was recorded as the tag's")
	}
	e.get(t, "/v2/app/manifests/1", "Accept", mediaDockerV2+","+mediaOCIManifest)
	if n := o.count(http.MethodHead, "/v2/library/app/manifests/1"); n != 2 {
		t.Fatalf("a client with another Accept list was answered from the narrow memory (%d HEADs)", n)
	}
}
