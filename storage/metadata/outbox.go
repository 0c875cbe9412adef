package metadata

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/airlock-registry/airlock/storage"
)

// maxDuePage bounds one DueDeliveries answer.
const maxDuePage = 1000

// enqueue adds deliveries to the outbox inside tx. Each gets the next
// outbox seq (the bucket's sequence, which never goes back, so a delivered
// and removed seq is never reused), the ID "<store id>-<seq>", the hash of
// the audit record of its change, and a first attempt (and an event time)
// now unless it has them.
func (db *DB) enqueue(tx *bolt.Tx, now time.Time, auditHash string, ds []Delivery) error {
	if len(ds) == 0 {
		return nil
	}
	out := tx.Bucket(bucketOutbox)
	id := string(tx.Bucket(bucketMeta).Get(keyStoreID))
	for _, d := range ds {
		seq, err := out.NextSequence()
		if err != nil {
			return err
		}
		d.Seq = seq
		d.Event.ID = id + "-" + strconv.FormatUint(seq, 10)
		if auditHash != "" {
			d.Event.Audit = auditHash
		}
		if d.NextAttempt.IsZero() {
			d.NextAttempt = now
		}
		if d.Event.Time.IsZero() {
			d.Event.Time = now
		}
		if err := putDelivery(out, d); err != nil {
			return err
		}
	}
	return nil
}

func putDelivery(out *bolt.Bucket, d Delivery) error {
	d.NextAttempt = d.NextAttempt.UTC()
	d.Event.Time = d.Event.Time.UTC()
	val, err := json.Marshal(d)
	if err != nil {
		return fmt.Errorf("encoding delivery %d: %w", d.Seq, err)
	}
	return out.Put(seqKey(d.Seq), val)
}

func getDelivery(out *bolt.Bucket, seq uint64) (Delivery, error) {
	v := out.Get(seqKey(seq))
	if v == nil {
		return Delivery{}, fmt.Errorf("delivery %d: %w", seq, storage.ErrNotFound)
	}
	var d Delivery
	if err := json.Unmarshal(v, &d); err != nil {
		return Delivery{}, fmt.Errorf("delivery %d is corrupt: %w", seq, err)
	}
	return d, nil
}

// DueDeliveries returns up to limit deliveries whose NextAttempt is not
// after now, in outbox order (oldest first), so that one target receives a
// repository's events in the order they happened unless one is retried.
// limit 0 means 100; more than 1000 means 1000.
func (db *DB) DueDeliveries(ctx context.Context, now time.Time, limit int) ([]Delivery, error) {
	return db.dueDeliveries(ctx, now, 0, limit)
}

// DueDeliveriesPerTarget is DueDeliveries with at most perTarget
// deliveries for any one target (0: no bound): a receiver that has been
// down for long, with more pending than one answer holds, cannot fill it
// and hide the deliveries of the receivers that answer.
func (db *DB) DueDeliveriesPerTarget(ctx context.Context, now time.Time, perTarget, limit int) ([]Delivery, error) {
	return db.dueDeliveries(ctx, now, perTarget, limit)
}

func (db *DB) dueDeliveries(ctx context.Context, now time.Time, perTarget, limit int) ([]Delivery, error) {
	limit = pageLimit(limit, maxDuePage)
	due := []Delivery{}
	per := map[string]int{}
	err := db.view(ctx, func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketOutbox).Cursor()
		// The outbox holds what is not delivered yet: a short walk unless
		// a target has been down for long, and then it is bounded by
		// what is queued, which an operator sees in the metrics.
		for k, v := c.First(); k != nil && len(due) < limit; k, v = c.Next() {
			var d Delivery
			if err := json.Unmarshal(v, &d); err != nil {
				return fmt.Errorf("delivery %d is corrupt: %w", binary.BigEndian.Uint64(k), err)
			}
			if d.NextAttempt.After(now) || perTarget > 0 && per[d.Target] >= perTarget {
				continue
			}
			per[d.Target]++
			due = append(due, d)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("metadata: reading the outbox: %w", err)
	}
	return due, nil
}

// Delivered removes a delivery from the outbox. An unknown seq (delivered
// already) is an error wrapping storage.ErrNotFound.
func (db *DB) Delivered(ctx context.Context, seq uint64) error {
	err := db.update(ctx, func(tx *bolt.Tx) error {
		out := tx.Bucket(bucketOutbox)
		if out.Get(seqKey(seq)) == nil {
			return fmt.Errorf("delivery %d: %w", seq, storage.ErrNotFound)
		}
		return out.Delete(seqKey(seq))
	})
	if err != nil {
		return fmt.Errorf("metadata: removing a delivered event: %w", err)
	}
	return nil
}

// RetryDelivery records a failed attempt: it counts it, keeps the error
// and sets when to try again. An unknown seq is an error wrapping
// storage.ErrNotFound.
func (db *DB) RetryDelivery(ctx context.Context, seq uint64, next time.Time, lastErr string) error {
	err := db.update(ctx, func(tx *bolt.Tx) error {
		out := tx.Bucket(bucketOutbox)
		d, err := getDelivery(out, seq)
		if err != nil {
			return err
		}
		d.Attempts++
		d.NextAttempt, d.LastError = next, lastErr
		return putDelivery(out, d)
	})
	if err != nil {
		return fmt.Errorf("metadata: recording a failed delivery: %w", err)
	}
	return nil
}
