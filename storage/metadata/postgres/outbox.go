package postgres

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/airlock-registry/airlock/storage"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// maxDuePage bounds one DueDeliveries answer, as the bbolt store does.
const maxDuePage = 1000

// claimFor is how long the deliveries one replica's sender read stay its
// own. The sender reads the outbox every few seconds (alerts'
// DefaultPollInterval is 5s), which renews its claims, so they lapse only
// when it stops reading: when the replica is gone, another one's sender
// takes its deliveries over after this long.
const claimFor = 2 * time.Minute

// outboxClaimLock is the advisory lock key that serialises claims, so that
// two replicas never each claim part of one target's deliveries.
const outboxClaimLock = 0x61697232 // "air2"

// enqueue adds deliveries to the outbox inside tx. Each gets the next
// outbox seq (a sequence, which never goes back, so a delivered and removed
// seq is never reused; a rolled-back transaction may leave a seq unused,
// which nothing minds), the ID "<store id>-<seq>", the hash of the audit
// record of its change, and a first attempt (and an event time) now unless
// it has them.
func (s *Store) enqueue(ctx context.Context, tx pgx.Tx, now time.Time, auditHash string, ds []metadata.Delivery) error {
	if len(ds) == 0 {
		return nil
	}
	for _, d := range ds {
		if err := checkText("delivery target", d.Target); err != nil {
			return err
		}
	}
	rows, err := tx.Query(ctx, "SELECT nextval('airlock_meta_outbox_seq') FROM generate_series(1, $1)", len(ds))
	if err != nil {
		return fmt.Errorf("metadata: numbering deliveries: %w", err)
	}
	seqs, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return fmt.Errorf("metadata: numbering deliveries: %w", err)
	}
	// Assigned in the order given, so a change's deliveries are due in it.
	slices.Sort(seqs)
	batch := &pgx.Batch{}
	for i, d := range ds {
		d.Seq = uint64(seqs[i])
		d.Event.ID = s.id + "-" + strconv.FormatUint(d.Seq, 10)
		if auditHash != "" {
			d.Event.Audit = auditHash
		}
		if d.NextAttempt.IsZero() {
			d.NextAttempt = now
		}
		if d.Event.Time.IsZero() {
			d.Event.Time = now
		}
		val, err := encodeDelivery(d)
		if err != nil {
			return err
		}
		batch.Queue("INSERT INTO airlock_meta_outbox (seq, target, next_attempt, record) VALUES ($1, $2, $3, $4)",
			seqs[i], d.Target, unixNano(d.NextAttempt), val)
	}
	if err := tx.SendBatch(ctx, batch).Close(); err != nil {
		return fmt.Errorf("metadata: queueing deliveries: %w", err)
	}
	return nil
}

func encodeDelivery(d metadata.Delivery) (string, error) {
	d.NextAttempt = d.NextAttempt.UTC()
	d.Event.Time = d.Event.Time.UTC()
	val, err := json.Marshal(d)
	if err != nil {
		return "", fmt.Errorf("encoding delivery %d: %w", d.Seq, err)
	}
	return string(val), nil
}

// unixNano is t in Unix nanoseconds, clamped to what an int64 holds, so
// that a time far in the past or future still sorts where it belongs.
func unixNano(t time.Time) int64 {
	switch {
	case t.Before(time.Unix(0, math.MinInt64)):
		return math.MinInt64
	case t.After(time.Unix(0, math.MaxInt64)):
		return math.MaxInt64
	}
	return t.UnixNano()
}

// claimer names this Store for its claims on deliveries: unique among the
// Stores open at once, on any replica (host name, process, and the Store
// itself within the process).
func (s *Store) claimer() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s/%d/%p", host, os.Getpid(), s)
}

// DueDeliveries returns up to limit deliveries whose NextAttempt is not
// after now, in outbox order (oldest first). limit 0 means 100; more than
// 1000 means 1000.
//
// With several replicas, each replica's sender reads the outbox. So that a
// target's events are not sent by two replicas at once, nor out of order,
// the deliveries returned are claimed for this Store for a while (claimFor,
// renewed by every read): another Store's answers leave out every delivery
// of a target it does not hold while any of that target's deliveries are
// claimed by a live Store. Delivery stays at least once: a sender that
// dies after a receiver took an event but before [Store.Delivered] leaves
// it to be sent again, by another replica once the claim lapses.
func (s *Store) DueDeliveries(ctx context.Context, now time.Time, limit int) ([]metadata.Delivery, error) {
	return s.dueDeliveries(ctx, now, 0, limit)
}

// DueDeliveriesPerTarget is DueDeliveries with at most perTarget
// deliveries for any one target (0: no bound): a receiver that has been
// down for long, with more pending than one answer holds, cannot fill it
// and hide the deliveries of the receivers that answer.
func (s *Store) DueDeliveriesPerTarget(ctx context.Context, now time.Time, perTarget, limit int) ([]metadata.Delivery, error) {
	return s.dueDeliveries(ctx, now, perTarget, limit)
}

// claimDue picks the due deliveries of the targets no other live Store
// holds, at most $3 per target (0: any number), oldest first, and claims
// them for $2.
const claimDue = `
WITH held AS (
	SELECT DISTINCT target FROM airlock_meta_outbox
	WHERE claimer <> $2 AND claimed_until > now()
), due AS (
	SELECT seq FROM (
		SELECT seq, row_number() OVER (PARTITION BY target ORDER BY seq) AS n
		FROM airlock_meta_outbox
		WHERE next_attempt <= $1 AND target NOT IN (SELECT target FROM held)
	) ranked
	WHERE $3 = 0 OR n <= $3
	ORDER BY seq
	LIMIT $4
)
UPDATE airlock_meta_outbox o SET claimer = $2, claimed_until = now() + $5::bigint * interval '1 microsecond'
FROM due WHERE o.seq = due.seq
RETURNING o.seq, o.record`

func (s *Store) dueDeliveries(ctx context.Context, now time.Time, perTarget, limit int) ([]metadata.Delivery, error) {
	limit = pageLimit(limit, maxDuePage)
	perTarget = max(perTarget, 0)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	due := []metadata.Delivery{}
	ctx, cancel := s.bounded(ctx)
	defer cancel()
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		due = due[:0]
		// Claims taken one at a time: two replicas reading at once
		// would otherwise each see a target free and claim part of it.
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", outboxClaimLock); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, claimDue, unixNano(now), s.claimer(), perTarget, limit, claimFor.Microseconds())
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var (
				seq int64
				val string
			)
			if err := rows.Scan(&seq, &val); err != nil {
				return err
			}
			d, err := decodeDelivery(seq, val)
			if err != nil {
				return err
			}
			due = append(due, d)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("metadata: reading the outbox: %w", err)
	}
	// RETURNING follows no order.
	slices.SortFunc(due, func(a, b metadata.Delivery) int { return cmp.Compare(a.Seq, b.Seq) })
	return due, nil
}

func decodeDelivery(seq int64, val string) (metadata.Delivery, error) {
	var d metadata.Delivery
	if err := json.Unmarshal([]byte(val), &d); err != nil {
		return metadata.Delivery{}, fmt.Errorf("delivery %d is corrupt: %w", seq, err)
	}
	return d, nil
}

// Delivered removes a delivery from the outbox. An unknown seq (delivered
// already) is an error wrapping storage.ErrNotFound.
func (s *Store) Delivered(ctx context.Context, seq uint64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	qctx, cancel := s.bounded(ctx)
	defer cancel()
	tag, err := s.pool.Exec(qctx, "DELETE FROM airlock_meta_outbox WHERE seq = $1", seqArg(seq))
	if err == nil && tag.RowsAffected() == 0 {
		err = fmt.Errorf("delivery %d: %w", seq, storage.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("metadata: removing a delivered event: %w", err)
	}
	return nil
}

// RetryDelivery records a failed attempt: it counts it, keeps the error
// and sets when to try again. An unknown seq is an error wrapping
// storage.ErrNotFound. The claim stays: the replica that tried keeps the
// target, so its events keep their order.
func (s *Store) RetryDelivery(ctx context.Context, seq uint64, next time.Time, lastErr string) error {
	err := s.writeTx(ctx, func(ctx context.Context, tx pgx.Tx) error {
		var val string
		err := tx.QueryRow(ctx, "SELECT record FROM airlock_meta_outbox WHERE seq = $1 FOR UPDATE", seqArg(seq)).Scan(&val)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("delivery %d: %w", seq, storage.ErrNotFound)
		}
		if err != nil {
			return err
		}
		d, err := decodeDelivery(int64(seq), val)
		if err != nil {
			return err
		}
		d.Attempts++
		d.NextAttempt, d.LastError = next, lastErr
		if val, err = encodeDelivery(d); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, "UPDATE airlock_meta_outbox SET next_attempt = $2, record = $3 WHERE seq = $1",
			seqArg(seq), unixNano(d.NextAttempt), val)
		return err
	})
	if err != nil {
		return fmt.Errorf("metadata: recording a failed delivery: %w", err)
	}
	return nil
}

// seqArg is seq as the bigint column holds it; a seq beyond it matches
// nothing.
func seqArg(seq uint64) int64 {
	if seq > math.MaxInt64 {
		return -1
	}
	return int64(seq)
}
