package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/storage"
)

// TestLyingSizeInOneRepositoryBreaksNoOtherFill: a manifest in one
// repository that declares a wrong size for a popular layer makes that
// repository's fill fail, and nobody else's. Without this, anyone able to
// push a manifest to the public upstream could keep the shared fill of a
// base layer failing for every repository of that upstream.
func TestLyingSizeInOneRepositoryBreaksNoOtherFill(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	var once sync.Once
	open := func() { once.Do(func() { close(release) }) }
	t.Cleanup(open)
	o := newOriginWrapped(t, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/v2/library/liar/blobs/") {
				<-release // the liar's transfer is under way when the honest client comes
			}
			next.ServeHTTP(w, r)
		})
	})
	img, _ := random.Image(64<<10, 1)
	o.push(t, "library/app:1", img)
	ld, want := layerOf(t, img, 0)
	cfg, _ := img.ConfigName()
	// The liar's manifest declares the real layer with a size of 1 byte.
	putManifest(t, o, "library/liar", "1", mediaOCIManifest, hostileManifest(t, cfg, ld.String()))
	e := newEnv(t, o)
	for _, path := range []string{"/v2/library/liar/manifests/1", "/v2/library/app/manifests/1"} {
		if resp, _ := e.get(t, path); resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d", path, resp.StatusCode)
		}
	}
	o.reset()
	liar := make(chan int)
	go func() {
		resp, _ := e.get(t, "/v2/library/liar/blobs/"+ld.String())
		liar <- resp.StatusCode
	}()
	waitFor(t, func() bool { return o.count(http.MethodGet, "/v2/library/liar/blobs/"+ld.String()) == 1 })
	honest := make(chan []byte)
	go func() {
		resp, body := e.get(t, "/v2/library/app/blobs/"+ld.String())
		if resp.StatusCode != 200 {
			body = nil
		}
		honest <- body
	}()
	// Let the honest request reach the proxy (and join the liar's fill, if
	// it would), then let the liar's transfer go on and fail.
	waitFor(t, func() bool {
		return o.count(http.MethodHead, "/v2/library/app/blobs/"+ld.String()) > 0 || o.count(http.MethodGet, "/v2/library/app/blobs/"+ld.String()) > 0
	})
	open()
	if got := <-honest; !bytes.Equal(got, want) {
		t.Errorf("honest repository got %d bytes, want the %d-byte layer: another repository's lying size broke its pull", len(got), len(want))
	}
	if code := <-liar; code == 200 {
		t.Errorf("the lying repository's fill succeeded against its declared size")
	}
}

// layerGate governs every repository and refuses an image manifest that
// lists a denied layer, reading the manifest the way its media type says,
// as a scanner would. Indexes are admitted: their children are judged when
// they are pulled.
type layerGate struct{ deny map[string]bool }

func (g *layerGate) Admit(_ context.Context, s Subject) (Decision, error) {
	if s.MediaType == mediaOCIIndex || s.MediaType == mediaDockerList {
		return Decision{Allow: true}, nil
	}
	var m struct {
		Layers []struct {
			Digest string `json:"digest"`
		} `json:"layers"`
	}
	if err := json.Unmarshal(s.Body, &m); err != nil {
		return Decision{}, err
	}
	for _, l := range m.Layers {
		if g.deny[l.Digest] {
			return Decision{Reasons: []string{"denied layer " + l.Digest}}, nil
		}
	}
	return Decision{Allow: true}, nil
}

// TestBlobsAreAdmittedAsTheGateReadTheManifest: a manifest admits only the
// blobs its media type gives it: an image manifest's config and layers, not
// a schema 1 "fsLayers" or an artifact's "blobs" smuggled beside them, and
// an index none. Otherwise a manifest the gate read as harmless admits a
// layer the gate refused.
func TestBlobsAreAdmittedAsTheGateReadTheManifest(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, true)
	bad, _ := random.Image(4<<10, 1)
	good, _ := random.Image(4<<10, 1)
	o.push(t, "library/app:bad", bad)
	o.push(t, "library/app:good", good)
	bl, _ := layerOf(t, bad, 0)
	gl, _ := layerOf(t, good, 0)
	cfg, _ := good.ConfigName()
	e := newEnv(t, o)
	e.proxy.gate = &layerGate{deny: map[string]bool{bl.String(): true}}
	if resp, _ := e.get(t, "/v2/library/app/manifests/bad"); resp.StatusCode != 403 {
		t.Fatalf("the gate let the bad image through: %d", resp.StatusCode)
	}
	type ref struct {
		MediaType string `json:"mediaType,omitempty"`
		Digest    string `json:"digest,omitempty"`
		Size      int64  `json:"size,omitempty"`
		BlobSum   string `json:"blobSum,omitempty"`
	}
	layer := ref{MediaType: "application/vnd.oci.image.layer.v1.tar+gzip", Digest: bl.String(), Size: 1}
	for i, c := range []struct {
		name string
		body any
		want int // for the layer
	}{
		{"fsLayers beside layers", map[string]any{"schemaVersion": 2, "mediaType": mediaOCIManifest,
			"config": ref{MediaType: "application/vnd.oci.image.config.v1+json", Digest: cfg.String(), Size: 2},
			"layers": []ref{{MediaType: layer.MediaType, Digest: gl.String(), Size: 1}}, "fsLayers": []ref{{BlobSum: bl.String()}}}, 403},
		{"blobs beside layers", map[string]any{"schemaVersion": 2, "mediaType": mediaOCIManifest,
			"config": ref{MediaType: "application/vnd.oci.image.config.v1+json", Digest: cfg.String(), Size: 2},
			"layers": []ref{}, "blobs": []ref{layer}}, 403},
		{"an index with layers", map[string]any{"schemaVersion": 2, "mediaType": mediaOCIIndex,
			"manifests": []ref{}, "layers": []ref{layer}}, 403},
		{"a list with a config", map[string]any{"schemaVersion": 2, "mediaType": mediaDockerList,
			"manifests": []ref{}, "config": layer}, 403},
		// A schema 1 manifest (no mediaType in its body, none from the
		// upstream) has its fsLayers as its layers (this gate reads
		// only "layers", so it admits it).
		{"schema 1", map[string]any{"schemaVersion": 1, "name": "library/smuggle4",
			"fsLayers": []ref{{BlobSum: bl.String()}}, "signatures": []any{}}, 200},
	} {
		repo := fmt.Sprintf("library/smuggle%d", i)
		body, err := json.Marshal(c.body)
		if err != nil {
			t.Fatal(err)
		}
		mt, _ := c.body.(map[string]any)["mediaType"].(string)
		putManifest(t, o, repo, "1", mt, body)
		if resp, _ := e.get(t, "/v2/"+repo+"/manifests/"+digest.FromBytes(body).String()); resp.StatusCode != 200 {
			t.Fatalf("%s: the gate refused the smuggling manifest: %d", c.name, resp.StatusCode)
		}
		if resp, _ := e.get(t, "/v2/"+repo+"/blobs/"+bl.String()); resp.StatusCode != c.want {
			t.Errorf("%s: the layer's GET answered %d, want %d", c.name, resp.StatusCode, c.want)
		}
	}
}

// TestDeclaredSizeDoesNotLiftTheMaximum: the configured maximum bounds every
// fill. A hostile upstream writes the manifest as well as the blob, so a
// size its manifest declares is no reason to take more than the maximum.
func TestDeclaredSizeDoesNotLiftTheMaximum(t *testing.T) {
	t.Parallel()
	var streamed atomic.Int64
	endless := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !strings.Contains(r.URL.Path, "/blobs/") || r.Method != http.MethodGet {
				next.ServeHTTP(w, r)
				return
			}
			w.Header().Set("Content-Type", "application/octet-stream")
			w.WriteHeader(http.StatusOK)
			chunk := bytes.Repeat([]byte("x"), 32<<10)
			for range 1 << 11 { // 64 MiB at most, so the test ends even if airlock does not stop it
				if _, err := w.Write(chunk); err != nil {
					return
				}
				streamed.Add(int64(len(chunk)))
			}
		})
	}
	hub, vendor := newOriginWrapped(t, endless), newOrigin(t, true)
	img, _ := random.Image(1024, 1)
	cfg, _ := img.ConfigName()
	huge := "sha256:" + strings.Repeat("ab", 32)
	body := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":2},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":%q,"size":%d}]}`,
		mediaOCIManifest, cfg, huge, int64(1)<<40))
	putManifest(t, hub, "library/app", "1", mediaOCIManifest, body)
	const maxBlob = 1 << 20
	e := newPairEnv(t, hub, vendor, pairOptions{maxBlob: maxBlob})
	if resp, _ := e.get(t, "/v2/app/manifests/1"); resp.StatusCode != 200 {
		t.Fatal(resp.StatusCode)
	}
	resp, err := http.Get(e.srv.URL + "/v2/app/blobs/" + huge)
	if err == nil {
		n, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if n > maxBlob || resp.StatusCode < 400 {
			t.Errorf("answered %d with %d bytes of a blob declared over the %d byte maximum", resp.StatusCode, n, maxBlob)
		}
	}
	waitFor(t, func() bool {
		return strings.Contains(e.logText(), "blob fill failed") || strings.Contains(e.logText(), "limit")
	})
	if got := streamed.Load(); got > 4*maxBlob {
		t.Errorf("the fill took %d bytes from the upstream, over the %d byte maximum", got, maxBlob)
	}
}

// TestUnsupportedTagDigestIsNotAnInternalError: an upstream that names a
// tag by a digest airlock cannot verify (sha384) gets a clear upstream
// error, never a 500.
func TestUnsupportedTagDigestIsNotAnInternalError(t *testing.T) {
	t.Parallel()
	sha384 := "sha384:" + strings.Repeat("ab", 48)
	o := newOriginWrapped(t, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if p, ok := strings.CutSuffix(r.URL.Path, "/manifests/"+sha384); ok {
				r.URL.Path = p + "/manifests/1" // the upstream serves the manifest by that digest too
			}
			if strings.HasSuffix(r.URL.Path, "/manifests/1") {
				w = &digestWriter{ResponseWriter: w, d: sha384}
			}
			next.ServeHTTP(w, r)
		})
	})
	img, _ := random.Image(1024, 1)
	o.push(t, "library/app:1", img)
	e := newEnv(t, o)
	for _, method := range []string{http.MethodGet, http.MethodHead} {
		resp, body := e.do(t, method, "/v2/app/manifests/1")
		if resp.StatusCode == 200 || resp.StatusCode == http.StatusInternalServerError {
			t.Errorf("%s of a tag named by a sha384 digest: %d %s", method, resp.StatusCode, body)
		}
	}
}

// digestWriter replaces the Docker-Content-Digest of a successful answer.
type digestWriter struct {
	http.ResponseWriter
	d string
}

func (d *digestWriter) WriteHeader(code int) {
	if code == http.StatusOK {
		d.Header().Set("Docker-Content-Digest", d.d)
	}
	d.ResponseWriter.WriteHeader(code)
}

func (d *digestWriter) Write(b []byte) (int, error) { return d.ResponseWriter.Write(b) }

// TestCatchAllUpstreamConfirmsNoBlob: an upstream that answers 200 with an
// HTML page to every HEAD (a misrouted ingress, a captive portal) does not
// thereby confirm another upstream's cached blob: the size it announces is
// not the blob's.
func TestCatchAllUpstreamConfirmsNoBlob(t *testing.T) {
	t.Parallel()
	page := []byte("<html><body>Welcome</body></html>")
	hub := newOriginWrapped(t, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.Contains(r.URL.Path, "/blobs/") {
				w.Header().Set("Content-Type", "text/html")
				w.Header().Set("Content-Length", strconv.Itoa(len(page)))
				w.WriteHeader(http.StatusOK)
				if r.Method == http.MethodGet {
					_, _ = w.Write(page)
				}
				return
			}
			next.ServeHTTP(w, r)
		})
	})
	vendor := newOrigin(t, true)
	img, _ := random.Image(8<<10, 1)
	vendor.push(t, "secret/app:1", img)
	ld, want := layerOf(t, img, 0)
	e := newPairEnv(t, hub, vendor, pairOptions{})
	if resp, _ := e.get(t, "/v2/vendor/secret/app/manifests/1"); resp.StatusCode != 200 {
		t.Fatalf("vendor manifest: %d", resp.StatusCode)
	}
	if resp, body := e.get(t, "/v2/vendor/secret/app/blobs/"+ld.String()); resp.StatusCode != 200 || !bytes.Equal(body, want) {
		t.Fatalf("vendor layer: %d", resp.StatusCode)
	}
	waitCommitted(t, e, ld.String())
	for _, method := range []string{http.MethodHead, http.MethodGet} {
		resp, body := e.do(t, method, "/v2/library/evil/blobs/"+ld.String())
		if resp.StatusCode < 400 || bytes.Contains(body, want) {
			t.Errorf("%s through a catch-all upstream: %d: the vendor's cached layer was served", method, resp.StatusCode)
		}
	}
}

// slowCommitBlobs is the real blob store whose Commit returns late, standing
// in for a store that is slow to acknowledge a write.
type slowCommitBlobs struct {
	*storage.Blobs
	committed chan struct{}
	release   chan struct{}
}

func (s *slowCommitBlobs) Commit(ctx context.Context, d digest.Digest, sp *storage.Spool) error {
	err := s.Blobs.Commit(ctx, d, sp)
	close(s.committed)
	<-s.release
	return err
}

// TestFilledBlobIsConfirmedWhenItsPullEnds: once a client got a blob from
// its repository's upstream, that repository's link to it is confirmed; the
// next pull does not depend on the upstream answering a HEAD, even while
// the fill is still finishing its bookkeeping.
func TestFilledBlobIsConfirmedWhenItsPullEnds(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, true)
	img, _ := random.Image(1024, 1)
	o.push(t, "library/app:1", img)
	ld, want := layerOf(t, img, 0)
	e := newEnv(t, o)
	slow := &slowCommitBlobs{Blobs: e.blobs, committed: make(chan struct{}), release: make(chan struct{})}
	e.proxy.blobs = slow
	defer close(slow.release)
	if resp, body := e.get(t, "/v2/app/blobs/"+ld.String()); resp.StatusCode != 200 || !bytes.Equal(body, want) {
		t.Fatalf("cold pull: %d", resp.StatusCode)
	}
	<-slow.committed
	o.down.Store(true)
	if resp, body := e.get(t, "/v2/app/blobs/"+ld.String()); resp.StatusCode != 200 || !bytes.Equal(body, want) {
		t.Fatalf("pull of the blob its upstream just served, with the upstream down: %d", resp.StatusCode)
	}
}

// TestFailedFillOfAnotherRepositoryIsNotThisOnesAnswer: a repository whose
// upstream does not hold a blob (or refuses it) fails its own fill; a
// client of another repository that joined that fill gets the blob from
// its own repository all the same. Otherwise anyone could keep a popular
// layer failing by asking for it through a repository that lacks it.
func TestFailedFillOfAnotherRepositoryIsNotThisOnesAnswer(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	var once sync.Once
	open := func() { once.Do(func() { close(release) }) }
	t.Cleanup(open)
	o := newOriginWrapped(t, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/v2/library/empty/blobs/") {
				<-release
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusNotFound)
				_, _ = io.WriteString(w, `{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}`)
				return
			}
			next.ServeHTTP(w, r)
		})
	})
	img, _ := random.Image(64<<10, 2)
	o.push(t, "library/app:1", img)
	e := newEnv(t, o)
	for i, declared := range []bool{false, true} {
		ld, want := layerOf(t, img, i)
		if declared {
			// The honest repository knows the layer's size from its manifest.
			if resp, _ := e.get(t, "/v2/library/app/manifests/1"); resp.StatusCode != 200 {
				t.Fatalf("manifest: %d", resp.StatusCode)
			}
		}
		release = make(chan struct{})
		once = sync.Once{}
		o.reset()
		empty := make(chan int)
		go func() {
			resp, _ := e.get(t, "/v2/library/empty/blobs/"+ld.String())
			empty <- resp.StatusCode
		}()
		waitFor(t, func() bool { return o.count(http.MethodGet, "/v2/library/empty/blobs/"+ld.String()) == 1 })
		honest := make(chan []byte)
		go func() {
			resp, body := e.get(t, "/v2/library/app/blobs/"+ld.String())
			if resp.StatusCode != 200 {
				body = []byte(fmt.Sprint(resp.StatusCode))
			}
			honest <- body
		}()
		// Give the honest request time to join the running fill, if it
		// would; then the empty repository's upstream answers 404.
		time.Sleep(100 * time.Millisecond)
		open()
		if got := <-honest; !bytes.Equal(got, want) {
			t.Errorf("declared size %v: honest repository got %q instead of the layer: another repository's failed fill was its answer", declared, got[:min(len(got), 16)])
		}
		if code := <-empty; code != 404 {
			t.Errorf("declared size %v: the repository without the layer got %d, want 404", declared, code)
		}
	}
}

// TestWrongDeclaredSizeDoesNotStick: a manifest that declared a wrong size
// for a layer, admitted first, does not make the layer unreadable in its
// repository for good: the upstream's announced length replaces the
// declaration, the digest decides, and the link keeps the real size.
func TestWrongDeclaredSizeDoesNotStick(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, true)
	img, _ := random.Image(64<<10, 1)
	o.push(t, "library/app:1", img)
	ld, want := layerOf(t, img, 0)
	cfg, _ := img.ConfigName()
	putManifest(t, o, "library/app", "liar", mediaOCIManifest, hostileManifest(t, cfg, ld.String()))
	e := newEnv(t, o)
	for _, path := range []string{"/v2/library/app/manifests/liar", "/v2/library/app/manifests/1"} {
		if resp, _ := e.get(t, path); resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d", path, resp.StatusCode)
		}
	}
	// The first fill is bounded by the declaration and refused when the
	// upstream announces otherwise; the upstream's word then stands.
	e.get(t, "/v2/library/app/blobs/"+ld.String())
	if resp, body := e.get(t, "/v2/library/app/blobs/"+ld.String()); resp.StatusCode != 200 || !bytes.Equal(body, want) {
		t.Fatalf("the layer after a manifest declared a wrong size for it: %d, %d bytes", resp.StatusCode, len(body))
	}
	if l, err := e.meta.BlobLink(t.Context(), "hub/library/app", digest.Digest(ld.String())); err != nil || l.Size != int64(len(want)) {
		t.Fatalf("link after the fill = %+v, %v; want the real size %d", l, err, len(want))
	}
}
