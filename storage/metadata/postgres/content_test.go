package postgres

import (
	"errors"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/internal/pgtest"
	"github.com/airlock-registry/airlock/storage"
	"github.com/airlock-registry/airlock/storage/evict"
	"github.com/airlock-registry/airlock/storage/metadata/metadatatest"
)

// openTest opens a Store on a new database, closed when t ends.
func openTest(t *testing.T, dsn string, staleness time.Duration) *Store {
	t.Helper()
	s, err := Open(t.Context(), Options{DSN: dsn, Staleness: staleness})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func TestContentIndex(t *testing.T) {
	t.Parallel()
	metadatatest.RunContentIndex(t, func(t *testing.T) metadatatest.ContentIndex {
		return openTest(t, pgtest.DSN(t), 0)
	})
}

// The interfaces the gateway puts the store behind.
var (
	_ metadatatest.ContentIndex = (*Store)(nil)
	_ evict.Uses                = (*Store)(nil)
	_ evict.Index               = (*Store)(nil)
)

// TestLastUseMergedAcrossReplicas: access times written by several
// replicas keep the latest, whichever writes last, so that eviction on
// one replica sees the uses on all.
func TestLastUseMergedAcrossReplicas(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DSN(t)
	a, b := openTest(t, dsn, 0), openTest(t, dsn, 0)
	ctx := t.Context()
	const repo = "hub/library/app"
	d, onlyA := digest.FromString("layer"), digest.FromString("layer used through a only")
	b.Touch(repo, d)
	time.Sleep(2 * time.Millisecond)
	a.Touch(repo, d)
	a.Touch("quay/app", onlyA)
	later, err := a.LastUse(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	// The later use is written first, the earlier one after it.
	for _, s := range []*Store{a, b} {
		if err := s.flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	checks := []struct {
		name string
		got  func() (time.Time, error)
		want time.Time
	}{
		{"LastUse through b", func() (time.Time, error) { return b.LastUse(ctx, d) }, later},
		{"Accessed through b", func() (time.Time, error) { return b.Accessed(ctx, repo, d) }, later},
		{"LastUse through a", func() (time.Time, error) { return a.LastUse(ctx, d) }, later},
		{"LastUse through b of what only a used", func() (time.Time, error) { return b.LastUse(ctx, onlyA) }, later},
	}
	for _, c := range checks {
		got, err := c.got()
		if err != nil || got.Before(c.want) {
			t.Errorf("%s = %v, %v; want %v or later", c.name, got, err, c.want)
		}
	}
	if got, _ := b.LastUse(ctx, d); !got.Equal(later) {
		t.Errorf("b's earlier use replaced a's later one: %v, want %v", got, later)
	}
}

// TestTouchWrittenOnClose: Close writes what the background writer has not
// yet, and a store opened later finds it.
func TestTouchWrittenOnClose(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DSN(t)
	s, err := Open(t.Context(), Options{DSN: dsn})
	if err != nil {
		t.Fatal(err)
	}
	d := digest.FromString("layer")
	s.Touch("hub/app", d)
	at, err := s.Accessed(t.Context(), "hub/app", d)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s.Touch("hub/app", digest.FromString("after close")) // ignored, not a panic
	again := openTest(t, dsn, 0)
	for name, get := range map[string]func() (time.Time, error){
		"Accessed": func() (time.Time, error) { return again.Accessed(t.Context(), "hub/app", d) },
		"LastUse":  func() (time.Time, error) { return again.LastUse(t.Context(), d) },
	} {
		if got, err := get(); err != nil || !got.Equal(at) {
			t.Errorf("%s after reopening = %v, %v; want %v", name, got, err, at)
		}
	}
	if _, err := again.LastUse(t.Context(), digest.FromString("after close")); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("a touch after Close was recorded: %v", err)
	}
}

// TestDiskSize: the index is not on the cache volume, so it takes none of
// the evictor's budget.
func TestDiskSize(t *testing.T) {
	t.Parallel()
	s := openTest(t, pgtest.DSN(t), 0)
	if n, err := s.DiskSize(); n != 0 || err != nil {
		t.Errorf("DiskSize = %d, %v; want 0", n, err)
	}
}
