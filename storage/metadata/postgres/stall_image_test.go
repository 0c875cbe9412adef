package postgres

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/internal/pgtest"
	"github.com/airlock-registry/airlock/storage"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// TestImageReadGivesUp: reading an image state from a database that
// stopped answering without closing its connections fails within the
// store's bound, as every other read does, rather than waiting as long as
// the caller would (an admin's page, a replica following another's
// change).
func TestImageReadGivesUp(t *testing.T) {
	t.Parallel()
	const bound = time.Second
	s, link, direct := openStalling(t, bound)
	ctx := t.Context()
	const repo = "hub/app"
	d := digest.FromString("stalled image")
	// Set up through a store of the default bound: under a loaded disk a
	// commit can take longer than this test's.
	if _, err := openTest(t, direct, 0).UpdateImage(ctx, repo, d, time.Now(), func(img *metadata.Image) (metadata.Change, error) {
		img.State = metadata.StatePending
		return metadata.Change{Action: "scan"}, nil
	}); err != nil {
		t.Fatal(err)
	}
	link.Stall()
	cctx, cancel := context.WithTimeout(ctx, 20*bound)
	defer cancel()
	start := time.Now()
	_, err := s.Image(cctx, repo, d)
	took := time.Since(start)
	if err == nil || errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Image with the database silent: %v; want an error that is not a miss", err)
	}
	if took > 5*bound {
		t.Errorf("Image with the database silent answered after %v; want within about %v", took.Round(time.Millisecond), bound)
	}
}

// TestSilenceFailsFast: once a write has run out of the bound against a
// database that stopped answering, the writes and uncached reads that
// follow fail at once, unavailable, instead of each waiting the bound
// out; after the bound one is let through to try again, and once the
// database answers, writes work again.
func TestSilenceFailsFast(t *testing.T) {
	t.Parallel()
	const bound = 2 * time.Second
	s, link, _ := openStalling(t, bound)
	ctx := t.Context()
	rec := metadata.TagRecord{Digest: digest.FromString("m"), MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 1, Resolved: time.Now()}
	if err := s.PutTag(ctx, "hub/app", "1", rec); err != nil {
		t.Fatal(err)
	}
	link.Stall()
	// What was already on its way (the first write's announcement to the
	// listener) arrives; the write that follows hears nothing.
	time.Sleep(100 * time.Millisecond)
	err := s.PutTag(ctx, "hub/app", "2", rec)
	if !errors.Is(err, metadata.ErrUnavailable) {
		t.Fatalf("a write to a silent database: %v; want ErrUnavailable", err)
	}
	for _, op := range []struct {
		name string
		run  func() error
	}{
		{"a write", func() error { return s.PutTag(ctx, "hub/app", "3", rec) }},
		{"an uncached read", func() error { _, err := s.Tag(ctx, "hub/app", "never-read"); return err }},
	} {
		err := op.run()
		if !errors.Is(err, metadata.ErrUnavailable) || errors.Is(err, storage.ErrNotFound) || !strings.Contains(err.Error(), "has not answered since") {
			t.Errorf("%s while the database is known silent: %v; want an unavailable error at once", op.name, err)
		}
	}
	link.Mend()
	deadline := time.Now().Add(time.Minute)
	for {
		err := s.PutTag(ctx, "hub/app", "4", rec)
		if err == nil {
			break
		}
		if !errors.Is(err, metadata.ErrUnavailable) || time.Now().After(deadline) {
			t.Fatalf("a write once the database answers again: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := s.PutTag(ctx, "hub/app", "5", rec); err != nil {
		t.Fatalf("a write after the database answered: %v", err)
	}
	if got, err := s.Tag(ctx, "hub/app", "4"); err != nil || got.Digest != rec.Digest {
		t.Fatalf("the tag written once the database answered: %+v, %v", got, err)
	}
}

// TestSlowIsNotSilent: a write that runs out of the bound waiting on a row
// lock, while the database keeps answering everything else (the
// listener's heartbeats), is a slow write, not a silent database: the
// writes that follow are not failed at once.
func TestSlowIsNotSilent(t *testing.T) {
	t.Parallel()
	const bound = 1500 * time.Millisecond
	dsn := pgtest.DSN(t)
	// Heartbeats every 500 ms: several are heard while the write waits.
	s, err := Open(t.Context(), Options{DSN: dsn, OpTimeout: bound, Staleness: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ctx := t.Context()
	rec := metadata.TagRecord{Digest: digest.FromString("m"), MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 1, Resolved: time.Now()}
	if err := s.PutTag(ctx, "hub/app", "1", rec); err != nil {
		t.Fatal(err)
	}
	locker, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer locker.Close(context.Background())
	tx, err := locker.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, "SELECT 1 FROM airlock_meta_tags WHERE repo = 'hub/app' AND tag = '1' FOR UPDATE"); err != nil {
		t.Fatal(err)
	}
	if err := s.PutTag(ctx, "hub/app", "1", rec); !errors.Is(err, metadata.ErrUnavailable) {
		t.Fatalf("a write waiting out the bound on a lock: %v; want ErrUnavailable", err)
	}
	if err := s.PutTag(ctx, "hub/app", "2", rec); err != nil {
		t.Errorf("a write after another ran out on a lock, the database answering meanwhile: %v", err)
	}
	if _, err := s.Tag(ctx, "hub/app", "never-written"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("an uncached read after a write ran out on a lock: %v; want a miss", err)
	}
}
