package metadata

import (
	"context"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/airlock-registry/airlock/storage"
)

// maxPending bounds the access times held in memory between flushes. If
// writes keep failing, newer touches are dropped rather than growing memory
// without limit; access times are advisory (they order eviction).
const maxPending = 1 << 20

// Touch records that d was just used in repo. It only updates an in-memory
// table; the background loop writes the table every few seconds and Close
// writes what is left. Invalid names and touches after Close are ignored:
// a cache hit must never fail or wait because of bookkeeping.
func (db *DB) Touch(repo string, d digest.Digest) {
	key, err := refKey(repo, d)
	if err != nil {
		return
	}
	now := time.Now().UnixNano()
	db.mu.Lock()
	defer db.mu.Unlock()
	if db.closed {
		return
	}
	if _, ok := db.pending[string(key)]; !ok && len(db.pending) >= maxPending {
		return
	}
	db.pending[string(key)] = now
}

// Accessed returns when d was last touched in repo, or an error wrapping
// storage.ErrNotFound if never.
func (db *DB) Accessed(ctx context.Context, repo string, d digest.Digest) (time.Time, error) {
	key, err := refKey(repo, d)
	if err != nil {
		return time.Time{}, err
	}
	db.mu.Lock()
	ns, ok := db.pending[string(key)]
	db.mu.Unlock()
	if ok {
		return time.Unix(0, ns), nil
	}
	err = db.view(ctx, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketAccess).Get(key)
		if len(b) != 8 {
			return fmt.Errorf("access time of %s@%s: %w", repo, d, storage.ErrNotFound)
		}
		ns = int64(binary.BigEndian.Uint64(b))
		return nil
	})
	if err != nil {
		return time.Time{}, err
	}
	return time.Unix(0, ns), nil
}

func (db *DB) flushLoop(every time.Duration) {
	defer close(db.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-db.stop:
			return
		case <-t.C:
			// A failed flush drops that batch; the next touches of the same
			// content bring the times back. Close reports its own failure.
			_ = db.flush()
		}
	}
}

// flush writes the pending access times in one transaction. The table is
// swapped out under the lock so Touch never waits for the disk.
func (db *DB) flush() error {
	db.mu.Lock()
	batch := db.pending
	db.pending = make(map[string]int64, len(batch))
	db.mu.Unlock()
	if len(batch) == 0 {
		return nil
	}
	err := db.bolt.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketAccess)
		for k, ns := range batch {
			// bbolt keeps the value slice until commit: one per key.
			v := binary.BigEndian.AppendUint64(nil, uint64(ns))
			if err := b.Put([]byte(k), v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("metadata: writing %d access times: %w", len(batch), err)
	}
	return nil
}
