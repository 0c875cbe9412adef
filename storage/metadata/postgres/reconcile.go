package postgres

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/storage/metadata"
)

// DiskSize returns 0: the index lives in PostgreSQL, not on the cache
// volume, so it takes none of the room the evictor shares out between
// blobs and spools. (The bbolt index returns its file's size there.)
func (s *Store) DiskSize() (int64, error) { return 0, nil }

// reconcileBatch is how many blobs Reconcile writes per statement.
const reconcileBatch = 4096

// Reconcile brings the last-use record of every blob in blobs up to at
// least the blob's commit time, and returns how many records it wrote.
//
// The record and the blob are written separately, and a crash between the
// two (or the few seconds of access times a crash loses, see
// [Store.Touch]) leaves a blob the index has no use of, or only an older
// one. Reconcile makes the index account for every stored blob again, so
// that [Store.LastUse] alone orders eviction. It is idempotent: replicas
// sharing a blob store may each run it at start-up; a record already later
// than the commit time is not written (a use on another replica is kept).
func (s *Store) Reconcile(ctx context.Context, blobs metadata.Walker) (int, error) {
	batch := map[digest.Digest]int64{}
	written := 0
	flush := func() error {
		n, err := s.reconcile(ctx, batch)
		written += n
		clear(batch)
		return err
	}
	err := blobs.Walk(ctx, func(d digest.Digest, _ int64, modTime time.Time) error {
		// A blob listed twice is one row: an upsert cannot touch a row twice.
		batch[d] = max(batch[d], modTime.UnixNano())
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

// reconcile writes one batch of commit times where they are later than the
// recorded use, in digest order.
func (s *Store) reconcile(ctx context.Context, batch map[digest.Digest]int64) (int, error) {
	if len(batch) == 0 {
		return 0, nil
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	ds := slices.Sorted(maps.Keys(batch))
	keys, ats := make([]string, len(ds)), make([]int64, len(ds))
	for i, d := range ds {
		keys[i], ats[i] = string(d), batch[d]
	}
	qctx, cancel := s.bounded(ctx)
	defer cancel()
	tag, err := s.pool.Exec(qctx, `INSERT INTO airlock_meta_last_use AS u (digest, at)
		SELECT * FROM unnest($1::text[], $2::bigint[])
		ON CONFLICT (digest) DO UPDATE SET at = excluded.at WHERE u.at < excluded.at`, keys, ats)
	if err != nil {
		return 0, err
	}
	return int(tag.RowsAffected()), nil
}
