package cluster

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
)

// Singleton runs run while this replica, and no other, holds the
// cluster-wide lease called name: the work only one replica may do at a
// time (eviction). It tries to take the lease every TTL/3 while ctx
// lives; once it holds it, it runs run and renews the lease every TTL/3.
//
// run's context ends when ctx does or when the lease is lost: when a
// renewal finds the lease taken, or when renewals have failed for two
// thirds of the TTL (the database is out of reach), so that run is told
// to stop a third of a TTL before another replica can take over. run must
// return promptly once its context ends; Singleton takes the lease again
// later if it can.
//
// Singleton returns when ctx ends, or when run returns while its context
// is still live (the work is done), giving up the lease either way.
// Calls for the same name from one process exclude each other like calls
// from different replicas.
func (c *Cluster) Singleton(ctx context.Context, name string, run func(ctx context.Context)) {
	suffix, err := randomHex(8)
	if err != nil {
		suffix = "0"
	}
	owner := c.owner + "/" + suffix
	failing := false
	for ctx.Err() == nil {
		sent := time.Now()
		held, err := c.claimSingleton(ctx, name, owner, sent.Add(c.ttl/3))
		switch {
		case err != nil && ctx.Err() == nil:
			if !failing {
				c.log.Warn("cannot take the cluster lease for a singleton; retrying", slog.String("singleton", name),
					slog.String("error", err.Error()))
			}
			failing = true
		case held:
			failing = false
			if c.runHeld(ctx, name, owner, sent, run) {
				return
			}
			continue // lost: try again at once, it may be free
		}
		select {
		case <-ctx.Done():
		case <-c.ctx.Done():
			return
		case <-time.After(c.ttl / 3):
		}
	}
}

// claimSingleton takes or renews the lease called name for owner, giving
// up at deadline.
func (c *Cluster) claimSingleton(ctx context.Context, name, owner string, deadline time.Time) (bool, error) {
	var got string
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	err := c.pool.QueryRow(ctx, `INSERT INTO airlock_cluster_singletons AS s (name, owner, expires)
		VALUES ($1, $2, now() + $3 * interval '1 millisecond')
		ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires = excluded.expires
			WHERE s.expires < now() OR s.owner = excluded.owner
		RETURNING owner`, name, owner, c.ttl.Milliseconds()).Scan(&got)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	return err == nil, err
}

// runHeld runs run under a held lease, claimed by a statement sent at
// last, and reports whether Singleton is done (run returned, or ctx ended)
// rather than the lease lost.
//
// The lease expires a TTL after the database ran the last renewal, which
// is after the statement was sent and may be well before its answer came
// back: so the lease is counted from the sending, and a renewal gets only
// the time left before run must be told to stop.
func (c *Cluster) runHeld(ctx context.Context, name, owner string, last time.Time, run func(context.Context)) bool {
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		run(rctx)
	}()
	// A timer rather than a ticker: after a failed renewal the next wake
	// must come no later than stopBy, or run could be told to stop only
	// as the lease expires.
	t := time.NewTimer(c.ttl / 3)
	defer t.Stop()
	var lastErr error
	for {
		select {
		case <-done:
			c.releaseSingleton(name, owner)
			return true
		case <-c.ctx.Done():
			cancel()
			<-done
			c.releaseSingleton(name, owner)
			return true
		case <-t.C:
		}
		sent := time.Now()
		stopBy := last.Add(2 * c.ttl / 3) // a third of a TTL before the lease expires
		if !sent.Before(stopBy) {
			reason := "renewals failed for two thirds of the TTL"
			if lastErr != nil {
				reason += ": " + lastErr.Error()
			}
			c.lost("singleton", name, reason)
			cancel()
			<-done
			return ctx.Err() != nil
		}
		deadline := sent.Add(c.ttl / 3)
		if stopBy.Before(deadline) {
			deadline = stopBy
		}
		held, err := c.claimSingleton(ctx, name, owner, deadline)
		switch {
		case err == nil && held:
			last, lastErr = sent, nil
			t.Reset(c.ttl / 3)
			continue
		case err == nil:
			c.lost("singleton", name, "another replica took the lease after it lapsed")
		case ctx.Err() != nil:
			t.Reset(c.ttl / 3)
			continue // done is next
		default:
			// Try again at the usual pace, but wake by stopBy at the
			// latest to tell run to stop in time.
			lastErr = err
			t.Reset(min(c.ttl/3, time.Until(stopBy)))
			continue
		}
		cancel()
		<-done
		return ctx.Err() != nil
	}
}

func (c *Cluster) releaseSingleton(name, owner string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.pool.Exec(ctx, "DELETE FROM airlock_cluster_singletons WHERE name = $1 AND owner = $2", name, owner); err != nil {
		c.log.Warn("giving up a singleton lease failed; it expires on its own", slog.String("singleton", name),
			slog.Duration("ttl", c.ttl), slog.String("error", err.Error()))
	}
}
