package metadata

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/storage"
)

// walkerOf lists fixed blobs with one commit time, as the blob store would.
type walkerOf struct {
	blobs []digest.Digest
	at    time.Time
}

func (w walkerOf) Walk(_ context.Context, fn func(digest.Digest, int64, time.Time) error) error {
	for _, d := range w.blobs {
		if err := fn(d, 1, w.at); err != nil {
			return err
		}
	}
	return nil
}

// contentFixture links one image into two repositories of different
// upstreams and a second image into the first.
type contentFixture struct {
	db                     *DB
	a, b                   string
	m1, m2                 ManifestRecord
	shared, only1, cfg, l3 digest.Digest
}

func newContentFixture(t *testing.T) contentFixture {
	t.Helper()
	ctx := t.Context()
	f := contentFixture{
		db: openTemp(t),
		a:  "dockerhub/library/app", b: "quay/library/app",
		m1: manifest(`{"image":1}`), m2: manifest(`{"image":2}`),
		shared: digest.FromString("shared layer"), only1: digest.FromString("layer of image 1"),
		cfg: digest.FromString("config of image 1"), l3: digest.FromString("layer of image 2"),
	}
	t.Cleanup(func() { f.db.Close() })
	admitted := Link{Flags: Confirmed | Admitted}
	for _, err := range []error{
		f.db.PutManifest(ctx, f.a, f.m1, admitted,
			BlobLink{Digest: f.shared, Size: 10}, BlobLink{Digest: f.only1, Size: 20}, BlobLink{Digest: f.cfg, Size: 2}),
		f.db.PutManifest(ctx, f.b, f.m1, admitted, BlobLink{Digest: f.shared, Size: 10}),
		f.db.PutManifest(ctx, f.a, f.m2, admitted, BlobLink{Digest: f.l3, Size: 30}),
		f.db.LinkBlobs(ctx, f.a, BlobLink{Digest: f.shared, Flags: Confirmed, Size: 10, UpstreamSize: true}),
		f.db.PutTag(ctx, f.a, "latest", TagRecord{Digest: f.m1.Digest}),
		f.db.PutTag(ctx, f.a, "1.0", TagRecord{Digest: f.m1.Digest}),
		f.db.PutTag(ctx, f.a, "2.0", TagRecord{Digest: f.m2.Digest}),
		f.db.PutTag(ctx, f.b, "latest", TagRecord{Digest: f.m1.Digest}),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []digest.Digest{f.m1.Digest, f.shared, f.only1, f.cfg} {
		f.db.Touch(f.a, d)
	}
	f.db.Touch(f.b, f.shared)
	if err := f.db.flush(); err != nil {
		t.Fatal(err)
	}
	return f
}

func TestManifestLinks(t *testing.T) {
	t.Parallel()
	f := newContentFixture(t)
	ctx := t.Context()
	links, err := f.db.ManifestLinks(ctx, f.a)
	if err != nil {
		t.Fatal(err)
	}
	if len(links) != 2 || !links[f.m1.Digest].Has(Confirmed|Admitted) || !links[f.m2.Digest].Has(Admitted) ||
		links[f.m1.Digest].Size != int64(len(f.m1.Body)) {
		t.Errorf("ManifestLinks(%s) = %+v; want both images, admitted, with their sizes", f.a, links)
	}
	if links, err := f.db.ManifestLinks(ctx, f.b); err != nil || len(links) != 1 {
		t.Errorf("ManifestLinks(%s) = %+v, %v; want image 1 only", f.b, links, err)
	}
	if links, err := f.db.ManifestLinks(ctx, "dockerhub/library/ap"); err != nil || len(links) != 0 {
		t.Errorf("ManifestLinks of a repository whose name prefixes another = %+v, %v; want none", links, err)
	}
	if _, err := f.db.ManifestLinks(ctx, ""); err == nil {
		t.Errorf("ManifestLinks of an empty repository name was accepted")
	}
}

func TestWithdrawManifest(t *testing.T) {
	t.Parallel()
	f := newContentFixture(t)
	ctx := t.Context()
	missing := digest.FromString("never linked")
	if err := f.db.WithdrawManifest(ctx, f.a, f.m1.Digest, []digest.Digest{f.only1, f.cfg, missing}); err != nil {
		t.Fatal(err)
	}
	l, err := f.db.ManifestLink(ctx, f.a, f.m1.Digest)
	if err != nil || l.Has(Admitted) || !l.Has(Confirmed) || l.Size != int64(len(f.m1.Body)) {
		t.Errorf("manifest link after withdrawal = %+v, %v; want confirmed, not admitted, size kept", l, err)
	}
	for _, d := range []digest.Digest{f.only1, f.cfg} {
		if l, err := f.db.BlobLink(ctx, f.a, d); err != nil || l.Has(Admitted) || l.Size == 0 {
			t.Errorf("blob %s after withdrawal = %+v, %v; want not admitted, size kept", d, l, err)
		}
	}
	// Not listed: another manifest may still need it.
	if l, _ := f.db.BlobLink(ctx, f.a, f.shared); !l.Has(Confirmed | Admitted) {
		t.Errorf("an unlisted blob lost flags: %+v", l)
	}
	if _, err := f.db.BlobLink(ctx, f.a, missing); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("withdrawal created a link for a missing blob: %v", err)
	}
	if l, _ := f.db.ManifestLink(ctx, f.b, f.m1.Digest); !l.Has(Admitted) {
		t.Errorf("withdrawal in %s reached %s: %+v", f.a, f.b, l)
	}
	if l, _ := f.db.ManifestLink(ctx, f.a, f.m2.Digest); !l.Has(Admitted) {
		t.Errorf("withdrawal of image 1 reached image 2: %+v", l)
	}
	// Admitting again restores what was withdrawn.
	if err := f.db.AdmitManifest(ctx, f.a, f.m1.Digest, []BlobLink{{Digest: f.only1, Size: 20}}); err != nil {
		t.Fatal(err)
	}
	if l, _ := f.db.BlobLink(ctx, f.a, f.only1); !l.Has(Admitted) || l.Size != 20 {
		t.Errorf("blob after readmission = %+v", l)
	}
	if err := f.db.WithdrawManifest(ctx, "dockerhub/none", missing, nil); err != nil {
		t.Errorf("withdrawing an unknown manifest: %v; want nothing done and no error", err)
	}
	if err := f.db.WithdrawManifest(ctx, f.a, "sha256:bad", nil); err == nil {
		t.Errorf("a malformed digest was accepted")
	}
}

func TestUnlinkImage(t *testing.T) {
	t.Parallel()
	f := newContentFixture(t)
	ctx := t.Context()
	orphans, err := f.db.UnlinkImage(ctx, f.a, f.m1.Digest, []digest.Digest{f.shared, f.only1, f.cfg, f.only1})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(orphans, []digest.Digest{f.only1, f.cfg}) {
		t.Errorf("orphans = %v; want the layer and config only image 1 in %s had (the shared layer is still in %s)", orphans, f.a, f.b)
	}
	if _, err := f.db.ManifestLink(ctx, f.a, f.m1.Digest); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("manifest link after unlink: %v", err)
	}
	for _, d := range []digest.Digest{f.shared, f.only1, f.cfg} {
		if _, err := f.db.BlobLink(ctx, f.a, d); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("blob link %s after unlink: %v", d, err)
		}
		if _, err := f.db.Accessed(ctx, f.a, d); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("access time of %s after unlink: %v", d, err)
		}
	}
	if _, err := f.db.Accessed(ctx, f.a, f.m1.Digest); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("access time of the manifest after unlink: %v", err)
	}
	if tags, _ := f.db.Tags(ctx, f.a); !slices.Equal(tags, []string{"2.0"}) {
		t.Errorf("tags of %s after unlink = %v; want only 2.0, which names image 2", f.a, tags)
	}
	if _, err := f.db.Manifest(ctx, f.m1.Digest); err != nil {
		t.Errorf("the manifest body went while %s still links it: %v", f.b, err)
	}
	if l, err := f.db.BlobLink(ctx, f.b, f.shared); err != nil || !l.Has(Admitted) {
		t.Errorf("%s lost its link of the shared layer: %+v, %v", f.b, l, err)
	}
	if tags, _ := f.db.Tags(ctx, f.b); !slices.Equal(tags, []string{"latest"}) {
		t.Errorf("tags of %s = %v; want latest untouched", f.b, tags)
	}
	if _, err := f.db.LastUse(ctx, f.only1); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("last use of an orphan after unlink: %v; want none", err)
	}
	if _, err := f.db.LastUse(ctx, f.shared); err != nil {
		t.Errorf("last use of the shared layer: %v; want it kept", err)
	}

	// The last repository lets go: the body and the shared layer go too.
	orphans, err = f.db.UnlinkImage(ctx, f.b, f.m1.Digest, []digest.Digest{f.shared})
	if err != nil || !slices.Equal(orphans, []digest.Digest{f.shared}) {
		t.Fatalf("second unlink = %v, %v; want the shared layer orphaned", orphans, err)
	}
	if _, err := f.db.Manifest(ctx, f.m1.Digest); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("the manifest body outlived its last link: %v", err)
	}
	if _, err := f.db.LastUse(ctx, f.m1.Digest); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("the manifest's last use outlived it: %v", err)
	}
	if _, err := f.db.Manifest(ctx, f.m2.Digest); err != nil {
		t.Errorf("image 2 went with image 1: %v", err)
	}

	// Unlinking again finds nothing and orphans nothing it did not list.
	if orphans, err := f.db.UnlinkImage(ctx, f.a, f.m1.Digest, nil); err != nil || len(orphans) != 0 {
		t.Errorf("unlinking an unlinked image = %v, %v; want nothing", orphans, err)
	}
	if _, err := f.db.UnlinkImage(ctx, "a\x00b", f.m1.Digest, nil); err == nil {
		t.Errorf("an invalid repository was accepted")
	}

	// An orphan the caller failed to delete from the blob store is seen
	// again by Reconcile, so eviction still accounts for it.
	at := time.Unix(1_800_000_000, 0)
	if n, err := f.db.Reconcile(ctx, walkerOf{blobs: []digest.Digest{f.only1, f.l3}, at: at}); err != nil || n != 2 {
		t.Fatalf("Reconcile = %d, %v; want both blobs' last use written", n, err)
	}
	if got, err := f.db.LastUse(ctx, f.only1); err != nil || !got.Equal(at) {
		t.Errorf("last use of a leftover orphan after Reconcile = %v, %v; want its commit time", got, err)
	}
}
