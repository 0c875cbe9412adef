package evict_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/airlock-registry/airlock/storage"
	"github.com/airlock-registry/airlock/storage/evict"
	"github.com/airlock-registry/airlock/storage/metadata"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// cache is a real local blob store and a real metadata index.
type cache struct {
	dir   string
	blobs *storage.Blobs
	meta  *metadata.DB
}

func newCache(t *testing.T) *cache {
	t.Helper()
	dir := t.TempDir()
	blobs, err := storage.NewFilesystem(dir)
	if err != nil {
		t.Fatal(err)
	}
	meta, err := metadata.Open(filepath.Join(dir, "airlock.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { meta.Close() })
	return &cache{dir: dir, blobs: blobs, meta: meta}
}

// put commits n random bytes as a blob, as a fill does, and returns them.
func put(t *testing.T, b *storage.Blobs, n int) ([]byte, digest.Digest) {
	t.Helper()
	content := make([]byte, n)
	rand.Read(content)
	d := digest.FromBytes(content)
	s, err := b.NewSpool(d)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Discard(s)
	if _, err := s.Write(content); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(t.Context(), d, s); err != nil {
		t.Fatal(err)
	}
	return content, d
}

// commitTime sets the commit time of a local blob, which is its file's
// modification time.
func (c *cache) commitTime(t *testing.T, d digest.Digest, at time.Time) {
	t.Helper()
	p := filepath.Join(c.dir, "blobs", "blobs", string(d.Algorithm()), d.Encoded()[:2], d.Encoded(), "data")
	if err := os.Chtimes(p, at, at); err != nil {
		t.Fatal(err)
	}
}

func stored(t *testing.T, b *storage.Blobs) []digest.Digest {
	t.Helper()
	var ds []digest.Digest
	if err := b.Walk(t.Context(), func(d digest.Digest, _ int64, _ time.Time) error {
		ds = append(ds, d)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return ds
}

func TestSweep(t *testing.T) {
	t.Parallel()
	type blob struct {
		name    string
		size    int
		age     time.Duration // commit time before the test's start
		touched bool          // used (at the test's start) in some repository
	}
	// Five 100-byte blobs committed 5h, 4h, ... 1h ago, a to e.
	five := []blob{{"a", 100, 5 * time.Hour, false}, {"b", 100, 4 * time.Hour, false},
		{"c", 100, 3 * time.Hour, false}, {"d", 100, 2 * time.Hour, false}, {"e", 100, time.Hour, false}}
	with := func(bs []blob, change func(*blob)) []blob {
		bs = slices.Clone(bs)
		for i := range bs {
			change(&bs[i])
		}
		return bs
	}
	tests := []struct {
		name     string
		blobs    []blob
		max      int64
		lowWater float64
		minAge   time.Duration
		clock    time.Duration // the evictor's clock, ahead of the test's start
		evicted  []string
		after    int64
	}{
		{name: "unlimited deletes nothing", blobs: five, max: 0, clock: time.Hour, after: 500},
		{name: "at the maximum deletes nothing", blobs: five, max: 500, clock: time.Hour, after: 500},
		{name: "oldest first down to low water", blobs: five, max: 450, clock: time.Hour,
			evicted: []string{"a"}, after: 400},
		{name: "low water trims well below the maximum", blobs: five, max: 480, lowWater: 0.5, clock: time.Hour,
			evicted: []string{"a", "b", "c"}, after: 200},
		{name: "a recent use outranks a recent commit", max: 450, clock: time.Hour,
			blobs:   with(five, func(b *blob) { b.touched = b.name == "a" }),
			evicted: []string{"b"}, after: 400},
		{name: "one large blob frees enough", max: 500, clock: time.Hour,
			blobs: []blob{{"small-old", 10, 9 * time.Hour, false}, {"big", 400, 8 * time.Hour, false},
				{"small-new", 10, 7 * time.Hour, false}, {"rest", 200, 6 * time.Hour, false}},
			evicted: []string{"small-old", "big"}, after: 210},
		{name: "minimum age protects recent commits", max: 100, minAge: 10 * time.Minute,
			blobs: with(five, func(b *blob) {
				if b.name != "a" {
					b.age = time.Minute
				}
			}),
			evicted: []string{"a"}, after: 400},
		{name: "minimum age protects recent uses", max: 100, minAge: 10 * time.Minute,
			blobs:   with(five, func(b *blob) { b.touched = b.name != "c" }),
			evicted: []string{"c"}, after: 400},
		{name: "negative minimum age protects nothing", max: 100, minAge: -1, clock: time.Second,
			blobs:   with(five, func(b *blob) { b.touched = true; b.age = 0 }),
			evicted: []string{"a", "b", "c", "d", "e"}, after: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := newCache(t)
			start := time.Now()
			names := map[digest.Digest]string{}
			for _, b := range tt.blobs {
				_, d := put(t, c.blobs, b.size)
				c.commitTime(t, d, start.Add(-b.age))
				if b.touched {
					c.meta.Touch("dockerhub/library/"+b.name, d)
				}
				names[d] = b.name
			}
			reg := prometheus.NewRegistry()
			e := evict.New(evict.Options{
				Blobs: c.blobs, Uses: c.meta, MaxBytes: tt.max, LowWater: tt.lowWater, MinAge: tt.minAge,
				Registerer: reg, Now: func() time.Time { return start.Add(tt.clock) },
			})
			res, err := e.Sweep(t.Context())
			if err != nil {
				t.Fatalf("Sweep: %v", err)
			}
			var left []string
			for _, d := range stored(t, c.blobs) {
				left = append(left, names[d])
			}
			var evicted []string
			for _, b := range tt.blobs {
				if !slices.Contains(left, b.name) {
					evicted = append(evicted, b.name)
				}
			}
			if !slices.Equal(evicted, tt.evicted) {
				t.Errorf("evicted %v, want %v", evicted, tt.evicted)
			}
			var total int64
			for _, b := range tt.blobs {
				total += int64(b.size)
			}
			var evictedBytes int64
			for _, b := range tt.blobs {
				if slices.Contains(tt.evicted, b.name) {
					evictedBytes += int64(b.size)
				}
			}
			want := evict.Result{Blobs: len(tt.blobs), Before: total, After: tt.after,
				Evicted: len(tt.evicted), EvictedBytes: evictedBytes}
			if res != want {
				t.Errorf("Sweep = %+v, want %+v", res, want)
			}
			for name, v := range map[string]float64{
				"airlock_cache_size_bytes":          float64(tt.after),
				"airlock_cache_evictions_total":     float64(len(tt.evicted)),
				"airlock_cache_evicted_bytes_total": float64(evictedBytes),
			} {
				if got := gathered(t, reg, name); got != v {
					t.Errorf("%s = %v, want %v", name, got, v)
				}
			}
		})
	}
}

// gathered returns the value of the single series called name in reg.
func gathered(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		m := f.GetMetric()[0]
		if g := m.GetGauge(); g != nil {
			return g.GetValue()
		}
		return m.GetCounter().GetValue()
	}
	t.Fatalf("%s is not registered", name)
	return 0
}

// TestSweepWhileReading proves eviction does not cut off a client that is
// already streaming the evicted blob.
func TestSweepWhileReading(t *testing.T) {
	t.Parallel()
	c := newCache(t)
	content, d := put(t, c.blobs, 1<<20)
	c.commitTime(t, d, time.Now().Add(-time.Hour))
	rc, _, err := c.blobs.Open(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	head := make([]byte, 4096)
	if _, err := io.ReadFull(rc, head); err != nil {
		t.Fatal(err)
	}

	res, err := evict.New(evict.Options{Blobs: c.blobs, Uses: c.meta, MaxBytes: 1}).Sweep(t.Context())
	if err != nil || res.Evicted != 1 {
		t.Fatalf("Sweep = %+v, %v; want the blob evicted", res, err)
	}
	if _, err := c.blobs.Stat(t.Context(), d); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Stat after eviction = %v, want ErrNotFound", err)
	}
	rest, err := io.ReadAll(rc)
	if err != nil || !bytes.Equal(append(head, rest...), content) {
		t.Fatalf("read across eviction: %d bytes, %v; want all %d", len(head)+len(rest), err, len(content))
	}
}

// TestSweepRemote runs against a driver without the local fast path, where
// Walk goes through the driver.
func TestSweepRemote(t *testing.T) {
	t.Parallel()
	blobs, err := storage.NewBlobs(inmemory.New(), "", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for range 10 {
		put(t, blobs, 100)
	}
	e := evict.New(evict.Options{Blobs: blobs, MaxBytes: 750, LowWater: 0.8,
		Now: func() time.Time { return time.Now().Add(time.Hour) }})
	res, err := e.Sweep(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	want := evict.Result{Blobs: 10, Before: 1000, After: 600, Evicted: 4, EvictedBytes: 400}
	if res != want {
		t.Fatalf("Sweep = %+v, want %+v", res, want)
	}
	if n := len(stored(t, blobs)); n != 6 {
		t.Fatalf("%d blobs left, want 6", n)
	}
}

// TestSweepCountsSpoolsAndIndex proves the maximum bounds everything the
// cache keeps on its volume: downloads in progress and the metadata index
// (where manifests live) count with the blobs, and blobs are evicted to
// make room for them.
func TestSweepCountsSpoolsAndIndex(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		written int64 // bytes written to a spool left in progress
		reserve int64 // bytes that spool reserved
		index   bool  // count the metadata index
		evicted int
	}{
		{name: "blobs alone fit", evicted: 0},
		{name: "a download in progress", written: 250, evicted: 3},
		{name: "a reserved download", written: 10, reserve: 250, evicted: 3},
		{name: "the metadata index", index: true, evicted: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := newCache(t)
			for i := range 5 {
				_, d := put(t, c.blobs, 100)
				c.commitTime(t, d, time.Now().Add(-time.Duration(5-i)*time.Hour))
			}
			if tt.written > 0 {
				content := make([]byte, tt.written)
				s, err := c.blobs.NewSpool(digest.FromString("in progress"))
				if err != nil {
					t.Fatal(err)
				}
				defer c.blobs.Discard(s)
				if err := s.Reserve(tt.reserve); err != nil {
					t.Fatal(err)
				}
				if _, err := s.Write(content); err != nil {
					t.Fatal(err)
				}
			}
			opts := evict.Options{Blobs: c.blobs, Uses: c.meta, MaxBytes: 500, LowWater: 0.9}
			var indexBytes int64
			if tt.index {
				opts.Index = c.meta
				var err error
				if indexBytes, err = c.meta.DiskSize(); err != nil {
					t.Fatal(err)
				}
				// Blobs and index just over the maximum: one blob goes.
				opts.MaxBytes = 500 + indexBytes - 1
				opts.LowWater = 1
			}
			reg := prometheus.NewRegistry()
			opts.Registerer = reg
			res, err := evict.New(opts).Sweep(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			spool := max(tt.written, tt.reserve)
			if res.Evicted != tt.evicted || res.Spool != spool || res.Index != indexBytes {
				t.Errorf("Sweep = %+v; want %d evicted, Spool %d, Index %d", res, tt.evicted, spool, indexBytes)
			}
			if total, bound := res.After+res.Spool+res.Index, opts.MaxBytes; total > bound {
				t.Errorf("after the sweep the cache holds %d bytes, over its maximum %d", total, bound)
			}
			for name, v := range map[string]int64{
				"airlock_cache_size_bytes":  res.After,
				"airlock_cache_spool_bytes": spool,
				"airlock_cache_index_bytes": indexBytes,
			} {
				if got := gathered(t, reg, name); got != float64(v) {
					t.Errorf("%s = %v, want %d", name, got, v)
				}
			}
		})
	}
}

// failingDelete is the real store with one digest that cannot be deleted,
// as a permission problem or a flaky bucket would cause.
type failingDelete struct {
	*storage.Blobs
	fail digest.Digest
}

func (f failingDelete) Delete(ctx context.Context, d digest.Digest) error {
	if d == f.fail {
		return errors.New("permission denied")
	}
	return f.Blobs.Delete(ctx, d)
}

func TestSweepErrors(t *testing.T) {
	t.Parallel()
	t.Run("a failed delete skips that blob", func(t *testing.T) {
		t.Parallel()
		c := newCache(t)
		start := time.Now()
		var ds []digest.Digest
		for i := range 3 {
			_, d := put(t, c.blobs, 100)
			c.commitTime(t, d, start.Add(-time.Duration(3-i)*time.Hour))
			ds = append(ds, d)
		}
		e := evict.New(evict.Options{Blobs: failingDelete{c.blobs, ds[0]}, Uses: c.meta, MaxBytes: 250})
		res, err := e.Sweep(t.Context())
		if err == nil || !strings.Contains(err.Error(), ds[0].String()) {
			t.Fatalf("Sweep error = %v, want one naming %s", err, ds[0])
		}
		if res.Evicted != 1 || res.After != 200 {
			t.Fatalf("Sweep = %+v, want the next oldest evicted instead", res)
		}
		if left := stored(t, c.blobs); !slices.Contains(left, ds[0]) || slices.Contains(left, ds[1]) {
			t.Fatalf("left %v; want the undeletable oldest kept and the second evicted", left)
		}
	})
	t.Run("an unreadable index deletes nothing", func(t *testing.T) {
		t.Parallel()
		c := newCache(t)
		_, d := put(t, c.blobs, 100)
		c.commitTime(t, d, time.Now().Add(-time.Hour))
		c.meta.Close()
		res, err := evict.New(evict.Options{Blobs: c.blobs, Uses: c.meta, MaxBytes: 1}).Sweep(t.Context())
		if err == nil || res.Evicted != 0 {
			t.Fatalf("Sweep with a closed index = %+v, %v; want an error and nothing evicted", res, err)
		}
		if len(stored(t, c.blobs)) != 1 {
			t.Fatal("blob deleted without knowing its last use")
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		t.Parallel()
		c := newCache(t)
		put(t, c.blobs, 100)
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if _, err := evict.New(evict.Options{Blobs: c.blobs, MaxBytes: 1}).Sweep(ctx); !errors.Is(err, context.Canceled) {
			t.Fatalf("Sweep with a cancelled context = %v", err)
		}
	})
}

// TestNewReusesMetrics proves an Evictor built again on the same registry,
// as a configuration reload does, keeps counting on the same series.
func TestNewReusesMetrics(t *testing.T) {
	t.Parallel()
	c := newCache(t)
	reg := prometheus.NewRegistry()
	for range 2 {
		_, d := put(t, c.blobs, 100)
		c.commitTime(t, d, time.Now().Add(-time.Hour))
		e := evict.New(evict.Options{Blobs: c.blobs, MaxBytes: 1, Registerer: reg})
		if _, err := e.Sweep(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	if got := gathered(t, reg, "airlock_cache_evictions_total"); got != 2 {
		t.Fatalf("evictions after two Evictors = %v, want 2", got)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) != 0 {
		t.Fatalf("metric lint: %v %v", problems, err)
	}
}

// logBuffer is a slog destination safe to read while Run writes.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func TestRun(t *testing.T) {
	t.Parallel()
	c := newCache(t)
	var logs logBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	// The evictor's clock runs an hour ahead, so every blob is old enough
	// the moment it is committed. (Setting commit times back after each put
	// would let a sweep see a young blob beside the next put's spool, and
	// rightly warn that the cache is over its maximum.)
	e := evict.New(evict.Options{Blobs: c.blobs, Uses: c.meta, MaxBytes: 150, LowWater: 1, Logger: log,
		Now: func() time.Time { return time.Now().Add(time.Hour) }})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		e.Run(ctx, 5*time.Millisecond)
		close(done)
	}()

	// Blobs arrive while Run sweeps; each sweep trims what is old enough.
	for range 4 {
		put(t, c.blobs, 100)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(stored(t, c.blobs)) > 1 {
		if time.Now().After(deadline) {
			t.Fatalf("Run left %d blobs after 5s, want 1", len(stored(t, c.blobs)))
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	if out := logs.String(); !strings.Contains(out, "level=INFO") || !strings.Contains(out, "evicted least recently used blobs") {
		t.Errorf("no Info line for a sweep that evicted; log:\n%s", out)
	}
	if out := logs.String(); strings.Contains(out, "level=WARN") {
		t.Errorf("Warn lines from sweeps that succeeded:\n%s", out)
	}
}

// TestRunLogsFailures proves Run reports a failing store at Warn and keeps
// sweeping.
func TestRunLogsFailures(t *testing.T) {
	t.Parallel()
	c := newCache(t)
	_, d := put(t, c.blobs, 100)
	c.commitTime(t, d, time.Now().Add(-time.Hour))
	var logs logBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	e := evict.New(evict.Options{Blobs: failingDelete{c.blobs, d}, MaxBytes: 1, Logger: log})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		e.Run(ctx, time.Millisecond)
		close(done)
	}()
	deadline := time.Now().Add(5 * time.Second)
	for strings.Count(logs.String(), "level=WARN") < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("want two Warn lines from failing sweeps within 5s; log:\n%s", logs.String())
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	<-done
	if out := logs.String(); !strings.Contains(out, "permission denied") || !strings.Contains(out, d.String()) {
		t.Errorf("Warn lines do not say what failed:\n%s", out)
	}
}

// TestNudge proves a nudge, as a fill that found the volume full sends,
// makes Run sweep long before its next interval.
func TestNudge(t *testing.T) {
	t.Parallel()
	c := newCache(t)
	_, d := put(t, c.blobs, 100)
	c.commitTime(t, d, time.Now().Add(-time.Hour))
	reg := prometheus.NewRegistry()
	e := evict.New(evict.Options{Blobs: c.blobs, Uses: c.meta, Registerer: reg, NudgeGap: 10 * time.Millisecond})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		e.Run(ctx, time.Hour)
		close(done)
	}()
	defer func() {
		cancel()
		<-done
	}()
	// The first sweep, at once, only measures: no maximum yet.
	deadline := time.Now().Add(5 * time.Second)
	for gathered(t, reg, "airlock_cache_size_bytes") != 100 {
		if time.Now().After(deadline) {
			t.Fatal("Run did not sweep at once")
		}
		time.Sleep(5 * time.Millisecond)
	}
	e.SetMaxBytes(1)
	for range 3 {
		e.Nudge() // never blocks, however many
	}
	for len(stored(t, c.blobs)) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("a nudged Run did not sweep within 5s (its interval is an hour)")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
