package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/internal/pgtest"
	"github.com/airlock-registry/airlock/storage"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// clock is a settable time for the cache's unit tests.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newTestCache(staleness time.Duration) (*cache, *clock) {
	clk := &clock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	c := newCache(staleness, clk.now)
	c.confirm(clk.now())
	return c, clk
}

func fill(c *cache, key string, val any, size int64) {
	c.put(c.ticket(key), key, val, size)
}

func TestCacheBounds(t *testing.T) {
	t.Parallel()
	c, _ := newTestCache(time.Minute)
	c.maxEntries, c.maxBytes = 3, 16*1024
	for i := range 4 {
		fill(c, fmt.Sprint("tag r:", i), i, 0)
		if i == 2 {
			c.get("tag r:0") // used: the next fill pushes out 1, not 0
		}
	}
	for key, want := range map[string]bool{"tag r:0": true, "tag r:1": false, "tag r:2": true, "tag r:3": true} {
		if _, ok := c.get(key); ok != want {
			t.Errorf("entry bound: %s cached = %v; want %v", key, ok, want)
		}
	}
	// Bytes: sixteen entries of 800 bytes fit in 16 KiB with their keys and
	// overhead, a seventeenth pushes out the least recently used.
	c, _ = newTestCache(time.Minute)
	c.maxBytes = 16 * 1024
	for i := range 17 {
		fill(c, fmt.Sprint("manifest ", i), i, 800)
	}
	if n, b := c.len(); n != 16 || b > c.maxBytes {
		t.Errorf("byte bound: %d entries, %d bytes; want 16 within %d", n, b, c.maxBytes)
	}
	if _, ok := c.get("manifest 0"); ok {
		t.Error("byte bound: the least recently used entry stayed")
	}
	// One entry never takes more than a sixteenth of the cache.
	fill(c, "manifest big", "x", c.maxBytes/16)
	if _, ok := c.get("manifest big"); ok {
		t.Error("an entry of a sixteenth of the cache was kept")
	}
}

// TestCacheMissesApart: answers that found nothing have a bound of their
// own, so a client asking for any name it likes pushes out other misses
// only, never a record warm pulls need; an announcement drops a miss as
// it drops a record.
func TestCacheMissesApart(t *testing.T) {
	t.Parallel()
	c, _ := newTestCache(time.Minute)
	c.maxEntries, c.maxMisses = 3, 2
	for i := range 3 {
		fill(c, fmt.Sprint("tag r:", i), i, 0)
	}
	for i := range 50 {
		c.putMiss(c.ticket(fmt.Sprint("tag r:miss", i)), fmt.Sprint("tag r:miss", i), noTag{})
	}
	for i := range 3 {
		if _, ok := c.get(fmt.Sprint("tag r:", i)); !ok {
			t.Errorf("record %d was pushed out by misses", i)
		}
	}
	for i, want := range map[int]bool{0: false, 47: false, 48: true, 49: true} {
		if _, ok := c.get(fmt.Sprint("tag r:miss", i)); ok != want {
			t.Errorf("miss %d cached = %v; want %v (the last %d misses)", i, ok, want, c.maxMisses)
		}
	}
	if n, _ := c.len(); n != 5 {
		t.Errorf("%d entries; want 3 records and 2 misses", n)
	}
	// A record put where a miss was takes its place; a drop removes a miss.
	fill(c, "tag r:miss49", "found", 0)
	if v, _ := c.get("tag r:miss49"); v != "found" {
		t.Errorf("after a record was put over a miss: %v", v)
	}
	c.apply(kindTag, "r:miss48")
	if _, ok := c.get("tag r:miss48"); ok {
		t.Error("an announced tag's miss stayed")
	}
	// A miss read before a drop is not kept, as a record would not be.
	tk := c.ticket("tag r:late")
	c.apply(kindTag, "r:late")
	c.putMiss(tk, "tag r:late", noTag{})
	if _, ok := c.get("tag r:late"); ok {
		t.Error("a miss whose read began before its key was dropped was cached")
	}
}

// TestCacheFillAfterDrop: a fill whose query began before its key was
// dropped (by an announcement, a reconnection, an upstream's withdrawal)
// must not store what it read; fills of other keys are not held back.
func TestCacheFillAfterDrop(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name      string
		drop      func(c *cache)
		key       string
		wantCache bool
	}{
		{"nothing dropped", func(c *cache) {}, "tag hub/a:1", true},
		{"the key announced", func(c *cache) { c.apply("tag", "hub/a:1") }, "tag hub/a:1", false},
		{"another key announced", func(c *cache) { c.drop(otherShard(c, "tag hub/a:1")) }, "tag hub/a:1", true},
		{"an image announced", func(c *cache) { c.apply("image", "hub/a@sha256:x") }, "tag hub/a:1", true},
		{"reconnected", func(c *cache) { c.reset() }, "tag hub/a:1", false},
		{"its upstream reidentified", func(c *cache) { c.apply(kindUpstream, "hub") }, "blob hub/a@sha256:x", false},
	}
	for _, tc := range cases {
		c, _ := newTestCache(time.Minute)
		tk := c.ticket(tc.key)
		tc.drop(c)
		c.put(tk, tc.key, "stale", 0)
		if _, ok := c.get(tc.key); ok != tc.wantCache {
			t.Errorf("%s: cached = %v; want %v", tc.name, ok, tc.wantCache)
		}
	}
}

// otherShard returns a key whose fills are ordered apart from key's: keys
// sharing a shard hold back each other's fills, conservatively.
func otherShard(c *cache, key string) string {
	for i := 0; ; i++ {
		if other := fmt.Sprint("tag hub/a:", i); c.shard(other) != c.shard(key) {
			return other
		}
	}
}

func TestCacheDropUpstream(t *testing.T) {
	t.Parallel()
	c, _ := newTestCache(time.Minute)
	keys := map[string]bool{ // key: kept after "hub" is reidentified
		"tag hub/library/a:1":         false,
		"blob hub/library/a@sha256:1": false,
		"mlink hub/x@sha256:2":        false,
		"tag hubx/a:1":                true,
		"blob hub-y/a@sha256:1":       true,
		"manifest sha256:2":           true,
		"mlink quay/hub/a@sha256:2":   true,
	}
	for k := range keys {
		fill(c, k, 1, 0)
	}
	c.apply(kindUpstream, "hub")
	for k, kept := range keys {
		if _, ok := c.get(k); ok != kept {
			t.Errorf("%s cached = %v; want %v", k, ok, kept)
		}
	}
}

// TestCacheStaleness: entries are served until Staleness after the last
// contact with the listener, then not at all.
func TestCacheStaleness(t *testing.T) {
	t.Parallel()
	c, clk := newTestCache(10 * time.Second)
	fill(c, "tag hub/a:1", 1, 0)
	clk.add(9 * time.Second)
	if _, ok := c.get("tag hub/a:1"); !ok {
		t.Fatal("an entry was dropped within the staleness bound")
	}
	c.confirm(clk.now()) // a heartbeat
	clk.add(9 * time.Second)
	if _, ok := c.get("tag hub/a:1"); !ok {
		t.Fatal("a heartbeat did not extend the bound")
	}
	clk.add(time.Second)
	if _, ok := c.get("tag hub/a:1"); ok {
		t.Fatal("an entry was served at the staleness bound")
	}
	if n, _ := c.len(); n != 0 {
		t.Errorf("%d entries kept past the bound; want them freed", n)
	}
	fill(c, "tag hub/a:2", 2, 0)
	if n, _ := c.len(); n != 0 {
		t.Error("a fill past the bound was stored")
	}
}

// testConn connects to the test database beside the stores, for changes
// made behind their backs.
func testConn(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	return connect(t, cfg)
}

func connect(t *testing.T, cfg *pgx.ConnConfig) *pgx.Conn {
	t.Helper()
	conn, err := pgx.ConnectConfig(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// serverConn connects to the server's maintenance database, from where the
// test database can be closed to the stores (a database cannot close
// itself).
func serverConn(t *testing.T, dsn string) (*pgx.Conn, string) {
	t.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	db := cfg.Database
	cfg.Database = "postgres"
	return connect(t, cfg), db
}

// settled waits until s has applied every announcement committed so far:
// announcements reach a listener in commit order, so once a marker sent
// now arrives, those before it have been applied. Reads right after a
// store's own writes would otherwise cache what the writes' announcements,
// arriving a moment later, drop again.
func settled(t *testing.T, s *Store, conn *pgx.Conn) {
	t.Helper()
	marker := fmt.Sprint(time.Now().UnixNano())
	seen := make(chan struct{})
	var once sync.Once
	s.Subscribe(func(kind, key string) {
		if kind == "test" && key == marker {
			once.Do(func() { close(seen) })
		}
	})
	exec(t, conn, "SELECT pg_notify($1, $2)", Channel, "test "+marker)
	select {
	case <-seen:
	case <-time.After(5 * time.Second):
		t.Fatal("the store's listener did not hear a marker within 5s")
	}
}

func exec(t *testing.T, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := conn.Exec(t.Context(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// eventually polls cond until it holds or within passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() error) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		err := cond()
		if err == nil {
			return time.Since(start)
		}
		if time.Since(start) > within {
			t.Fatalf("%s not within %v: %v", what, within, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func manifestOf(body string) metadata.ManifestRecord {
	return metadata.ManifestRecord{Digest: digest.FromString(body), MediaType: "application/vnd.oci.image.manifest.v1+json", Body: []byte(body)}
}

// image is one cached image: a tag, a manifest linked and admitted with a
// layer, the way a pull leaves them.
type image struct {
	repo  string
	m     metadata.ManifestRecord
	layer digest.Digest
}

func storeImage(t *testing.T, s *Store, repo, body string) image {
	t.Helper()
	img := image{repo, manifestOf(body), digest.FromString("layer of " + body)}
	ctx := t.Context()
	for _, err := range []error{
		s.PutManifest(ctx, repo, img.m, metadata.Link{Flags: metadata.Confirmed | metadata.Admitted}, metadata.BlobLink{Digest: img.layer, Size: 3}),
		s.LinkBlobs(ctx, repo, metadata.BlobLink{Digest: img.layer, Size: 3, Flags: metadata.Confirmed}),
		s.PutTag(ctx, repo, "latest", metadata.TagRecord{Digest: img.m.Digest, Resolved: time.Now()}),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	return img
}

// pull reads what a warm pull reads, as the proxy does.
func pull(s *Store, img image) error {
	ctx := context.Background()
	tag, err := s.Tag(ctx, img.repo, "latest")
	if err != nil {
		return err
	}
	if tag.Digest != img.m.Digest {
		return fmt.Errorf("tag names %s, want %s", tag.Digest, img.m.Digest)
	}
	rec, l, err := s.RepoManifest(ctx, img.repo, img.m.Digest)
	if err != nil {
		return err
	}
	if string(rec.Body) != string(img.m.Body) || !l.Has(metadata.Confirmed|metadata.Admitted) {
		return fmt.Errorf("manifest link %+v, want confirmed and admitted", l)
	}
	bl, err := s.BlobLink(ctx, img.repo, img.layer)
	if err != nil {
		return err
	}
	if !bl.Has(metadata.Confirmed | metadata.Admitted) {
		return fmt.Errorf("blob link %+v, want confirmed and admitted", bl)
	}
	return nil
}

// TestWarmReadsAskNothing: once read, a warm pull's lookups are answered
// from memory: rows changed behind the store's back (no announcement) do
// not show, and an announcement of the key makes them show.
func TestWarmReadsAskNothing(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DSN(t)
	s := openTest(t, dsn, 0)
	conn := testConn(t, dsn)
	img := storeImage(t, s, "hub/library/app", `{"warm":1}`)
	settled(t, s, conn)
	if err := pull(s, img); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Manifest(t.Context(), img.m.Digest); err != nil {
		t.Fatal(err)
	}
	exec(t, conn, "UPDATE airlock_meta_tags SET digest = $1", string(digest.FromString("elsewhere")))
	exec(t, conn, "UPDATE airlock_meta_manifest_links SET flags = 0")
	exec(t, conn, "UPDATE airlock_meta_blob_links SET flags = 0")
	exec(t, conn, "UPDATE airlock_meta_manifests SET media_type = 'text/plain'")
	if err := pull(s, img); err != nil {
		t.Fatalf("a warm pull after rows changed without an announcement: %v; want the cached answers", err)
	}
	if m, _ := s.Manifest(t.Context(), img.m.Digest); m.MediaType != img.m.MediaType {
		t.Errorf("Manifest read the database: media type %q", m.MediaType)
	}
	// Announced as another replica would: each key drops alone.
	announcements := []struct {
		kind, key string
		check     func() error
	}{
		{kindTag, tagName(img.repo, "latest"), func() error {
			if tag, _ := s.Tag(t.Context(), img.repo, "latest"); tag.Digest == img.m.Digest {
				return errors.New("still the cached tag")
			}
			return nil
		}},
		{kindBlobLink, ref(img.repo, img.layer), func() error {
			if l, _ := s.BlobLink(t.Context(), img.repo, img.layer); l.Flags != 0 {
				return errors.New("still the cached blob link")
			}
			return nil
		}},
		{kindManifestLink, ref(img.repo, img.m.Digest), func() error {
			if _, l, _ := s.RepoManifest(t.Context(), img.repo, img.m.Digest); l.Flags != 0 {
				return errors.New("still the cached manifest link")
			}
			return nil
		}},
		{kindManifest, string(img.m.Digest), func() error {
			if m, _ := s.Manifest(t.Context(), img.m.Digest); m.MediaType != "text/plain" {
				return errors.New("still the cached manifest")
			}
			return nil
		}},
	}
	for _, a := range announcements {
		if a.check() == nil {
			t.Fatalf("%s %s changed before it was announced", a.kind, a.key)
		}
		exec(t, conn, "SELECT pg_notify($1, $2)", Channel, a.kind+" "+a.key)
		eventually(t, time.Second, "dropping "+a.kind+" "+a.key, a.check)
	}
}

// TestMissingTagAsksOnce: a tag with no row is asked of the database
// once; later reads answer from memory until the tag is written, through
// this store (at once), or announced by another replica.
func TestMissingTagAsksOnce(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DSN(t)
	s, other := openTest(t, dsn, 0), openTest(t, dsn, 0)
	conn := testConn(t, dsn)
	settled(t, s, conn)
	ctx := t.Context()
	repo := "hub/library/app"
	for _, name := range []string{"narrow", "local", "remote"} {
		if _, err := s.Tag(ctx, repo, name); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("tag %s before any write: %v; want not found", name, err)
		}
	}
	rec := metadata.TagRecord{Digest: digest.FromString("m"), MediaType: "application/vnd.oci.image.manifest.v1+json",
		Size: 2, Resolved: time.Now().UTC().Truncate(time.Microsecond)}
	// Written behind the store's back, unannounced: the miss is served.
	exec(t, conn, "INSERT INTO airlock_meta_tags (repo, tag, digest, media_type, size, resolved) VALUES ($1, 'narrow', $2, $3, $4, $5)",
		repo, string(rec.Digest), rec.MediaType, rec.Size, rec.Resolved)
	if _, err := s.Tag(ctx, repo, "narrow"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("an unannounced row was read: %v; want the cached miss", err)
	}
	exec(t, conn, "SELECT pg_notify($1, $2)", Channel, kindTag+" "+tagName(repo, "narrow"))
	eventually(t, time.Second, "the announced tag read", func() error {
		_, err := s.Tag(ctx, repo, "narrow")
		return err
	})
	// Written through the store: read back at once.
	if err := s.PutTag(ctx, repo, "local", rec); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Tag(ctx, repo, "local"); err != nil || got.Digest != rec.Digest {
		t.Fatalf("a tag this store wrote reads %+v, %v", got, err)
	}
	// Written through another replica: seen within a second.
	if err := other.PutTag(ctx, repo, "remote", rec); err != nil {
		t.Fatal(err)
	}
	took := eventually(t, time.Second, "another replica's tag read", func() error {
		_, err := s.Tag(ctx, repo, "remote")
		return err
	})
	t.Logf("another replica's tag seen after %v", took)
}

// TestReplicasSeeEachOthersChanges: two Stores on one database, as two
// replicas; what one changes, the other's cache drops within a second,
// and subscribers of both hear of it.
func TestReplicasSeeEachOthersChanges(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DSN(t)
	a, b := openTest(t, dsn, 0), openTest(t, dsn, 0)
	heard := map[*Store]chan string{a: make(chan string, 100), b: make(chan string, 100)}
	for s, ch := range heard {
		s.Subscribe(func(kind, key string) {
			select {
			case ch <- kind + " " + key:
			default:
			}
		})
	}
	ctx := t.Context()
	cases := []struct {
		name   string
		change func(img image) error
		want   func(img image, err error) error // given what b's pull says
		heard  string                           // an announcement both hear
	}{
		{"tag moved", func(img image) error {
			return a.PutTag(ctx, img.repo, "latest", metadata.TagRecord{Digest: digest.FromString("v2")})
		}, wantPullError("tag names"), "tag hub/app0:latest"},
		{"blob withdrawn", func(img image) error {
			return a.WithdrawManifest(ctx, img.repo, img.m.Digest, []digest.Digest{img.layer})
		}, wantPullError("link"), "blob hub/app1@" + string(digest.FromString("layer of image1"))},
		{"image unlinked", func(img image) error {
			_, err := a.UnlinkImage(ctx, img.repo, img.m.Digest, []digest.Digest{img.layer})
			return err
		}, wantPullError("not found"), "manifest " + string(manifestOf("image2").Digest)},
		{"upstream reidentified", func(img image) error {
			if _, err := a.Reidentify(ctx, map[string]string{"hub": "https://hub.example"}); err != nil {
				return err
			}
			_, err := a.Reidentify(ctx, map[string]string{"hub": "https://mirror.example"})
			return err
		}, wantPullError("not found"), "upstream hub"},
	}
	for i, c := range cases {
		img := storeImage(t, a, fmt.Sprint("hub/app", i), fmt.Sprint("image", i))
		if err := pull(b, img); err != nil {
			t.Fatalf("%s: warm pull through b before the change: %v", c.name, err)
		}
		if err := c.change(img); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		took := eventually(t, time.Second, c.name+" seen through b", func() error { return c.want(img, pull(b, img)) })
		t.Logf("%s: seen through the other replica after %v", c.name, took)
		for s, name := range map[*Store]string{a: "a", b: "b"} {
			eventually(t, time.Second, c.name+": subscriber of "+name+" told", func() error {
				for {
					select {
					case got := <-heard[s]:
						if got == c.heard {
							return nil
						}
					default:
						return fmt.Errorf("no %q yet", c.heard)
					}
				}
			})
		}
	}
}

func wantPullError(says string) func(image, error) error {
	return func(_ image, err error) error {
		if err == nil || !strings.Contains(err.Error(), says) {
			return fmt.Errorf("the pull says %v, want an error saying %q", err, says)
		}
		return nil
	}
}

// cutOff refuses new connections to database db and ends those whose
// application_name matches app ("%" for all). conn is a connection to
// another database of the server. Connections are allowed again when the
// test ends, at the latest.
func cutOff(t *testing.T, conn *pgx.Conn, db, app string) {
	t.Helper()
	exec(t, conn, "ALTER DATABASE "+pgx.Identifier{db}.Sanitize()+" ALLOW_CONNECTIONS false")
	t.Cleanup(func() { restore(t, conn, db) })
	var n int
	if err := conn.QueryRow(t.Context(), `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = $1 AND application_name LIKE $2`, db, app).Scan(&n); err != nil || n == 0 {
		t.Fatalf("terminating the connections of %s to %s: %d, %v", app, db, n, err)
	}
}

func restore(t *testing.T, conn *pgx.Conn, db string) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), "ALTER DATABASE "+pgx.Identifier{db}.Sanitize()+" ALLOW_CONNECTIONS true"); err != nil {
		t.Errorf("allowing connections again: %v", err)
	}
}

// TestListenerLost: when b's listener is lost (its backend terminated, no
// new connection allowed) b keeps serving what it cached, stale, until
// Staleness passes from its last contact, and then reads the database
// again, where another replica's change is.
func TestListenerLost(t *testing.T) {
	t.Parallel()
	const staleness = 2 * time.Second
	dsn := pgtest.DSN(t)
	a, b := openTest(t, dsn, 0), openTest(t, dsn, staleness)
	resets := make(chan struct{}, 10)
	b.Subscribe(func(kind, key string) {
		if kind == kindReset && key == "" {
			resets <- struct{}{}
		}
	})
	conn := testConn(t, dsn)
	server, db := serverConn(t, dsn)
	img := storeImage(t, a, "hub/library/app", "image")
	settled(t, b, conn)
	if err := pull(b, img); err != nil {
		t.Fatal(err)
	}
	cutOff(t, server, db, listenerName)
	lost := time.Now()
	moved := digest.FromString("v2")
	if err := a.PutTag(t.Context(), img.repo, "latest", metadata.TagRecord{Digest: moved}); err != nil {
		t.Fatalf("a write through a's pool: %v", err)
	}
	if err := pull(b, img); err != nil {
		t.Fatalf("a warm pull through b right after its listener was lost: %v; want the cached, stale answers", err)
	}
	eventually(t, staleness+2*time.Second, "b reading the database again", func() error {
		tag, err := b.Tag(t.Context(), img.repo, "latest")
		if err != nil || tag.Digest != moved {
			return fmt.Errorf("tag %s, %v", tag.Digest, err)
		}
		return nil
	})
	t.Logf("b answered from its cache until %v after the loss (staleness %v)", time.Since(lost).Round(10*time.Millisecond), staleness)
	restore(t, server, db)
	select {
	case <-resets:
	case <-time.After(10 * time.Second):
		t.Fatal("b's subscriber heard no reset after the listener came back")
	}
	// Listening again: changes through a reach b at once.
	if err := a.PutTag(t.Context(), img.repo, "latest", metadata.TagRecord{Digest: img.m.Digest}); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Second, "b seeing a's change after reconnecting", func() error { return pull(b, img) })
}

// TestDatabaseUnreachable: with PostgreSQL refusing b altogether, b serves
// what a warm pull needs from memory within Staleness, refuses what it has
// not cached with an error saying PostgreSQL failed (not a miss), stops
// serving the cache once Staleness has passed, and recovers with nothing
// lost when the database is back.
func TestDatabaseUnreachable(t *testing.T) {
	t.Parallel()
	const staleness = 3 * time.Second
	dsn := pgtest.DSN(t)
	b := openTest(t, dsn, staleness)
	resets := make(chan struct{}, 10)
	b.Subscribe(func(kind, key string) {
		if kind == kindReset {
			resets <- struct{}{}
		}
	})
	conn := testConn(t, dsn)
	server, db := serverConn(t, dsn)
	img := storeImage(t, b, "hub/library/app", "image")
	other := storeImage(t, b, "hub/library/other", "other image")
	settled(t, b, conn)
	if err := pull(b, img); err != nil {
		t.Fatal(err)
	}
	b.Touch(img.repo, img.layer)
	cutOff(t, server, db, "%")
	if err := pull(b, img); err != nil {
		t.Fatalf("a warm pull with PostgreSQL down: %v; want it served from memory", err)
	}
	ctx := t.Context()
	misses := []struct {
		name string
		err  error
	}{
		{"a tag not cached", errOf(b.Tag(ctx, other.repo, "latest"))},
		{"a manifest not cached", errOf3(b.RepoManifest(ctx, other.repo, other.m.Digest))},
		{"a blob link not cached", errOf(b.BlobLink(ctx, other.repo, other.layer))},
		{"a write", b.PutTag(ctx, other.repo, "new", metadata.TagRecord{Digest: other.m.Digest})},
	}
	t.Logf("a read not cached, with PostgreSQL down: %v", misses[0].err)
	for i, m := range misses {
		// The first use of a pooled connection reads its termination, the
		// next ones PostgreSQL's refusal of new connections.
		want := "from PostgreSQL"
		if i == len(misses)-1 {
			want = "not currently accepting connections"
		}
		if m.err == nil || errors.Is(m.err, storage.ErrNotFound) || !strings.Contains(m.err.Error(), want) {
			t.Errorf("%s with PostgreSQL down: %v; want an error saying %q, not a miss", m.name, m.err, want)
		}
	}
	eventually(t, staleness+2*time.Second, "the cache expiring", func() error {
		if err := pull(b, img); err == nil {
			return errors.New("still served from memory")
		}
		return nil
	})
	restore(t, server, db)
	select {
	case <-resets:
	case <-time.After(10 * time.Second):
		t.Fatal("no reset after PostgreSQL came back")
	}
	conn = testConn(t, dsn) // the first one was ended with the others
	eventually(t, 5*time.Second, "pulls after PostgreSQL came back", func() error { return pull(b, img) })
	if err := pull(b, other); err != nil {
		t.Errorf("a pull of content never cached, after PostgreSQL came back: %v", err)
	}
	// The use recorded before the outage is written once it is over.
	eventually(t, 2*defaultFlushEvery, "the access time written", func() error {
		var n int
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM airlock_meta_access WHERE repo = $1", img.repo).Scan(&n); err != nil || n != 1 {
			return fmt.Errorf("%d rows, %v", n, err)
		}
		return nil
	})
}

func errOf[T any](_ T, err error) error { return err }

func errOf3[T, U any](_ T, _ U, err error) error { return err }

// TestListenerThroughHeartbeats: the listener's pings between
// announcements keep the cache valid and the connection listening: an
// announcement after many of them still arrives.
func TestListenerThroughHeartbeats(t *testing.T) {
	t.Parallel()
	const staleness = 400 * time.Millisecond // a ping every 100ms
	dsn := pgtest.DSN(t)
	s := openTest(t, dsn, staleness)
	conn := testConn(t, dsn)
	time.Sleep(10 * heartbeat(staleness))
	// Without the pings, the last contact would be the connection's, long
	// past the bound. (Polled: a loaded machine may delay one ping.)
	eventually(t, time.Second, "the cache valid long after the last announcement", func() error {
		if !s.cache.valid(time.Now()) {
			return errors.New("expired")
		}
		return nil
	})
	settled(t, s, conn)
}

// BenchmarkWarmPull measures what a warm pull asks of the store: a tag, a
// manifest with its link, a blob link, and a touch, all from memory.
func BenchmarkWarmPull(b *testing.B) {
	dsn := pgtest.DSN(b)
	s, err := Open(b.Context(), Options{DSN: dsn})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	img := image{"hub/library/app", manifestOf(strings.Repeat(`{"layer":"x"}`, 200)), digest.FromString("layer")}
	ctx := b.Context()
	for _, err := range []error{
		s.PutManifest(ctx, img.repo, img.m, metadata.Link{Flags: metadata.Confirmed | metadata.Admitted}, metadata.BlobLink{Digest: img.layer, Size: 3}),
		s.LinkBlobs(ctx, img.repo, metadata.BlobLink{Digest: img.layer, Size: 3, Flags: metadata.Confirmed}),
		s.PutTag(ctx, img.repo, "latest", metadata.TagRecord{Digest: img.m.Digest}),
	} {
		if err != nil {
			b.Fatal(err)
		}
	}
	// Let the writes' own announcements go by before filling the cache.
	time.Sleep(100 * time.Millisecond)
	if err := pull(s, img); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := pull(s, img); err != nil {
			b.Fatal(err)
		}
		s.Touch(img.repo, img.layer)
	}
}

// TestListenerTakesPoolSettings: a DSN may carry the pool's own settings
// (pool_max_conns, …); the listener's connection must not pass them to the
// server, which refuses unknown parameters, or airlock cannot start.
func TestListenerTakesPoolSettings(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DSN(t)
	sep := "?"
	if strings.Contains(dsn, "?") {
		sep = "&"
	}
	s := openStore(t, dsn+sep+"pool_max_conns=4&pool_min_conns=1")
	settled(t, s, testConn(t, dsn))
}
