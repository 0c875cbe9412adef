package metadata

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// DiskSize returns the size of the index file. The index holds every
// manifest body, so it counts toward the cache's maximum size beside the
// blobs.
func (db *DB) DiskSize() (int64, error) {
	fi, err := os.Stat(db.bolt.Path())
	if err != nil {
		return 0, fmt.Errorf("metadata: measuring the index: %w", err)
	}
	return fi.Size(), nil
}

// Walker lists committed blobs with their commit times;
// *storage.Blobs implements it.
type Walker interface {
	Walk(ctx context.Context, fn func(d digest.Digest, size int64, modTime time.Time) error) error
}

// reconcileBatch is how many blobs Reconcile looks up and writes per
// transaction: one write transaction per blob would cost a million fsyncs
// on a large store, one for all would hold a million keys in memory.
const reconcileBatch = 4096

// Reconcile brings the last-use record of every blob in blobs up to at
// least the blob's commit time, and returns how many records it wrote.
//
// The record and the blob are written separately, and a crash between the
// two (or the few seconds of access times a crash loses, see [DB.Touch])
// leaves a blob the index has no use of, or only an older one. Reconcile
// makes the index account for every stored blob again, so that
// [DB.LastUse] alone orders eviction. Run it at start-up, in the
// background: it reads every blob's commit time, which on a large remote
// store takes minutes, and nothing waits for it. It is idempotent, and a
// blob committed or deleted while it runs is simply seen or not.
func (db *DB) Reconcile(ctx context.Context, blobs Walker) (int, error) {
	type commit struct {
		d  digest.Digest
		ns int64
	}
	var batch []commit
	written := 0
	// Most blobs need nothing after the first run; a read transaction
	// finds the few that do, so a start-up does not cost a write (and an
	// fsync) per batch.
	flush := func() error {
		defer func() { batch = batch[:0] }()
		var stale []commit
		err := db.view(ctx, func(tx *bolt.Tx) error {
			last := tx.Bucket(bucketLastUse)
			for _, c := range batch {
				if v := last.Get([]byte(c.d)); len(v) != 8 || int64(binary.BigEndian.Uint64(v)) < c.ns {
					stale = append(stale, c)
				}
			}
			return nil
		})
		if err != nil || len(stale) == 0 {
			return err
		}
		err = db.update(ctx, func(tx *bolt.Tx) error {
			last := tx.Bucket(bucketLastUse)
			for _, c := range stale {
				// putLater, because a Touch may have landed since the view.
				if err := putLater(last, []byte(c.d), c.ns); err != nil {
					return err
				}
			}
			return nil
		})
		if err == nil {
			written += len(stale)
		}
		return err
	}
	err := blobs.Walk(ctx, func(d digest.Digest, _ int64, modTime time.Time) error {
		batch = append(batch, commit{d, modTime.UnixNano()})
		if len(batch) < reconcileBatch {
			return nil
		}
		return flush()
	})
	if err == nil {
		err = flush()
	}
	if err != nil {
		return written, fmt.Errorf("metadata: reconciling last uses with the blob store: %w", err)
	}
	return written, nil
}
