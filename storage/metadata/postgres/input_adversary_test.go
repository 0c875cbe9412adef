package postgres

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/internal/pgtest"
	"github.com/airlock-registry/airlock/storage"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// noDriverWords says err is the store's own refusal, not PostgreSQL's
// message passed through.
func noDriverWords(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: accepted; want a refusal", what)
	}
	for _, w := range []string{"SQLSTATE", "ERROR:", "invalid byte sequence", "index row", "payload string too long"} {
		if strings.Contains(err.Error(), w) {
			t.Fatalf("%s: %v: PostgreSQL's own message reached the caller; want the store to refuse it first", what, err)
		}
	}
}

// TestAdversaryNamesPostgreSQLCannotHold: names the bbolt index keeps but
// PostgreSQL's text cannot (invalid UTF-8), or that overflow an index row
// or a notification's payload (8000 bytes), are refused by the store with
// a message naming the problem, before any statement runs, on every write
// that takes a name.
func TestAdversaryNamesPostgreSQLCannotHold(t *testing.T) {
	t.Parallel()
	s := openTest(t, pgtest.DSN(t), 0)
	ctx := t.Context()
	d := digest.FromString("x")
	long := "hub/" + strings.Repeat("a", 9000)
	m := manifestOf("manifest")
	for _, c := range []struct {
		name, repo, tag, says string
	}{
		{"invalid UTF-8 repository", "hub/\xff\xfe", "latest", "not valid UTF-8"},
		{"invalid UTF-8 tag", "hub/app", "v\xc3", "not valid UTF-8"},
		{"long repository", long, "latest", "longer than"},
		{"long tag", "hub/app", strings.Repeat("t", 9000), "longer than"},
	} {
		t.Run(c.name, func(t *testing.T) {
			writes := map[string]func() error{
				"PutTag": func() error {
					return s.PutTag(ctx, c.repo, c.tag, metadata.TagRecord{Digest: d, Resolved: t0})
				},
				"LinkBlobs":    func() error { return s.LinkBlobs(ctx, c.repo, metadata.BlobLink{Digest: d, Size: 1}) },
				"PutManifest":  func() error { return s.PutManifest(ctx, c.repo, m, metadata.Link{Flags: metadata.Admitted}) },
				"LinkManifest": func() error { return s.LinkManifest(ctx, c.repo, d, metadata.Link{}) },
				"UpdateImage": func() error {
					return errOf(s.UpdateImage(ctx, c.repo, d, t0, func(img *metadata.Image) (metadata.Change, error) {
						img.State = metadata.StatePending
						return metadata.Change{Action: "admit"}, nil
					}))
				},
				"Reidentify": func() error {
					return errOf(s.Reidentify(ctx, map[string]string{strings.TrimPrefix(c.repo, "hub/"): "https://x"}))
				},
			}
			if c.tag != "latest" {
				writes = map[string]func() error{"PutTag": writes["PutTag"]}
			}
			for what, write := range writes {
				err := write()
				noDriverWords(t, what, err)
				if !strings.Contains(err.Error(), c.says) && what != "Reidentify" {
					t.Errorf("%s: %v; want it to say %q", what, err, c.says)
				}
			}
			// Reads of such a name find nothing rather than fail with the
			// driver's words.
			if _, err := s.Tag(ctx, c.repo, c.tag); err == nil {
				t.Error("Tag: found something")
			} else {
				noDriverWords(t, "Tag", err)
			}
		})
	}
	check, err := s.VerifyAudit(ctx)
	if err != nil || !check.OK || check.Records != 0 {
		t.Fatalf("VerifyAudit = %+v, %v; want an empty, intact log: a refused write left a record", check, err)
	}
}

// TestAdversaryHostileUpstreamText: what an upstream sends (a media type
// from a manifest's JSON, which may decode to a NUL) and what callers
// write into records (reasons, actors, delivery targets with NULs and
// invalid UTF-8) is either stored faithfully or refused by the store with
// its own message; nothing half-written either way.
func TestAdversaryHostileUpstreamText(t *testing.T) {
	t.Parallel()
	s := openTest(t, pgtest.DSN(t), 0)
	ctx := t.Context()
	const repo = "hub/app"
	m := manifestOf("hostile")
	for _, mt := range []string{"application/json\x00", "application/\xff"} {
		bad := m
		bad.MediaType = mt
		err := s.PutManifest(ctx, repo, bad, metadata.Link{Flags: metadata.Admitted}, metadata.BlobLink{Digest: digest.FromString("l"), Size: 1})
		noDriverWords(t, fmt.Sprintf("PutManifest with media type %q", mt), err)
		if _, err := s.ManifestLink(ctx, repo, m.Digest); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("after a refused PutManifest, ManifestLink: %v; want not found", err)
		}
		if _, err := s.BlobLink(ctx, repo, digest.FromString("l")); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("after a refused PutManifest, BlobLink: %v; want not found: half of it was written", err)
		}
		err = s.PutTag(ctx, repo, "latest", metadata.TagRecord{Digest: m.Digest, MediaType: mt, Resolved: t0})
		noDriverWords(t, fmt.Sprintf("PutTag with media type %q", mt), err)
	}

	// A delivery target is a column of its own.
	d := digest.FromString("image")
	if _, err := s.UpdateImage(ctx, repo, d, t0, func(img *metadata.Image) (metadata.Change, error) {
		img.State = metadata.StateBlocked
		return metadata.Change{Action: "block"}, nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{"hook\x00", "hook\xff"} {
		_, err := s.UpdateImage(ctx, repo, d, t0, func(img *metadata.Image) (metadata.Change, error) {
			img.State = metadata.StateReleased
			return metadata.Change{Action: "release", Deliveries: []metadata.Delivery{{Target: target}}}, nil
		})
		noDriverWords(t, fmt.Sprintf("a delivery to %q", target), err)
	}
	if got, _ := s.Image(ctx, repo, d); got.State != metadata.StateBlocked {
		t.Errorf("state %s after refused updates; want blocked still", got.State)
	}
	if check, _ := s.VerifyAudit(ctx); check.Records != 1 {
		t.Errorf("%d audit records after refused updates; want 1", check.Records)
	}
}

// TestAdversaryManifestAtTheLimit: a 4 MiB manifest is stored and read
// back whole through a replica's cache; one byte more is refused.
func TestAdversaryManifestAtTheLimit(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DSN(t)
	a, b := openTest(t, dsn, 0), openTest(t, dsn, 0)
	ctx := t.Context()
	body := []byte(strings.Repeat("m", metadata.MaxManifestSize))
	m := metadata.ManifestRecord{Digest: digest.FromBytes(body), MediaType: "application/json", Body: body}
	if err := a.PutManifest(ctx, "hub/big", m, metadata.Link{Flags: metadata.Confirmed}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		got, l, err := b.RepoManifest(ctx, "hub/big", m.Digest)
		if err != nil || len(got.Body) != len(body) || !l.Has(metadata.Confirmed) {
			t.Fatalf("RepoManifest: %d bytes, %+v, %v", len(got.Body), l, err)
		}
		got.Body[0] = 'X' // callers own what they get
	}
	if got, _ := b.Manifest(ctx, m.Digest); got.Body[0] != 'm' {
		t.Fatal("a caller's change to a returned body reached the cache")
	}
	over := append(body, 'm')
	err := a.PutManifest(ctx, "hub/big", metadata.ManifestRecord{Digest: digest.FromBytes(over), Body: over}, metadata.Link{})
	if err == nil || !strings.Contains(err.Error(), "over the") {
		t.Fatalf("PutManifest of 4 MiB + 1: %v; want it refused as too large", err)
	}
}

// TestAdversaryManyTags: a repository with tens of thousands of tags is
// listed whole and in order.
func TestAdversaryManyTags(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DSN(t)
	s := openTest(t, dsn, 0)
	ctx := t.Context()
	const n = 20000
	exec(t, testConn(t, dsn), `INSERT INTO airlock_meta_tags (repo, tag, digest, resolved)
		SELECT 'hub/many', 't' || lpad(i::text, 6, '0'), $1, now() FROM generate_series(1, $2) i`, string(digest.FromString("d")), n)
	tags, err := s.Tags(ctx, "hub/many")
	if err != nil || len(tags) != n || tags[0] != "t000001" || tags[n-1] != fmt.Sprintf("t%06d", n) {
		t.Fatalf("Tags: %d tags, %v", len(tags), err)
	}
}

// TestAdversaryTouchCannotPoisonTheBatch: access times are written in
// batches; one touch of a name PostgreSQL refuses must not fail every
// batch after it (they are kept and retried) and so stop recording the
// uses of everything else.
func TestAdversaryTouchCannotPoisonTheBatch(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DSN(t)
	s, err := Open(t.Context(), Options{DSN: dsn})
	if err != nil {
		t.Fatal(err)
	}
	d := digest.FromString("layer")
	s.Touch("hub/\xff", d)
	s.Touch("hub/"+strings.Repeat("r", 5000), d)
	s.Touch("hub/app", d)
	if err := s.Close(); err != nil {
		t.Fatalf("Close, writing the touches: %v", err)
	}
	s = openTest(t, dsn, 0)
	if _, err := s.Accessed(t.Context(), "hub/app", d); err != nil {
		t.Fatalf("Accessed after Close: %v; want the touch written", err)
	}
}

// TestAdversaryForgedCursor: a listing's cursor comes back from the
// client; one forged to name a repository PostgreSQL cannot hold is
// refused as a cursor the store did not return.
func TestAdversaryForgedCursor(t *testing.T) {
	t.Parallel()
	s := openTest(t, pgtest.DSN(t), 0)
	for _, repo := range []string{"hub/\xff", "hub/" + strings.Repeat("r", 3000)} {
		cursor := metadata.ImageCursor(repo, digest.FromString("x"))
		_, err := s.Images(t.Context(), metadata.ImageQuery{After: cursor})
		noDriverWords(t, "Images after a forged cursor", err)
		if !strings.Contains(err.Error(), "not a cursor this store returned") {
			t.Errorf("Images after a forged cursor: %v; want it called not this store's", err)
		}
	}
	for _, q := range []metadata.ImageQuery{{Upstream: "hub\xff"}, {Repository: "hub/\xff"}} {
		_, err := s.Images(t.Context(), q)
		noDriverWords(t, fmt.Sprintf("Images(%+v)", q), err)
	}
}

// TestAdversaryImportNamesPostgreSQLCannotHold: the bbolt index keeps
// names that are not UTF-8; importing one is refused with a message naming
// the record, and nothing is imported.
func TestAdversaryImportNamesPostgreSQLCannotHold(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name string
		seed func(t *testing.T, db *metadata.DB)
		says string
	}{
		{"tag", func(t *testing.T, db *metadata.DB) {
			if err := db.PutTag(t.Context(), "hub/app", "v\xff", metadata.TagRecord{Digest: digest.FromString("m"), Resolved: t0}); err != nil {
				t.Fatal(err)
			}
		}, `tag "v\xff"`},
		{"blob link", func(t *testing.T, db *metadata.DB) {
			if err := db.LinkBlobs(t.Context(), "hub/\xfe", metadata.BlobLink{Digest: digest.FromString("b"), Size: 1}); err != nil {
				t.Fatal(err)
			}
		}, `"hub/\xfe"`},
		{"delivery target", func(t *testing.T, db *metadata.DB) {
			_, err := db.UpdateImage(t.Context(), "hub/app", digest.FromString("i"), t0, func(img *metadata.Image) (metadata.Change, error) {
				img.State = metadata.StateApproved
				return metadata.Change{Deliveries: []metadata.Delivery{{Target: "hook\x00"}}}, nil
			})
			if err != nil {
				t.Fatal(err)
			}
		}, `delivery 25's target "hook\x00"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			src := stoppedBbolt(t, func(t *testing.T, db *metadata.DB) {
				seedImages(t, db)
				c.seed(t, db)
			})
			s := openStore(t, pgtest.DSN(t))
			_, err := s.Import(t.Context(), src)
			noDriverWords(t, "Import", err)
			if !strings.Contains(err.Error(), c.says) || !strings.Contains(err.Error(), "PostgreSQL cannot store") {
				t.Fatalf("Import: %v; want it to name %s and say PostgreSQL cannot store it", err, c.says)
			}
			// Nothing went in: a clean index imports afterwards.
			if _, err := s.Import(t.Context(), stoppedBbolt(t, seedImages)); err != nil {
				t.Fatalf("Import of a clean index after a refused one: %v", err)
			}
		})
	}
}

// TestAdversaryPullsOfAnUnstorableName: a batch of pull counts with one
// name PostgreSQL cannot hold still counts the others' pulls (no image can
// be stored under that name, so it is skipped like any image not stored).
func TestAdversaryPullsOfAnUnstorableName(t *testing.T) {
	t.Parallel()
	s := openTest(t, pgtest.DSN(t), 0)
	ctx := t.Context()
	d := digest.FromString("app")
	if _, err := s.UpdateImage(ctx, "hub/app", d, t0, func(img *metadata.Image) (metadata.Change, error) {
		img.State = metadata.StateApproved
		return metadata.Change{}, nil
	}); err != nil {
		t.Fatal(err)
	}
	err := s.RecordPulls(ctx, []metadata.PullStat{
		{Repository: "hub/\xff", Digest: d, Pulls: 1, Last: t0},
		{Repository: "hub/" + strings.Repeat("r", 2000), Digest: d, Pulls: 1, Last: t0},
		{Repository: "hub/app", Digest: d, Pulls: 2, Last: t0},
	})
	if err != nil {
		t.Fatalf("RecordPulls: %v", err)
	}
	if img, err := s.Image(ctx, "hub/app", d); err != nil || img.Pulls != 2 {
		t.Fatalf("Image = %d pulls, %v; want 2", img.Pulls, err)
	}
}

// TestAdversaryImportWhileAReplicaRuns: an operator imports while a
// replica already runs on the (empty) database; that replica would keep
// the identity it read at its start and send events under it. The import
// is refused until it stops.
func TestAdversaryImportWhileAReplicaRuns(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DSN(t)
	s := openStore(t, dsn)
	running, err := Open(t.Context(), Options{DSN: dsn})
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Import(t.Context(), stoppedBbolt(t, seedImages))
	if err == nil || !strings.Contains(err.Error(), "1 other airlock processes are connected") {
		t.Fatalf("Import beside a running replica: %v; want it refused", err)
	}
	if err := running.Close(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the import once the replica stopped", func() error {
		_, err := s.Import(t.Context(), stoppedBbolt(t, seedImages))
		return err
	})
}

// TestAdversaryNamesAtTheLimit: names of exactly the longest length the
// store keeps, of characters that do not compress, are stored, indexed,
// announced and read back through another replica like any other.
func TestAdversaryNamesAtTheLimit(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DSN(t)
	a, b := openTest(t, dsn, 0), openTest(t, dsn, 0)
	ctx := t.Context()
	noise := func(n int) string {
		var sb strings.Builder
		for i := 0; sb.Len() < n; i++ {
			sb.WriteString(digest.FromString(fmt.Sprint(i)).Encoded())
		}
		return sb.String()[:n]
	}
	repo := "hub/" + noise(maxName-4)
	tag := noise(maxName)
	img := storeImage(t, a, repo, "at the limit")
	if err := a.PutTag(ctx, repo, tag, metadata.TagRecord{Digest: img.m.Digest, Resolved: t0}); err != nil {
		t.Fatalf("PutTag at the limit: %v", err)
	}
	if _, err := a.UpdateImage(ctx, repo, img.m.Digest, t0, func(i *metadata.Image) (metadata.Change, error) {
		i.State = metadata.StateApproved
		return metadata.Change{Action: "approve"}, nil
	}); err != nil {
		t.Fatalf("UpdateImage at the limit: %v", err)
	}
	a.Touch(repo, img.layer)
	if err := pull(b, img); err != nil {
		t.Fatalf("pull through b: %v", err)
	}
	if rec, err := b.Tag(ctx, repo, tag); err != nil || rec.Digest != img.m.Digest {
		t.Fatalf("Tag at the limit: %v, %v", rec.Digest, err)
	}
	if _, err := a.UnlinkImage(ctx, repo, img.m.Digest, []digest.Digest{img.layer}); err != nil {
		t.Fatalf("UnlinkImage at the limit: %v", err)
	}
	eventually(t, time.Second, "the unlink seen through b", func() error {
		if _, err := b.Tag(ctx, repo, tag); !errors.Is(err, storage.ErrNotFound) {
			return fmt.Errorf("Tag: %v", err)
		}
		return nil
	})
}

// TestAdversarySQLSignificantNames: names carrying quotes, semicolons,
// LIKE's wildcards, backslashes and characters outside ASCII are stored
// faithfully, and an upstream listing selects exactly its own (a "%" or
// "_" in a name matches nothing else).
func TestAdversarySQLSignificantNames(t *testing.T) {
	t.Parallel()
	s := openTest(t, pgtest.DSN(t), 0)
	ctx := t.Context()
	repos := []string{
		"hub/o'brien", `hub/"quoted"`, "hub/a;DROP TABLE airlock_meta_tags;--", "hub/100%", "hub/a_b",
		`hub/back\slash`, "hub/snow☃man", "h_b/app", "h%b/app", "hub/ spaced ",
	}
	d := digest.FromString("m")
	for _, repo := range repos {
		if err := s.PutTag(ctx, repo, "t'1", metadata.TagRecord{Digest: d, Resolved: t0}); err != nil {
			t.Fatalf("PutTag(%q): %v", repo, err)
		}
		if _, err := s.UpdateImage(ctx, repo, d, t0, func(img *metadata.Image) (metadata.Change, error) {
			img.State = metadata.StateApproved
			return metadata.Change{}, nil
		}); err != nil {
			t.Fatalf("UpdateImage(%q): %v", repo, err)
		}
	}
	for _, repo := range repos {
		if tags, err := s.Tags(ctx, repo); err != nil || len(tags) != 1 || tags[0] != "t'1" {
			t.Errorf("Tags(%q) = %q, %v", repo, tags, err)
		}
	}
	for upstream, want := range map[string]int{"hub": 8, "h_b": 1, "h%b": 1, "h": 0} {
		page, err := s.Images(ctx, metadata.ImageQuery{Upstream: upstream, Limit: 100})
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Images) != want {
			t.Errorf("Images(upstream %q) = %d images; want %d", upstream, len(page.Images), want)
		}
	}
}
