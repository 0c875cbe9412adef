package postgres

import (
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/airlock-registry/airlock/internal/pgtest"
	"github.com/airlock-registry/airlock/storage"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// seedImages gives a bbolt store images in several states, an audit log
// with a deletion in it, and an outbox with delivered, retried and
// pending deliveries, all through its public methods.
func seedImages(t *testing.T, db *metadata.DB) {
	t.Helper()
	ctx := t.Context()
	states := []metadata.State{metadata.StatePending, metadata.StateQuarantined, metadata.StateReleased, metadata.StateBlocked, metadata.StateApproved}
	for i := range 12 {
		repo := fmt.Sprintf("%s/team/app%d", []string{"dockerhub", "ghcr", "hcl"}[i%3], i%4)
		d := digest.FromString(fmt.Sprint(i))
		for j := range 1 + i%3 {
			_, err := db.UpdateImage(ctx, repo, d, t0.Add(time.Duration(i*10+j)*time.Second+7), func(img *metadata.Image) (metadata.Change, error) {
				img.State = states[(i+j)%len(states)]
				img.Tags = append(img.Tags, fmt.Sprintf("v%d", j))
				img.Reasons = []metadata.Reason{{Type: metadata.ReasonPolicy, Message: "rule \x00 " + fmt.Sprint(j), Policy: "p"}}
				return metadata.Change{Actor: "policy", Action: "decide", Reason: "because",
					Deliveries: []metadata.Delivery{{Target: fmt.Sprintf("hook%d", j), Event: metadata.Event{Type: "image.changed", Repository: repo, Digest: d}}}}, nil
			})
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := db.RecordPulls(ctx, []metadata.PullStat{{Repository: "dockerhub/team/app0", Digest: digest.FromString("0"), Pulls: 7, Last: t0}}); err != nil {
		t.Fatal(err)
	}
	if err := db.DeleteImage(ctx, "hcl/team/app2", digest.FromString("2"), t0.Add(time.Hour), metadata.Change{Actor: "admin:alice"}); err != nil {
		t.Fatal(err)
	}
	for _, seq := range []uint64{1, 2, 3} {
		if err := db.Delivered(ctx, seq); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.RetryDelivery(ctx, 4, t0.Add(time.Minute), "connection refused"); err != nil {
		t.Fatal(err)
	}
}

// stoppedBbolt seeds a bbolt store, closes it and opens it read-only, as
// the migrate command does with a stopped single node.
func stoppedBbolt(t *testing.T, seed func(*testing.T, *metadata.DB)) *metadata.DB {
	t.Helper()
	return openReadOnly(t, seededBbolt(t, seed))
}

// seededBbolt seeds a bbolt store, closes it and returns its path.
func seededBbolt(t *testing.T, seed func(*testing.T, *metadata.DB)) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "airlock.db")
	db, err := metadata.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	seed(t, db)
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func openReadOnly(t *testing.T, path string) *metadata.DB {
	t.Helper()
	db, err := metadata.OpenReadOnly(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// sameImageStore checks that got answers every ImageStore read as want.
func sameImageStore(t *testing.T, got, want metadata.ImageStore) {
	t.Helper()
	ctx := t.Context()
	for _, q := range []metadata.ImageQuery{{Limit: 5}, {Upstream: "ghcr", Limit: 2}, {State: metadata.StateBlocked}} {
		var pages [2][]metadata.ImagePage
		for i, s := range []metadata.ImageStore{got, want} {
			q := q
			for {
				page, err := s.Images(ctx, q)
				if err != nil {
					t.Fatal(err)
				}
				pages[i] = append(pages[i], page)
				if page.Next == "" {
					break
				}
				q.After = page.Next
			}
		}
		if !reflect.DeepEqual(pages[0], pages[1]) {
			t.Errorf("Images(%+v) pages differ:\n got %+v\nwant %+v", q, pages[0], pages[1])
		}
	}
	gotAudit, err1 := got.Audit(ctx, 0, 1000)
	wantAudit, err2 := want.Audit(ctx, 0, 1000)
	if err1 != nil || err2 != nil || len(wantAudit) == 0 || !reflect.DeepEqual(gotAudit, wantAudit) {
		t.Errorf("audit logs differ (%v, %v):\n got %+v\nwant %+v", err1, err2, gotAudit, wantAudit)
	}
	gotCheck, err1 := got.VerifyAudit(ctx)
	wantCheck, err2 := want.VerifyAudit(ctx)
	if err1 != nil || err2 != nil || gotCheck != wantCheck {
		t.Errorf("VerifyAudit = %+v, %v; the bbolt store's %+v, %v", gotCheck, err1, wantCheck, err2)
	}
	far := t0.Add(24 * time.Hour)
	gotDue, err1 := got.DueDeliveries(ctx, far, 1000)
	wantDue, err2 := want.DueDeliveries(ctx, far, 1000)
	if err1 != nil || err2 != nil || len(wantDue) == 0 || !reflect.DeepEqual(gotDue, wantDue) {
		t.Errorf("outboxes differ (%v, %v):\n got %+v\nwant %+v", err1, err2, gotDue, wantDue)
	}
}

// TestImportImages imports a bbolt store's images, audit log and outbox
// and checks that the PostgreSQL store answers as the bbolt one does, and
// that new changes continue the chain and the event IDs.
func TestImportImages(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	src := stoppedBbolt(t, seedImages)
	dsn := pgtest.DSN(t)
	s := openStore(t, dsn)
	stats, err := s.Import(ctx, src)
	if err != nil {
		t.Fatalf("Import: %v", err)
	}
	if stats.StoreID != src.ID() || s.ID() != src.ID() {
		t.Errorf("identity after import: stats %q, store %q; want the bbolt store's %q", stats.StoreID, s.ID(), src.ID())
	}
	if stats.Images != 11 || stats.AuditRecords != 25 || stats.Deliveries != 21 || stats.OutboxSeq != 24 || !stats.Audit.OK {
		t.Errorf("stats = %+v; want 11 images, 25 audit records, 21 deliveries, outbox seq 24, a verified log", stats)
	}
	sameImageStore(t, s, src)

	// Another replica started afterwards carries the identity on too.
	other := openStore(t, dsn)
	if other.ID() != src.ID() {
		t.Errorf("a replica opened after the import has identity %q, want %q", other.ID(), src.ID())
	}
	img, err := other.UpdateImage(ctx, "hcl/team/app2", digest.FromString("2"), t0.Add(2*time.Hour), func(img *metadata.Image) (metadata.Change, error) {
		img.State = metadata.StateApproved
		return metadata.Change{Actor: "policy", Action: "decide", Deliveries: []metadata.Delivery{{Target: "hook0"}}}, nil
	})
	if err != nil || !img.FirstSeen.Equal(t0.Add(2*time.Hour)) {
		t.Fatalf("UpdateImage after the import = %+v, %v", img, err)
	}
	recs, err := s.Audit(ctx, uint64(stats.AuditRecords), 10)
	if err != nil || len(recs) != 1 || recs[0].Seq != 26 || recs[0].Prev != stats.Audit.Head {
		t.Errorf("the first record after the import = %+v, %v; want seq 26 chained to the imported head", recs, err)
	}
	if check, err := s.VerifyAudit(ctx); err != nil || !check.OK || check.Records != 26 {
		t.Errorf("VerifyAudit after a new change = %+v, %v", check, err)
	}
	ds, err := s.DueDeliveries(ctx, t0.Add(3*time.Hour), 1000)
	if err != nil {
		t.Fatal(err)
	}
	last := ds[len(ds)-1]
	if last.Seq != 25 || last.Event.ID != src.ID()+"-25" {
		t.Errorf("the first delivery after the import = seq %d, ID %q; want 25 and %q", last.Seq, last.Event.ID, src.ID()+"-25")
	}
}

// TestImportCopiesABrokenChainAsIs checks that an audit log tampered with
// in the bbolt file is imported as it is, and found broken at the same
// record: an import must not launder a tampered log.
func TestImportCopiesABrokenChainAsIs(t *testing.T) {
	t.Parallel()
	path := seededBbolt(t, seedImages)
	bdb, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = bdb.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("audit"))
		key := binary.BigEndian.AppendUint64(nil, 5)
		return b.Put(key, []byte(strings.Replace(string(b.Get(key)), `"actor":"policy"`, `"actor":"mallory"`, 1)))
	})
	if cerr := bdb.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	src := openReadOnly(t, path)
	s := openStore(t, pgtest.DSN(t))
	stats, err := s.Import(t.Context(), src)
	if err != nil {
		t.Fatal(err)
	}
	if stats.Audit.OK || stats.Audit.BrokenAt != 5 || !strings.Contains(stats.Audit.Problem, "record 5 was edited") {
		t.Errorf("the imported log checks as %+v; want broken at the edited record 5", stats.Audit)
	}
	if check, err := s.VerifyAudit(t.Context()); err != nil || check != stats.Audit {
		t.Errorf("VerifyAudit after the import = %+v, %v; want %+v", check, err, stats.Audit)
	}
}

// TestImportRefusesAStoreInUse checks that a store holding anything is
// refused, with what it holds, and left as it was.
func TestImportRefusesAStoreInUse(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		prepare func(t *testing.T, s *Store)
		want    string
	}{
		{"an image and its audit record", func(t *testing.T, s *Store) {
			_, err := s.UpdateImage(t.Context(), "a/b", digest.FromString("b"), t0, func(img *metadata.Image) (metadata.Change, error) {
				img.State = metadata.StateApproved
				return metadata.Change{}, nil
			})
			if err != nil {
				t.Fatal(err)
			}
		}, "airlock_meta_audit holds rows"},
		{"an image alone", func(t *testing.T, s *Store) {
			if _, err := s.Pool().Exec(t.Context(), "INSERT INTO airlock_meta_images VALUES ('a/b', 'sha256:00', 'approved', '{}')"); err != nil {
				t.Fatal(err)
			}
		}, "airlock_meta_images holds rows"},
		{"an audit log", func(t *testing.T, s *Store) {
			if _, err := s.Pool().Exec(t.Context(), "UPDATE airlock_meta_audit_head SET seq = 3"); err != nil {
				t.Fatal(err)
			}
		}, "its audit head is record 3"},
		{"a used outbox", func(t *testing.T, s *Store) {
			if _, err := s.Pool().Exec(t.Context(), "SELECT nextval('airlock_meta_outbox_seq')"); err != nil {
				t.Fatal(err)
			}
		}, "its outbox has handed out seqs"},
		{"an earlier import", func(t *testing.T, s *Store) {
			src := stoppedBbolt(t, seedImages)
			if _, err := s.Import(t.Context(), src); err != nil {
				t.Fatal(err)
			}
		}, "holds rows"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			src := stoppedBbolt(t, seedImages)
			s := openStore(t, pgtest.DSN(t))
			c.prepare(t, s)
			id := s.ID()
			_, err := s.Import(t.Context(), src)
			if err == nil || !strings.Contains(err.Error(), "the PostgreSQL store is not empty") || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Import into a store with %s = %v; want it refused saying %q", c.name, err, c.want)
			}
			if s.ID() != id {
				t.Errorf("a refused import changed the store's identity")
			}
		})
	}
}

// contentOf names what seedContent writes, for the reads that compare.
type contentOf struct {
	repos     []string
	tags      map[string][]string // repo -> tags
	manifests []digest.Digest
	blobs     []digest.Digest
}

// seedContent gives a bbolt store tags, manifests with confirmed and
// admitted links, blob links in several repositories, access times and an
// upstream identity, through its public methods.
func seedContent(t *testing.T, db *metadata.DB) contentOf {
	t.Helper()
	ctx := t.Context()
	c := contentOf{tags: map[string][]string{}}
	if _, err := db.Reidentify(ctx, map[string]string{"dockerhub": "https://registry-1.docker.io", "ghcr": "https://ghcr.io"}); err != nil {
		t.Fatal(err)
	}
	for i, repo := range []string{"dockerhub/library/nginx", "dockerhub/library/redis", "ghcr/acme/api"} {
		c.repos = append(c.repos, repo)
		body := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","n":%d}`, i)
		m := metadata.ManifestRecord{Digest: digest.FromString(body), MediaType: "application/vnd.oci.image.manifest.v1+json", Body: []byte(body)}
		layer, shared := digest.FromString(fmt.Sprint("layer", i)), digest.FromString("shared layer")
		c.manifests = append(c.manifests, m.Digest)
		c.blobs = append(c.blobs, layer)
		flags := metadata.Confirmed
		if i != 1 {
			flags |= metadata.Admitted
		}
		err := db.PutManifest(ctx, repo, m, metadata.Link{Flags: flags, MediaType: m.MediaType},
			metadata.BlobLink{Digest: layer, Size: int64(1000 + i)}, metadata.BlobLink{Digest: shared, Size: 77})
		if err != nil {
			t.Fatal(err)
		}
		if err := db.LinkBlobs(ctx, repo, metadata.BlobLink{Digest: layer, Size: int64(1000 + i), Flags: metadata.Confirmed, UpstreamSize: true}); err != nil {
			t.Fatal(err)
		}
		for j, tag := range []string{"latest", fmt.Sprint("1.", i)} {
			rec := metadata.TagRecord{Digest: m.Digest, MediaType: m.MediaType, Size: int64(len(body)), Resolved: t0.Add(time.Duration(j) * time.Minute)}
			if err := db.PutTag(ctx, repo, tag, rec); err != nil {
				t.Fatal(err)
			}
			c.tags[repo] = append(c.tags[repo], tag)
		}
		db.Touch(repo, m.Digest)
		db.Touch(repo, layer)
		db.Touch(repo, shared)
	}
	c.blobs = append(c.blobs, digest.FromString("shared layer"))
	return c
}

// TestImportContent imports a bbolt store holding content and images and
// checks, through the Store's public methods, that PostgreSQL answers
// every read as the bbolt store does, and that the upstream identities
// came along (the same identities withdraw nothing, another one does).
func TestImportContent(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	var c contentOf
	src := stoppedBbolt(t, func(t *testing.T, db *metadata.DB) {
		c = seedContent(t, db)
		seedImages(t, db)
	})
	dsn := pgtest.DSN(t)
	importer := openStore(t, dsn)
	stats, err := importer.Import(ctx, src)
	if err != nil {
		t.Fatalf("Import: %v", err)
	}
	if stats.Upstreams != 2 || stats.Tags != 6 || stats.Manifests != 3 || stats.ManifestLinks != 3 ||
		stats.BlobLinks != 5 || stats.AccessTimes != 9 || stats.LastUses != 7 || stats.Images != 11 {
		t.Errorf("stats = %+v; want 2 upstreams, 6 tags, 3 manifests, 3 manifest links, 5 blob links (redis admitted nothing), 9 access times, 7 last uses, 11 images", stats)
	}
	// A replica started on the imported database, its cache empty.
	s := openStore(t, dsn)
	sameImageStore(t, s, src)

	same := func(what string, got, want any, gotErr, wantErr error) {
		t.Helper()
		if gotErr != nil || wantErr != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("%s = %+v, %v; the bbolt store answers %+v, %v", what, got, gotErr, want, wantErr)
		}
	}
	sameTime := func(what string, got, want time.Time, precision time.Duration, gotErr, wantErr error) {
		t.Helper()
		if gotErr != nil || wantErr != nil || !got.Equal(want.Truncate(precision)) {
			t.Errorf("%s = %v, %v; the bbolt store answers %v, %v", what, got, gotErr, want, wantErr)
		}
	}
	for _, repo := range c.repos {
		got, err1 := s.Tags(ctx, repo)
		want, err2 := src.Tags(ctx, repo)
		same("Tags("+repo+")", got, want, err1, err2)
		for _, tag := range c.tags[repo] {
			got, err1 := s.Tag(ctx, repo, tag)
			want, err2 := src.Tag(ctx, repo, tag)
			// PostgreSQL keeps a tag's resolution time to the microsecond.
			sameTime("Tag("+repo+":"+tag+").Resolved", got.Resolved, want.Resolved, time.Microsecond, err1, err2)
			got.Resolved, want.Resolved = time.Time{}, time.Time{}
			same("Tag("+repo+":"+tag+")", got, want, err1, err2)
		}
		gotLinks, err1 := s.ManifestLinks(ctx, repo)
		wantLinks, err2 := src.ManifestLinks(ctx, repo)
		same("ManifestLinks("+repo+")", gotLinks, wantLinks, err1, err2)
		for _, d := range c.manifests {
			gotRec, gotLink, err1 := s.RepoManifest(ctx, repo, d)
			wantRec, wantLink, err2 := src.RepoManifest(ctx, repo, d)
			if (err1 == nil) != (err2 == nil) || !reflect.DeepEqual(gotRec, wantRec) || gotLink != wantLink {
				t.Errorf("RepoManifest(%s, %s) = %+v, %+v, %v; the bbolt store answers %+v, %+v, %v", repo, d, gotRec, gotLink, err1, wantRec, wantLink, err2)
			}
		}
		for _, d := range append(c.blobs, c.manifests...) {
			gotLink, err1 := s.BlobLink(ctx, repo, d)
			wantLink, err2 := src.BlobLink(ctx, repo, d)
			if (err1 == nil) != (err2 == nil) || gotLink != wantLink {
				t.Errorf("BlobLink(%s, %s) = %+v, %v; the bbolt store answers %+v, %v", repo, d, gotLink, err1, wantLink, err2)
			}
			gotAt, err1 := s.Accessed(ctx, repo, d)
			wantAt, err2 := src.Accessed(ctx, repo, d)
			if (err1 == nil) != (err2 == nil) || !gotAt.Equal(wantAt) {
				t.Errorf("Accessed(%s, %s) = %v, %v; the bbolt store answers %v, %v", repo, d, gotAt, err1, wantAt, err2)
			}
		}
	}
	for _, d := range append(c.blobs, c.manifests...) {
		got, err1 := s.Manifest(ctx, d)
		want, err2 := src.Manifest(ctx, d)
		if (err1 == nil) != (err2 == nil) || !reflect.DeepEqual(got, want) {
			t.Errorf("Manifest(%s) = %+v, %v; the bbolt store answers %+v, %v", d, got, err1, want, err2)
		}
		gotAt, err1 := s.LastUse(ctx, d)
		wantAt, err2 := src.LastUse(ctx, d)
		sameTime("LastUse("+d.String()+")", gotAt, wantAt, time.Nanosecond, err1, err2)
	}
	changed, err := s.Reidentify(ctx, map[string]string{"dockerhub": "https://registry-1.docker.io", "ghcr": "https://ghcr.example"})
	if err != nil || len(changed) != 1 || changed[0] != "ghcr" {
		t.Errorf("Reidentify after the import = %v, %v; want only ghcr, whose identity changed, withdrawn", changed, err)
	}
}

// TestImportMoreThanABatch imports with batches smaller than each kind's
// records, so that batches are cut within a kind, one ends exactly at a
// kind's end, and the last, partial one is sent too.
func TestImportMoreThanABatch(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		batch int
	}{
		{"one row", 1},
		{"seven rows", 7},
		{"the images exactly", 11},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			src := stoppedBbolt(t, seedImages)
			s := openStore(t, pgtest.DSN(t))
			stats, err := s.importBatched(t.Context(), src, c.batch)
			if err != nil {
				t.Fatal(err)
			}
			if stats.Images != 11 || stats.AuditRecords != 25 || stats.Deliveries != 21 {
				t.Errorf("stats = %+v; want 11 images, 25 audit records, 21 deliveries", stats)
			}
			sameImageStore(t, s, src)
		})
	}
}

// TestImportDropsRememberedMisses: a store asked for a tag before the
// import remembers that it had none; the import writes the tag without
// announcing it, so the store must forget what it read before, or the
// imported tag stays missing for as long as the process runs.
func TestImportDropsRememberedMisses(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	var c contentOf
	src := stoppedBbolt(t, func(t *testing.T, db *metadata.DB) { c = seedContent(t, db) })
	dsn := pgtest.DSN(t)
	importer := openStore(t, dsn)
	settled(t, importer, testConn(t, dsn))
	repo, tag := c.repos[0], c.tags[c.repos[0]][0]
	if _, err := importer.Tag(ctx, repo, tag); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("tag %s:%s before the import: %v; want not found", repo, tag, err)
	}
	if _, err := importer.Import(ctx, src); err != nil {
		t.Fatalf("Import: %v", err)
	}
	want, err := src.Tag(ctx, repo, tag)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := importer.Tag(ctx, repo, tag); err != nil || got.Digest != want.Digest {
		t.Errorf("tag %s:%s after the import = %+v, %v; want %s", repo, tag, got, err, want.Digest)
	}
}
