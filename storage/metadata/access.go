package metadata

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/airlock-registry/airlock/storage"
	"github.com/airlock-registry/airlock/verify"
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
	if db.closed || db.readOnly {
		return
	}
	if _, ok := db.pending[string(key)]; !ok && len(db.pending) >= maxPending {
		return
	}
	db.pending[string(key)] = now
	db.pendingUse[d] = now
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

// flush writes the pending access times in one transaction. The tables are
// swapped out under the lock so Touch never waits for the disk.
func (db *DB) flush() error {
	db.mu.Lock()
	batch, uses := db.pending, db.pendingUse
	db.pending = make(map[string]int64, len(batch))
	db.pendingUse = make(map[digest.Digest]int64, len(uses))
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
		last := tx.Bucket(bucketLastUse)
		for d, ns := range uses {
			if err := putLater(last, []byte(d), ns); err != nil {
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

// LastUse returns when blob or manifest d was last touched in any
// repository, or committed if that was later and [DB.Reconcile] has seen
// it since; an error wrapping storage.ErrNotFound if neither. It is what
// orders eviction: the store is shared across repositories, so only the
// latest use anywhere says whether the content is still wanted.
func (db *DB) LastUse(ctx context.Context, d digest.Digest) (time.Time, error) {
	if err := verify.Check(d); err != nil {
		return time.Time{}, fmt.Errorf("metadata: %w", err)
	}
	db.mu.Lock()
	pending, ok := db.pendingUse[d]
	db.mu.Unlock()
	var stored int64
	err := db.view(ctx, func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketLastUse).Get([]byte(d)); len(v) == 8 {
			stored = int64(binary.BigEndian.Uint64(v))
			ok = true
		}
		return nil
	})
	if err != nil {
		return time.Time{}, err
	}
	if !ok {
		return time.Time{}, fmt.Errorf("last use of %s: %w", d, storage.ErrNotFound)
	}
	// A clock stepped back could make the pending time the older one.
	return time.Unix(0, max(pending, stored)), nil
}

// putLater stores ns at key unless the bucket already holds a later time.
func putLater(b *bolt.Bucket, key []byte, ns int64) error {
	if v := b.Get(key); len(v) == 8 && int64(binary.BigEndian.Uint64(v)) >= ns {
		return nil
	}
	return b.Put(key, binary.BigEndian.AppendUint64(nil, uint64(ns)))
}

// backfillLastUse fills a new last-use bucket from the per-repository
// access times of a file written before the bucket existed, so eviction
// orders old content by its real use rather than by its file times.
func backfillLastUse(tx *bolt.Tx) error {
	last := tx.Bucket(bucketLastUse)
	return tx.Bucket(bucketAccess).ForEach(func(k, v []byte) error {
		i := bytes.LastIndexByte(k, sep[0])
		if i < 0 || len(v) != 8 {
			return nil // not a key this code wrote; leave it be
		}
		return putLater(last, bytes.Clone(k[i+1:]), int64(binary.BigEndian.Uint64(v)))
	})
}
