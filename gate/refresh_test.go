package gate_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/gate"
	"github.com/airlock-registry/airlock/integration/upstreamtest"
	"github.com/airlock-registry/airlock/proxy"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// TestRefreshFollowsAnotherReplica runs two gates on one store, as two
// replicas share PostgreSQL: gate A (the harness's, behind the proxy)
// makes every change, and gate B learns of each only through Refresh or
// RefreshAll. Until then B answers from its memory, which is the stale
// window the store's change notices close.
func TestRefreshFollowsAnotherReplica(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	pinned := up.PushImage(t, "vendor/app", "1.0", 512, 1)
	unpinned := up.PushImage(t, "vendor/app", "1.1", 512, 1)
	other := up.PushImage(t, "vendor/app", "2.0", 512, 1)
	h := newHarness(t, up, t.TempDir(), "hcl/vendor/app:1.0 "+pinned.Digest.String()+"\nhcl/vendor/app:2.0 "+other.Digest.String()+"\n")
	const repo = "hcl/vendor/app"
	ctx := t.Context()
	h.wantStatus(manifestPath(repo, "1.0"), http.StatusOK)
	h.wantStatus(manifestPath(repo, "1.1"), http.StatusForbidden, "is quarantined")
	h.wantStatus(manifestPath(repo, "2.0"), http.StatusOK)
	h.gate.Sync()

	b, err := gate.New(ctx, gate.Options{Store: h.meta, Content: &content{p: h.proxy}, Policies: h.policies(), Now: h.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	dPinned, dUnpinned, dOther := digest.Digest(pinned.Digest.String()), digest.Digest(unpinned.Digest.String()), digest.Digest(other.Digest.String())
	mediaType := h.image(repo, pinned.Digest).MediaType
	admitB := func(d digest.Digest) proxy.Decision {
		t.Helper()
		dec, err := b.Admit(ctx, proxy.Subject{Upstream: "hcl", Repository: "vendor/app", Digest: d, MediaType: mediaType})
		if err != nil {
			t.Fatal(err)
		}
		return dec
	}
	wantB := func(step string, d digest.Digest, allow bool, msg string) {
		t.Helper()
		dec := admitB(d)
		if dec.Allow != allow || !strings.Contains(dec.Message, msg) {
			t.Fatalf("%s: gate B decided %+v for %s, want allow=%v with %q", step, dec, d, allow, msg)
		}
	}
	wantB("loaded", dPinned, true, "")
	wantB("loaded", dUnpinned, false, "is quarantined")

	// A block through A: B serves from memory until it refreshes.
	if _, err := h.gate.Block(ctx, repo, dPinned, "admin:bob", "incident 42"); err != nil {
		t.Fatal(err)
	}
	wantB("block, before refresh", dPinned, true, "")
	if err := b.Refresh(ctx, repo, dPinned); err != nil {
		t.Fatal(err)
	}
	wantB("block, refreshed", dPinned, false, "is blocked")
	if !strings.Contains(admitB(dPinned).Message, "incident 42") {
		t.Errorf("B's refusal does not give the block's reason: %q", admitB(dPinned).Message)
	}
	if b.Servable("hcl", "vendor/app", dPinned) {
		t.Error("B still finds the blocked manifest servable")
	}
	// A's withdrawal is shared: the blob is refused through the one
	// proxy, and a refresh on B withdrawing again changes nothing.
	h.wantStatus(blobPath(repo, pinned.Layers[0]), http.StatusForbidden, "DENIED")

	// A release through A, likewise.
	if _, err := h.gate.Release(ctx, repo, dUnpinned, "admin:ann", "hotfix", h.clock.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	wantB("release, before refresh", dUnpinned, false, "is quarantined")
	if err := b.Refresh(ctx, repo, dUnpinned); err != nil {
		t.Fatal(err)
	}
	wantB("release, refreshed", dUnpinned, true, "")

	// A delete through A (no admin decision: the record goes): B forgets
	// the image, so nothing of it is servable from B's memory.
	if err := h.gate.Delete(ctx, repo, dOther, "admin:ann", "cleanup"); err != nil {
		t.Fatal(err)
	}
	if !b.Servable("hcl", "vendor/app", dOther) {
		t.Fatal("B lost the image before it refreshed")
	}
	if err := b.Refresh(ctx, repo, dOther); err != nil {
		t.Fatal(err)
	}
	if b.Servable("hcl", "vendor/app", dOther) {
		t.Error("B still serves a deleted image after refreshing it")
	}
	if err := b.Refresh(ctx, repo, dOther); err != nil {
		t.Errorf("refreshing an image gone from both store and memory: %v", err)
	}

	// Notices lost: RefreshAll brings back every change at once.
	if _, err := h.gate.Unblock(ctx, repo, dPinned, "admin:bob", "false alarm"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.gate.Block(ctx, repo, dUnpinned, "admin:bob", "incident 43"); err != nil {
		t.Fatal(err)
	}
	wantB("before RefreshAll", dPinned, false, "is blocked")
	wantB("before RefreshAll", dUnpinned, true, "")
	if err := b.RefreshAll(ctx); err != nil {
		t.Fatal(err)
	}
	wantB("after RefreshAll", dPinned, true, "")
	wantB("after RefreshAll", dUnpinned, false, "incident 43")
	img, err := h.meta.Image(ctx, repo, dUnpinned)
	if err != nil || img.State != metadata.StateBlocked {
		t.Fatalf("stored image: %+v, %v", img, err)
	}
}
