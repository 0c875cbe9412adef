package postgres

import (
	"testing"
	"time"

	"github.com/airlock-registry/airlock/internal/pgtest"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// TestReidentifyOutlastsTheOperationBound: withdrawing what an upstream
// confirmed rewrites every link of its repositories, which on a large
// cache takes longer than one operation's bound. It completes rather than
// failing as if the database had stopped answering (at every start, as
// the cache only grows).
func TestReidentifyOutlastsTheOperationBound(t *testing.T) {
	t.Parallel()
	const bound = 50 * time.Millisecond
	dsn := pgtest.DSN(t)
	s, err := Open(t.Context(), Options{DSN: dsn, OpTimeout: bound})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ctx := t.Context()
	if _, err := s.Reidentify(ctx, map[string]string{"hub": "https://a.example"}); err != nil {
		t.Fatal(err)
	}
	const links = 100_000
	c := testConn(t, dsn)
	exec(t, c, `INSERT INTO airlock_meta_blob_links (repo, digest, flags, size)
		SELECT 'hub/r' || (i % 100), 'sha256:' || lpad(to_hex(i), 64, '0'), $1, i FROM generate_series(1, $2) i`,
		int16(metadata.Confirmed|metadata.Admitted), links)
	start := time.Now()
	changed, err := s.Reidentify(ctx, map[string]string{"hub": "https://b.example"})
	took := time.Since(start)
	if err != nil {
		t.Fatalf("Reidentify over %d links (%v): %v", links, took.Round(time.Millisecond), err)
	}
	if len(changed) != 1 || changed[0] != "hub" {
		t.Fatalf("Reidentify: changed %q; want [hub]", changed)
	}
	var still int
	if err := c.QueryRow(ctx, "SELECT count(*) FROM airlock_meta_blob_links WHERE flags & $1::smallint <> 0",
		int16(metadata.Confirmed)).Scan(&still); err != nil {
		t.Fatal(err)
	}
	if still != 0 {
		t.Errorf("%d links still confirmed after the upstream changed", still)
	}
	if took < bound {
		t.Logf("the withdrawal took %v, under the %v bound: this run proves nothing", took, bound)
	}
}
