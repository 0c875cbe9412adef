package metadata

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
	"go.uber.org/goleak"

	"github.com/airlock-registry/airlock/storage"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func openTemp(t testing.TB) *DB {
	t.Helper()
	db, err := Open(filepath.Join(t.TempDir(), "meta", "airlock.db"))
	if err != nil {
		t.Fatal(err)
	}
	return db
}

func TestBolt(t *testing.T) {
	t.Parallel()
	testStore(t, func(t *testing.T) store { return openTemp(t) })
}

func TestReopenPersists(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "airlock.db")
	ctx := t.Context()
	db, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	m := manifest(`{"persist":true}`)
	d := digest.FromString("layer")
	steps := []error{
		db.PutTag(ctx, "dockerhub/library/redis", "7", TagRecord{Digest: m.Digest, Size: 17}),
		db.PutManifest(ctx, "dockerhub/library/redis", m, Link{Flags: Confirmed}),
		db.LinkBlobs(ctx, "dockerhub/library/redis", BlobLink{Digest: d, Size: 99, Flags: Confirmed | Admitted}),
		func() error {
			_, err := db.UpdateImage(ctx, "dockerhub/library/redis", m.Digest, time.Now(), func(img *Image) (Change, error) {
				img.State = StateApproved
				return Change{Actor: "policy"}, nil
			})
			return err
		}(),
		db.Close(),
	}
	for i, err := range steps {
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}

	db, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if rec, err := db.Tag(ctx, "dockerhub/library/redis", "7"); err != nil || rec.Digest != m.Digest || rec.Size != 17 {
		t.Errorf("tag after reopen = %+v, %v", rec, err)
	}
	if rec, err := db.Manifest(ctx, m.Digest); err != nil || string(rec.Body) != string(m.Body) {
		t.Errorf("manifest after reopen = %+v, %v", rec, err)
	}
	if l, err := db.BlobLink(ctx, "dockerhub/library/redis", d); err != nil || !l.Has(Confirmed|Admitted) || l.Size != 99 {
		t.Errorf("link after reopen = %+v, %v", l, err)
	}
	if img, err := db.Image(ctx, "dockerhub/library/redis", m.Digest); err != nil || img.State != StateApproved {
		t.Errorf("image after reopen = %+v, %v", img, err)
	}
	if check, err := db.VerifyAudit(ctx); err != nil || !check.OK || check.Records != 1 {
		t.Errorf("audit after reopen = %+v, %v; want one record that verifies", check, err)
	}
}

// TestTouchFlushedOnClose proves Touch reaches the file by Close even when
// the background loop never ran.
func TestTouchFlushedOnClose(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "airlock.db")
	db, err := open(path, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	d := digest.FromString("layer")
	before := time.Now()
	db.Touch("quay/coreos/etcd", d)
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db.Touch("quay/coreos/etcd", digest.FromString("after close")) // ignored, no panic

	db, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	at, err := db.Accessed(t.Context(), "quay/coreos/etcd", d)
	if err != nil || at.Before(before.Truncate(time.Second)) {
		t.Fatalf("Accessed after reopen = %v, %v; want the touch time", at, err)
	}
	if _, err := db.Accessed(t.Context(), "quay/coreos/etcd", digest.FromString("after close")); err == nil {
		t.Fatal("touch after Close was stored")
	}
}

// TestTouchFlushedInBackground proves the loop writes without Close.
func TestTouchFlushedInBackground(t *testing.T) {
	t.Parallel()
	db, err := open(filepath.Join(t.TempDir(), "airlock.db"), 10*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	d := digest.FromString("layer")
	db.Touch("a/b", d)
	deadline := time.Now().Add(5 * time.Second)
	for {
		var stored bool
		db.bolt.View(func(tx *bolt.Tx) error {
			stored = tx.Bucket(bucketAccess).Get([]byte("a/b\x00"+string(d))) != nil
			return nil
		})
		if stored {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("access time not written by the background loop within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestLastUseSurvivesReopen proves per-digest last use is written with the
// access times and never moves backwards when an older batch is flushed.
func TestLastUseSurvivesReopen(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "airlock.db")
	ctx := t.Context()
	db, err := open(path, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	d := digest.FromString("layer")
	db.Touch("dockerhub/library/redis", d)
	db.Touch("gcr/distroless/static", d)
	want, err := db.LastUse(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.flush(); err != nil {
		t.Fatal(err)
	}
	// A later time already stored (say by a flush that overtook this one)
	// must survive an older batch.
	later := want.Add(time.Hour)
	db.bolt.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketLastUse).Put([]byte(d), binary.BigEndian.AppendUint64(nil, uint64(later.UnixNano())))
	})
	db.Touch("dockerhub/library/redis", d)
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	db, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if got, err := db.LastUse(ctx, d); err != nil || !got.Equal(later) {
		t.Fatalf("LastUse after reopen = %v, %v; want the later stored time %v", got, err, later)
	}
	if _, err := db.LastUse(ctx, digest.FromString("never used")); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("LastUse of unused content = %v, want ErrNotFound", err)
	}
}

// TestOpenAddsLastUseToOlderFile proves a file written before per-digest
// last use existed still opens, gains the bucket, and has it filled from
// the access times it already holds.
func TestOpenAddsLastUseToOlderFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "airlock.db")
	d, cold := digest.FromString("layer"), digest.FromString("cold")
	old, newer := time.Unix(1_700_000_000, 0), time.Unix(1_700_000_500, 0)
	raw, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = raw.Update(func(tx *bolt.Tx) error {
		meta, _ := tx.CreateBucket(bucketMeta)
		meta.Put(keySchema, []byte("1"))
		for _, name := range [][]byte{bucketTags, bucketManifests, bucketLegacyLinks, bucketAccess, bucketLegacyStates} {
			if _, err := tx.CreateBucket(name); err != nil {
				return err
			}
		}
		access := tx.Bucket(bucketAccess)
		for _, e := range []struct {
			repo string
			d    digest.Digest
			at   time.Time
		}{
			{"dockerhub/library/redis", d, old},
			{"quay/coreos/etcd", d, newer},
			{"quay/coreos/etcd", cold, old},
		} {
			if err := access.Put([]byte(e.repo+sep+string(e.d)), binary.BigEndian.AppendUint64(nil, uint64(e.at.UnixNano()))); err != nil {
				return err
			}
		}
		return nil
	})
	raw.Close()
	if err != nil {
		t.Fatal(err)
	}

	db, err := Open(path)
	if err != nil {
		t.Fatalf("Open of a file without the last-use bucket: %v", err)
	}
	defer db.Close()
	err = db.bolt.View(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketLegacyStates) != nil {
			return errors.New("the old states bucket is still there")
		}
		if tx.Bucket(bucketImages) == nil || tx.Bucket(bucketAudit) == nil || tx.Bucket(bucketOutbox) == nil {
			return errors.New("the image, audit or outbox bucket is missing")
		}
		if len(tx.Bucket(bucketMeta).Get(keyStoreID)) == 0 {
			return errors.New("the file has no store identity")
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
	for _, tt := range []struct {
		d    digest.Digest
		want time.Time
	}{{d, newer}, {cold, old}} {
		if got, err := db.LastUse(t.Context(), tt.d); err != nil || !got.Equal(tt.want) {
			t.Errorf("LastUse(%s) = %v, %v; want the latest access time %v", tt.d, got, err, tt.want)
		}
	}
}

// TestOpenMigratesSchema1Links opens a file whose links neither said what
// they linked nor whether an upstream vouched for them: each becomes a blob
// or manifest link with no flags, to be confirmed again on its next use.
func TestOpenMigratesSchema1Links(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "airlock.db")
	m := manifest(`{"schemaVersion":2}`)
	layer := digest.FromString("layer")
	huge := digest.FromString("huge")
	raw, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = raw.Update(func(tx *bolt.Tx) error {
		meta, _ := tx.CreateBucket(bucketMeta)
		meta.Put(keySchema, []byte("1"))
		for _, name := range [][]byte{bucketTags, bucketManifests, bucketLegacyLinks, bucketAccess, bucketLegacyStates, bucketLastUse} {
			if _, err := tx.CreateBucket(name); err != nil {
				return err
			}
		}
		tx.Bucket(bucketManifests).Put([]byte(m.Digest), encodeManifest(m))
		links := tx.Bucket(bucketLegacyLinks)
		links.Put([]byte("hub/library/redis"+sep+string(m.Digest)), binary.AppendUvarint(nil, uint64(len(m.Body))))
		links.Put([]byte("hub/library/redis"+sep+string(huge)), binary.AppendUvarint(nil, 1<<62+5))
		return links.Put([]byte("hub/library/redis"+sep+string(layer)), binary.AppendUvarint(nil, 1234))
	})
	raw.Close()
	if err != nil {
		t.Fatal(err)
	}
	db, err := Open(path)
	if err != nil {
		t.Fatalf("Open of a schema 1 file: %v", err)
	}
	ctx := t.Context()
	if l, err := db.ManifestLink(ctx, "hub/library/redis", m.Digest); err != nil || l.Flags != 0 {
		t.Errorf("migrated manifest link = %+v, %v; want one with no flags", l, err)
	}
	// Schema 1 took a blob's size from any manifest that listed it, refused
	// or hostile ones included; the size bounds fills, so it is learnt again
	// from an admitted manifest or the upstream rather than kept.
	for _, d := range []digest.Digest{layer, huge} {
		if l, err := db.BlobLink(ctx, "hub/library/redis", d); err != nil || l.Flags != 0 || l.Size != 0 {
			t.Errorf("migrated blob link = %+v, %v; want no size and no flags", l, err)
		}
	}
	if _, err := db.BlobLink(ctx, "hub/library/redis", m.Digest); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("a manifest was migrated as a blob link: %v", err)
	}
	db.Close()
	raw, err = bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.View(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketLegacyLinks) != nil {
			t.Error("the schema 1 links bucket is still there")
		}
		if v := string(tx.Bucket(bucketMeta).Get(keySchema)); v != fmt.Sprint(schemaVersion) {
			t.Errorf("schema after migration = %q, want %d", v, schemaVersion)
		}
		return nil
	})
}

func TestOpenLockedByAnotherProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the 5s lock timeout")
	}
	t.Parallel()
	path := filepath.Join(t.TempDir(), "airlock.db")
	// bbolt's lock is an flock on the file; a second handle in this process
	// contends for it exactly like a second process would.
	holder, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	start := time.Now()
	_, err = Open(path)
	if err == nil || !strings.Contains(err.Error(), "locked by another process") {
		t.Fatalf("Open of a locked file = %v, want a lock error", err)
	}
	if waited := time.Since(start); waited < 4*time.Second || waited > 15*time.Second {
		t.Errorf("gave up after %v, want about 5s", waited)
	}
}

func TestSchemaVersionMismatch(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "airlock.db")
	raw, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	raw.Update(func(tx *bolt.Tx) error {
		b, _ := tx.CreateBucketIfNotExists(bucketMeta)
		return b.Put(keySchema, []byte(fmt.Sprint(schemaVersion+1)))
	})
	raw.Close()
	if _, err := Open(path); err == nil || !strings.Contains(err.Error(), "schema version") {
		t.Fatalf("Open of a newer schema = %v, want a schema version error", err)
	}
}

func TestOpenUnwritable(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o600)
	if _, err := Open(filepath.Join(file, "airlock.db")); err == nil {
		t.Fatal("Open below a regular file succeeded")
	}
}

func BenchmarkTag(b *testing.B) {
	db := openTemp(b)
	defer db.Close()
	ctx := b.Context()
	for i := range 1000 {
		db.PutTag(ctx, "dockerhub/library/nginx", fmt.Sprint("t", i), TagRecord{Digest: digest.FromString(fmt.Sprint(i)), Size: 1000, Resolved: time.Now()})
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := db.Tag(ctx, "dockerhub/library/nginx", "t500"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkManifest(b *testing.B) {
	db := openTemp(b)
	defer db.Close()
	ctx := b.Context()
	body := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[` +
		strings.Repeat(`{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","size":123456,"digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000"},`, 20) + `{}]}`
	m := manifest(body)
	if err := db.PutManifest(ctx, "dockerhub/library/nginx", m, Link{Flags: Confirmed}); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := db.Manifest(ctx, m.Digest); err != nil {
			b.Fatal(err)
		}
	}
}

// TestOpenReadOnly checks a stopped store offline, as airlock audit verify
// --data does: reads work, writes fail, the file is unchanged.
func TestOpenReadOnly(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "airlock.db")
	db, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	d := digest.FromString("app")
	for _, s := range []State{StateQuarantined, StateReleased} {
		if _, err := db.UpdateImage(ctx, "vendor/app", d, time.Now(), func(img *Image) (Change, error) {
			img.State = s
			return Change{Actor: "admin:alice"}, nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	id := db.ID()
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(path)

	ro, err := OpenReadOnly(path)
	if err != nil {
		t.Fatal(err)
	}
	if check, err := ro.VerifyAudit(ctx); err != nil || !check.OK || check.Records != 2 {
		t.Errorf("VerifyAudit read-only = %+v, %v; want 2 records that verify", check, err)
	}
	if img, err := ro.Image(ctx, "vendor/app", d); err != nil || img.State != StateReleased {
		t.Errorf("Image read-only = %+v, %v", img, err)
	}
	if ro.ID() != id || id == "" {
		t.Errorf("read-only ID %q, want the store's %q", ro.ID(), id)
	}
	if _, err := ro.UpdateImage(ctx, "vendor/app", d, time.Now(), func(img *Image) (Change, error) {
		img.State = StateBlocked
		return Change{}, nil
	}); err == nil {
		t.Errorf("UpdateImage on a read-only store succeeded")
	}
	ro.Touch("vendor/app", d)
	if err := ro.Close(); err != nil {
		t.Errorf("Close of a read-only store: %v", err)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Errorf("the read-only open changed the file")
	}

	if _, err := OpenReadOnly(filepath.Join(t.TempDir(), "none.db")); err == nil || !strings.Contains(err.Error(), "no index at") {
		t.Errorf("OpenReadOnly of a missing file = %v; want it to say there is no index", err)
	}
	old := filepath.Join(t.TempDir(), "old.db")
	raw, err := bolt.Open(old, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	raw.Update(func(tx *bolt.Tx) error {
		meta, _ := tx.CreateBucket(bucketMeta)
		return meta.Put(keySchema, []byte("2"))
	})
	raw.Close()
	if _, err := OpenReadOnly(old); err == nil || !strings.Contains(err.Error(), "upgrade") {
		t.Errorf("OpenReadOnly of a file without the new buckets = %v; want it to say to upgrade", err)
	}
}
