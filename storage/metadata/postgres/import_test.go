package postgres

import (
	"encoding/binary"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/airlock-registry/airlock/internal/pgtest"
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
