package gate_test

import (
	"net/http"
	"testing"

	"github.com/airlock-registry/airlock/integration/upstreamtest"
)

// A signature artifact is served to clients only while the image it
// signs is servable. An artifact that "signs" another artifact must not
// borrow that artifact's approval: artifacts are approved on sight, so a
// chain of them would serve any signature-shaped blobs of an image
// airlock never served.
func TestSignatureArtifactChainServesNothingUnserved(t *testing.T) {
	t.Parallel()
	const repo = "hcl/vendor/app"
	up := upstreamtest.New(t, upstreamtest.Options{})
	ok := up.PushImage(t, "vendor/app", "ok", 256, 1)
	never := up.PushImage(t, "vendor/app", "never", 64, 1)
	payload := up.PushImage(t, "vendor/app", "payload", 256, 1)
	payload2 := up.PushImage(t, "vendor/app", "payload2", 256, 1)
	payload3 := up.PushImage(t, "vendor/app", "payload3", 256, 1)
	h := newHarness(t, up, t.TempDir(), ok.Digest.String()+"\n")
	h.wantStatus(manifestPath(repo, "ok"), http.StatusOK)

	// A: a "signature" of an image airlock never served. Refused, but
	// recorded as an artifact.
	a, atag := pushFakeSignature(t, up, "vendor/app", payload.Layers[0], never.Digest)
	h.wantStatus(manifestPath(repo, atag), http.StatusForbidden, "which airlock has not served")
	// B: a "signature" of A, carrying other blobs.
	b, btag := pushFakeSignature(t, up, "vendor/app", payload2.Layers[0], mustHash(t, a))
	h.wantStatus(manifestPath(repo, btag), http.StatusForbidden, "which airlock has not served")
	h.wantStatus(blobPath(repo, payload2.Layers[0]), http.StatusForbidden, "DENIED")

	// A chain that ends at a servable image is served.
	s1, s1tag := pushFakeSignature(t, up, "vendor/app", payload3.Layers[0], ok.Digest)
	h.wantStatus(manifestPath(repo, s1tag), http.StatusOK)
	_, s2tag := pushFakeSignature(t, up, "vendor/app", never.Layers[0], mustHash(t, s1))
	h.wantStatus(manifestPath(repo, s2tag), http.StatusOK)

	// Tags can make a loop: A's tag names B, B's names A.
	_, loopTag := pushFakeSignature(t, up, "vendor/app", payload.Layers[0], mustHash(t, b))
	h.wantStatus(manifestPath(repo, loopTag), http.StatusForbidden, "chain of more than")
	h.wantStatus(manifestPath(repo, btag), http.StatusForbidden, "chain of more than")
	h.wantStatus(blobPath(repo, payload2.Layers[0]), http.StatusForbidden, "DENIED")
}
