package scanner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/opencontainers/go-digest"
	"github.com/quay/claircore"
	"github.com/quay/claircore/libvuln/driver"

	"github.com/airlock-registry/airlock/storage/metadata"
)

// Re-check: the scanner keeps, in airlock_scan_data, the newest update
// operation of each updater it has re-checked against. When claircore's
// latest operations differ (an updater run, an import), the manifests the
// change affects are matched again from their stored index reports (no
// layer is read again) and each new result is reported through OnResult
// with its new Data. The change is the diff between the operation
// re-checked last and the new one: claircore's affected-manifest query
// over the vulnerabilities added and removed. An updater never re-checked
// against (new, or its older operation collected) affects every scanned
// manifest.
//
// One replica re-checks at a time (a database lock); the others find
// nothing left to do.

const recheckLock = "airlock-scanner-recheck"

// watchData re-checks when told (an import's notification, an updater
// run) and every tune.dataPoll.
func (s *Scanner) watchData(ctx context.Context) {
	for {
		if err := s.Recheck(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("scanner: re-checking scanned images against new vulnerability data failed; trying again later", "err", err)
		}
		if !sleep(ctx, s.tune.dataPoll, s.recheck) {
			return
		}
	}
}

type change struct {
	updater   string
	prev, cur uuid.UUID // prev is uuid.Nil when never re-checked against
}

// Recheck matches again the scanned manifests that vulnerability data
// changed since the last re-check affects, and reports their new results.
// Run calls it on its own; it is exported for tests and tools.
func (s *Scanner) Recheck(ctx context.Context) error {
	lctx, unlock := s.locker.TryLock(ctx, recheckLock)
	defer unlock()
	if lctx.Err() != nil {
		return nil // another replica re-checks, or ctx ended
	}
	ctx = lctx

	changes, err := s.dataChanges(ctx)
	if err != nil || len(changes) == 0 {
		return err
	}
	digests, err := s.affected(ctx, changes)
	if err != nil {
		return err
	}
	t0 := time.Now()
	n := 0
	for _, d := range digests {
		ok, err := s.rematch(ctx, d)
		if err != nil {
			return fmt.Errorf("matching %s again: %w", d, err)
		}
		if ok {
			n++
		}
	}
	// Recorded only once every affected manifest is done: a re-check cut
	// short starts over.
	if err := s.saveData(ctx, changes); err != nil {
		return err
	}
	s.metrics.rechecks.Inc()
	s.metrics.rechecked.Add(float64(n))
	names := make([]string, len(changes))
	for i, c := range changes {
		names[i] = c.updater
	}
	s.log.Info("scanner: vulnerability data changed; re-checked scanned images", "updaters", names, "images", n, "took", time.Since(t0).Round(time.Millisecond))
	// Old update operations are collected now that no re-check needs
	// them (GC keeps the newest few per updater).
	if _, err := s.vuln.GC(ctx); err != nil {
		s.log.Warn("scanner: collecting old vulnerability data failed", "err", err)
	}
	return nil
}

// dataChanges compares claircore's latest update operations with those
// last re-checked against.
func (s *Scanner) dataChanges(ctx context.Context) ([]change, error) {
	latest, err := s.vuln.LatestUpdateOperations(ctx, driver.VulnerabilityKind)
	if err != nil {
		return nil, fmt.Errorf("reading the latest vulnerability updates: %w", unavailable(err))
	}
	known, err := s.loadData(ctx)
	if err != nil {
		return nil, err
	}
	var out []change
	for name, ops := range latest {
		if len(ops) == 0 || known[name] == ops[0].Ref {
			continue
		}
		out = append(out, change{updater: name, prev: known[name], cur: ops[0].Ref})
	}
	return out, nil
}

func (s *Scanner) loadData(ctx context.Context) (map[string]uuid.UUID, error) {
	rows, err := s.pool.Query(ctx, `SELECT updater, ref FROM airlock_scan_data`)
	if err != nil {
		return nil, fmt.Errorf("reading the re-checked data: %w", unavailable(err))
	}
	known := map[string]uuid.UUID{}
	var name string
	var ref uuid.UUID
	_, err = pgx.ForEachRow(rows, []any{&name, &ref}, func() error {
		known[name] = ref
		return nil
	})
	return known, err
}

func (s *Scanner) saveData(ctx context.Context, changes []change) error {
	b := &pgx.Batch{}
	for _, c := range changes {
		b.Queue(`INSERT INTO airlock_scan_data (updater, ref) VALUES ($1, $2)
			ON CONFLICT (updater) DO UPDATE SET ref = EXCLUDED.ref`, c.updater, c.cur)
	}
	if err := s.pool.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("recording the re-checked data: %w", unavailable(err))
	}
	return nil
}

// affected returns the done scans the changes may alter.
func (s *Scanner) affected(ctx context.Context, changes []change) ([]digest.Digest, error) {
	all := false
	var vulns []claircore.Vulnerability
	for _, c := range changes {
		if c.prev == uuid.Nil {
			all = true
			continue
		}
		diff, err := s.vuln.UpdateDiff(ctx, c.prev, c.cur)
		if err != nil {
			// The previous operation was collected (several updates
			// while no scanner ran): every scan is suspect.
			s.log.Info("scanner: no diff between vulnerability updates; re-checking every scanned image", "updater", c.updater, "err", err)
			all = true
			continue
		}
		vulns = append(vulns, diff.Added...)
		vulns = append(vulns, diff.Removed...)
	}
	if all {
		return s.doneDigests(ctx, nil)
	}
	if len(vulns) == 0 {
		return nil, nil
	}
	am, err := s.index.AffectedManifests(ctx, vulns)
	if err != nil {
		return nil, fmt.Errorf("finding the images new vulnerability data affects: %w", unavailable(err))
	}
	hashes := make([]string, 0, len(am.VulnerableManifests))
	for h := range am.VulnerableManifests {
		hashes = append(hashes, h)
	}
	if len(hashes) == 0 {
		return nil, nil
	}
	return s.doneDigests(ctx, hashes)
}

// doneDigests returns the done scans among hashes (all when nil).
func (s *Scanner) doneDigests(ctx context.Context, hashes []string) ([]digest.Digest, error) {
	q, args := `SELECT digest FROM airlock_scan_jobs WHERE state = 'done' ORDER BY digest`, []any{}
	if hashes != nil {
		q, args = `SELECT digest FROM airlock_scan_jobs WHERE state = 'done' AND digest = ANY($1) ORDER BY digest`, []any{hashes}
	}
	rows, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("listing scanned images: %w", unavailable(err))
	}
	ds, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("listing scanned images: %w", unavailable(err))
	}
	out := make([]digest.Digest, len(ds))
	for i, d := range ds {
		out[i] = digest.Digest(d)
	}
	return out, nil
}

// rematch matches a done scan's index report again and records and
// reports the result. False means there was nothing to match (a scan with
// a note, or a scan no longer done).
func (s *Scanner) rematch(ctx context.Context, d digest.Digest) (bool, error) {
	hash, err := claircore.ParseDigest(d.String())
	if err != nil {
		return false, nil
	}
	ir, ok, err := s.index.IndexReport(ctx, hash)
	if err != nil {
		return false, unavailable(err)
	}
	if !ok || !ir.Success {
		return false, nil
	}
	row, err := scanJob(s.pool.QueryRow(ctx, `SELECT `+jobColumns+` FROM airlock_scan_jobs WHERE digest = $1`, d.String()))
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, unavailable(err)
	}
	old := row.scan()
	if old.State != metadata.ScanDone || old.Note != "" {
		return false, nil
	}
	sc, err := s.match(ctx, ir)
	if err != nil {
		return false, err
	}
	sc.Queued, sc.Started, sc.Finished, sc.Attempts = old.Queued, old.Started, old.Finished, old.Attempts
	sc.Layers, sc.Size = old.Layers, old.Size
	b, err := json.Marshal(sc)
	if err != nil {
		return false, err
	}
	tag, err := s.pool.Exec(ctx, `UPDATE airlock_scan_jobs SET result = $2 WHERE digest = $1 AND state = 'done'`, d.String(), b)
	if err != nil {
		return false, unavailable(err)
	}
	if tag.RowsAffected() == 0 {
		return false, nil // a rescan started meanwhile; it reports its own result
	}
	s.report(ctx, d, sc)
	return true, nil
}
