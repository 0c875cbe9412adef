package postgres

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/internal/pgtest"
	"github.com/airlock-registry/airlock/storage"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// Attacks on the store as a hostile client, a hostile upstream or an
// unlucky operator would make them. Each test says what it tries and what
// must hold.

// TestAdversaryTagKeysDoNotCollide: "<repo>:<tag>" is ambiguous when a
// repository name holds a colon (the store refuses only NUL), so repo
// "hub/x" tag "a:b" and repo "hub/x:a" tag "b" must not share a cache
// entry: one repository's tag must never answer for another's, and a
// change to either must drop the other's cached answer only if it is the
// same tag.
func TestAdversaryTagKeysDoNotCollide(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DSN(t)
	a, b := openTest(t, dsn, 0), openTest(t, dsn, 0)
	ctx := t.Context()
	one, two := digest.FromString("one"), digest.FromString("two")
	if err := a.PutTag(ctx, "hub/x", "a:b", metadata.TagRecord{Digest: one, Resolved: t0}); err != nil {
		t.Fatal(err)
	}
	conn := testConn(t, dsn)
	settled(t, b, conn)
	for _, s := range []*Store{a, b} {
		if rec, err := s.Tag(ctx, "hub/x", "a:b"); err != nil || rec.Digest != one {
			t.Fatalf("Tag(hub/x, a:b) = %v, %v; want %s", rec.Digest, err, one)
		}
		// Cached now: the other repository's tag must still be a miss.
		if rec, err := s.Tag(ctx, "hub/x:a", "b"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("Tag(hub/x:a, b) = %v, %v; want not found: another repository's tag answered", rec.Digest, err)
		}
	}
	// Both cached; a change to the second must reach b's cache and leave
	// the first alone.
	if err := a.PutTag(ctx, "hub/x:a", "b", metadata.TagRecord{Digest: two, Resolved: t0}); err != nil {
		t.Fatal(err)
	}
	settled(t, b, conn)
	for _, s := range []*Store{a, b} {
		for _, c := range []struct {
			repo, tag string
			want      digest.Digest
		}{{"hub/x", "a:b", one}, {"hub/x:a", "b", two}} {
			eventually(t, 2*time.Second, "tag "+c.repo+" "+c.tag, func() error {
				rec, err := s.Tag(ctx, c.repo, c.tag)
				if err != nil {
					return err
				}
				if rec.Digest != c.want {
					return fmt.Errorf("names %s, want %s", rec.Digest, c.want)
				}
				return nil
			})
		}
	}
}
