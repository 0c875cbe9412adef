package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"math"

	"github.com/jackc/pgx/v5"

	"github.com/airlock-registry/airlock/storage/metadata"
)

// maxAuditPage bounds one Audit answer, as the bbolt store does.
const maxAuditPage = 1000

// appendAudit chains r after the stored head, writes it and moves the head,
// inside tx. Reading the head FOR UPDATE is what makes the log one chain
// across replicas: the next appender, on whichever replica, waits on the
// head's row until this transaction commits or rolls back, then reads the
// head as it left it. A rolled-back append leaves the head where it was,
// so seqs have no gaps. The head, not the table's largest seq, decides the
// next seq, so a record deleted at the tail is never silently replaced.
func appendAudit(ctx context.Context, tx pgx.Tx, r metadata.AuditRecord) (metadata.AuditRecord, error) {
	var (
		seq  int64
		prev string
	)
	if err := tx.QueryRow(ctx, "SELECT seq, hash FROM airlock_meta_audit_head FOR UPDATE").Scan(&seq, &prev); err != nil {
		return metadata.AuditRecord{}, fmt.Errorf("metadata: reading the audit head: %w", err)
	}
	// Seal the record as it will read back. Text that is not UTF-8 (a
	// reason quoting what an upstream sent) is encoded as the escape
	// \ufffd, but reads back as the character itself, which encodes as
	// itself: sealed as given, the record would hash one way when written
	// and another when verified, and VerifyAudit would call it edited.
	var err error
	if r, err = readBack(r); err != nil {
		return metadata.AuditRecord{}, err
	}
	r = metadata.SealAudit(r, uint64(seq)+1, prev)
	val, err := json.Marshal(r)
	if err != nil {
		return metadata.AuditRecord{}, fmt.Errorf("encoding audit record: %w", err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO airlock_meta_audit (seq, record) VALUES ($1, $2)", seq+1, string(val)); err != nil {
		return metadata.AuditRecord{}, fmt.Errorf("metadata: appending audit record %d: %w", seq+1, err)
	}
	if _, err := tx.Exec(ctx, "UPDATE airlock_meta_audit_head SET seq = $1, hash = $2", seq+1, r.Hash); err != nil {
		return metadata.AuditRecord{}, fmt.Errorf("metadata: moving the audit head: %w", err)
	}
	return r, nil
}

// readBack is r as decoding its encoding returns it.
func readBack(r metadata.AuditRecord) (metadata.AuditRecord, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return metadata.AuditRecord{}, fmt.Errorf("encoding audit record: %w", err)
	}
	var out metadata.AuditRecord
	if err := json.Unmarshal(b, &out); err != nil {
		return metadata.AuditRecord{}, fmt.Errorf("decoding audit record: %w", err)
	}
	return out, nil
}

// Audit returns up to limit records with Seq > after, in order. limit 0
// means 100; more than 1000 means 1000.
func (s *Store) Audit(ctx context.Context, after uint64, limit int) ([]metadata.AuditRecord, error) {
	limit = pageLimit(limit, maxAuditPage)
	out := []metadata.AuditRecord{}
	if after >= math.MaxInt64 {
		return out, nil // seqs are bigints: none is larger
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ctx, cancel := s.bounded(ctx)
	defer cancel()
	rows, err := s.pool.Query(ctx, "SELECT seq, record FROM airlock_meta_audit WHERE seq > $1 ORDER BY seq LIMIT $2", int64(after), limit)
	if err != nil {
		return nil, fmt.Errorf("metadata: reading the audit log: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			seq int64
			val string
		)
		if err := rows.Scan(&seq, &val); err != nil {
			return nil, fmt.Errorf("metadata: reading the audit log: %w", err)
		}
		var r metadata.AuditRecord
		if err := json.Unmarshal([]byte(val), &r); err != nil {
			return nil, fmt.Errorf("metadata: audit record at seq %d is corrupt (run airlock audit verify): %w", seq, err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("metadata: reading the audit log: %w", err)
	}
	return out, nil
}

// VerifyAudit walks the whole log and checks that the seqs run from 1
// without gaps, that each record is stored under its own seq, names its
// predecessor's hash as Prev and hashes to its Hash, and that the last
// record is the stored head: the checks of the bbolt store's VerifyAudit,
// with its messages. The log and the head are read in one repeatable-read
// snapshot, so appends committed by other replicas meanwhile are not taken
// for tampering.
func (s *Store) VerifyAudit(ctx context.Context) (metadata.AuditCheck, error) {
	if err := ctx.Err(); err != nil {
		return metadata.AuditCheck{}, err
	}
	var check metadata.AuditCheck
	opts := pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}
	err := pgx.BeginTxFunc(ctx, s.pool, opts, func(tx pgx.Tx) error {
		var err error
		check, err = verifyAudit(ctx, tx)
		return err
	})
	if err != nil {
		return metadata.AuditCheck{}, fmt.Errorf("metadata: verifying the audit log: %w", err)
	}
	return check, nil
}

// verifyAudit checks the chain as tx sees it.
func verifyAudit(ctx context.Context, tx pgx.Tx) (metadata.AuditCheck, error) {
	var (
		headSeq  int64
		headHash string
	)
	if err := tx.QueryRow(ctx, "SELECT seq, hash FROM airlock_meta_audit_head").Scan(&headSeq, &headHash); err != nil {
		return metadata.AuditCheck{}, fmt.Errorf("reading the audit head: %w", err)
	}
	rows, err := tx.Query(ctx, "SELECT seq, record FROM airlock_meta_audit ORDER BY seq")
	if err != nil {
		return metadata.AuditCheck{}, err
	}
	defer rows.Close()
	v := chainVerifier{want: 1}
	for rows.Next() {
		var (
			seq int64
			val string
		)
		if err := rows.Scan(&seq, &val); err != nil {
			return metadata.AuditCheck{}, err
		}
		if !v.next(seq, val) {
			return v.check, nil
		}
	}
	if err := rows.Err(); err != nil {
		return metadata.AuditCheck{}, err
	}
	return v.finish(uint64(headSeq), headHash), nil
}

// chainVerifier checks records one at a time, in seq order.
type chainVerifier struct {
	check metadata.AuditCheck
	prev  string
	want  uint64
}

func (v *chainVerifier) broken(at uint64, format string, args ...any) bool {
	v.check.OK, v.check.BrokenAt, v.check.Problem = false, at, fmt.Sprintf(format, args...)
	return false
}

// next checks the record stored under seq; false means the chain broke
// there and v.check says how.
func (v *chainVerifier) next(seq int64, val string) bool {
	var r metadata.AuditRecord
	if err := json.Unmarshal([]byte(val), &r); err != nil {
		return v.broken(v.want, "record %d cannot be read (%v): it was edited or damaged", v.want, err)
	}
	if seq < 0 || uint64(seq) != r.Seq {
		return v.broken(v.want, "record %d is stored under seq %d: records were moved or inserted", r.Seq, seq)
	}
	switch {
	case r.Seq > v.want && r.Seq == v.want+1:
		return v.broken(v.want, "record %d is missing: it was deleted", v.want)
	case r.Seq > v.want:
		return v.broken(v.want, "records %d to %d are missing: they were deleted", v.want, r.Seq-1)
	case r.Seq < v.want:
		return v.broken(r.Seq, "record %d appears twice", r.Seq)
	}
	if r.Prev != v.prev {
		return v.broken(r.Seq, "record %d does not follow record %d: its prev hash %q is not %q, so record %d was replaced or edited with its hash recomputed",
			r.Seq, r.Seq-1, r.Prev, v.prev, r.Seq-1)
	}
	if got := metadata.AuditHash(r); got != r.Hash {
		return v.broken(r.Seq, "record %d was edited: its hash does not match its content", r.Seq)
	}
	v.prev = r.Hash
	v.check.Records, v.check.Head = r.Seq, r.Hash
	v.want++
	return true
}

// finish compares the end of the log with the stored head.
func (v *chainVerifier) finish(headSeq uint64, headHash string) metadata.AuditCheck {
	switch {
	case headSeq > v.check.Records:
		v.broken(v.check.Records+1, "the log ends at record %d but its head is record %d: records %d to %d were deleted",
			v.check.Records, headSeq, v.check.Records+1, headSeq)
	case headSeq < v.check.Records:
		v.broken(headSeq+1, "the log holds %d records but its head is record %d: the head was reset or records were added behind the store's back",
			v.check.Records, headSeq)
	case headHash != v.check.Head:
		v.broken(headSeq, "record %d is not the head the store recorded (%s): the last record was replaced", headSeq, headHash)
	default:
		v.check.OK = true
	}
	return v.check
}
