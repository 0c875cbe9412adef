package scanner

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/storage/metadata"
)

// The queue is one table: a row per manifest digest, whatever repository
// asked. A worker claims a row with SELECT … FOR UPDATE SKIP LOCKED and
// holds it by a lease it renews while it scans; a row whose lease ran out
// (its worker crashed, or lost the database) is claimed again. A worker
// writes its result only while it still holds the lease, so no two
// processes record a scan of one digest.
//
// Times shown to people (queued, started, finished) come from the
// process's clock; leases and retry delays from the database's, which
// every replica shares.

// Notification channels.
const (
	// jobsChannel is notified when a job is queued.
	jobsChannel = "airlock_scan_jobs"
	// dataChannel is notified when vulnerability data changed (an import
	// or an updater run): scanners re-check what they scanned.
	dataChannel = "airlock_scan_data"
)

// queueMigrations are airlock's schema in the scanner's database, applied
// in order; append, never edit.
var queueMigrations = []string{
	`CREATE TABLE airlock_scan_jobs (
		digest      text PRIMARY KEY,
		repository  text NOT NULL,
		state       text NOT NULL CHECK (state IN ('queued', 'scanning', 'done', 'failed')),
		attempts    integer NOT NULL DEFAULT 0,
		fresh       boolean NOT NULL DEFAULT false,
		queued_at   timestamptz NOT NULL,
		started_at  timestamptz,
		finished_at timestamptz,
		run_after   timestamptz NOT NULL DEFAULT clock_timestamp(),
		lease_owner text,
		lease_until timestamptz,
		error       text NOT NULL DEFAULT '',
		result      jsonb
	);
	CREATE INDEX airlock_scan_jobs_ready ON airlock_scan_jobs (run_after)
		WHERE state IN ('queued', 'scanning');
	CREATE TABLE airlock_scan_data (
		updater text PRIMARY KEY,
		ref     uuid NOT NULL
	);`,
}

// migrationLock keys the advisory lock airlock's migrations run under.
var migrationLock = int64(crc32.ChecksumIEEE([]byte("airlock-scanner-migrations")))

func migrateQueue(ctx context.Context, pool *pgxpool.Pool) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		// Replicas starting together wait here for the first to finish.
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, migrationLock); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS airlock_scan_migrations (version integer PRIMARY KEY)`); err != nil {
			return err
		}
		var done int
		if err := tx.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM airlock_scan_migrations`).Scan(&done); err != nil {
			return err
		}
		if done > len(queueMigrations) {
			return fmt.Errorf("the database has airlock scanner schema version %d, newer than this airlock knows (%d): upgrade airlock", done, len(queueMigrations))
		}
		for v := done + 1; v <= len(queueMigrations); v++ {
			if _, err := tx.Exec(ctx, queueMigrations[v-1]); err != nil {
				return fmt.Errorf("version %d: %w", v, err)
			}
			if _, err := tx.Exec(ctx, `INSERT INTO airlock_scan_migrations (version) VALUES ($1)`, v); err != nil {
				return err
			}
		}
		return nil
	})
}

// newOwner names this process in its leases: the host, the pid and a
// random part, so a restarted process never renews its predecessor's
// lease. Each claim adds a sequence number.
func newOwner() string {
	host, _ := os.Hostname()
	var b [6]byte
	rand.Read(b[:])
	return fmt.Sprintf("%s/%d/%s", host, os.Getpid(), hex.EncodeToString(b[:]))
}

const jobColumns = `digest, repository, state, attempts, fresh, queued_at, started_at, finished_at, error, result`

// job is a row of the queue.
type job struct {
	Job
	state    string
	attempts int
	fresh    bool
	queued   time.Time
	started  *time.Time
	finished *time.Time
	err      string
	result   []byte
	// prev is the state a claimed job had: "scanning" when its lease ran
	// out.
	prev string
	// lease names the claim that holds the job.
	lease string
}

func scanJob(row pgx.Row, extra ...any) (*job, error) {
	var j job
	var d string
	dest := append([]any{&d, &j.Repository, &j.state, &j.attempts, &j.fresh, &j.queued,
		&j.started, &j.finished, &j.err, &j.result}, extra...)
	if err := row.Scan(dest...); err != nil {
		return nil, err
	}
	j.Digest = digest.Digest(d)
	return &j, nil
}

// scan returns the job as the metadata.Scan callers see: findings only
// when done.
func (j *job) scan() metadata.Scan {
	var s metadata.Scan
	if j.state == metadata.ScanDone && len(j.result) > 0 {
		// A result that does not decode leaves the timing and state,
		// which is all a caller can act on.
		_ = json.Unmarshal(j.result, &s)
	}
	s.State = j.state
	s.Queued = j.queued
	s.Started, s.Finished = time.Time{}, time.Time{}
	if j.started != nil {
		s.Started = *j.started
	}
	if j.finished != nil {
		s.Finished = *j.finished
	}
	s.Attempts = j.attempts
	s.Error = j.err
	return s
}

func checkJob(j Job) error {
	if err := j.Digest.Validate(); err != nil {
		return fmt.Errorf("scanner: digest %q: %w", j.Digest, err)
	}
	if j.Repository == "" {
		return errors.New("scanner: a job needs the repository its content is read through")
	}
	return nil
}

// Enqueue asks for j.Digest to be scanned and returns its scan: a new one
// queued, or the one already known (queued, scanning, done or failed),
// whichever repository it was asked for; a done scan is shared by every
// repository holding the digest, and a failed one stays failed until
// Rescan. Content is read through the repository of the first Enqueue.
// Only a newly queued scan is reported to OnResult (before Enqueue
// returns). Errors wrap ErrUnavailable when the database cannot be reached
// within a few seconds.
func (s *Scanner) Enqueue(ctx context.Context, j Job) (metadata.Scan, error) {
	if err := checkJob(j); err != nil {
		return metadata.Scan{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, s.tune.reachable)
	defer cancel()
	var row *job
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var err error
		row, err = scanJob(tx.QueryRow(ctx, `
			INSERT INTO airlock_scan_jobs (digest, repository, state, queued_at)
			VALUES ($1, $2, 'queued', $3)
			ON CONFLICT (digest) DO NOTHING
			RETURNING `+jobColumns, j.Digest.String(), j.Repository, s.clock()))
		if errors.Is(err, pgx.ErrNoRows) {
			row, err = scanJob(tx.QueryRow(ctx, `SELECT `+jobColumns+` FROM airlock_scan_jobs WHERE digest = $1`, j.Digest.String()))
			if err == nil {
				row.prev = "known"
			}
			return err
		}
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `SELECT pg_notify($1, $2)`, jobsChannel, j.Digest.String())
		return err
	})
	if err != nil {
		return metadata.Scan{}, fmt.Errorf("scanner: queueing %s: %w", j.Digest, unavailable(err))
	}
	sc := row.scan()
	if row.prev != "known" {
		s.nudge(s.wake)
		s.report(ctx, j.Digest, sc)
	}
	return sc, nil
}

// Rescan scans j.Digest again from scratch: its index report is
// forgotten, so the manifest is indexed again (layers already indexed by
// the same scanners are reused: they are content-addressed and cannot
// have changed) and matched. A scan running now is superseded: its result
// is dropped.
func (s *Scanner) Rescan(ctx context.Context, j Job) error {
	if err := checkJob(j); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, s.tune.reachable)
	defer cancel()
	var row *job
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var err error
		row, err = scanJob(tx.QueryRow(ctx, `
			INSERT INTO airlock_scan_jobs (digest, repository, state, queued_at, fresh)
			VALUES ($1, $2, 'queued', $3, true)
			ON CONFLICT (digest) DO UPDATE SET
				repository = EXCLUDED.repository, state = 'queued', attempts = 0,
				fresh = true, queued_at = EXCLUDED.queued_at, started_at = NULL,
				finished_at = NULL, run_after = clock_timestamp(), lease_owner = NULL,
				lease_until = NULL, error = ''
			RETURNING `+jobColumns, j.Digest.String(), j.Repository, s.clock()))
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `SELECT pg_notify($1, $2)`, jobsChannel, j.Digest.String())
		return err
	})
	if err != nil {
		return fmt.Errorf("scanner: queueing a rescan of %s: %w", j.Digest, unavailable(err))
	}
	s.nudge(s.wake)
	s.report(ctx, j.Digest, row.scan())
	return nil
}

// Status returns the scan of d, or ErrNotScanned. Findings are set only
// when the scan is done: a rescan in progress shows as queued or scanning.
func (s *Scanner) Status(ctx context.Context, d digest.Digest) (metadata.Scan, error) {
	ctx, cancel := context.WithTimeout(ctx, s.tune.reachable)
	defer cancel()
	row, err := scanJob(s.pool.QueryRow(ctx, `SELECT `+jobColumns+` FROM airlock_scan_jobs WHERE digest = $1`, d.String()))
	if errors.Is(err, pgx.ErrNoRows) {
		return metadata.Scan{}, fmt.Errorf("scanner: %s: %w", d, ErrNotScanned)
	}
	if err != nil {
		return metadata.Scan{}, fmt.Errorf("scanner: reading the scan of %s: %w", d, unavailable(err))
	}
	return row.scan(), nil
}

// Scans returns the recorded scans of ds, as Status would, in one query;
// digests never queued are left out. A gate reads them to catch up on
// results it was not told of: OnResult fires only in the process that did
// the work (another replica's worker or re-check), and not at all when
// the process stopped between recording a result and reporting it.
func (s *Scanner) Scans(ctx context.Context, ds []digest.Digest) (map[digest.Digest]metadata.Scan, error) {
	keys := make([]string, len(ds))
	for i, d := range ds {
		keys[i] = d.String()
	}
	ctx, cancel := context.WithTimeout(ctx, s.tune.reachable)
	defer cancel()
	rows, err := s.pool.Query(ctx, `SELECT `+jobColumns+` FROM airlock_scan_jobs WHERE digest = ANY($1)`, keys)
	if err != nil {
		return nil, fmt.Errorf("scanner: reading %d scans: %w", len(ds), unavailable(err))
	}
	defer rows.Close()
	out := make(map[digest.Digest]metadata.Scan, len(ds))
	for rows.Next() {
		j, err := scanJob(rows)
		if err != nil {
			return nil, fmt.Errorf("scanner: reading %d scans: %w", len(ds), unavailable(err))
		}
		out[j.Digest] = j.scan()
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("scanner: reading %d scans: %w", len(ds), unavailable(err))
	}
	return out, nil
}

// claim takes the next job due, if any: a queued one whose retry delay
// passed, or one whose worker's lease ran out.
func (s *Scanner) claim(ctx context.Context) (*job, error) {
	// Each claim holds its own lease: two workers of one process must not
	// mistake each other's lease for their own.
	lease := fmt.Sprintf("%s/%d", s.owner, s.claims.Add(1))
	var prev string
	j, err := scanJob(s.pool.QueryRow(ctx, `
		WITH next AS (
			SELECT digest, state AS prev FROM airlock_scan_jobs
			WHERE (state = 'queued' AND run_after <= clock_timestamp())
			   OR (state = 'scanning' AND lease_until < clock_timestamp())
			ORDER BY run_after, queued_at
			LIMIT 1
			FOR UPDATE SKIP LOCKED
		)
		UPDATE airlock_scan_jobs j SET
			-- Never before it was queued: the clock was read as this
			-- claim was sent, which may be before the Enqueue it finds
			-- committed, and reports are ordered by their times.
			state = 'scanning', attempts = j.attempts + 1, started_at = GREATEST($2, j.queued_at),
			finished_at = NULL, lease_owner = $1,
			lease_until = clock_timestamp() + $3::bigint * interval '1 millisecond'
		FROM next WHERE j.digest = next.digest
		RETURNING j.digest, j.repository, j.state, j.attempts, j.fresh, j.queued_at,
			j.started_at, j.finished_at, j.error, j.result, next.prev`,
		lease, s.clock(), s.tune.lease.Milliseconds()), &prev)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	j.prev, j.lease = prev, lease
	return j, nil
}

// renew extends the lease on d; false means this process lost it.
func (s *Scanner) renew(ctx context.Context, j *job) (bool, error) {
	tag, err := s.pool.Exec(ctx, `
		UPDATE airlock_scan_jobs
		SET lease_until = clock_timestamp() + $3::bigint * interval '1 millisecond'
		WHERE digest = $1 AND lease_owner = $2 AND state = 'scanning'`,
		j.Digest.String(), j.lease, s.tune.lease.Milliseconds())
	if err != nil {
		return false, err
	}
	return tag.RowsAffected() == 1, nil
}

// finish records a done scan, if this process still holds the job.
func (s *Scanner) finish(ctx context.Context, j *job, sc metadata.Scan) (bool, error) {
	b, err := json.Marshal(sc)
	if err != nil {
		return false, err
	}
	tag, err := s.pool.Exec(ctx, `
		UPDATE airlock_scan_jobs SET state = 'done', finished_at = $3, result = $4,
			error = '', fresh = false, lease_owner = NULL, lease_until = NULL
		WHERE digest = $1 AND lease_owner = $2 AND state = 'scanning'`,
		j.Digest.String(), j.lease, sc.Finished, b)
	if err != nil {
		return false, err
	}
	return tag.RowsAffected() == 1, nil
}

// retry puts a failed attempt back in the queue after delay.
func (s *Scanner) retry(ctx context.Context, j *job, msg string, delay time.Duration) (bool, error) {
	tag, err := s.pool.Exec(ctx, `
		UPDATE airlock_scan_jobs SET state = 'queued', error = $3,
			run_after = clock_timestamp() + $4::bigint * interval '1 millisecond',
			lease_owner = NULL, lease_until = NULL
		WHERE digest = $1 AND lease_owner = $2 AND state = 'scanning'`,
		j.Digest.String(), j.lease, msg, delay.Milliseconds())
	if err != nil {
		return false, err
	}
	return tag.RowsAffected() == 1, nil
}

// fail records a scan that ran out of attempts.
func (s *Scanner) fail(ctx context.Context, j *job, msg string, at time.Time) (bool, error) {
	tag, err := s.pool.Exec(ctx, `
		UPDATE airlock_scan_jobs SET state = 'failed', error = $3, finished_at = $4,
			lease_owner = NULL, lease_until = NULL
		WHERE digest = $1 AND lease_owner = $2 AND state = 'scanning'`,
		j.Digest.String(), j.lease, msg, at)
	if err != nil {
		return false, err
	}
	return tag.RowsAffected() == 1, nil
}

// release gives a job back untouched: this process is stopping, and the
// interrupted attempt does not count.
func (s *Scanner) release(ctx context.Context, j *job) error {
	_, err := s.pool.Exec(ctx, `
		UPDATE airlock_scan_jobs SET state = 'queued', attempts = greatest(attempts - 1, 0),
			run_after = clock_timestamp(), lease_owner = NULL, lease_until = NULL
		WHERE digest = $1 AND lease_owner = $2 AND state = 'scanning'`,
		j.Digest.String(), j.lease)
	return err
}

// clock is the time recorded for people: in UTC, to the microsecond
// PostgreSQL keeps, so what is reported equals what Status reads later.
func (s *Scanner) clock() time.Time { return s.now().UTC().Truncate(time.Microsecond) }

// nudge wakes a loop waiting on c without blocking.
func (s *Scanner) nudge(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// report hands a scan's change to Options.OnResult.
func (s *Scanner) report(ctx context.Context, d digest.Digest, sc metadata.Scan) {
	if s.opts.OnResult != nil {
		s.opts.OnResult(ctx, d, sc)
	}
}
