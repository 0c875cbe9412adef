package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/internal/pgtest"
	"github.com/airlock-registry/airlock/storage/metadata"
	"github.com/airlock-registry/airlock/storage/metadata/metadatatest"
)

func TestImageStore(t *testing.T) {
	t.Parallel()
	metadatatest.RunImageStore(t, func(t *testing.T) metadata.ImageStore {
		return openStore(t, pgtest.DSN(t))
	})
}

// openStore opens a Store on dsn, closed when t ends.
func openStore(t *testing.T, dsn string) *Store {
	t.Helper()
	s, err := Open(t.Context(), Options{DSN: dsn})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// replicas opens n Stores on one new database, as n replicas would.
func replicas(t *testing.T, n int) []*Store {
	dsn := pgtest.DSN(t)
	stores := make([]*Store, n)
	for i := range stores {
		stores[i] = openStore(t, dsn)
	}
	if stores[0].ID() != stores[n-1].ID() {
		t.Fatalf("replicas of one database have identities %q and %q; want one", stores[0].ID(), stores[n-1].ID())
	}
	return stores
}

// TestReplicasUpdateOneImage has replicas update the same images at once,
// each adding a tag through a read-modify-write: none is lost, the audit
// log has one record per update with seqs from 1 without gaps, and it
// verifies.
func TestReplicasUpdateOneImage(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		images int
	}{
		{"one image", 1},
		{"three images", 3},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			stores := replicas(t, 3)
			const perReplica = 12
			var wg sync.WaitGroup
			errs := make(chan error, len(stores)*perReplica)
			for r, s := range stores {
				wg.Go(func() {
					for i := range perReplica {
						repo := fmt.Sprintf("dockerhub/team/app%d", i%c.images)
						_, err := s.UpdateImage(t.Context(), repo, digest.FromString(repo), t0, func(img *metadata.Image) (metadata.Change, error) {
							img.State = metadata.StateApproved
							img.Tags = append(img.Tags, fmt.Sprintf("r%d-%d", r, i))
							return metadata.Change{Actor: fmt.Sprintf("replica:%d", r), Action: "tag",
								Deliveries: []metadata.Delivery{{Target: "ops", Event: metadata.Event{Type: "image.tagged"}}}}, nil
						})
						if err != nil {
							errs <- err
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			tags := 0
			for i := range c.images {
				repo := fmt.Sprintf("dockerhub/team/app%d", i)
				img, err := stores[2].Image(t.Context(), repo, digest.FromString(repo))
				if err != nil {
					t.Fatal(err)
				}
				tags += len(img.Tags)
			}
			if want := len(stores) * perReplica; tags != want {
				t.Errorf("the images hold %d tags, want %d: updates were lost", tags, want)
			}
			recs, err := stores[1].Audit(t.Context(), 0, 1000)
			if err != nil {
				t.Fatal(err)
			}
			if len(recs) != len(stores)*perReplica {
				t.Fatalf("audit has %d records, want %d", len(recs), len(stores)*perReplica)
			}
			for i, r := range recs {
				if r.Seq != uint64(i+1) {
					t.Fatalf("record %d has seq %d: seqs have gaps", i+1, r.Seq)
				}
			}
			check, err := stores[0].VerifyAudit(t.Context())
			if err != nil || !check.OK || check.Records != uint64(len(recs)) {
				t.Errorf("VerifyAudit = %+v, %v; want OK with %d records", check, err, len(recs))
			}
			ds, err := stores[0].DueDeliveries(t.Context(), t0, 1000)
			if err != nil || len(ds) != len(recs) {
				t.Fatalf("DueDeliveries = %d, %v; want %d", len(ds), err, len(recs))
			}
			ids := map[string]bool{}
			for _, d := range ds {
				if ids[d.Event.ID] || !strings.HasPrefix(d.Event.ID, stores[0].ID()+"-") {
					t.Errorf("event ID %q repeats or lacks the store's identity", d.Event.ID)
				}
				ids[d.Event.ID] = true
			}
		})
	}
}

// TestReplicasCreateOneImage has replicas create the same new image at
// the same moment: one creates it, the others' fn runs again on what it
// wrote, so the image is created once (one audit record from no state).
func TestReplicasCreateOneImage(t *testing.T) {
	t.Parallel()
	stores := replicas(t, 4)
	const repo = "dockerhub/library/nginx"
	d := digest.FromString("nginx")
	start := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, len(stores))
	for r, s := range stores {
		wg.Go(func() {
			<-start
			_, err := s.UpdateImage(t.Context(), repo, d, t0.Add(time.Duration(r)*time.Second), func(img *metadata.Image) (metadata.Change, error) {
				if img.FirstSeen.IsZero() {
					img.State = metadata.StatePending
					return metadata.Change{Actor: fmt.Sprintf("replica:%d", r), Action: "create"}, nil
				}
				img.Tags = append(img.Tags, fmt.Sprintf("seen-by-%d", r))
				return metadata.Change{}, nil
			})
			errs <- err
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	img, err := stores[0].Image(t.Context(), repo, d)
	if err != nil {
		t.Fatal(err)
	}
	if len(img.Tags) != len(stores)-1 {
		t.Errorf("image tags = %v; want one per replica that found it created (%d)", img.Tags, len(stores)-1)
	}
	recs, err := stores[0].Audit(t.Context(), 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].From != metadata.StateNone || recs[0].Action != "create" {
		t.Errorf("audit = %+v; want the one creation", recs)
	}
}

// TestVerifyAuditFindsTampering edits the audit tables behind the store's
// back, each case in its own way, and checks that VerifyAudit names the
// record and the kind of tampering.
func TestVerifyAuditFindsTampering(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		sql      string
		brokenAt uint64
		problem  string
	}{
		{"edited record", `UPDATE airlock_meta_audit SET record = replace(record, '"actor":"policy"', '"actor":"mallory"') WHERE seq = 2`,
			2, "record 2 was edited: its hash does not match its content"},
		{"removed record", `DELETE FROM airlock_meta_audit WHERE seq = 3`,
			3, "record 3 is missing: it was deleted"},
		{"removed tail", `DELETE FROM airlock_meta_audit WHERE seq >= 4`,
			4, "the log ends at record 3 but its head is record 5: records 4 to 5 were deleted"},
		{"moved record", `UPDATE airlock_meta_audit SET seq = 9 WHERE seq = 5`,
			5, "record 5 is stored under seq 9: records were moved or inserted"},
		{"unreadable record", `UPDATE airlock_meta_audit SET record = 'not json' WHERE seq = 1`,
			1, "record 1 cannot be read"},
		{"head reset", `UPDATE airlock_meta_audit_head SET seq = 4`,
			5, "the log holds 5 records but its head is record 4"},
		{"head replaced", `UPDATE airlock_meta_audit_head SET hash = 'sha256:00'`,
			5, "record 5 is not the head the store recorded (sha256:00)"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			s := openStore(t, pgtest.DSN(t))
			states := []metadata.State{metadata.StatePending, metadata.StateQuarantined, metadata.StateReleased, metadata.StateBlocked, metadata.StateApproved}
			for i, st := range states {
				_, err := s.UpdateImage(t.Context(), "hcl/vault", digest.FromString("vault"), t0.Add(time.Duration(i)*time.Second),
					func(img *metadata.Image) (metadata.Change, error) {
						img.State = st
						return metadata.Change{Actor: "policy", Action: "decide"}, nil
					})
				if err != nil {
					t.Fatal(err)
				}
			}
			if check, err := s.VerifyAudit(t.Context()); err != nil || !check.OK || check.Records != 5 {
				t.Fatalf("VerifyAudit before tampering = %+v, %v", check, err)
			}
			if _, err := s.Pool().Exec(t.Context(), c.sql); err != nil {
				t.Fatal(err)
			}
			check, err := s.VerifyAudit(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if check.OK || check.BrokenAt != c.brokenAt || !strings.Contains(check.Problem, c.problem) {
				t.Errorf("VerifyAudit = %+v; want broken at %d with %q", check, c.brokenAt, c.problem)
			}
		})
	}
}

// TestDeliveriesClaimedByOneReplica checks that a target's deliveries read
// by one replica's sender are not handed to another's while the claim
// lasts, and are once it lapses or they are gone.
func TestDeliveriesClaimedByOneReplica(t *testing.T) {
	t.Parallel()
	stores := replicas(t, 2)
	a, b := stores[0], stores[1]
	ctx := t.Context()
	_, err := a.UpdateImage(ctx, "hcl/consul", digest.FromString("consul"), t0, func(img *metadata.Image) (metadata.Change, error) {
		img.State = metadata.StateQuarantined
		return metadata.Change{Actor: "policy", Action: "decide", Deliveries: []metadata.Delivery{
			{Target: "ops", Event: metadata.Event{Type: "image.quarantined"}},
			{Target: "sec", Event: metadata.Event{Type: "image.quarantined"}},
		}}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	targets := func(ds []metadata.Delivery, err error) string {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, d := range ds {
			out = append(out, d.Target)
		}
		return strings.Join(out, ",")
	}
	// a's sender reads only ops (per target bound 1, limit 1).
	if got := targets(a.DueDeliveriesPerTarget(ctx, t0, 1, 1)); got != "ops" {
		t.Fatalf("a's first read = %q, want ops", got)
	}
	if got := targets(b.DueDeliveries(ctx, t0, 100)); got != "sec" {
		t.Errorf("b's read while a holds ops = %q, want sec alone", got)
	}
	if got := targets(a.DueDeliveries(ctx, t0, 100)); got != "ops" {
		t.Errorf("a's read while b holds sec = %q, want ops alone", got)
	}
	// A new delivery to ops stays with a, so ops' events keep their order.
	_, err = b.UpdateImage(ctx, "hcl/consul", digest.FromString("consul"), t0, func(img *metadata.Image) (metadata.Change, error) {
		return metadata.Change{Deliveries: []metadata.Delivery{{Target: "ops", Event: metadata.Event{Type: "scan.failed"}}}}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := targets(b.DueDeliveries(ctx, t0, 100)); got != "sec" {
		t.Errorf("b's read after a new ops event = %q, want sec alone", got)
	}
	// a's claim lapses (its replica stopped reading): b takes ops over.
	if _, err := a.Pool().Exec(ctx, "UPDATE airlock_meta_outbox SET claimed_until = now() - interval '1 second' WHERE target = 'ops'"); err != nil {
		t.Fatal(err)
	}
	if got := targets(b.DueDeliveries(ctx, t0, 100)); got != "ops,sec,ops" {
		t.Errorf("b's read after a's claim lapsed = %q, want ops,sec,ops", got)
	}
	if got := targets(a.DueDeliveries(ctx, t0, 100)); got != "" {
		t.Errorf("a's read while b holds both = %q, want nothing", got)
	}
}

// TestRecordPullsAcrossReplicas flushes pull counts from several replicas
// at once: they add up.
func TestRecordPullsAcrossReplicas(t *testing.T) {
	t.Parallel()
	stores := replicas(t, 3)
	repos := []string{"dockerhub/library/alpine", "dockerhub/library/busybox"}
	for _, repo := range repos {
		_, err := stores[0].UpdateImage(t.Context(), repo, digest.FromString(repo), t0, func(img *metadata.Image) (metadata.Change, error) {
			img.State = metadata.StateApproved
			return metadata.Change{}, nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	const flushes = 10
	var wg sync.WaitGroup
	errs := make(chan error, len(stores)*flushes)
	for r, s := range stores {
		wg.Go(func() {
			for i := range flushes {
				// Opposite orders, so that a store locking rows as given
				// would deadlock.
				stats := []metadata.PullStat{
					{Repository: repos[0], Digest: digest.FromString(repos[0]), Pulls: 1, Last: t0.Add(time.Duration(r*flushes+i) * time.Second)},
					{Repository: repos[1], Digest: digest.FromString(repos[1]), Pulls: 2, Last: t0},
				}
				if r%2 == 1 {
					stats[0], stats[1] = stats[1], stats[0]
				}
				errs <- s.RecordPulls(context.WithoutCancel(t.Context()), stats)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for i, repo := range repos {
		img, err := stores[1].Image(t.Context(), repo, digest.FromString(repo))
		if err != nil {
			t.Fatal(err)
		}
		if want := int64((i + 1) * len(stores) * flushes); img.Pulls != want {
			t.Errorf("%s has %d pulls, want %d", repo, img.Pulls, want)
		}
	}
	img, _ := stores[1].Image(t.Context(), repos[0], digest.FromString(repos[0]))
	if want := t0.Add(time.Duration(len(stores)*flushes-1) * time.Second); !img.LastPulled.Equal(want) {
		t.Errorf("last pulled %v, want the latest of all replicas' %v", img.LastPulled, want)
	}
}

func TestCursorIsBboltsFormat(t *testing.T) {
	t.Parallel()
	s := openStore(t, pgtest.DSN(t))
	for _, repo := range []string{"a/x", "a/y", "a/z"} {
		_, err := s.UpdateImage(t.Context(), repo, digest.FromString(repo), t0, func(img *metadata.Image) (metadata.Change, error) {
			img.State = metadata.StateApproved
			return metadata.Change{}, nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	page, err := s.Images(t.Context(), metadata.ImageQuery{After: metadata.ImageCursor("a/x", digest.FromString("a/x"))})
	if err != nil || len(page.Images) != 2 || page.Images[0].Repository != "a/y" {
		t.Errorf("Images after a/x's cursor = %+v, %v; want a/y and a/z", page, err)
	}
	_, err = s.Images(t.Context(), metadata.ImageQuery{After: "bm9wZQ"}) // "nope": no separator
	if err == nil || !strings.Contains(err.Error(), "is not a cursor this store returned") {
		t.Errorf("Images with a foreign cursor = %v; want it refused as not a cursor", err)
	}
}

// TestImageChangesAnnounced checks that UpdateImage and DeleteImage
// announce the image to every replica once they commit, and that a
// refused update announces nothing.
func TestImageChangesAnnounced(t *testing.T) {
	t.Parallel()
	stores := replicas(t, 2)
	a, b := stores[0], stores[1]
	var (
		mu    sync.Mutex
		heard []string
	)
	b.Subscribe(func(kind, key string) {
		if kind == "image" {
			mu.Lock()
			heard = append(heard, key)
			mu.Unlock()
		}
	})
	ctx := t.Context()
	const repo = "hcl/vault"
	d := digest.FromString("vault")
	key := repo + "@" + d.String()
	refused := errors.New("refused")
	if _, err := a.UpdateImage(ctx, repo, digest.FromString("refused"), t0, func(img *metadata.Image) (metadata.Change, error) {
		return metadata.Change{}, refused
	}); !errors.Is(err, refused) {
		t.Fatalf("UpdateImage with a failing fn = %v", err)
	}
	steps := []struct {
		name string
		do   func() error
	}{
		{"update", func() error {
			_, err := a.UpdateImage(ctx, repo, d, t0, func(img *metadata.Image) (metadata.Change, error) {
				img.State = metadata.StateQuarantined
				return metadata.Change{}, nil
			})
			return err
		}},
		{"delete", func() error { return a.DeleteImage(ctx, repo, d, t0, metadata.Change{Actor: "admin:alice"}) }},
	}
	for i, st := range steps {
		if err := st.do(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		eventually(t, time.Second, "b hearing the "+st.name, func() error {
			mu.Lock()
			defer mu.Unlock()
			if len(heard) != i+1 {
				return fmt.Errorf("heard %q", heard)
			}
			if heard[i] != key {
				return fmt.Errorf("heard %q, want %q", heard[i], key)
			}
			return nil
		})
	}
}

// TestReplicasReadTheOutboxAtOnce has replicas read the outbox at the
// same moment, as their senders do: each target's deliveries go to one of
// them, none to two.
func TestReplicasReadTheOutboxAtOnce(t *testing.T) {
	t.Parallel()
	stores := replicas(t, 3)
	ctx := t.Context()
	const targets, each = 6, 5
	_, err := stores[0].UpdateImage(ctx, "hcl/consul", digest.FromString("consul"), t0, func(img *metadata.Image) (metadata.Change, error) {
		img.State = metadata.StateBlocked
		var ds []metadata.Delivery
		for i := range targets * each {
			ds = append(ds, metadata.Delivery{Target: fmt.Sprintf("hook%d", i%targets), Event: metadata.Event{Type: "image.blocked"}})
		}
		return metadata.Change{Actor: "admin:alice", Action: metadata.ActionBlock, Deliveries: ds}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	start := make(chan struct{})
	got := make([][]metadata.Delivery, len(stores))
	errs := make([]error, len(stores))
	var wg sync.WaitGroup
	for i, s := range stores {
		wg.Go(func() {
			<-start
			// Half a target's deliveries per read: the first read of a
			// target claims it whole all the same.
			got[i], errs[i] = s.DueDeliveriesPerTarget(ctx, t0, each/2, 1000)
		})
	}
	close(start)
	wg.Wait()
	owner := map[string]int{}
	total := 0
	for i, ds := range got {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		for _, d := range ds {
			if o, ok := owner[d.Target]; ok && o != i {
				t.Errorf("%s's deliveries went to replicas %d and %d", d.Target, o, i)
			}
			owner[d.Target] = i
			total++
		}
	}
	if len(owner) != targets || total != targets*(each/2) {
		t.Errorf("the replicas got %d deliveries of %d targets; want %d of %d", total, len(owner), targets*(each/2), targets)
	}
	// Each replica's next reads keep to its own targets.
	for i, s := range stores {
		ds, err := s.DueDeliveries(ctx, t0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			if owner[d.Target] != i {
				t.Errorf("replica %d's second read holds %s's delivery, which replica %d holds", i, d.Target, owner[d.Target])
			}
		}
	}
}

// TestEachImageAcrossChunks walks more images than one query reads and
// lists the most one page holds: nothing is skipped or seen twice at the
// chunk and page boundaries.
func TestEachImageAcrossChunks(t *testing.T) {
	t.Parallel()
	s := openStore(t, pgtest.DSN(t))
	ctx := t.Context()
	const n = 2*eachImageChunk + 7
	rows := make([][]any, n)
	for i := range rows {
		repo := fmt.Sprintf("dockerhub/team/app%d", i%5)
		img := metadata.Image{Repository: repo, Digest: digest.FromString(fmt.Sprint(i)), State: metadata.StateApproved, FirstSeen: t0, UpdatedAt: t0}
		rec, _, err := encodeImage(img)
		if err != nil {
			t.Fatal(err)
		}
		rows[i] = []any{img.Repository, string(img.Digest), string(img.State), rec}
	}
	if _, err := s.Pool().CopyFrom(ctx, pgx.Identifier{"airlock_meta_images"}, imagesTable.cols, pgx.CopyFromRows(rows)); err != nil {
		t.Fatal(err)
	}
	var walked []string
	err := s.EachImage(ctx, func(img metadata.Image) error {
		walked = append(walked, img.Repository+"\x00"+img.Digest.String())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(walked) != n || !slices.IsSorted(walked) || len(slices.Compact(slices.Clone(walked))) != n {
		t.Errorf("EachImage walked %d images, sorted %v; want each of %d once in key order", len(walked), slices.IsSorted(walked), n)
	}
	var listed []string
	q := metadata.ImageQuery{Limit: 5000}
	for pages := 1; ; pages++ {
		page, err := s.Images(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Images) > maxImagePage {
			t.Fatalf("a page holds %d images, over the %d bound", len(page.Images), maxImagePage)
		}
		for _, img := range page.Images {
			listed = append(listed, img.Repository+"\x00"+img.Digest.String())
		}
		if page.Next == "" {
			if pages != 2 {
				t.Errorf("the listing took %d pages, want 2", pages)
			}
			break
		}
		q.After = page.Next
	}
	if !slices.Equal(listed, walked) {
		t.Errorf("Images listed %d images, EachImage walked %d; want the same in the same order", len(listed), len(walked))
	}
}
