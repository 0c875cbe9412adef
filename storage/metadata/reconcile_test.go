package metadata

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/airlock-registry/airlock/storage"
)

// commitBlob stores random bytes as a blob committed at the given time.
func commitBlob(t *testing.T, dir string, b *storage.Blobs, at time.Time) digest.Digest {
	t.Helper()
	content := make([]byte, 100)
	rand.Read(content)
	d := digest.FromBytes(content)
	s, err := b.NewSpool(d)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Discard(s)
	if _, err := s.Write(content); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(t.Context(), d, s); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "blobs", "blobs", "sha256", d.Encoded()[:2], d.Encoded(), "data")
	if err := os.Chtimes(p, at, at); err != nil {
		t.Fatal(err)
	}
	return d
}

// TestReconcileAfterCrash stops a pull between committing blobs and
// writing their metadata, as a crash does, and proves that Reconcile at the
// next start gives the index a use of every stored blob, without moving any
// recorded use back in time.
func TestReconcileAfterCrash(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	blobs, err := storage.NewFilesystem(dir)
	if err != nil {
		t.Fatal(err)
	}
	dbPath := filepath.Join(dir, "airlock.db")
	db, err := Open(dbPath)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().Truncate(time.Second)
	// Committed, and the process died before any record of it.
	orphan := commitBlob(t, dir, blobs, now.Add(-time.Hour))
	// Used after its commit: its use must stay.
	used := commitBlob(t, dir, blobs, now.Add(-3*time.Hour))
	db.Touch("dockerhub/library/nginx", used)
	// Evicted and fetched again: its recorded use predates the new commit.
	refetched := commitBlob(t, dir, blobs, now.Add(-2*time.Hour))
	if err := db.bolt.Update(func(tx *bolt.Tx) error {
		return putLater(tx.Bucket(bucketLastUse), []byte(refetched), now.Add(-5*time.Hour).UnixNano())
	}); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	db, err = Open(dbPath)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	touched, err := db.LastUse(t.Context(), used)
	if err != nil {
		t.Fatal(err)
	}
	n, err := db.Reconcile(t.Context(), blobs)
	if err != nil || n != 2 {
		t.Fatalf("Reconcile = %d, %v; want 2 records written (the orphan and the re-fetched blob)", n, err)
	}
	for _, tt := range []struct {
		name string
		d    digest.Digest
		want time.Time
	}{
		{"blob committed just before a crash", orphan, now.Add(-time.Hour)},
		{"blob used after its commit", used, touched},
		{"blob committed again after its last use", refetched, now.Add(-2 * time.Hour)},
	} {
		got, err := db.LastUse(t.Context(), tt.d)
		if err != nil || !got.Equal(tt.want) {
			t.Errorf("%s: LastUse = %v, %v; want %v", tt.name, got, err, tt.want)
		}
	}
	if n, err := db.Reconcile(t.Context(), blobs); err != nil || n != 0 {
		t.Fatalf("second Reconcile = %d, %v; want nothing to write", n, err)
	}
}

// TestReconcileBatches proves a store larger than one batch is reconciled
// whole. The listing stands in for a store of that many blobs, which would
// take thousands of fsyncs to build.
func TestReconcileBatches(t *testing.T) {
	t.Parallel()
	db := openTemp(t)
	t.Cleanup(func() { db.Close() })
	l := make(listing, reconcileBatch*2+3)
	for i := range l {
		l[i] = digest.FromString(fmt.Sprint(i))
	}
	n, err := db.Reconcile(t.Context(), l)
	if err != nil || n != len(l) {
		t.Fatalf("Reconcile = %d, %v; want %d", n, err, len(l))
	}
	for _, d := range []digest.Digest{l[0], l[reconcileBatch], l[len(l)-1]} {
		if _, err := db.LastUse(t.Context(), d); err != nil {
			t.Errorf("LastUse(%s) after Reconcile: %v", d, err)
		}
	}
}

// listing is a blob store's Walk over digests committed an hour ago.
type listing []digest.Digest

func (l listing) Walk(ctx context.Context, fn func(digest.Digest, int64, time.Time) error) error {
	at := time.Now().Add(-time.Hour)
	for _, d := range l {
		if err := fn(d, 1, at); err != nil {
			return err
		}
	}
	return ctx.Err()
}

func TestDiskSize(t *testing.T) {
	t.Parallel()
	db := openTemp(t)
	t.Cleanup(func() { db.Close() })
	before, err := db.DiskSize()
	if err != nil || before <= 0 {
		t.Fatalf("DiskSize of a new index = %d, %v", before, err)
	}
	body := make([]byte, 1<<20)
	for i := range 8 {
		binary.BigEndian.PutUint64(body, uint64(i))
		rec := ManifestRecord{Digest: digest.FromBytes(body), MediaType: "application/vnd.oci.image.manifest.v1+json", Body: body}
		if err := db.PutManifest(t.Context(), fmt.Sprintf("dockerhub/library/m%d", i), rec, Link{Flags: Confirmed}); err != nil {
			t.Fatal(err)
		}
	}
	after, err := db.DiskSize()
	if err != nil || after < before+8<<20 {
		t.Fatalf("DiskSize after 8 MiB of manifests = %d, %v; want at least %d", after, err, before+8<<20)
	}
}
