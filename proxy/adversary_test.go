package proxy

import (
	"bytes"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/random"
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
