package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/opencontainers/go-digest"
)

// fillKey names a fill across the cluster: replicas share their
// configuration, so an upstream's name means the same registry on all.
type fillKey struct {
	upstream string
	digest   string
}

// lease is a fill lease this replica holds, shared by its local fills of
// the blob (a replica may run several: one per declared size).
type lease struct {
	refs int
	// releasing is set once the last local fill let go; a new claim of
	// the key waits for gone rather than race the row's deletion.
	releasing bool
	// lost is set once the heartbeat found the lease gone: the lease is
	// out of held, so later local fills claim anew, and the local fills
	// still sharing it do not give up a row that is no longer theirs.
	lost bool
	gone chan struct{}
	// stop ends the heartbeat; beat is closed when it has.
	stop context.CancelFunc
	beat chan struct{}
}

// claimFill is the one statement that decides a fill's leader: it takes
// the row if there is none, if its lease expired (or was given up), if it
// is this process's already, or if it names this replica's own address
// under another owner: a predecessor at this address killed mid-fill and
// restarted (a StatefulSet's pod), whose row would otherwise send this
// replica to read the blob from itself, its listener waiting on the very
// fill that asks, until the dead lease lapsed. It returns whoever holds
// the row after the statement. taken says the claim replaced an existing row rather than
// inserting one (an updated row's xmax is the updating transaction, an
// inserted row's is 0). The second SELECT reads the holder when the
// insert found a live row of another replica and changed nothing.
const claimFill = `WITH claimed AS (
	INSERT INTO airlock_cluster_fills AS f (upstream, digest, owner, advertise, expires)
	VALUES ($1, $2, $3, $4, now() + $5 * interval '1 millisecond')
	ON CONFLICT (upstream, digest) DO UPDATE
		SET owner = excluded.owner, advertise = excluded.advertise, expires = excluded.expires
		WHERE f.expires < now() OR f.owner = excluded.owner OR f.advertise = excluded.advertise
	RETURNING owner, advertise, expires, xmax::text <> '0' AS taken)
SELECT owner, advertise, expires, taken FROM claimed
UNION ALL
SELECT owner, advertise, expires, false FROM airlock_cluster_fills
	WHERE upstream = $1 AND digest = $2 AND NOT EXISTS (SELECT 1 FROM claimed)`

// ClaimFill takes the cluster-wide lease on the fill of blob d from
// upstream, before any transfer. When this replica gets it, release is
// set: the caller fetches the blob from the upstream and calls release
// once the fill ended, committed or failed. recheck is set with it when
// another fill of the blob held the lease before: a leader gives its lease
// up only after its commit, so the caller looks in the store once more
// before fetching, lest a fill that ended since the caller last looked be
// fetched twice. Otherwise peer is the advertised address of the live
// replica that holds it, to read the blob from with OpenPeerFill.
//
// A released lease keeps its row, expired, for an hour, which is what lets
// the next claim tell that a fill ran (see sweep).
func (c *Cluster) ClaimFill(ctx context.Context, upstream string, d digest.Digest, suspect string) (release func(), recheck bool, peer string, err error) {
	k := fillKey{upstream, d.String()}
	var seen time.Time  // the suspect's expiry when last found holding
	var since time.Time // when the suspect was first found holding
	renewals := 0
	for attempt := 0; ; attempt++ {
		if release := c.joinHeld(ctx, k); release != nil {
			return release, false, "", nil
		}
		var owner, advertise string
		var expires time.Time
		var taken bool
		// A database out of reach costs a cold fill at most a lease's
		// lifetime before it fetches on its own.
		qctx, cancel := context.WithTimeout(ctx, c.ttl)
		err := c.pool.QueryRow(qctx, claimFill, k.upstream, k.digest, c.owner, c.advertise, c.ttl.Milliseconds()).
			Scan(&owner, &advertise, &expires, &taken)
		cancel()
		switch {
		case errors.Is(err, pgx.ErrNoRows) && attempt < 10:
			// The holder's row came or went between the statement's two
			// halves; ask again.
			continue
		case err != nil:
			return nil, false, "", fmt.Errorf("cluster: claiming the fill of %s from %s: %w", d, upstream, err)
		case owner == c.owner:
			if release := c.hold(k); release != nil {
				c.metrics.led.Inc()
				return release, taken, "", nil
			}
			continue // a local release was deleting the row: claim it anew
		case suspect == "" || advertise != suspect:
			return nil, false, advertise, nil
		case seen.IsZero():
			seen, since = expires, time.Now()
		case time.Since(since) >= suspectWait*c.ttl:
			// Neither renewed twice nor expired: the row is not what this
			// replica's own heartbeats would leave (a replica with a far
			// longer TTL, or a row written by hand). Its expiry may be
			// hours away; the fill fetches the blob itself rather than wait.
			c.metrics.fallbacks.Inc()
			return nil, false, "", fmt.Errorf("cluster: peer %s still holds the lease on %s from %s, until %s, %s after its stream broke, without renewing it: %w",
				advertise, d, upstream, expires.UTC().Format(time.RFC3339), time.Since(since).Round(time.Millisecond), errSuspectHolds)
		case expires.After(seen):
			// Renewed since the break. Once may be a renewal the peer sent
			// just before it died; twice, and it is alive.
			seen = expires
			if renewals++; renewals == 2 {
				return nil, false, advertise, nil
			}
		}
		select {
		case <-time.After(c.ttl / 5):
		case <-ctx.Done():
			return nil, false, "", fmt.Errorf("cluster: waiting for the lease on %s from %s: %w", d, upstream, context.Cause(ctx))
		}
	}
}

// suspectWait is how many lease lifetimes ClaimFill waits, at most, for a
// peer whose stream broke to renew its lease twice or let it expire. A
// replica's heartbeat does one or the other within one lifetime.
const suspectWait = 2

// errSuspectHolds is ClaimFill's failure when the peer whose stream broke
// keeps a lease it does not renew.
var errSuspectHolds = errors.New("the peer's lease neither lapses nor is renewed")

// giveUpFill expires this process's fill leases (those the conditions
// appended to it select); $1 is the owner.
const giveUpFill = "UPDATE airlock_cluster_fills SET expires = now() - interval '1 millisecond' WHERE owner = $1 AND expires >= now()"

// sweepAfter is how long a given-up or expired fill lease's row is kept.
// A claim that finds one rechecks the store (see ClaimFill); a row swept
// belongs to a fill that ended long before any fill now starting looked in
// the store.
const sweepAfter = time.Hour

// sweep removes the rows of fills that ended more than sweepAfter ago,
// once at Open and then every sweepAfter/6, so that the table holds the
// fills of the last hour rather than every blob ever fetched.
func (c *Cluster) sweep() {
	defer c.wg.Done()
	t := time.NewTicker(sweepAfter / 6)
	defer t.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(c.ctx, time.Minute)
		_, err := c.pool.Exec(ctx, sweepFills, sweepAfter.Milliseconds())
		cancel()
		if err != nil && c.ctx.Err() == nil {
			c.log.Warn("sweeping ended fill leases failed; retrying later", slog.String("error", err.Error()))
		}
	}
}

const sweepFills = "DELETE FROM airlock_cluster_fills WHERE expires < now() - $1 * interval '1 millisecond'"

// joinHeld returns a release for a lease this replica already holds on k,
// or nil. A lease being given up is waited for first, so that its row's
// deletion cannot remove the claim that follows it.
func (c *Cluster) joinHeld(ctx context.Context, k fillKey) func() {
	for {
		c.mu.Lock()
		l := c.held[k]
		if l == nil {
			c.mu.Unlock()
			return nil
		}
		if !l.releasing {
			l.refs++
			c.mu.Unlock()
			return c.releaser(k, l)
		}
		gone := l.gone
		c.mu.Unlock()
		select {
		case <-gone:
		case <-ctx.Done():
			return nil // the claim that follows fails on ctx
		}
	}
}

// hold records a lease the database just gave this replica and starts its
// heartbeat. Two local fills that claimed it at once share it. It returns
// nil, after waiting for it to end, when the last local fill was giving
// the lease up meanwhile: that release deletes the row just claimed.
func (c *Cluster) hold(k fillKey) func() {
	c.mu.Lock()
	if l := c.held[k]; l != nil {
		if l.releasing {
			c.mu.Unlock()
			<-l.gone // bounded: the release's statement has a timeout
			return nil
		}
		l.refs++
		c.mu.Unlock()
		return c.releaser(k, l)
	}
	defer c.mu.Unlock()
	ctx, stop := context.WithCancel(c.ctx)
	l := &lease{refs: 1, gone: make(chan struct{}), stop: stop, beat: make(chan struct{})}
	c.held[k] = l
	c.wg.Add(1)
	go c.heartbeat(ctx, k, l)
	return c.releaser(k, l)
}

// releaser returns the function that drops one local fill's share of l;
// the last one stops the heartbeat and expires the row, so peers waiting
// on the lease see the fill ended at once rather than at its expiry. The
// row stays, for the next claim's recheck.
func (c *Cluster) releaser(k fillKey, l *lease) func() {
	done := false
	return func() {
		c.mu.Lock()
		if done {
			c.mu.Unlock()
			return
		}
		done = true
		l.refs--
		last := l.refs == 0
		if last {
			l.releasing = true
		}
		c.mu.Unlock()
		if !last {
			return
		}
		l.stop()
		<-l.beat
		c.mu.Lock()
		lost := l.lost
		c.mu.Unlock()
		var err error
		if !lost {
			// A lost lease's row is another replica's now, or this
			// replica's again under a later claim: neither is this
			// lease's to give up.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err = c.pool.Exec(ctx, giveUpFill+" AND upstream = $2 AND digest = $3", c.owner, k.upstream, k.digest)
			cancel()
		}
		if err != nil {
			c.log.Warn("releasing a fill lease failed; it expires on its own", slog.String("upstream", k.upstream),
				slog.String("digest", k.digest), slog.Duration("ttl", c.ttl), slog.String("error", err.Error()))
		}
		c.mu.Lock()
		if c.held[k] == l {
			delete(c.held, k)
		}
		c.mu.Unlock()
		close(l.gone)
	}
}

// heartbeat renews a lease every TTL/3 until stopped. A renewal that finds
// the row gone or taken means the lease lapsed (this replica could not
// renew it in time) and a peer may be fetching the blob too: the local
// fill carries on for its own clients, at the cost of a second transfer.
func (c *Cluster) heartbeat(ctx context.Context, k fillKey, l *lease) {
	defer c.wg.Done()
	defer close(l.beat)
	t := time.NewTicker(c.ttl / 3)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, c.ttl/3)
		tag, err := c.pool.Exec(rctx, `UPDATE airlock_cluster_fills SET expires = now() + $4 * interval '1 millisecond'
			WHERE upstream = $1 AND digest = $2 AND owner = $3`, k.upstream, k.digest, c.owner, c.ttl.Milliseconds())
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case err == nil && tag.RowsAffected() == 1:
			last = time.Now()
			continue
		case err == nil:
			c.loseFill(k, l, "another replica took the lease after it lapsed")
			return
		case time.Since(last) >= c.ttl:
			c.loseFill(k, l, err.Error())
			return
		}
		c.log.Warn("renewing a fill lease failed; retrying", slog.String("upstream", k.upstream),
			slog.String("digest", k.digest), slog.String("error", err.Error()))
	}
}

// loseFill records that this replica no longer holds the fill lease l,
// and takes it out of held: the local fills still running on it go on for
// their clients, but a local fill starting now asks the database, and
// follows whoever leads the blob now instead of fetching it a second time.
func (c *Cluster) loseFill(k fillKey, l *lease, why string) {
	c.mu.Lock()
	l.lost = true
	if c.held[k] == l {
		delete(c.held, k)
	}
	c.mu.Unlock()
	c.lost("fill", k.upstream+"/"+k.digest, why)
}

// lost records a lease this replica held and no longer does.
func (c *Cluster) lost(kind, name, why string) {
	c.metrics.losses.WithLabelValues(kind).Inc()
	c.log.Warn("cluster lease lost", slog.String("kind", kind), slog.String("name", name), slog.String("reason", why))
}
