package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/storage"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// Image states, the audit log and the outbox across replicas.
//
// The guarantees are the bbolt store's (package metadata, "Guarantees"),
// kept by PostgreSQL's locks instead of bbolt's single writer:
//
//   - UpdateImage and DeleteImage write the image, its audit record and its
//     deliveries in one transaction, and announce the image on [Channel] in
//     it (kind "image", key "<repo>@<digest>"), so every replica's gate
//     reloads it once, and only once, the change commits.
//   - Updates of one image take turns on its row (SELECT ... FOR UPDATE):
//     none is lost. Two replicas creating one image both find no row to
//     lock; the second insert fails once the first commits, and the second
//     update runs again, fn included, on what the first wrote.
//   - Appends to the audit log take turns on the head's one row, held to
//     commit: seqs follow commit order from 1 without gaps on every replica.
//   - Outbox seqs come from a sequence, which never goes back; a
//     rolled-back change may leave one unused. Event IDs are
//     "<store id>-<seq>", the store id shared by the replicas.
//   - A delivery is sent by one replica at a time: reading the outbox
//     claims a target's deliveries for the reader (see DueDeliveries), and
//     stays at least once.
//   - Pull counts from every replica add up (RecordPulls locks and adds).
//   - Records are kept as the bbolt store's JSON, so times keep their
//     nanoseconds and audit hashes compute the same; listings and cursors
//     follow bbolt's key order and format.

var _ metadata.ImageStore = (*Store)(nil)

// maxImagePage bounds one Images answer, as the bbolt store does.
const maxImagePage = 1000

// eachImageChunk is how many images EachImage reads per query: fn runs
// between queries, so the walk holds no transaction (and no connection)
// open while the caller works.
const eachImageChunk = 512

// maxWriteAttempts bounds how often a write transaction is tried again
// after PostgreSQL aborted it for a conflict with another replica's.
const maxWriteAttempts = 20

// Image returns one image, or an error wrapping storage.ErrNotFound.
func (s *Store) Image(ctx context.Context, repo string, d digest.Digest) (metadata.Image, error) {
	if err := checkImageKey(repo, d); err != nil {
		return metadata.Image{}, err
	}
	ctx, cancel := s.bounded(ctx)
	defer cancel()
	img, found, err := getImage(ctx, s.pool, repo, d, false)
	if err == nil && !found {
		err = fmt.Errorf("image %s@%s: %w", repo, d, storage.ErrNotFound)
	}
	return img, err
}

// checkImageKey refuses what metadata.CheckImageKey does and the names
// PostgreSQL cannot hold (see checkRepo).
func checkImageKey(repo string, d digest.Digest) error {
	if err := metadata.CheckImageKey(repo, d); err != nil {
		return err
	}
	return checkRepo(repo)
}

// querier is a pool or a transaction.
type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// getImage reads one image; forUpdate locks its row until tx ends, so that
// a read-modify-write of it by another replica waits for this one.
func getImage(ctx context.Context, q querier, repo string, d digest.Digest, forUpdate bool) (metadata.Image, bool, error) {
	sql := "SELECT record FROM airlock_meta_images WHERE repository = $1 AND digest = $2"
	if forUpdate {
		sql += " FOR UPDATE"
	}
	var rec string
	err := q.QueryRow(ctx, sql, repo, string(d)).Scan(&rec)
	if errors.Is(err, pgx.ErrNoRows) {
		return metadata.Image{}, false, nil
	}
	if err != nil {
		return metadata.Image{}, false, fmt.Errorf("metadata: reading image %s@%s: %w", repo, d, err)
	}
	img, err := decodeImage(rec)
	return img, err == nil, err
}

func decodeImage(rec string) (metadata.Image, error) {
	var img metadata.Image
	if err := json.Unmarshal([]byte(rec), &img); err != nil {
		return metadata.Image{}, fmt.Errorf("metadata: an image record is corrupt (%.80q): %w", rec, err)
	}
	return img, nil
}

// encodeImage is img as stored and as a later read returns it.
func encodeImage(img metadata.Image) (string, metadata.Image, error) {
	b, err := json.Marshal(metadata.CanonicalImage(img))
	if err != nil {
		return "", metadata.Image{}, fmt.Errorf("encoding image %s@%s: %w", img.Repository, img.Digest, err)
	}
	stored, err := decodeImage(string(b))
	return string(b), stored, err
}

// putImage writes img, inserting it when it is new. Two replicas creating
// the same image both find no row to lock; the second insert then fails
// with a unique violation once the first commits, and writeTx runs the
// whole update again, now finding (and locking) the first one's row.
func putImage(ctx context.Context, tx pgx.Tx, img metadata.Image, exists bool) (metadata.Image, error) {
	rec, stored, err := encodeImage(img)
	if err != nil {
		return metadata.Image{}, err
	}
	sql := "UPDATE airlock_meta_images SET state = $3, record = $4 WHERE repository = $1 AND digest = $2"
	if !exists {
		sql = "INSERT INTO airlock_meta_images (repository, digest, state, record) VALUES ($1, $2, $3, $4)"
	}
	if _, err := tx.Exec(ctx, sql, img.Repository, string(img.Digest), string(img.State), rec); err != nil {
		return metadata.Image{}, err
	}
	return stored, nil
}

// writeTx runs fn in a transaction and commits it, running it again (fn
// included) when PostgreSQL aborted it for a conflict with a concurrent
// transaction: a deadlock, a serialization failure, or the insert of an
// image another replica inserted first.
func (s *Store) writeTx(ctx context.Context, fn func(ctx context.Context, tx pgx.Tx) error) error {
	return s.writeTxWithin(ctx, s.opts.OpTimeout, fn)
}

// writeTxWithin is writeTx with each attempt bounded by limit rather than
// the store's OpTimeout.
func (s *Store) writeTxWithin(ctx context.Context, limit time.Duration, fn func(ctx context.Context, tx pgx.Tx) error) error {
	for attempt := 1; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		start := time.Now()
		probe, err := s.quiet.check(start)
		if err != nil {
			return err
		}
		actx, cancel := context.WithTimeout(ctx, limit)
		err = pgx.BeginFunc(actx, s.pool, func(tx pgx.Tx) error { return fn(actx, tx) })
		timedOut := actx.Err() != nil
		cancel()
		switch {
		case err != nil && ctx.Err() == nil && timedOut:
			s.quiet.timedOut(start, time.Now())
			return fmt.Errorf("metadata: writing to PostgreSQL: no answer within %v: %w (%w)", limit, err, metadata.ErrUnavailable)
		case err == nil || (ctx.Err() == nil && !lost(err)):
			s.quiet.answered()
		case probe:
			s.quiet.ended()
		}
		if err != nil && ctx.Err() == nil && lost(err) {
			return fmt.Errorf("metadata: writing to PostgreSQL: %w (%w)", err, metadata.ErrUnavailable)
		}
		if err == nil || !conflict(err) || attempt == maxWriteAttempts {
			return err
		}
		// A little jitter, growing, so that replicas that collided do not
		// collide again in lockstep.
		wait := time.Duration(rand.Int64N(int64(attempt) * int64(2*time.Millisecond)))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

// lost reports whether err means PostgreSQL could not be reached or
// dropped the connection, rather than refused the statement: the caller
// answers 503 and the client retries, instead of a 500.
func lost(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		// connection_exception, admin/crash shutdown, cannot_connect_now,
		// too_many_connections.
		return strings.HasPrefix(pe.Code, "08") || pe.Code == "57P01" || pe.Code == "57P02" ||
			pe.Code == "57P03" || pe.Code == "53300"
	}
	var ce *pgconn.ConnectError
	var ne net.Error
	return errors.As(err, &ce) || errors.As(err, &ne) || pgconn.SafeToRetry(err) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || strings.Contains(err.Error(), "conn closed")
}

// conflict reports whether err is PostgreSQL aborting a transaction that
// would succeed if run again.
func conflict(err error) bool {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return false
	}
	switch pe.Code {
	case "40001", "40P01": // serialization_failure, deadlock_detected
		return true
	case "23505": // unique_violation
		return pe.ConstraintName == "airlock_meta_images_pkey"
	}
	return false
}

// UpdateImage reads the image with its row locked, lets fn change it, and
// writes it with its audit record and deliveries in one transaction, which
// also announces the change to the other replicas. Updates of one image by
// several replicas take turns on its row; appends to the audit log take
// turns on the head (see appendAudit), so seqs follow commit order.
//
// fn runs once per attempt on a fresh copy of the stored image (a new one
// has Repository and Digest set and a zero FirstSeen): an attempt that
// loses a race with another replica's is run again, fn included.
func (s *Store) UpdateImage(ctx context.Context, repo string, d digest.Digest, now time.Time, fn func(img *metadata.Image) (metadata.Change, error)) (metadata.Image, error) {
	if err := checkImageKey(repo, d); err != nil {
		return metadata.Image{}, err
	}
	var out metadata.Image
	err := s.writeTx(ctx, func(ctx context.Context, tx pgx.Tx) error {
		img, found, err := getImage(ctx, tx, repo, d, true)
		if err != nil {
			return err
		}
		if !found {
			img = metadata.Image{Repository: repo, Digest: d}
		}
		from := img.State
		change, err := fn(&img)
		if err != nil {
			return err
		}
		if err := metadata.CheckImage(&img, repo, d); err != nil {
			return err
		}
		img.UpdatedAt = now
		if !found || img.FirstSeen.IsZero() {
			img.FirstSeen = now
		}
		if out, err = putImage(ctx, tx, img, found); err != nil {
			return err
		}
		var hash string
		if img.State != from || change.Action != "" {
			rec, err := appendAudit(ctx, tx, metadata.AuditRecord{
				Time: now, Actor: change.Actor, Action: change.Action,
				Repository: repo, Digest: d, From: from, To: img.State,
				Reason: change.Reason, Reasons: img.Reasons, Expires: change.Expires,
			})
			if err != nil {
				return err
			}
			hash = rec.Hash
		}
		if err := s.enqueue(ctx, tx, now, hash, change.Deliveries); err != nil {
			return err
		}
		return notify(ctx, tx, "image", repo+"@"+d.String())
	})
	if err != nil {
		return metadata.Image{}, fmt.Errorf("updating image %s@%s: %w", repo, d, err)
	}
	return out, nil
}

// DeleteImage removes the image record with an audit record of the change
// (To is StateNone) and queues c.Deliveries, in one transaction that also
// announces the change. The record's Action is c.Action, "delete" when
// empty.
func (s *Store) DeleteImage(ctx context.Context, repo string, d digest.Digest, now time.Time, c metadata.Change) error {
	if err := checkImageKey(repo, d); err != nil {
		return err
	}
	if c.Action == "" {
		c.Action = "delete"
	}
	err := s.writeTx(ctx, func(ctx context.Context, tx pgx.Tx) error {
		img, found, err := getImage(ctx, tx, repo, d, true)
		if err != nil {
			return err
		}
		if !found {
			return fmt.Errorf("image %s@%s: %w", repo, d, storage.ErrNotFound)
		}
		if _, err := tx.Exec(ctx, "DELETE FROM airlock_meta_images WHERE repository = $1 AND digest = $2", repo, string(d)); err != nil {
			return err
		}
		rec, err := appendAudit(ctx, tx, metadata.AuditRecord{
			Time: now, Actor: c.Actor, Action: c.Action,
			Repository: repo, Digest: d, From: img.State, To: metadata.StateNone,
			Reason: c.Reason, Reasons: img.Reasons, Expires: c.Expires,
		})
		if err != nil {
			return err
		}
		if err := s.enqueue(ctx, tx, now, rec.Hash, c.Deliveries); err != nil {
			return err
		}
		return notify(ctx, tx, "image", repo+"@"+d.String())
	})
	if err != nil {
		return fmt.Errorf("deleting image %s@%s: %w", repo, d, err)
	}
	return nil
}

// Images lists the images q selects in key order (repository, then
// digest, compared bytewise as bbolt's keys are). Next, when set, is the
// cursor of the last image returned ([metadata.ImageCursor]), the same as
// the bbolt store's.
func (s *Store) Images(ctx context.Context, q metadata.ImageQuery) (metadata.ImagePage, error) {
	if !q.State.Valid() {
		return metadata.ImagePage{}, fmt.Errorf("metadata: unknown state %q: want approved, pending, quarantined, blocked or released", q.State)
	}
	if q.Repository != "" {
		if err := metadata.CheckRepository(q.Repository); err != nil {
			return metadata.ImagePage{}, err
		}
		if err := checkRepo(q.Repository); err != nil {
			return metadata.ImagePage{}, err
		}
	}
	if err := checkName("upstream name", q.Upstream); err != nil {
		return metadata.ImagePage{}, err
	}
	var where []string
	var args []any
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	if q.After != "" {
		repo, d, err := metadata.ParseImageCursor(q.After)
		if err != nil {
			return metadata.ImagePage{}, err
		}
		// A cursor is the client's to forge: one naming what no image can
		// be named is refused as one this store did not return.
		if checkImageKey(repo, d) != nil {
			return metadata.ImagePage{}, fmt.Errorf("metadata: %.80q is not a cursor this store returned: start the listing again without it", q.After)
		}
		where = append(where, "(repository, digest) > ("+arg(repo)+", "+arg(string(d))+")")
	}
	switch {
	case q.Repository != "" && q.Upstream != "" && !strings.HasPrefix(q.Repository, q.Upstream+"/"):
		return metadata.ImagePage{Images: []metadata.Image{}}, nil
	case q.Repository != "":
		where = append(where, "repository = "+arg(q.Repository))
	case q.Upstream != "":
		// An upstream name has no "/", so "<upstream>/" selects exactly
		// its repositories: bytewise, those from "<upstream>/" up to
		// "<upstream>0" ('0' follows '/'), a range of the primary key.
		where = append(where, "repository >= "+arg(q.Upstream+"/")+" AND repository < "+arg(q.Upstream+"0"))
	}
	if q.State != metadata.StateNone {
		where = append(where, "state = "+arg(string(q.State)))
	}
	limit := pageLimit(q.Limit, maxImagePage)
	sql := "SELECT record FROM airlock_meta_images"
	if len(where) > 0 {
		sql += " WHERE " + strings.Join(where, " AND ")
	}
	// One more than the page holds says whether another page follows.
	sql += " ORDER BY repository, digest LIMIT " + arg(limit+1)
	imgs, err := queryImages(ctx, s, sql, args...)
	if err != nil {
		return metadata.ImagePage{}, fmt.Errorf("metadata: listing images: %w", err)
	}
	page := metadata.ImagePage{Images: imgs}
	if len(imgs) > limit {
		page.Images = imgs[:limit]
		last := imgs[limit-1]
		page.Next = metadata.ImageCursor(last.Repository, last.Digest)
	}
	return page, nil
}

func queryImages(ctx context.Context, s *Store, sql string, args ...any) ([]metadata.Image, error) {
	ctx, cancel := s.bounded(ctx)
	defer cancel()
	rows, err := s.pool.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	recs, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	imgs := make([]metadata.Image, 0, len(recs))
	for _, rec := range recs {
		img, err := decodeImage(rec)
		if err != nil {
			return nil, err
		}
		imgs = append(imgs, img)
	}
	return imgs, nil
}

// EachImage calls fn for every image in key order. It reads a chunk per
// query, so an image written during the walk may or may not be seen, but
// none is seen twice.
func (s *Store) EachImage(ctx context.Context, fn func(metadata.Image) error) error {
	const first = "SELECT record FROM airlock_meta_images ORDER BY repository, digest LIMIT $1"
	const next = "SELECT record FROM airlock_meta_images WHERE (repository, digest) > ($2, $3) ORDER BY repository, digest LIMIT $1"
	var last *metadata.Image
	for {
		var (
			chunk []metadata.Image
			err   error
		)
		if last == nil {
			chunk, err = queryImages(ctx, s, first, eachImageChunk)
		} else {
			chunk, err = queryImages(ctx, s, next, eachImageChunk, last.Repository, string(last.Digest))
		}
		if err != nil {
			return fmt.Errorf("metadata: walking images: %w", err)
		}
		for _, img := range chunk {
			if err := fn(img); err != nil {
				return err
			}
		}
		if len(chunk) < eachImageChunk {
			return nil
		}
		last = &chunk[len(chunk)-1]
	}
}

// RecordPulls adds pull counts, keeps the latest pull time and marks
// platforms fetched, for the whole batch in one transaction. Each replica
// flushes its own counts: the rows are read locked and written back, so
// counts from several replicas add up and none is lost. Rows are locked in
// key order, so two replicas' batches never deadlock. Images not in the
// store are skipped.
//
// The change is not announced: pull counts are statistics, and reloading
// every pulled image on every replica at every flush would cost more than
// a count a few seconds old.
func (s *Store) RecordPulls(ctx context.Context, stats []metadata.PullStat) error {
	type key struct {
		repo string
		d    digest.Digest
	}
	byKey := map[key][]metadata.PullStat{}
	for _, st := range stats {
		if err := metadata.CheckImageKey(st.Repository, st.Digest); err != nil {
			return err
		}
		if st.Pulls < 0 {
			return fmt.Errorf("metadata: pulls of %s@%s: negative count %d", st.Repository, st.Digest, st.Pulls)
		}
		if checkRepo(st.Repository) != nil {
			// No image is stored under a name PostgreSQL cannot hold:
			// skipped, as images not in the store are, rather than
			// failing the pulls of every other image in the batch.
			continue
		}
		k := key{st.Repository, st.Digest}
		byKey[k] = append(byKey[k], st)
	}
	if len(byKey) == 0 {
		return nil
	}
	repos, digests := make([]string, 0, len(byKey)), make([]string, 0, len(byKey))
	for k := range byKey {
		repos, digests = append(repos, k.repo), append(digests, string(k.d))
	}
	err := s.writeTx(ctx, func(ctx context.Context, tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT record FROM airlock_meta_images
			WHERE (repository, digest) IN (SELECT * FROM unnest($1::text[], $2::text[]))
			ORDER BY repository, digest FOR UPDATE`, repos, digests)
		if err != nil {
			return err
		}
		recs, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		batch := &pgx.Batch{}
		for _, rec := range recs {
			img, err := decodeImage(rec)
			if err != nil {
				return err
			}
			for _, st := range byKey[key{img.Repository, img.Digest}] {
				addPulls(&img, st)
			}
			enc, _, err := encodeImage(img)
			if err != nil {
				return err
			}
			batch.Queue("UPDATE airlock_meta_images SET record = $3 WHERE repository = $1 AND digest = $2",
				img.Repository, string(img.Digest), enc)
		}
		return tx.SendBatch(ctx, batch).Close()
	})
	if err != nil {
		return fmt.Errorf("metadata: recording pulls of %d images: %w", len(stats), err)
	}
	return nil
}

func addPulls(img *metadata.Image, st metadata.PullStat) {
	img.Pulls += st.Pulls
	if st.Last.After(img.LastPulled) {
		img.LastPulled = st.Last
	}
	if len(st.Platforms) == 0 {
		return
	}
	// A set: an index may list tens of thousands.
	pulled := make(map[digest.Digest]bool, len(st.Platforms))
	for _, p := range st.Platforms {
		pulled[p] = true
	}
	for j := range img.Platforms {
		if pulled[img.Platforms[j].Digest] {
			img.Platforms[j].Fetched = true
		}
	}
}

// pageLimit applies a listing's default (100) and maximum, as the bbolt
// store does.
func pageLimit(limit, most int) int {
	switch {
	case limit <= 0:
		return 100
	case limit > most:
		return most
	}
	return limit
}
