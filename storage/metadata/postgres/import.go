package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"

	"github.com/jackc/pgx/v5"

	"github.com/airlock-registry/airlock/storage/metadata"
)

// ImportStats says what Import copied.
type ImportStats struct {
	// StoreID is the identity the store carries on from the bbolt file:
	// event IDs continue where the single node left off.
	StoreID string
	// Counts of what was copied, by kind.
	Upstreams     int
	Tags          int
	Manifests     int
	BlobLinks     int
	ManifestLinks int
	AccessTimes   int
	LastUses      int
	Images        int
	AuditRecords  int
	Deliveries    int
	// OutboxSeq is the last outbox seq handed out; new deliveries follow it.
	OutboxSeq uint64
	// Audit is how the copied audit log verifies: the same as the bbolt
	// file's own log does, or Import fails.
	Audit metadata.AuditCheck
}

// copyBatch is how many rows Import sends per COPY: enough to make the
// round trips negligible, few enough to hold in memory.
const copyBatch = 1000

// table is one destination of the import.
type table struct {
	name string
	cols []string
}

var (
	upstreamsTable     = table{"airlock_meta_upstreams", []string{"name", "identity"}}
	tagsTable          = table{"airlock_meta_tags", []string{"repo", "tag", "digest", "media_type", "size", "resolved"}}
	manifestsTable     = table{"airlock_meta_manifests", []string{"digest", "media_type", "body"}}
	blobLinksTable     = table{"airlock_meta_blob_links", []string{"repo", "digest", "flags", "size"}}
	manifestLinksTable = table{"airlock_meta_manifest_links", []string{"repo", "digest", "flags", "size", "media_type"}}
	accessTable        = table{"airlock_meta_access", []string{"repo", "digest", "at"}}
	lastUseTable       = table{"airlock_meta_last_use", []string{"digest", "at"}}
	imagesTable        = table{"airlock_meta_images", []string{"repository", "digest", "state", "record"}}
	auditTable         = table{"airlock_meta_audit", []string{"seq", "record"}}
	outboxTable        = table{"airlock_meta_outbox", []string{"seq", "target", "next_attempt", "record"}}
)

// Import copies everything src holds (the store identity, upstream
// identities, tags, manifests, links with their flags, access and last-use
// times, images, the audit log with its seqs, hashes and head, and the
// outbox with its sequence) into this store, which must be empty, in one
// transaction: afterwards the store answers as src did, VerifyAudit checks
// the same chain, and event IDs continue src's. It is how a single node
// becomes a cluster (airlock metadata migrate --from bbolt --to postgres).
//
// Open src with metadata.OpenReadOnly from a stopped airlock, so that the
// copy is the whole of it; and import before any replica runs on this
// database: a replica already running keeps the identity it read at its
// Open. A store that holds anything (a replica ran on it, or an import
// did) is refused: merging two indexes would interleave two audit chains.
func (s *Store) Import(ctx context.Context, src *metadata.DB) (ImportStats, error) {
	return s.importBatched(ctx, src, copyBatch)
}

// importBatched is Import sending batch rows per COPY.
func (s *Store) importBatched(ctx context.Context, src *metadata.DB, batch int) (ImportStats, error) {
	want, err := src.VerifyAudit(ctx)
	if err != nil {
		return ImportStats{}, fmt.Errorf("metadata: import: checking the bbolt audit log: %w", err)
	}
	var stats ImportStats
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		stats = ImportStats{}
		if err := lockEmpty(ctx, tx); err != nil {
			return err
		}
		if err := aloneOnTheDatabase(ctx, tx); err != nil {
			return err
		}
		l := &loader{tx: tx, stats: &stats, batch: batch}
		if err := src.Export(ctx, func(r metadata.Record) error { return l.add(ctx, r) }); err != nil {
			return err
		}
		if err := l.flush(ctx); err != nil {
			return err
		}
		if err := l.finish(ctx); err != nil {
			return err
		}
		if stats.Audit, err = verifyAudit(ctx, tx); err != nil {
			return err
		}
		if stats.Audit != want {
			return fmt.Errorf("the copied audit log verifies as %+v, the bbolt file's as %+v: nothing was imported", stats.Audit, want)
		}
		return nil
	})
	// The import announces nothing, and this store may have read the
	// empty tables before it: a tag it remembers as missing would stay
	// missing. Whatever it read is dropped, committed or not.
	s.cache.reset()
	if err != nil {
		return ImportStats{}, fmt.Errorf("metadata: importing the bbolt index into PostgreSQL: %w", err)
	}
	if stats.StoreID != "" {
		s.id = stats.StoreID
	}
	return stats, nil
}

// lockEmpty locks every table of the store against writes until tx ends
// and checks that none holds anything. The tables are found by name, so
// that every part of the schema counts, whoever added it.
func lockEmpty(ctx context.Context, tx pgx.Tx) error {
	rows, err := tx.Query(ctx, `SELECT table_name FROM information_schema.tables
		WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'
		AND table_name LIKE 'airlock\_meta\_%'
		AND table_name NOT IN ('airlock_meta_migrations', 'airlock_meta_settings', 'airlock_meta_audit_head')
		ORDER BY table_name`)
	if err != nil {
		return fmt.Errorf("listing the store's tables: %w", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("listing the store's tables: %w", err)
	}
	notEmpty := func(what string) error {
		return fmt.Errorf("the PostgreSQL store is not empty (%s): import into a new database, or one whose airlock_meta_* tables were dropped", what)
	}
	for _, name := range names {
		id := pgx.Identifier{name}.Sanitize()
		// SHARE ROW EXCLUSIVE: readers go on, writers (and another
		// import) wait for this transaction.
		if _, err := tx.Exec(ctx, "LOCK TABLE "+id+" IN SHARE ROW EXCLUSIVE MODE"); err != nil {
			return fmt.Errorf("locking %s: %w", name, err)
		}
		var held bool
		if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM "+id+")").Scan(&held); err != nil {
			return fmt.Errorf("reading %s: %w", name, err)
		}
		if held {
			return notEmpty(name + " holds rows")
		}
	}
	var headSeq int64
	if err := tx.QueryRow(ctx, "SELECT seq FROM airlock_meta_audit_head FOR UPDATE").Scan(&headSeq); err != nil {
		return fmt.Errorf("reading the audit head: %w", err)
	}
	if headSeq != 0 {
		return notEmpty(fmt.Sprintf("its audit head is record %d", headSeq))
	}
	var used bool
	if err := tx.QueryRow(ctx, "SELECT is_called FROM airlock_meta_outbox_seq").Scan(&used); err != nil {
		return fmt.Errorf("reading the outbox sequence: %w", err)
	}
	if used {
		return notEmpty("its outbox has handed out seqs")
	}
	return nil
}

// aloneOnTheDatabase refuses to import while another Store (a replica
// started too early) listens on this database: it read the store's
// identity at its Open and would go on sending events under it, not the
// imported one, and serving from a cache the import does not announce to.
// Its listener is the sign, named by application_name; this Store's own
// is the one allowed. A replica opening during the import waits for its
// commit to read the identity, so it needs no check.
func aloneOnTheDatabase(ctx context.Context, tx pgx.Tx) error {
	var n int
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
		WHERE datname = current_database() AND application_name = $1`, listenerName).Scan(&n); err != nil {
		return fmt.Errorf("looking for running replicas: %w", err)
	}
	if n > 1 {
		return fmt.Errorf("%d other airlock processes are connected to this database: stop every replica, then import", n-1)
	}
	return nil
}

// loader copies records into their tables, a batch at a time: the export
// comes kind by kind, so a batch is one table's.
type loader struct {
	tx    pgx.Tx
	stats *ImportStats
	batch int
	table table
	rows  [][]any
	// head and outboxSeq are written once the records are in.
	head      metadata.AuditHead
	outboxSeq uint64
	maxSeq    uint64
}

func (l *loader) add(ctx context.Context, r metadata.Record) error {
	if err := storable(r); err != nil {
		return fmt.Errorf("%w; nothing was imported: remove the record through the single node (or let it age out) and import again", err)
	}
	st := l.stats
	switch r := r.(type) {
	case metadata.StoreIdentity:
		st.StoreID = r.ID
		return nil
	case metadata.AuditHead:
		l.head = r
		return nil
	case metadata.OutboxSequence:
		l.outboxSeq = r.Seq
		return nil
	case metadata.UpstreamIdentity:
		st.Upstreams++
		return l.row(ctx, upstreamsTable, r.Name, r.ID)
	case metadata.TagEntry:
		st.Tags++
		return l.row(ctx, tagsTable, r.Repository, r.Tag, string(r.Record.Digest), r.Record.MediaType, r.Record.Size, r.Record.Resolved)
	case metadata.ManifestEntry:
		st.Manifests++
		return l.row(ctx, manifestsTable, string(r.Manifest.Digest), r.Manifest.MediaType, r.Manifest.Body)
	case metadata.BlobLinkEntry:
		st.BlobLinks++
		return l.row(ctx, blobLinksTable, r.Repository, string(r.Digest), int16(r.Link.Flags), r.Link.Size)
	case metadata.ManifestLinkEntry:
		st.ManifestLinks++
		return l.row(ctx, manifestLinksTable, r.Repository, string(r.Digest), int16(r.Link.Flags), r.Link.Size, r.Link.MediaType)
	case metadata.AccessEntry:
		st.AccessTimes++
		return l.row(ctx, accessTable, r.Repository, string(r.Digest), r.Time.UnixNano())
	case metadata.LastUseEntry:
		st.LastUses++
		return l.row(ctx, lastUseTable, string(r.Digest), r.Time.UnixNano())
	case metadata.ImageEntry:
		st.Images++
		rec, _, err := encodeImage(r.Image)
		if err != nil {
			return err
		}
		return l.row(ctx, imagesTable, r.Image.Repository, string(r.Image.Digest), string(r.Image.State), rec)
	case metadata.AuditEntry:
		st.AuditRecords++
		if r.Record.Seq > math.MaxInt64 {
			return fmt.Errorf("audit record %d: seq beyond what PostgreSQL's bigint holds", r.Record.Seq)
		}
		// Re-encoded from the decoded record: the hash is over the
		// record's canonical encoding, not the bytes bbolt held.
		val, err := json.Marshal(r.Record)
		if err != nil {
			return fmt.Errorf("encoding audit record %d: %w", r.Record.Seq, err)
		}
		return l.row(ctx, auditTable, int64(r.Record.Seq), string(val))
	case metadata.DeliveryEntry:
		st.Deliveries++
		d := r.Delivery
		if d.Seq == 0 || d.Seq > math.MaxInt64 {
			return fmt.Errorf("delivery with seq %d: not a seq an outbox hands out", d.Seq)
		}
		l.maxSeq = max(l.maxSeq, d.Seq)
		val, err := encodeDelivery(d)
		if err != nil {
			return err
		}
		return l.row(ctx, outboxTable, int64(d.Seq), d.Target, unixNano(d.NextAttempt), val)
	}
	return fmt.Errorf("an export record of type %T, which this importer does not know: use the airlock release that wrote the file", r)
}

// row queues one row for t, sending what was queued for another table
// first and sending a full batch.
func (l *loader) row(ctx context.Context, t table, vals ...any) error {
	if t.name != l.table.name {
		if err := l.flush(ctx); err != nil {
			return err
		}
		l.table = t
	}
	l.rows = append(l.rows, vals)
	if len(l.rows) >= l.batch {
		return l.flush(ctx)
	}
	return nil
}

func (l *loader) flush(ctx context.Context) error {
	if len(l.rows) == 0 {
		return nil
	}
	_, err := l.tx.CopyFrom(ctx, pgx.Identifier{l.table.name}, l.table.cols, pgx.CopyFromRows(l.rows))
	if err != nil {
		return fmt.Errorf("copying into %s: %w", l.table.name, err)
	}
	l.rows = l.rows[:0]
	return nil
}

// finish writes what follows the records: the store identity, the audit
// head as the bbolt file recorded it (so a tail it lacks is found as
// before), and the outbox sequence.
func (l *loader) finish(ctx context.Context) error {
	st := l.stats
	if st.StoreID == "" {
		return errors.New("the bbolt file has no store identity: start airlock on it once, then import it")
	}
	if _, err := l.tx.Exec(ctx, "UPDATE airlock_meta_settings SET value = $1 WHERE name = 'store_id'", st.StoreID); err != nil {
		return fmt.Errorf("writing the store identity: %w", err)
	}
	if l.head.Seq > math.MaxInt64 {
		return fmt.Errorf("the audit head %d is beyond what PostgreSQL's bigint holds", l.head.Seq)
	}
	if _, err := l.tx.Exec(ctx, "UPDATE airlock_meta_audit_head SET seq = $1, hash = $2", int64(l.head.Seq), l.head.Hash); err != nil {
		return fmt.Errorf("writing the audit head: %w", err)
	}
	// The bucket's sequence is never behind its keys; taking the larger
	// guards a file edited by hand all the same.
	st.OutboxSeq = max(l.outboxSeq, l.maxSeq)
	if st.OutboxSeq > math.MaxInt64 {
		return fmt.Errorf("the outbox sequence %d is beyond what PostgreSQL's bigint holds", st.OutboxSeq)
	}
	if st.OutboxSeq > 0 {
		if _, err := l.tx.Exec(ctx, "SELECT setval('airlock_meta_outbox_seq', $1)", int64(st.OutboxSeq)); err != nil {
			return fmt.Errorf("continuing the outbox sequence: %w", err)
		}
	}
	return nil
}

// storable refuses a record whose names or text PostgreSQL cannot hold
// (the bbolt index keeps any bytes but NUL in a name, and any bytes in a
// media type or a delivery's target), naming the record, so that the
// operator learns which one rather than reading the database's complaint
// about a COPY. Text inside JSON records needs no check: the encoding
// holds any string.
func storable(r metadata.Record) error {
	var errs []error
	switch r := r.(type) {
	case metadata.UpstreamIdentity:
		errs = append(errs, checkName("upstream name", r.Name), checkText("identity of upstream "+r.Name, r.ID))
	case metadata.TagEntry:
		errs = append(errs, checkTag(r.Repository, r.Tag), checkText("media type of tag "+tagName(r.Repository, r.Tag), r.Record.MediaType))
	case metadata.ManifestEntry:
		errs = append(errs, checkText("media type of manifest "+string(r.Manifest.Digest), r.Manifest.MediaType))
	case metadata.BlobLinkEntry:
		errs = append(errs, checkRepo(r.Repository))
	case metadata.ManifestLinkEntry:
		errs = append(errs, checkRepo(r.Repository), checkText("media type of the link of "+ref(r.Repository, r.Digest), r.Link.MediaType))
	case metadata.AccessEntry:
		errs = append(errs, checkRepo(r.Repository))
	case metadata.ImageEntry:
		errs = append(errs, checkRepo(r.Image.Repository))
	case metadata.DeliveryEntry:
		errs = append(errs, checkText(fmt.Sprintf("delivery %d's target", r.Delivery.Seq), r.Delivery.Target))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("the bbolt index holds a %T that PostgreSQL cannot store: %w", r, err)
	}
	return nil
}
