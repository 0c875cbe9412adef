package evict_test

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/storage/evict"
)

// synthetic is a store of n one-byte blobs, blob i committed i seconds
// after base, made up as they are walked so that the test itself holds
// none of them. It records what the sweep holds at the walk's end.
type synthetic struct {
	n       int
	base    time.Time
	deleted []digest.Digest
	// heapAtEnd is the live heap after the last blob was handed over.
	heapAtEnd uint64
}

func syntheticDigest(i int) digest.Digest {
	return digest.NewDigestFromEncoded(digest.SHA256, fmt.Sprintf("%064x", i))
}

func (s *synthetic) Walk(ctx context.Context, fn func(d digest.Digest, size int64, modTime time.Time) error) error {
	for i := range s.n {
		if err := fn(syntheticDigest(i), 1, s.base.Add(time.Duration(i)*time.Second)); err != nil {
			return err
		}
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	s.heapAtEnd = ms.HeapAlloc
	return nil
}

func (s *synthetic) Delete(_ context.Context, d digest.Digest) error {
	s.deleted = append(s.deleted, d)
	return nil
}

func (s *synthetic) SpoolBytes() int64 { return 0 }

// TestSweepMemoryIsBounded: a sweep over a store of hundreds of thousands of blobs must
// not hold a record per blob. It holds a bounded number of the oldest,
// evicts those in order, and leaves the rest to the sweeps that follow.
func TestSweepMemoryIsBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("walks 300000 made-up blobs")
	}
	const n = 300_000
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	s := &synthetic{n: n, base: time.Now().Add(-100 * 24 * time.Hour)}
	// Everything must go but 1000 blobs: more than one sweep can hold.
	e := evict.New(evict.Options{Blobs: s, MaxBytes: 1000, LowWater: 1})
	res, err := e.Sweep(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if res.Blobs != n || res.Before != n {
		t.Fatalf("measured %d blobs, %d bytes; want %d of each", res.Blobs, res.Before, n)
	}
	const bound = 24 << 20
	if grew := int64(s.heapAtEnd) - int64(before.HeapAlloc); grew > bound {
		t.Errorf("a sweep of %d blobs holds %d MiB; want under %d MiB whatever the store's size", n, grew>>20, bound>>20)
	}
	if res.Evicted == 0 || res.Evicted != len(s.deleted) {
		t.Fatalf("evicted %d (deleted %d); want some, oldest first", res.Evicted, len(s.deleted))
	}
	for i, d := range s.deleted {
		if d != syntheticDigest(i) {
			t.Fatalf("deletion %d was %s, want the oldest left, %s", i, d, syntheticDigest(i))
		}
	}
}

// TestNudgeOnAFullVolumeMakesRoomUnderTheMaximum: a volume can fill up
// while the cache is under its maximum (a maximum set above the volume's
// size, other files on it). A sweep only measured then, so a nudge for a
// full volume made no room and airlock stayed uncached for good. The
// sweep after such a nudge takes what the cache holds as its maximum and
// trims to the low-water mark of that; without a nudge nothing changes,
// and an unlimited cache is never trimmed.
func TestNudgeOnAFullVolumeMakesRoomUnderTheMaximum(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		max     int64
		nudge   bool
		evicted int
	}{
		{"under the maximum", 1 << 30, false, 0},
		{"under the maximum, volume full", 1 << 30, true, 10},
		{"unlimited, volume full", 0, true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := &synthetic{n: 100, base: time.Now().Add(-24 * time.Hour)}
			e := evict.New(evict.Options{Blobs: s, MaxBytes: tc.max})
			if tc.nudge {
				e.Nudge()
			}
			res, err := e.Sweep(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if res.Evicted != tc.evicted {
				t.Fatalf("evicted %d of 100 blobs, want %d", res.Evicted, tc.evicted)
			}
			for i, d := range s.deleted {
				if d != syntheticDigest(i) {
					t.Fatalf("deletion %d was %s, want the oldest left", i, d)
				}
			}
			// The next sweep is an ordinary one again.
			if res, _ := e.Sweep(t.Context()); res.Evicted != 0 {
				t.Fatalf("the sweep after evicted %d", res.Evicted)
			}
		})
	}
}
