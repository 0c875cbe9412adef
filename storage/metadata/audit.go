package metadata

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"

	bolt "go.etcd.io/bbolt"
)

// maxAuditPage bounds one Audit answer.
const maxAuditPage = 1000

// AuditHash returns the hash a record carries: "sha256:" and the hex
// SHA-256 of its canonical encoding, which is encoding/json's encoding of
// the record with Hash empty and every time in UTC (encoding/json writes
// times as RFC 3339 with nanoseconds, fields in declaration order, and
// drops the monotonic clock). Any implementation of [ImageStore] must
// store enough to reproduce exactly that encoding: the times to the
// nanosecond, and the reasons with all their fields.
func AuditHash(r AuditRecord) string {
	r.Hash = ""
	r = canonicalAudit(r)
	b, err := json.Marshal(r)
	if err != nil {
		// An AuditRecord holds only strings, numbers and times; a time
		// outside years 0-9999 is the one thing json refuses.
		panic(fmt.Sprintf("metadata: encoding audit record %d: %v", r.Seq, err))
	}
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// canonicalAudit puts every time of r in UTC, so that a record hashes the
// same whatever zone its writer ran in.
func canonicalAudit(r AuditRecord) AuditRecord {
	r.Time = r.Time.UTC()
	if !r.Expires.IsZero() {
		r.Expires = r.Expires.UTC()
	}
	r.Reasons = canonicalReasons(r.Reasons)
	return r
}

func canonicalReasons(rs []Reason) []Reason {
	if rs == nil {
		return nil
	}
	out := make([]Reason, len(rs))
	for i, r := range rs {
		if r.Expires != nil {
			e := r.Expires.UTC()
			r.Expires = &e
		}
		out[i] = r
	}
	return out
}

func seqKey(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }

// auditHead reads the stored head: the seq and hash of the last record.
func auditHead(meta *bolt.Bucket) (uint64, string) {
	v := meta.Get(keyAuditHead)
	if len(v) < 8 {
		return 0, ""
	}
	return binary.BigEndian.Uint64(v[:8]), string(v[8:])
}

// appendAudit chains r after the stored head, writes it and moves the head,
// inside tx. The head, not the bucket's last key, decides the next seq, so
// a record deleted at the tail is never silently replaced.
func appendAudit(tx *bolt.Tx, r AuditRecord) (AuditRecord, error) {
	meta := tx.Bucket(bucketMeta)
	seq, prev := auditHead(meta)
	// Hash the record as it will read back: JSON writes text that is not
	// UTF-8 (a hostile upstream's tag, a reason quoting it) with U+FFFD,
	// and a hash over the bytes as given would make VerifyAudit call an
	// untouched record edited.
	b, err := json.Marshal(r)
	if err != nil {
		return AuditRecord{}, fmt.Errorf("encoding audit record: %w", err)
	}
	r = AuditRecord{}
	if err := json.Unmarshal(b, &r); err != nil {
		return AuditRecord{}, fmt.Errorf("decoding audit record: %w", err)
	}
	r.Seq, r.Prev = seq+1, prev
	r = canonicalAudit(r)
	r.Hash = AuditHash(r)
	val, err := json.Marshal(r)
	if err != nil {
		return AuditRecord{}, fmt.Errorf("encoding audit record: %w", err)
	}
	if err := tx.Bucket(bucketAudit).Put(seqKey(r.Seq), val); err != nil {
		return AuditRecord{}, err
	}
	head := append(seqKey(r.Seq), r.Hash...)
	if err := meta.Put(keyAuditHead, head); err != nil {
		return AuditRecord{}, err
	}
	return r, nil
}

// Audit returns up to limit records with Seq > after, in order. limit 0
// means 100; more than 1000 means 1000.
func (db *DB) Audit(ctx context.Context, after uint64, limit int) ([]AuditRecord, error) {
	limit = pageLimit(limit, maxAuditPage)
	out := []AuditRecord{}
	if after == math.MaxUint64 {
		return out, nil // after+1 would wrap to the start
	}
	err := db.view(ctx, func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketAudit).Cursor()
		for k, v := c.Seek(seqKey(after + 1)); k != nil && len(out) < limit; k, v = c.Next() {
			var r AuditRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("audit record at key %x is corrupt (run airlock audit verify): %w", k, err)
			}
			out = append(out, r)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("metadata: reading the audit log: %w", err)
	}
	return out, nil
}

// VerifyAudit walks the whole log and checks that the seqs run from 1
// without gaps, that each record is stored under its own seq, names its
// predecessor's hash as Prev and hashes to its Hash, and that the last
// record is the stored head.
//
// An edited record fails its hash; a record edited with its hash
// recomputed breaks the next record's Prev; a removed record leaves a gap;
// records removed from the tail leave the log short of the head. What the
// check cannot see is a tail removed together with a rewritten head: keep
// the head elsewhere too. Every alert carries the hash of its change's
// record (Event.Audit), so a webhook receiver holds such anchors, and
// `airlock audit verify` prints the head to compare with one.
func (db *DB) VerifyAudit(ctx context.Context) (AuditCheck, error) {
	var check AuditCheck
	err := db.view(ctx, func(tx *bolt.Tx) error {
		check = verifyChain(tx.Bucket(bucketAudit).Cursor(), tx.Bucket(bucketMeta))
		return nil
	})
	if err != nil {
		return AuditCheck{}, fmt.Errorf("metadata: verifying the audit log: %w", err)
	}
	return check, nil
}

func verifyChain(c *bolt.Cursor, meta *bolt.Bucket) AuditCheck {
	var (
		check AuditCheck
		prev  string
		want  uint64 = 1
	)
	broken := func(at uint64, format string, args ...any) AuditCheck {
		check.OK, check.BrokenAt, check.Problem = false, at, fmt.Sprintf(format, args...)
		return check
	}
	for k, v := c.First(); k != nil; k, v = c.Next() {
		var r AuditRecord
		if err := json.Unmarshal(v, &r); err != nil {
			return broken(want, "record %d cannot be read (%v): it was edited or damaged", want, err)
		}
		if len(k) != 8 || binary.BigEndian.Uint64(k) != r.Seq {
			return broken(want, "record %d is stored under key %x: records were moved or inserted", r.Seq, k)
		}
		switch {
		case r.Seq > want && r.Seq == want+1:
			return broken(want, "record %d is missing: it was deleted", want)
		case r.Seq > want:
			return broken(want, "records %d to %d are missing: they were deleted", want, r.Seq-1)
		case r.Seq < want:
			return broken(r.Seq, "record %d appears twice", r.Seq)
		}
		if r.Prev != prev {
			return broken(r.Seq, "record %d does not follow record %d: its prev hash %q is not %q, so record %d was replaced or edited with its hash recomputed",
				r.Seq, r.Seq-1, r.Prev, prev, r.Seq-1)
		}
		if got := AuditHash(r); got != r.Hash {
			return broken(r.Seq, "record %d was edited: its hash does not match its content", r.Seq)
		}
		prev = r.Hash
		check.Records, check.Head = r.Seq, r.Hash
		want++
	}
	headSeq, headHash := auditHead(meta)
	switch {
	case headSeq > check.Records:
		return broken(check.Records+1, "the log ends at record %d but its head is record %d: records %d to %d were deleted",
			check.Records, headSeq, check.Records+1, headSeq)
	case headSeq < check.Records:
		return broken(headSeq+1, "the log holds %d records but its head is record %d: the head was reset or records were added behind the store's back",
			check.Records, headSeq)
	case headHash != check.Head:
		return broken(headSeq, "record %d is not the head the store recorded (%s): the last record was replaced", headSeq, headHash)
	}
	check.OK = true
	return check
}

// pageLimit applies a listing's default (100) and maximum.
func pageLimit(limit, most int) int {
	switch {
	case limit <= 0:
		return 100
	case limit > most:
		return most
	}
	return limit
}
