package proxy

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/storage"
)

// TestScanContentReadsWhatTheGateHolds: the scanner reads the manifest and
// layers of an image the gate refused (it is being checked), fetching a
// layer once from the upstream; what it cached stays unreadable to
// clients, and nothing of another upstream's repository is readable
// through it.
func TestScanContentReadsWhatTheGateHolds(t *testing.T) {
	t.Parallel()
	hub, vendor := newOrigin(t, true), newOrigin(t, true)
	img, _ := random.Image(8<<10, 2)
	d := hub.push(t, "library/app:held", img)
	md := digest.Digest(d.String())
	gate := &denyGate{prefix: "library/", deny: map[digest.Digest]bool{md: true}}
	e := newPairEnv(t, hub, vendor, pairOptions{gate: gate})
	if resp, _ := e.get(t, "/v2/library/app/manifests/held"); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("held manifest: %d, want 403", resp.StatusCode)
	}
	settle(t, e)
	sc := e.proxy.ScanContent()

	body, mt, err := sc.Manifest(t.Context(), "hub/library/app", md)
	if err != nil || digest.FromBytes(body) != md || !strings.Contains(mt, "manifest") {
		t.Fatalf("Manifest: %v, %s, digest %s", err, mt, digest.FromBytes(body))
	}
	if _, _, err := sc.Manifest(t.Context(), "vendor/library/app", md); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("manifest through another upstream's repository: %v, want not found", err)
	}

	layer, want := layerOf(t, img, 0)
	hub.reset()
	for range 2 {
		rc, err := sc.Blob(t.Context(), "hub/library/app", digest.Digest(layer.String()))
		if err != nil {
			t.Fatalf("Blob: %v", err)
		}
		got, _ := io.ReadAll(rc)
		rc.Close()
		if !bytes.Equal(got, want) {
			t.Fatalf("Blob returned %d bytes, not the layer", len(got))
		}
	}
	if n := hub.count(http.MethodGet, "/v2/library/app/blobs/"+layer.String()); n != 1 {
		t.Fatalf("the layer was fetched %d times from the upstream, want 1", n)
	}
	// Cached for the scanner, still refused to clients.
	if resp, body := e.get(t, "/v2/library/app/blobs/"+layer.String()); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("client read of a layer the scanner cached: %d %s, want 403", resp.StatusCode, body)
	}

	// A digest the upstream does not hold is an error, not an empty read.
	missing := digest.FromString("not there")
	if _, err := sc.Blob(t.Context(), "hub/library/app", missing); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("missing blob: %v, want a 404 error", err)
	}
	if _, err := sc.Blob(t.Context(), "hub/library/app", "sha256:nothex"); err == nil {
		t.Fatal("malformed digest accepted")
	}
}
