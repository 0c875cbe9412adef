package gate_test

import (
	"errors"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/integration/upstreamtest"
	"github.com/airlock-registry/airlock/proxy"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// pushSignatureArtifact writes a cosign-style signature manifest (one
// simple-signing layer) for target under the tag scheme's tag.
func pushSignatureArtifact(t *testing.T, host, repo string, target v1.Hash, payload string) v1.Hash {
	t.Helper()
	d, _ := pushArtifact(t, host, repo, "sha256-"+target.Hex+".sig", []byte(payload), "application/vnd.dev.cosign.simplesigning.v1+json")
	return d
}

// pushArtifact writes, under tag, a manifest whose one layer is content of
// layerType, shaped as cosign shapes its tag-scheme artifacts.
func pushArtifact(t *testing.T, host, repo, tag string, content []byte, layerType string) (v1.Hash, string) {
	t.Helper()
	layer := static.NewLayer(content, types.MediaType(layerType))
	img, err := mutate.AppendLayers(mutate.MediaType(empty.Image, types.OCIManifestSchema1), layer)
	if err != nil {
		t.Fatal(err)
	}
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	ref, err := name.ParseReference(host+"/"+repo+":"+tag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d, tag
}

// TestFetcherReadsSignaturesThroughTheCache: airlock reads an image's
// signature artifacts through its own pull path, even in a repository
// under a pin policy (signature artifacts are not judged by policies);
// clients later get them from the cache; an image met while reading
// signatures is not judged in turn.
func TestFetcherReadsSignaturesThroughTheCache(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	img := up.PushImage(t, "vendor/app", "1.0", 256, 1)
	sig := pushSignatureArtifact(t, up.Host, "vendor/app", img.Digest, `{"critical":{}}`)
	h := newHarness(t, up, t.TempDir(), "")
	const repo = "hcl/vendor/app"
	f := h.proxy.Fetcher(repo)
	pinned := up.PushImage(t, "vendor/app", "2.0", 256, 1)
	pinnedSig := pushSignatureArtifact(t, up.Host, "vendor/app", pinned.Digest, `{"critical":{"pinned":true}}`)
	ctx := t.Context()

	body, mt, d, err := f.Manifest(ctx, "sha256-"+img.Digest.Hex+".sig")
	if err != nil {
		t.Fatal(err)
	}
	if d.String() != sig.String() || mt != string(types.OCIManifestSchema1) || digest.FromBytes(body) != d {
		t.Fatalf("signature manifest: %s %s", d, mt)
	}
	m, err := v1.ParseManifest(strings.NewReader(string(body)))
	if err != nil {
		t.Fatal(err)
	}
	payload, err := f.Blob(ctx, digest.Digest(m.Layers[0].Digest.String()), 1<<20)
	if err != nil || string(payload) != `{"critical":{}}` {
		t.Fatalf("payload %q, %v", payload, err)
	}
	if _, err := f.Blob(ctx, digest.Digest(m.Layers[0].Digest.String()), 4); err == nil || !strings.Contains(err.Error(), "larger than 4 bytes") {
		t.Errorf("a blob over the bound: %v", err)
	}
	if _, _, _, err := f.Manifest(ctx, "sha256-"+strings.Repeat("0", 64)+".sig"); !errors.Is(err, proxy.ErrFetchNotFound) {
		t.Errorf("absent signature tag: %v, want ErrNotFound", err)
	}
	rec, err := h.meta.Image(ctx, repo, digest.Digest(sig.String()))
	if err != nil || rec.State != metadata.StateApproved || rec.Artifact != metadata.ArtifactSignature {
		t.Errorf("signature artifact record: %+v, %v", rec, err)
	}

	// The image itself is not read while verifying.
	if _, _, _, err := f.Manifest(ctx, "1.0"); err == nil || !strings.Contains(err.Error(), "airlock reads only signatures") {
		t.Errorf("an image read through the fetcher: %v", err)
	}
	if _, err := h.meta.Image(ctx, repo, digest.Digest(img.Digest.String())); err == nil {
		t.Error("an image read through the fetcher was recorded")
	}

	// A client does not get the signature of an image that is not
	// served, and the image is still judged by its policy.
	h.wantStatus(manifestPath(repo, "sha256-"+img.Digest.Hex+".sig"), http.StatusForbidden, "is a signature of", "not served")
	h.wantStatus(manifestPath(repo, "1.0"), http.StatusForbidden, "is quarantined")
	h.wantStatus(manifestPath(repo, "sha256-"+img.Digest.Hex+".sig"), http.StatusForbidden, "which is quarantined")

	// It gets the signature of a served image from the cache.
	if err := os.WriteFile(h.pins, []byte(pinned.Digest.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := h.gate.SetPolicies(ctx, h.policies()); err != nil {
		t.Fatal(err)
	}
	h.wantStatus(manifestPath(repo, "2.0"), http.StatusOK)
	if _, _, _, err := f.Manifest(ctx, "sha256-"+pinned.Digest.Hex+".sig"); err != nil {
		t.Fatal(err)
	}
	gets := up.ManifestGETs("sha256-" + pinned.Digest.Hex + ".sig")
	h.wantStatus(manifestPath(repo, "sha256-"+pinned.Digest.Hex+".sig"), http.StatusOK)
	h.wantStatus(manifestPath(repo, pinnedSig.String()), http.StatusOK)
	if up.ManifestGETs("sha256-"+pinned.Digest.Hex+".sig") > gets {
		t.Errorf("the signature was fetched upstream again")
	}
	if proxy.Internal(t.Context()) {
		t.Error("a client's context counts as internal")
	}
}
