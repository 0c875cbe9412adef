package postgres

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/storage"
	"github.com/airlock-registry/airlock/verify"
)

const (
	// defaultFlushEvery is how often pending access times are written.
	defaultFlushEvery = 5 * time.Second
	// closeFlushTimeout bounds Close's last write of access times.
	closeFlushTimeout = 10 * time.Second
	// maxPending bounds the access times held in memory between writes,
	// failed writes included: past it, touches of new content are dropped
	// rather than growing memory without limit. Access times are advisory
	// (they order eviction).
	maxPending = 1 << 20
	// flushChunk is how many rows one statement writes.
	flushChunk = 5000
)

type accessKey struct {
	repo string
	d    digest.Digest
}

// accessBatch holds the access times not yet written.
type accessBatch struct {
	mu      sync.Mutex
	pending map[accessKey]int64 // unix nanoseconds
	// uses is pending folded by digest: the latest use of each content in
	// any repository.
	uses   map[digest.Digest]int64
	closed bool
}

func (a *accessBatch) init() {
	a.pending = map[accessKey]int64{}
	a.uses = map[digest.Digest]int64{}
}

func (a *accessBatch) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.closed = true
}

// take swaps the pending tables out, so that Touch never waits for a write.
func (a *accessBatch) take() (map[accessKey]int64, map[digest.Digest]int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	p, u := a.pending, a.uses
	a.pending = make(map[accessKey]int64, len(p))
	a.uses = make(map[digest.Digest]int64, len(u))
	return p, u
}

// putBack returns times a failed write could not store, keeping the later
// of each, so that an outage of PostgreSQL loses no use it can hold.
func (a *accessBatch) putBack(p map[accessKey]int64, u map[digest.Digest]int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for k, ns := range p {
		if old, ok := a.pending[k]; ok || len(a.pending) < maxPending {
			a.pending[k] = max(old, ns)
		}
	}
	for d, ns := range u {
		if old, ok := a.uses[d]; ok || len(a.uses) < maxPending {
			a.uses[d] = max(old, ns)
		}
	}
}

// forget drops the pending access times of refs in repo and the pending
// last uses of gone, content UnlinkImage removed.
func (a *accessBatch) forget(repo string, refs, gone []digest.Digest) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, d := range refs {
		delete(a.pending, accessKey{repo, d})
	}
	for _, d := range gone {
		delete(a.uses, d)
	}
}

// Touch records that d was just used in repo. It only updates an in-memory
// table, written every few seconds and on Close: a cache hit never waits
// for the database. Invalid names and touches after Close are ignored.
//
// Times are merged, not replaced: a write keeps the later of the stored
// time and this replica's, so that [Store.LastUse] on any replica sees the
// uses of all of them (once written), and eviction there does not remove
// what another replica serves.
func (s *Store) Touch(repo string, d digest.Digest) {
	if checkRepo(repo) != nil || verify.Check(d) != nil {
		return
	}
	now := time.Now().UnixNano()
	a := &s.access
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return
	}
	k := accessKey{repo, d}
	if _, ok := a.pending[k]; !ok && len(a.pending) >= maxPending {
		return
	}
	a.pending[k] = now
	a.uses[d] = now
}

// Accessed returns when d was last touched in repo, through any replica
// whose times are written, or an error wrapping storage.ErrNotFound if
// never.
func (s *Store) Accessed(ctx context.Context, repo string, d digest.Digest) (time.Time, error) {
	if err := checkRef(repo, d); err != nil {
		return time.Time{}, err
	}
	if err := ctx.Err(); err != nil {
		return time.Time{}, err
	}
	s.access.mu.Lock()
	pending, ok := s.access.pending[accessKey{repo, d}]
	s.access.mu.Unlock()
	var stored int64
	qctx, cancel := s.bounded(ctx)
	defer cancel()
	err := s.pool.QueryRow(qctx, "SELECT at FROM airlock_meta_access WHERE repo = $1 AND digest = $2", repo, d).Scan(&stored)
	switch {
	case isNoRows(err) && !ok:
		return time.Time{}, fmt.Errorf("access time of %s@%s: %w", repo, d, storage.ErrNotFound)
	case err != nil && !isNoRows(err):
		return time.Time{}, fmt.Errorf("metadata: reading the access time of %s@%s: %w", repo, d, err)
	}
	return time.Unix(0, max(pending, stored)), nil
}

// LastUse returns when blob or manifest d was last touched in any
// repository through any replica, or committed if that was later and
// [Store.Reconcile] has seen it since; an error wrapping storage.ErrNotFound
// if neither. It orders eviction.
func (s *Store) LastUse(ctx context.Context, d digest.Digest) (time.Time, error) {
	if err := verify.Check(d); err != nil {
		return time.Time{}, fmt.Errorf("metadata: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return time.Time{}, err
	}
	s.access.mu.Lock()
	pending, ok := s.access.uses[d]
	s.access.mu.Unlock()
	var stored int64
	qctx, cancel := s.bounded(ctx)
	defer cancel()
	err := s.pool.QueryRow(qctx, "SELECT at FROM airlock_meta_last_use WHERE digest = $1", d).Scan(&stored)
	switch {
	case isNoRows(err) && !ok:
		return time.Time{}, fmt.Errorf("last use of %s: %w", d, storage.ErrNotFound)
	case err != nil && !isNoRows(err):
		return time.Time{}, fmt.Errorf("metadata: reading the last use of %s: %w", d, err)
	}
	// A clock stepped back, or another replica's later use, can make the
	// pending time the older one.
	return time.Unix(0, max(pending, stored)), nil
}

func (s *Store) flushLoop(ctx context.Context, every time.Duration) {
	defer close(s.flushing)
	t := time.NewTicker(every)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			// The times of a failed write are kept for the next round. An
			// outage is logged when it starts and when it ends, not every
			// round.
			err := s.flush(ctx)
			switch {
			case err != nil && ctx.Err() == nil && !failing:
				failing = true
				s.log.Warn("metadata: writing access times failed; they are kept in memory and written when PostgreSQL answers", "err", err)
			case err == nil && failing:
				failing = false
				s.log.Info("metadata: access times written again")
			}
		}
	}
}

// flush writes the pending access times, flushChunk rows per statement.
// Access times are not announced: no replica caches them, and a pull's
// touches would otherwise flood every replica's listener.
//
// Rows are written in key order, so that two replicas writing the same
// keys lock them in the same order and do not deadlock.
func (s *Store) flush(ctx context.Context) error {
	pending, uses := s.access.take()
	keys := slices.SortedFunc(maps.Keys(pending), func(a, b accessKey) int {
		return cmp.Or(cmp.Compare(a.repo, b.repo), cmp.Compare(a.d, b.d))
	})
	digests := slices.Sorted(maps.Keys(uses))
	var failed error
	for chunk := range slices.Chunk(keys, flushChunk) {
		if failed != nil {
			break
		}
		repos, ds, ats := make([]string, len(chunk)), make([]string, len(chunk)), make([]int64, len(chunk))
		for i, k := range chunk {
			repos[i], ds[i], ats[i] = k.repo, string(k.d), pending[k]
		}
		qctx, cancel := s.bounded(ctx)
		_, err := s.pool.Exec(qctx, `INSERT INTO airlock_meta_access AS a (repo, digest, at)
			SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])
			ON CONFLICT (repo, digest) DO UPDATE SET at = excluded.at WHERE a.at < excluded.at`, repos, ds, ats)
		cancel()
		if err != nil {
			failed = fmt.Errorf("metadata: writing %d access times: %w", len(pending), err)
			break
		}
		for _, k := range chunk {
			delete(pending, k)
		}
	}
	for chunk := range slices.Chunk(digests, flushChunk) {
		if failed != nil {
			break
		}
		ds, ats := make([]string, len(chunk)), make([]int64, len(chunk))
		for i, d := range chunk {
			ds[i], ats[i] = string(d), uses[d]
		}
		qctx, cancel := s.bounded(ctx)
		_, err := s.pool.Exec(qctx, `INSERT INTO airlock_meta_last_use AS u (digest, at)
			SELECT * FROM unnest($1::text[], $2::bigint[])
			ON CONFLICT (digest) DO UPDATE SET at = excluded.at WHERE u.at < excluded.at`, ds, ats)
		cancel()
		if err != nil {
			failed = fmt.Errorf("metadata: writing %d last uses: %w", len(uses), err)
			break
		}
		for _, d := range chunk {
			delete(uses, d)
		}
	}
	if failed != nil {
		s.access.putBack(pending, uses)
	}
	return failed
}
