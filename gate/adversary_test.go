package gate_test

import (
	"net/http"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/integration/upstreamtest"
)

// A block on one platform of an index wins over the index's approval: the
// platform pulled by digest is refused and its layers stop being readable,
// although the index that lists it is still served.
func TestBlockedPlatformOfApprovedIndex(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	idx := up.PushIndex(t, "vendor/multi", "2.0", 256, 1)
	h := newHarness(t, up, t.TempDir(), idx.Digest.String()+"\n")
	const repo = "hcl/vendor/multi"
	arm, _ := idx.Image("arm64")

	h.wantStatus(manifestPath(repo, "2.0"), http.StatusOK)
	h.wantStatus(manifestPath(repo, arm.Digest.String()), http.StatusOK)
	h.wantStatus(blobPath(repo, arm.Layers[0]), http.StatusOK)

	if _, err := h.gate.Block(t.Context(), repo, digest.Digest(arm.Digest.String()), "admin:bob", "arm64 build is bad"); err != nil {
		t.Fatal(err)
	}
	h.wantStatus(manifestPath(repo, arm.Digest.String()), http.StatusForbidden, "is blocked", "arm64 build is bad")
	h.wantStatus(blobPath(repo, arm.Layers[0]), http.StatusForbidden, "DENIED")
	// The index itself, and its other platform, are still served.
	h.wantStatus(manifestPath(repo, "2.0"), http.StatusOK)
	amd, _ := idx.Image("amd64")
	h.wantStatus(manifestPath(repo, amd.Digest.String()), http.StatusOK)
	h.wantStatus(blobPath(repo, amd.Layers[0]), http.StatusOK)
}

// An index blocked before anyone pulled it still holds its platforms once
// it is seen: the refused pull of the index records what it lists.
func TestIndexBlockedBeforeFirstPullHoldsItsPlatforms(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	idx := up.PushIndex(t, "team/multi", "1", 256, 1)
	h := newHarness(t, up, t.TempDir(), "")
	const repo = "hub/team/multi"
	arm, _ := idx.Image("arm64")

	if _, err := h.gate.Block(t.Context(), repo, digest.Digest(idx.Digest.String()), "admin:bob", "known bad release"); err != nil {
		t.Fatal(err)
	}
	h.wantStatus(manifestPath(repo, idx.Digest.String()), http.StatusForbidden, "is blocked")
	if img := h.image(repo, idx.Digest); len(img.Platforms) != 2 {
		t.Fatalf("the refused index's platforms were not recorded: %+v", img.Platforms)
	}
	h.wantStatus(manifestPath(repo, arm.Digest.String()), http.StatusForbidden, "is a platform of", "blocked")
	h.wantStatus(blobPath(repo, arm.Layers[0]), http.StatusForbidden, "DENIED")
	h.wantStatus(manifestPath(repo, "1"), http.StatusForbidden, "is blocked")
}
