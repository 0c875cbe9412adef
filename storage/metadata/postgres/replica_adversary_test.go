package postgres

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/internal/pgtest"
	"github.com/airlock-registry/airlock/storage"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// Attacks by several replicas on one database, and by an unlucky
// operator's database.

// TestAdversaryStaleFillRace: while one replica admits and withdraws a
// blob over and over, readers on another replica (and on the writer
// itself) keep filling their caches. Reads that began before a change and
// ended after it must not leave the old answer cached: once the writer
// stops and the announcements are in, every replica answers what the
// database holds.
func TestAdversaryStaleFillRace(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DSN(t)
	a, b := openTest(t, dsn, 0), openTest(t, dsn, 0)
	conn := testConn(t, dsn)
	ctx := t.Context()
	const repo = "hub/app"
	m := manifestOf("racy")
	layers := []digest.Digest{digest.FromString("l0"), digest.FromString("l1"), digest.FromString("l2")}
	admit := func(s *Store) error {
		var bl []metadata.BlobLink
		for _, l := range layers {
			bl = append(bl, metadata.BlobLink{Digest: l, Size: 1})
		}
		return s.AdmitManifest(ctx, repo, m.Digest, bl)
	}
	if err := a.PutManifest(ctx, repo, m, metadata.Link{Flags: metadata.Confirmed}); err != nil {
		t.Fatal(err)
	}
	for round := range 6 {
		stop := make(chan struct{})
		var readers sync.WaitGroup
		for _, s := range []*Store{a, b, b} {
			readers.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					for _, l := range layers {
						_, _ = s.BlobLink(ctx, repo, l)
					}
					_, _ = s.ManifestLink(ctx, repo, m.Digest)
				}
			})
		}
		for i := range 15 {
			var err error
			if (i+round)%2 == 0 {
				err = admit(a)
			} else {
				err = a.WithdrawManifest(ctx, repo, m.Digest, layers)
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		close(stop)
		readers.Wait()
		settled(t, a, conn)
		settled(t, b, conn)
		var want bool // what the database holds, read behind the cache
		if err := conn.QueryRow(ctx, "SELECT flags & 2 <> 0 FROM airlock_meta_manifest_links WHERE repo = $1 AND digest = $2",
			repo, string(m.Digest)).Scan(&want); err != nil {
			t.Fatal(err)
		}
		for name, s := range map[string]*Store{"writer": a, "other replica": b} {
			for _, l := range layers {
				bl, err := s.BlobLink(ctx, repo, l)
				if err != nil {
					t.Fatal(err)
				}
				if bl.Has(metadata.Admitted) != want {
					t.Fatalf("round %d: the %s answers blob %s admitted = %v, the database %v: a stale fill stayed cached",
						round, name, l, bl.Has(metadata.Admitted), want)
				}
			}
			if ml, err := s.ManifestLink(ctx, repo, m.Digest); err != nil || ml.Has(metadata.Admitted) != want {
				t.Fatalf("round %d: the %s answers manifest link %+v, %v; database admitted = %v", round, name, ml, err, want)
			}
		}
	}
}

// TestAdversaryListenerKilledMissesNothing: the listening connection is
// terminated and kept from coming back while a change lands (its
// announcement is lost to this replica, which meanwhile serves its cached
// answer, as the staleness bound allows); once it reconnects, the change
// must show at once, not after the 30 s staleness: the cache is dropped
// before anything read since is trusted.
func TestAdversaryListenerKilledMissesNothing(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DSN(t)
	a, b := openTest(t, dsn, 0), openTest(t, dsn, 0)
	conn := testConn(t, dsn)
	server, db := serverConn(t, dsn)
	ctx := t.Context()
	img := storeImage(t, a, "hub/library/app", "image")
	settled(t, b, conn)
	for i := range 3 {
		if err := pull(b, img); err != nil {
			t.Fatal(err)
		}
		old, _ := b.Tag(ctx, img.repo, "latest")
		cutOff(t, server, db, listenerName)
		moved := digest.FromString(fmt.Sprint("v", i))
		if err := a.PutTag(ctx, img.repo, "latest", metadata.TagRecord{Digest: moved}); err != nil {
			t.Fatal(err)
		}
		if tag, err := b.Tag(ctx, img.repo, "latest"); err != nil || tag.Digest != old.Digest {
			t.Fatalf("b while its listener is down: %s, %v; want its cached answer %s", tag.Digest, err, old.Digest)
		}
		restore(t, server, db)
		took := eventually(t, 5*time.Second, "b answering the change made while its listener was down", func() error {
			tag, err := b.Tag(ctx, img.repo, "latest")
			if err != nil || tag.Digest != moved {
				return fmt.Errorf("tag %s, %v", tag.Digest, err)
			}
			return nil
		})
		t.Logf("seen %v after the listener was allowed back", took)
		// Put the tag back for the next round's pull.
		if err := a.PutTag(ctx, img.repo, "latest", metadata.TagRecord{Digest: img.m.Digest}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 5*time.Second, "b seeing the tag put back", func() error { return pull(b, img) })
	}
}

// TestAdversaryReplicasHammerImages: three replicas update, delete, count
// pulls of and drain the outbox of a few images at once, from many
// goroutines. No call fails (conflicts are retried, locks taken in one
// order, so no deadlock reaches a caller), the audit log verifies with
// one record per committed change and no gap, and no delivery is held by
// two replicas' senders at once.
func TestAdversaryReplicasHammerImages(t *testing.T) {
	t.Parallel()
	stores := replicas(t, 3)
	ctx := t.Context()
	const workers, rounds, images = 4, 15, 3
	key := func(i int) (string, digest.Digest) {
		repo := fmt.Sprintf("hub/app%d", i%images)
		return repo, digest.FromString(repo)
	}
	var (
		committed atomic.Int64 // audit records the calls that returned nil wrote
		calls     atomic.Int64 // fn runs
		wg        sync.WaitGroup
		errs      = make(chan error, 3*workers*rounds*3)
	)
	for r, s := range stores {
		for w := range workers {
			wg.Go(func() {
				rng := rand.New(rand.NewPCG(uint64(r), uint64(w)))
				for i := range rounds {
					repo, d := key(rng.IntN(images))
					switch rng.IntN(4) {
					case 0:
						err := s.DeleteImage(ctx, repo, d, t0, metadata.Change{Actor: "gc"})
						switch {
						case err == nil:
							committed.Add(1)
						case !errors.Is(err, storage.ErrNotFound):
							errs <- err
						}
					case 1:
						err := s.RecordPulls(ctx, []metadata.PullStat{
							{Repository: "hub/app0", Digest: digest.FromString("hub/app0"), Pulls: 1, Last: t0},
							{Repository: "hub/app2", Digest: digest.FromString("hub/app2"), Pulls: 1, Last: t0},
							{Repository: "hub/app1", Digest: digest.FromString("hub/app1"), Pulls: 1, Last: t0},
						})
						if err != nil {
							errs <- err
						}
					default:
						_, err := s.UpdateImage(ctx, repo, d, t0, func(img *metadata.Image) (metadata.Change, error) {
							calls.Add(1)
							img.State = []metadata.State{metadata.StatePending, metadata.StateApproved, metadata.StateBlocked}[i%3]
							return metadata.Change{Actor: fmt.Sprintf("r%d/w%d", r, w), Action: "set",
								Deliveries: []metadata.Delivery{{Target: fmt.Sprint("hook", i%2)}}}, nil
						})
						if err != nil {
							errs <- err
						} else {
							committed.Add(1)
						}
					}
				}
			})
		}
	}
	// Senders: each replica drains the outbox while the changes go on.
	var (
		mu      sync.Mutex
		holder  = map[string]int{} // target -> replica sending it now
		sent    = map[uint64]int{}
		drained = make(chan struct{})
		senders sync.WaitGroup
	)
	for r, s := range stores {
		senders.Go(func() {
			done := false // the changes ended: one more empty read, then stop
			for {
				ds, err := s.DueDeliveries(ctx, t0.Add(time.Hour), 5)
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				for _, d := range ds {
					if h, ok := holder[d.Target]; ok && h != r {
						errs <- fmt.Errorf("replica %d got a delivery to %s while replica %d was sending that target's", r, d.Target, h)
					}
					holder[d.Target] = r
					sent[d.Seq]++
				}
				mu.Unlock()
				time.Sleep(time.Millisecond)
				mu.Lock()
				for _, d := range ds {
					delete(holder, d.Target)
				}
				mu.Unlock()
				for _, d := range ds {
					if err := s.Delivered(ctx, d.Seq); err != nil {
						errs <- fmt.Errorf("replica %d: %w", r, err)
					}
				}
				if len(ds) == 0 {
					if done {
						return
					}
					// A delivery enqueued after this read, to a target this
					// replica holds, is skipped by the others: read once
					// more after the last change before stopping.
					select {
					case <-drained:
						done = true
					case <-time.After(5 * time.Millisecond):
					}
				}
			}
		})
	}
	wg.Wait()
	close(drained)
	senders.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	check, err := stores[1].VerifyAudit(ctx)
	if err != nil || !check.OK || check.Records != uint64(committed.Load()) {
		t.Fatalf("VerifyAudit = %+v, %v; want OK with %d records, one per committed change", check, err, committed.Load())
	}
	t.Logf("%d changes committed, fn ran %d times", committed.Load(), calls.Load())
	for seq, n := range sent {
		if n > 1 {
			t.Errorf("delivery %d was handed to senders %d times", seq, n)
		}
	}
	if left, err := stores[2].DueDeliveries(ctx, t0.Add(time.Hour), 1000); err != nil || len(left) != 0 {
		t.Errorf("outbox after draining: %d left, %v", len(left), err)
	}
}

// TestAdversaryBackendKilledMidTransaction: the connection of an image
// update is terminated between reading the image and writing it. Nothing
// of the change is left (image, audit record, head, delivery), the caller
// gets an error, and the next update through the same Store works and
// takes seq 1.
func TestAdversaryBackendKilledMidTransaction(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DSN(t)
	s := openTest(t, dsn, 0)
	conn := testConn(t, dsn)
	ctx := t.Context()
	const repo = "hub/app"
	d := digest.FromString("app")
	_, err := s.UpdateImage(ctx, repo, d, t0, func(img *metadata.Image) (metadata.Change, error) {
		var n int
		// The update's own backend is the one in a transaction now.
		if err := conn.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
			WHERE datname = current_database() AND state = 'idle in transaction' AND pid <> pg_backend_pid()`).Scan(&n); err != nil || n != 1 {
			return metadata.Change{}, fmt.Errorf("terminating the update's backend: %d, %v", n, err)
		}
		img.State = metadata.StateBlocked
		return metadata.Change{Action: "block", Deliveries: []metadata.Delivery{{Target: "ops"}}}, nil
	})
	if err == nil {
		t.Fatal("an update whose connection was terminated succeeded")
	}
	if _, err := s.Image(ctx, repo, d); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Image after the killed update: %v; want not found", err)
	}
	if check, err := s.VerifyAudit(ctx); err != nil || !check.OK || check.Records != 0 {
		t.Fatalf("VerifyAudit = %+v, %v; want an empty, intact log", check, err)
	}
	if ds, err := s.DueDeliveries(ctx, t0, 10); err != nil || len(ds) != 0 {
		t.Fatalf("DueDeliveries = %v, %v; want none", ds, err)
	}
	if _, err := s.UpdateImage(ctx, repo, d, t0, func(img *metadata.Image) (metadata.Change, error) {
		img.State = metadata.StateBlocked
		return metadata.Change{Action: "block"}, nil
	}); err != nil {
		t.Fatalf("the next update: %v", err)
	}
	if recs, err := s.Audit(ctx, 0, 10); err != nil || len(recs) != 1 || recs[0].Seq != 1 {
		t.Fatalf("Audit = %+v, %v; want one record, seq 1", recs, err)
	}
}

// TestAdversaryReplicasOpenTogether: three replicas start at once on a
// new database: the migrations are applied once, and all carry one
// identity.
func TestAdversaryReplicasOpenTogether(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DSN(t)
	stores := make([]*Store, 3)
	errs := make([]error, 3)
	var wg sync.WaitGroup
	for i := range stores {
		wg.Go(func() { stores[i], errs[i] = Open(t.Context(), Options{DSN: dsn}) })
	}
	wg.Wait()
	for i, s := range stores {
		if errs[i] != nil {
			t.Fatalf("Open %d: %v", i, errs[i])
		}
		t.Cleanup(func() { s.Close() })
	}
	if stores[0].ID() != stores[1].ID() || stores[1].ID() != stores[2].ID() {
		t.Fatalf("identities %q, %q, %q; want one", stores[0].ID(), stores[1].ID(), stores[2].ID())
	}
}

// TestAdversaryUpstreamNamesArePrefixes: reidentifying upstream "hub"
// withdraws nothing of "hub-x", "hub.io" or "hubs", whose names start
// alike, neither in the database nor in any replica's cache.
func TestAdversaryUpstreamNamesArePrefixes(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DSN(t)
	a, b := openTest(t, dsn, 0), openTest(t, dsn, 0)
	conn := testConn(t, dsn)
	ctx := t.Context()
	var others []image
	for _, repo := range []string{"hub-x/app", "hub.io/app", "hubs/app", "quay/hub/app"} {
		others = append(others, storeImage(t, a, repo, "image of "+repo))
	}
	mine := storeImage(t, a, "hub/app", "image of hub")
	settled(t, b, conn)
	for _, img := range append(others, mine) {
		if err := pull(b, img); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []string{"https://one.example", "https://two.example"} {
		if _, err := a.Reidentify(ctx, map[string]string{"hub": id}); err != nil {
			t.Fatal(err)
		}
	}
	settled(t, b, conn)
	for _, s := range []*Store{a, b} {
		for _, img := range others {
			if err := pull(s, img); err != nil {
				t.Errorf("%s after reidentifying hub: %v; want it untouched", img.repo, err)
			}
		}
		if err := pull(s, mine); err == nil || !strings.Contains(err.Error(), "not found") {
			t.Errorf("hub/app after reidentifying hub: %v; want its tag gone", err)
		}
	}
}

// TestAdversaryContentWriteDeadlock: an evictor's UnlinkImage and another
// transaction lock two blob links the other way round. PostgreSQL ends
// the store's transaction as the deadlock's victim; the store runs it
// again rather than fail the removal (the change is only the database's,
// so running it again is safe), and it completes once the other commits.
func TestAdversaryContentWriteDeadlock(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DSN(t)
	s := openTest(t, dsn, 0)
	ctx := t.Context()
	const repo = "hub/app"
	m := manifestOf("deadlock")
	lo, hi := digest.FromString("l0"), digest.FromString("l1")
	if lo > hi {
		lo, hi = hi, lo
	}
	if err := s.PutManifest(ctx, repo, m, metadata.Link{Flags: metadata.Confirmed | metadata.Admitted},
		metadata.BlobLink{Digest: lo, Size: 1}, metadata.BlobLink{Digest: hi, Size: 1}); err != nil {
		t.Fatal(err)
	}
	other := testConn(t, dsn)
	// The other side waits longer before it looks for a deadlock, so the
	// store's transaction is the one PostgreSQL ends.
	exec(t, other, "SET deadlock_timeout = '10s'")
	tx, err := other.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	lockLink := func(d digest.Digest) error {
		_, err := tx.Exec(ctx, "SELECT 1 FROM airlock_meta_blob_links WHERE repo = $1 AND digest = $2 FOR UPDATE", repo, string(d))
		return err
	}
	if err := lockLink(hi); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := s.UnlinkImage(ctx, repo, m.Digest, []digest.Digest{lo, hi})
		done <- err
	}()
	// Wait until the store holds lo and waits for hi.
	eventually(t, 5*time.Second, "the store waiting on the other's lock", func() error {
		var waiting bool
		err := testConn(t, dsn).QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%airlock_meta_blob_links%')`).Scan(&waiting)
		if err != nil || !waiting {
			return fmt.Errorf("not yet (%v)", err)
		}
		return nil
	})
	if err := lockLink(lo); err != nil {
		t.Fatalf("the other side: %v", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("UnlinkImage after losing a deadlock: %v; want it run again", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("UnlinkImage did not return")
	}
	if _, err := s.BlobLink(ctx, repo, hi); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("BlobLink after the unlink: %v; want not found", err)
	}
}

// TestAdversaryStuckSubscriber: a subscriber that blocks holds up the
// listener, so announcements stop being applied; the cache must then
// stop being served at the staleness bound (nothing confirms it any
// more), and reads go to the database, where the other replica's change
// is.
func TestAdversaryStuckSubscriber(t *testing.T) {
	t.Parallel()
	const staleness = time.Second
	dsn := pgtest.DSN(t)
	a, b := openTest(t, dsn, 0), openTest(t, dsn, staleness)
	release := make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock) // before b's Close, which waits for the listener
	conn := testConn(t, dsn)
	img := storeImage(t, a, "hub/library/app", "image")
	settled(t, b, conn)
	if err := pull(b, img); err != nil {
		t.Fatal(err)
	}
	b.Subscribe(func(kind, key string) {
		if kind == kindTag {
			<-release
		}
	})
	// The first change blocks b's listener in the subscriber; the second
	// is never applied to b's cache.
	ctx := t.Context()
	if err := a.PutTag(ctx, "hub/other", "x", metadata.TagRecord{Digest: img.m.Digest}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	moved := digest.FromString("v2")
	if err := a.PutTag(ctx, img.repo, "latest", metadata.TagRecord{Digest: moved}); err != nil {
		t.Fatal(err)
	}
	stuck := time.Now()
	took := eventually(t, staleness+3*time.Second, "b answering from the database", func() error {
		tag, err := b.Tag(ctx, img.repo, "latest")
		if err != nil || tag.Digest != moved {
			return fmt.Errorf("tag %s, %v", tag.Digest, err)
		}
		return nil
	})
	if took > staleness+maxHeartbeat {
		t.Errorf("stale answers served %v after the listener stuck; want within the staleness %v", time.Since(stuck), staleness)
	}
	unblock()
}

// TestAdversaryTouchWrittenWithinTheWindow: access times are written
// within the stated flush period without a Close, so a crash loses at
// most that much.
func TestAdversaryTouchWrittenWithinTheWindow(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DSN(t)
	a, b := openTest(t, dsn, 0), openTest(t, dsn, 0)
	d := digest.FromString("layer")
	a.Touch("hub/app", d)
	took := eventually(t, defaultFlushEvery+2*time.Second, "the touch written", func() error {
		_, err := b.Accessed(t.Context(), "hub/app", d)
		return err
	})
	t.Logf("written after %v (flush period %v)", took, defaultFlushEvery)
}

// TestAdversaryDeafListener: the listening connection stays up and
// answers, but hears nothing, as it does behind a connection pooler in
// transaction mode (the LISTEN ran on a server connection the pooler has
// since given to someone else). Pings would keep succeeding and the cache
// would be served forever while other replicas' releases and blocks never
// reached it; the bound must hold all the same: within Staleness the
// cached answer goes, and the change made through another replica shows.
func TestAdversaryDeafListener(t *testing.T) {
	t.Parallel()
	const staleness = time.Second
	dsn := pgtest.DSN(t)
	a := openTest(t, dsn, 0)
	// b listens on a channel nobody announces on: its connection is fine,
	// its LISTEN hears nothing.
	b, err := Open(t.Context(), Options{DSN: dsn, Staleness: staleness, listenOn: "airlock_deaf"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	ctx := t.Context()
	img := storeImage(t, a, "hub/library/app", "image")
	if err := pull(b, img); err != nil {
		t.Fatal(err)
	}
	if err := a.WithdrawManifest(ctx, img.repo, img.m.Digest, []digest.Digest{img.layer}); err != nil {
		t.Fatal(err)
	}
	withdrawn := time.Now()
	eventually(t, 2*staleness+2*time.Second, "b no longer serving the withdrawn blob", func() error {
		l, err := b.BlobLink(ctx, img.repo, img.layer)
		if err != nil {
			return err
		}
		if l.Has(metadata.Admitted) {
			return errors.New("still admitted")
		}
		return nil
	})
	if took := time.Since(withdrawn); took > staleness+time.Second {
		t.Errorf("the withdrawn blob was served as admitted for %v; want at most the staleness %v", took, staleness)
	}
}

// TestAdversaryContentWriteKilled: an admission's connection is
// terminated halfway (its blob links merged, the manifest link not yet):
// the caller gets an error and nothing of it is left, in the database or
// in either replica's cache.
func TestAdversaryContentWriteKilled(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DSN(t)
	a, b := openTest(t, dsn, 0), openTest(t, dsn, 0)
	ctx := t.Context()
	const repo = "hub/app"
	m := manifestOf("killed")
	layer := digest.FromString("layer of killed")
	if err := a.PutManifest(ctx, repo, m, metadata.Link{Flags: metadata.Confirmed}); err != nil {
		t.Fatal(err)
	}
	if err := a.LinkBlobs(ctx, repo, metadata.BlobLink{Digest: layer, Size: 1, Flags: metadata.Confirmed}); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*Store{a, b} {
		if _, err := s.BlobLink(ctx, repo, layer); err != nil { // cached
			t.Fatal(err)
		}
	}
	// Hold the manifest link, so that the admission stops at it.
	other := testConn(t, dsn)
	tx, err := other.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "SELECT 1 FROM airlock_meta_manifest_links WHERE repo = $1 FOR UPDATE", repo); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.AdmitManifest(ctx, repo, m.Digest, []metadata.BlobLink{{Digest: layer, Size: 1}}) }()
	killer := testConn(t, dsn)
	eventually(t, 5*time.Second, "the admission waiting on the manifest link, then killed", func() error {
		var n int
		if err := killer.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%airlock_meta_manifest_links%'`).Scan(&n); err != nil || n == 0 {
			return fmt.Errorf("not waiting yet (%v)", err)
		}
		return nil
	})
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("an admission whose connection was terminated succeeded")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the admission did not return")
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	conn := testConn(t, dsn)
	settled(t, b, conn)
	for name, s := range map[string]*Store{"a": a, "b": b} {
		l, err := s.BlobLink(ctx, repo, layer)
		if err != nil || l.Has(metadata.Admitted) {
			t.Errorf("%s: blob link %+v, %v after the killed admission; want it confirmed, not admitted", name, l, err)
		}
		if ml, err := s.ManifestLink(ctx, repo, m.Digest); err != nil || ml.Has(metadata.Admitted) {
			t.Errorf("%s: manifest link %+v, %v; want it not admitted", name, ml, err)
		}
	}
	// The store goes on: the admission made again succeeds.
	if err := a.AdmitManifest(ctx, repo, m.Digest, []metadata.BlobLink{{Digest: layer, Size: 1}}); err != nil {
		t.Fatalf("the admission made again: %v", err)
	}
}

// syncBuffer is a log sink safe for the listener's goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (w *syncBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// TestAdversaryTinyStaleness: an operator who wants no stale answer sets
// the staleness to a few milliseconds. The listener must keep its
// connection (heartbeats every 10 ms answer in time), not start over
// again and again, logging a lost connection each time.
func TestAdversaryTinyStaleness(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DSN(t)
	var logs syncBuffer
	s, err := Open(t.Context(), Options{DSN: dsn, Staleness: 5 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(logs.String(), "lost the connection"); n > 0 {
		t.Fatalf("the listener started over %d times in a second with a 5ms staleness:\n%s", n, logs.String())
	}
}
