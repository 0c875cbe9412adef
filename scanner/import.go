package scanner

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"sync"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/klauspost/compress/zstd"
	"github.com/quay/claircore"
	"github.com/quay/claircore/datastore/postgres"
	"github.com/quay/claircore/libvuln"
	"github.com/quay/claircore/libvuln/driver"
	"golang.org/x/sync/errgroup"

	"github.com/airlock-registry/airlock/config"
)

// Import loads vulnerability data in claircore's updater-export format
// (JSON Lines, as `clairctl export-updaters` writes; gzip or zstd
// compressed or not) into the scanner's database, then notifies running
// scanners, which re-check the images the new data affects. It needs no
// running scanner: `airlock vulndb import` calls it.
//
// The file is checked whole before anything is loaded: a malformed line
// fails the import with its line number, and the database keeps its data.
// An update whose fingerprint the database already has is skipped, so
// importing one file twice changes nothing.
func Import(ctx context.Context, cfg config.Scanner, r io.Reader, log *slog.Logger) (ImportResult, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dsn, err := databaseDSN(cfg)
	if err != nil {
		return ImportResult{}, err
	}
	dir := cfg.WorkDir
	if dir != "" {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return ImportResult{}, fmt.Errorf("import: work directory: %w", err)
		}
	}
	spool, updaters, err := checkExport(r, dir)
	if err != nil {
		return ImportResult{}, fmt.Errorf("import: %w", err)
	}
	defer spool.Close()
	log.Info("import: file checked", "updaters", updaters)

	pool, err := connect(ctx, dsn, 1)
	if err != nil {
		return ImportResult{}, err
	}
	defer pool.Close()
	if err := migrate(ctx, pool); err != nil {
		return ImportResult{}, err
	}
	store := postgres.NewMatcherStore(pool)
	before, err := store.GetLatestUpdateRefs(ctx, driver.VulnerabilityKind)
	if err != nil {
		return ImportResult{}, fmt.Errorf("import: reading the current data: %w", unavailable(err))
	}
	if err := libvuln.OfflineImport(ctx, pool, spool); err != nil {
		return ImportResult{}, fmt.Errorf("import: loading: %w", unavailable(err))
	}
	after, err := store.GetLatestUpdateRefs(ctx, driver.VulnerabilityKind)
	if err != nil {
		return ImportResult{}, fmt.Errorf("import: reading the new data: %w", unavailable(err))
	}

	res := ImportResult{Updaters: []string{}}
	var vulns []claircore.Vulnerability
	everything := false
	for name, ops := range after {
		if len(ops) == 0 {
			continue
		}
		prev := uuid.Nil
		if b := before[name]; len(b) > 0 {
			prev = b[0].Ref
		}
		if prev == ops[0].Ref {
			continue
		}
		res.Updaters = append(res.Updaters, name)
		diff, err := store.GetUpdateDiff(ctx, prev, ops[0].Ref)
		if err != nil {
			return res, fmt.Errorf("import: comparing %s's data with the previous: %w", name, unavailable(err))
		}
		res.Added += len(diff.Added)
		res.Removed += len(diff.Removed)
		if prev == uuid.Nil {
			everything = true
			continue
		}
		vulns = append(vulns, diff.Added...)
		vulns = append(vulns, diff.Removed...)
	}
	slices.Sort(res.Updaters)
	if len(res.Updaters) == 0 {
		log.Info("import: the database already had this data; nothing changed")
		return res, nil
	}
	res.Affected, err = affectedCount(ctx, pool, vulns, everything)
	if err != nil {
		return res, err
	}
	// Running scanners re-check on this; one that is not running finds
	// the change when it starts.
	if _, err := pool.Exec(ctx, `SELECT pg_notify($1, 'import')`, dataChannel); err != nil {
		return res, fmt.Errorf("import: the data is loaded, but notifying running scanners failed (they re-check within a minute anyway): %w", err)
	}
	log.Info("import: loaded", "updaters", res.Updaters, "added", res.Added, "removed", res.Removed, "affected", res.Affected)
	return res, nil
}

// affectedCount counts the scanned manifests the changed vulnerabilities
// affect: the ones running scanners match again.
func affectedCount(ctx context.Context, pool *pgxpool.Pool, vulns []claircore.Vulnerability, everything bool) (int, error) {
	var n int
	if everything {
		err := pool.QueryRow(ctx, `SELECT count(*) FROM airlock_scan_jobs WHERE state = 'done'`).Scan(&n)
		return n, unavailable(err)
	}
	idx := postgres.NewIndexerStore(pool)
	var mu sync.Mutex
	hashes := map[string]struct{}{}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for i := range vulns {
		g.Go(func() error {
			ds, err := idx.AffectedManifests(gctx, vulns[i])
			mu.Lock()
			for _, d := range ds {
				hashes[d.String()] = struct{}{}
			}
			mu.Unlock()
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return 0, fmt.Errorf("import: finding affected images: %w", unavailable(err))
	}
	if len(hashes) == 0 {
		return 0, nil
	}
	list := make([]string, 0, len(hashes))
	for h := range hashes {
		list = append(list, h)
	}
	err := pool.QueryRow(ctx, `SELECT count(*) FROM airlock_scan_jobs WHERE state = 'done' AND digest = ANY($1)`, list).Scan(&n)
	return n, unavailable(err)
}

// exportLine is one line of an updater export: a vulnerability or an
// enrichment of one update operation (Ref), the operations' lines in one
// run.
type exportLine struct {
	Updater     string
	Fingerprint string
	Kind        driver.UpdateKind
	Ref         uuid.UUID
	Vuln        json.RawMessage
	Enrichment  json.RawMessage
}

// checkExport reads an export (decompressing it), checks every line and
// spools it to an unlinked file in dir, which it returns positioned at
// the start with the names of the updaters it holds.
func checkExport(r io.Reader, dir string) (*os.File, []string, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	head, _ := br.Peek(4)
	var src io.Reader = br
	switch {
	case bytes.HasPrefix(head, gzipMagic):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, nil, fmt.Errorf("gzip: %w", err)
		}
		defer zr.Close()
		src = zr
	case bytes.HasPrefix(head, zstdMagic):
		zr, err := zstd.NewReader(br)
		if err != nil {
			return nil, nil, fmt.Errorf("zstd: %w", err)
		}
		defer zr.Close()
		src = zr.IOReadCloser()
	}
	f, err := os.CreateTemp(dir, "airlock-import-")
	if err != nil {
		return nil, nil, err
	}
	os.Remove(f.Name())
	ok := false
	defer func() {
		if !ok {
			f.Close()
		}
	}()

	lines := bufio.NewReaderSize(src, 1<<20)
	w := bufio.NewWriterSize(f, 1<<20)
	refs := map[uuid.UUID]bool{}
	var cur uuid.UUID
	var names []string
	n := 0
	for {
		line, err := lines.ReadBytes('\n')
		if len(bytes.TrimSpace(line)) > 0 {
			n++
			if cerr := checkLine(line, n, &cur, refs, &names); cerr != nil {
				return nil, nil, cerr
			}
			if _, werr := w.Write(line); werr != nil {
				return nil, nil, werr
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, nil, fmt.Errorf("reading line %d: %w", n+1, err)
		}
	}
	if n == 0 {
		return nil, nil, errors.New("the file holds no updates: is it the output of `clairctl export-updaters`?")
	}
	if err := w.Flush(); err != nil {
		return nil, nil, err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, nil, err
	}
	ok = true
	slices.Sort(names)
	return f, slices.Compact(names), nil
}

func checkLine(line []byte, n int, cur *uuid.UUID, refs map[uuid.UUID]bool, names *[]string) error {
	var e exportLine
	if err := json.Unmarshal(line, &e); err != nil {
		return fmt.Errorf("line %d: not an updater export record: %w", n, err)
	}
	switch {
	case e.Updater == "":
		return fmt.Errorf("line %d: no Updater: not an updater export record (write the file with `clairctl export-updaters`)", n)
	case e.Ref == uuid.Nil:
		return fmt.Errorf("line %d: no Ref: not an updater export record", n)
	}
	switch e.Kind {
	case driver.VulnerabilityKind:
		var v claircore.Vulnerability
		if len(e.Vuln) == 0 {
			return fmt.Errorf("line %d: a vulnerability record without a Vuln", n)
		}
		if err := json.Unmarshal(e.Vuln, &v); err != nil {
			return fmt.Errorf("line %d: vulnerability: %w", n, err)
		}
	case driver.EnrichmentKind:
		var en driver.EnrichmentRecord
		if len(e.Enrichment) == 0 {
			return fmt.Errorf("line %d: an enrichment record without an Enrichment", n)
		}
		if err := json.Unmarshal(e.Enrichment, &en); err != nil {
			return fmt.Errorf("line %d: enrichment: %w", n, err)
		}
	default:
		return fmt.Errorf("line %d: unknown Kind %q (want vulnerability or enrichment)", n, e.Kind)
	}
	if e.Ref != *cur {
		// An update's lines come together: one seen again after another
		// began would load as a second update, replacing the first.
		if refs[e.Ref] {
			return fmt.Errorf("line %d: update %s continues after another began: the file's lines were reordered", n, e.Ref)
		}
		refs[e.Ref] = true
		*cur = e.Ref
		*names = append(*names, e.Updater)
	}
	return nil
}
