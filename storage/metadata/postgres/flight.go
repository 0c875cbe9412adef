package postgres

import (
	"cmp"
	"context"
	"sync"
	"time"
)

// flights lets concurrent reads of one key that miss the cache share one
// query. A cold burst sends every client of a layer to the same links at
// once; one query each queued them behind the pool's few connections, and
// the cluster's lease claim behind them.
//
// A read joins a query only if both took the same ticket: one that began
// before the key was dropped (by this store's own write, or another
// replica's announcement) may have read the row as it was, so a reader
// that came after the drop asks anew, as it would without sharing.
type flights struct {
	// timeout bounds a shared query; 0 means sharedReadTimeout.
	timeout time.Duration
	// quiet, when set, fails a read at once while the database is
	// silent, and hears how each query went.
	quiet *silence

	mu sync.Mutex
	m  map[string]*flight
}

type flight struct {
	t    ticket
	done chan struct{}
	val  any
	err  error
}

// sharedReadTimeout bounds a shared query: it runs on behalf of every
// reader waiting for it, on no one reader's context.
const sharedReadTimeout = DefaultOpTimeout

// share returns what read returns for key under ticket t, running it
// unless a read of key under the same ticket is in flight. Each caller
// waits on its own context.
func (fs *flights) share(ctx context.Context, key string, t ticket, read func(ctx context.Context) (any, error)) (any, error) {
	fs.mu.Lock()
	if fs.m == nil {
		fs.m = map[string]*flight{}
	}
	f := fs.m[key]
	if f == nil || f.t != t {
		var probe bool
		start := time.Now()
		if fs.quiet != nil {
			var err error
			if probe, err = fs.quiet.check(start); err != nil {
				fs.mu.Unlock()
				return nil, err
			}
		}
		f = &flight{t: t, done: make(chan struct{})}
		fs.m[key] = f
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cmp.Or(fs.timeout, sharedReadTimeout))
		go func() {
			defer cancel()
			f.val, f.err = read(rctx)
			if q := fs.quiet; q != nil {
				switch {
				case f.err != nil && rctx.Err() != nil: // the bound ran out, on no caller's account
					q.timedOut(start, time.Now())
				case f.err == nil || isNoRows(f.err) || !lost(f.err):
					q.answered()
				case probe:
					q.ended()
				}
			}
			fs.mu.Lock()
			if fs.m[key] == f {
				delete(fs.m, key)
			}
			fs.mu.Unlock()
			close(f.done)
		}()
	}
	fs.mu.Unlock()
	select {
	case <-f.done:
		return f.val, f.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
