package proxy

import (
	"context"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/airlock-registry/airlock/proxy/upstream"
	"github.com/airlock-registry/airlock/storage"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// The micro-benchmarks of the warm paths: every request a pulling fleet
// sends once the cache is warm. They run the handler directly with
// httptest recorders, so what they measure is the proxy's own cost, not the
// network's. Compare runs with benchstat:
//
//	go test -run '^$' -bench . -count 10 ./proxy > old.txt   (then new.txt)
//	benchstat old.txt new.txt

// benchOrigin is a real registry behind a handler that counts requests,
// so a hit benchmark can prove it never went upstream. newOrigin and
// newEnv take *testing.T; benchmarks need the same pieces for a *testing.B.
type benchOrigin struct {
	srv      *httptest.Server
	requests atomic.Int64
}

func newBenchOrigin(tb testing.TB) *benchOrigin {
	tb.Helper()
	o := &benchOrigin{}
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	o.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		o.requests.Add(1)
		reg.ServeHTTP(w, r)
	}))
	tb.Cleanup(o.srv.Close)
	return o
}

func (o *benchOrigin) push(tb testing.TB, repoTag string, img v1.Image) {
	tb.Helper()
	ref, err := name.ParseReference(strings.TrimPrefix(o.srv.URL, "http://")+"/"+repoTag, name.Insecure)
	if err != nil {
		tb.Fatal(err)
	}
	if err := remote.Write(ref, img, remote.WithContext(tb.Context())); err != nil {
		tb.Fatal(err)
	}
}

func newBenchProxy(tb testing.TB, o *benchOrigin) *Proxy {
	tb.Helper()
	dir := tb.TempDir()
	blobs, err := storage.NewFilesystem(dir)
	if err != nil {
		tb.Fatal(err)
	}
	meta, err := metadata.Open(dir + "/metadata.db")
	if err != nil {
		tb.Fatal(err)
	}
	reg, err := upstream.New(upstream.Options{Name: "hub", URL: o.srv.URL, MaxAttempts: 1, IdleTimeout: 5 * time.Second})
	if err != nil {
		tb.Fatal(err)
	}
	rt, err := NewRouter([]Upstream{{Name: "hub", Hosts: []string{"docker.io"}, Default: true, Library: true}})
	if err != nil {
		tb.Fatal(err)
	}
	p, err := New(Options{Router: rt, Registries: map[string]Registry{"hub": reg}, DefaultTagTTL: time.Hour,
		Blobs: blobs, Meta: meta})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := p.Close(ctx); err != nil {
			tb.Errorf("closing proxy: %v", err)
		}
		meta.Close()
	})
	return p
}

// serveOK runs one GET through p and fails unless it answers 200 with
// wantBytes bytes.
func serveOK(tb testing.TB, p *Proxy, path string, wantBytes int) {
	req := httptest.NewRequestWithContext(tb.Context(), http.MethodGet, path, nil)
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
	rec := httptest.NewRecorder()
	p.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK || rec.Body.Len() != wantBytes {
		tb.Fatalf("GET %s: %d with %d bytes, want 200 with %d: %.200s", path, rec.Code, rec.Body.Len(), wantBytes, rec.Body.Bytes())
	}
}

func BenchmarkParseEndpointRoute(b *testing.B) {
	rt, err := NewRouter([]Upstream{
		{Name: "dockerhub", Hosts: []string{"docker.io", "registry-1.docker.io"}, Default: true, Library: true},
		{Name: "quay", Hosts: []string{"quay.io"}},
	})
	if err != nil {
		b.Fatal(err)
	}
	const d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	cases := []struct {
		name, path string
		query      url.Values
		wantRepo   string
	}{
		{"manifest by tag, prefix", "/v2/quay/prometheus/node-exporter/manifests/v1.8.2", nil, "prometheus/node-exporter"},
		{"blob, default upstream", "/v2/nginx/blobs/" + d, nil, "library/nginx"},
		{"manifest by digest, ns", "/v2/library/nginx/manifests/" + d, url.Values{"ns": {"docker.io"}}, "library/nginx"},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				ep, err := ParseEndpoint(c.path)
				if err != nil {
					b.Fatal(err)
				}
				r, err := rt.Route(ep, c.query)
				if err != nil || r.Repo != c.wantRepo {
					b.Fatalf("Route(%s) = %q, %v; want %q", c.path, r.Repo, err, c.wantRepo)
				}
			}
		})
	}
}

// warmProxy pushes an image with one small layer, pulls its manifest by tag
// and its layer through a new proxy, and returns the proxy with what a hit
// should answer.
func warmProxy(b *testing.B) (p *Proxy, o *benchOrigin, digest string, manifest []byte, layer string, layerSize int) {
	b.Helper()
	o = newBenchOrigin(b)
	img, err := random.Image(4<<10, 1)
	if err != nil {
		b.Fatal(err)
	}
	o.push(b, "library/app:1.0", img)
	d, _ := img.Digest()
	manifest, _ = img.RawManifest()
	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()
	size, _ := layers[0].Size()
	p = newBenchProxy(b, o)
	serveOK(b, p, "/v2/library/app/manifests/1.0", len(manifest))
	serveOK(b, p, "/v2/library/app/blobs/"+ld.String(), int(size))
	// Fills complete detached from the client; wait until the blob is a hit.
	deadline := time.Now().Add(10 * time.Second)
	for {
		before := o.requests.Load()
		serveOK(b, p, "/v2/library/app/blobs/"+ld.String(), int(size))
		if o.requests.Load() == before {
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("the blob never became a cache hit")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return p, o, d.String(), manifest, ld.String(), int(size)
}

// hitLoop serves path repeatedly and fails if any request went upstream:
// a "hit" benchmark that fetched would measure the wrong thing.
func hitLoop(b *testing.B, p *Proxy, o *benchOrigin, path string, size int) {
	before := o.requests.Load()
	b.ReportAllocs()
	for b.Loop() {
		serveOK(b, p, path, size)
	}
	if n := o.requests.Load() - before; n != 0 {
		b.Fatalf("%d upstream requests during %d cache hits of %s", n, b.N, path)
	}
}

func BenchmarkManifestHitByTag(b *testing.B) {
	p, o, _, m, _, _ := warmProxy(b)
	hitLoop(b, p, o, "/v2/library/app/manifests/1.0", len(m))
}

func BenchmarkManifestHitByDigest(b *testing.B) {
	p, o, d, m, _, _ := warmProxy(b)
	hitLoop(b, p, o, "/v2/library/app/manifests/"+d, len(m))
}

func BenchmarkBlobHit(b *testing.B) {
	p, o, _, _, l, size := warmProxy(b)
	hitLoop(b, p, o, "/v2/library/app/blobs/"+l, size)
}
