package metadata

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/storage"
)

// TestReidentifyWithdrawsWhatAnotherRegistryConfirmed: pointing an upstream
// name at another registry withdraws the old registry's confirmations and
// tags under that name, and nothing of any other upstream.
func TestReidentifyWithdrawsWhatAnotherRegistryConfirmed(t *testing.T) {
	t.Parallel()
	db := openTemp(t)
	defer db.Close()
	ctx := t.Context()
	m := manifest(`{"schemaVersion":2}`)
	layer := digest.FromString("layer")
	for _, repo := range []string{"vendor/app", "vendorx/app", "hub/library/app"} {
		if err := db.PutManifest(ctx, repo, m, Link{Flags: Confirmed | Admitted}, BlobLink{Digest: layer, Size: 3}); err != nil {
			t.Fatal(err)
		}
		if err := db.LinkBlobs(ctx, repo, BlobLink{Digest: layer, Size: 3, Flags: Confirmed}); err != nil {
			t.Fatal(err)
		}
		if err := db.PutTag(ctx, repo, "v1", TagRecord{Digest: m.Digest, Resolved: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	ids := map[string]string{"vendor": "https://registry.vendor.example", "vendorx": "https://x.example", "hub": "https://hub.example"}
	for round := range 2 {
		if changed, err := db.Reidentify(ctx, ids); err != nil || len(changed) != 0 {
			t.Fatalf("round %d: Reidentify of names seen before with the same URLs = %v, %v; want nothing withdrawn", round, changed, err)
		}
	}
	ids["vendor"] = "https://mirror.elsewhere.example"
	changed, err := db.Reidentify(ctx, ids)
	if err != nil || fmt.Sprint(changed) != "[vendor]" {
		t.Fatalf("Reidentify after vendor moved = %v, %v; want [vendor]", changed, err)
	}
	for _, tc := range []struct {
		repo      string
		confirmed bool
	}{{"vendor/app", false}, {"vendorx/app", true}, {"hub/library/app", true}} {
		bl, _ := db.BlobLink(ctx, tc.repo, layer)
		ml, _ := db.ManifestLink(ctx, tc.repo, m.Digest)
		if bl.Has(Confirmed) != tc.confirmed || ml.Has(Confirmed) != tc.confirmed {
			t.Errorf("%s: blob %+v, manifest %+v; want confirmed %v", tc.repo, bl, ml, tc.confirmed)
		}
		if !bl.Has(Admitted) || bl.Size != 3 {
			t.Errorf("%s: blob link lost what is not the registry's word: %+v", tc.repo, bl)
		}
		_, err := db.Tag(ctx, tc.repo, "v1")
		if gone := errors.Is(err, storage.ErrNotFound); gone == tc.confirmed {
			t.Errorf("%s: tag after the move: %v", tc.repo, err)
		}
	}
	if changed, _ := db.Reidentify(ctx, ids); len(changed) != 0 {
		t.Fatalf("the new identity was not recorded: %v withdrawn again", changed)
	}
	if _, err := db.Reidentify(ctx, map[string]string{"a/b": "x"}); err == nil {
		t.Fatal("Reidentify accepted an upstream name with a slash")
	}
}
