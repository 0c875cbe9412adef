package evict

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/airlock-registry/airlock/storage"
)

// Defaults for zero Options fields.
const (
	DefaultLowWater = 0.9
	DefaultMinAge   = 10 * time.Minute
	DefaultInterval = 5 * time.Minute
	DefaultNudgeGap = 10 * time.Second
)

// Blobs is the store an Evictor trims; *storage.Blobs implements it.
type Blobs interface {
	// Walk calls fn for every committed blob with its size and commit time.
	Walk(ctx context.Context, fn func(d digest.Digest, size int64, modTime time.Time) error) error
	// Delete removes a blob, or returns an error wrapping
	// storage.ErrNotFound if it is already gone.
	Delete(ctx context.Context, d digest.Digest) error
	// SpoolBytes returns the bytes downloads in progress hold. They count
	// toward the maximum but cannot be evicted.
	SpoolBytes() int64
}

// Index is the metadata index, whose file counts toward the maximum;
// *metadata.DB implements it.
type Index interface {
	// DiskSize returns the size of the index on disk.
	DiskSize() (int64, error)
}

// Uses tells when content was last used in any repository;
// *metadata.DB implements it.
type Uses interface {
	// LastUse returns the latest use of d, or an error wrapping
	// storage.ErrNotFound if it was never used.
	LastUse(ctx context.Context, d digest.Digest) (time.Time, error)
}

// Options configure an Evictor. Blobs is required; every other field has a
// default.
type Options struct {
	// Blobs is the store to measure and trim.
	Blobs Blobs
	// Uses supplies last-use times. Nil means commit times alone order
	// eviction.
	Uses Uses
	// Index is the metadata index. Its size counts toward MaxBytes, as
	// manifests live there. Nil counts nothing.
	Index Index
	// MaxBytes is the most the cache may hold, in bytes: committed blobs,
	// spools and the index together. 0 or less means unlimited: Sweep
	// measures and deletes nothing.
	MaxBytes int64
	// LowWater is the fraction of MaxBytes a sweep trims down to, so that
	// one sweep makes room for many fills instead of one. Outside (0, 1]
	// it is DefaultLowWater (0.9).
	LowWater float64
	// MinAge protects blobs committed or used more recently. 0 means
	// DefaultMinAge (10m); a negative value protects nothing.
	MinAge time.Duration
	// Logger receives a line per sweep that evicts (Info) and per failure
	// (Warn). Nil discards them.
	Logger *slog.Logger
	// Registerer receives the metrics. Nil leaves them unregistered.
	Registerer prometheus.Registerer
	// NudgeGap is the least time between a sweep and the next one that
	// Nudge asks for, so that a volume that stays full does not turn into
	// a sweep loop. 0 means DefaultNudgeGap (10s).
	NudgeGap time.Duration
	// Now is the clock. Nil means time.Now.
	Now func() time.Time
}

// Result is what one sweep found and did.
type Result struct {
	// Blobs is the number of blobs measured.
	Blobs int
	// Before and After are the bytes of committed blobs when the sweep
	// began and ended.
	Before, After int64
	// Spool and Index are the bytes of downloads in progress and of the
	// metadata index, measured once the blobs were. They count toward
	// MaxBytes with the blobs, but only blobs are evicted to make room.
	Spool, Index int64
	// Evicted and EvictedBytes count the blobs this sweep deleted.
	Evicted      int
	EvictedBytes int64
}

// Evictor keeps a blob store under a size. It is safe for concurrent use;
// concurrent sweeps run one after the other.
type Evictor struct {
	blobs    Blobs
	uses     Uses
	index    Index
	maxBytes atomic.Int64 // SetMaxBytes may change it while Run sweeps
	lowWater float64
	minAge   time.Duration
	log      *slog.Logger
	now      func() time.Time
	metrics  metrics

	sweeping sync.Mutex
	// nudged asks Run for a sweep before the next tick; one pending
	// request stands for any number.
	nudged   chan struct{}
	nudgeGap time.Duration
	// full is set by Nudge: a write found the volume full, so the next
	// sweep makes room even under MaxBytes.
	full atomic.Bool
}

// New returns an Evictor with o's defaults filled in, and registers its
// metrics on o.Registerer.
func New(o Options) *Evictor {
	e := &Evictor{
		blobs:    o.Blobs,
		uses:     o.Uses,
		index:    o.Index,
		lowWater: o.LowWater,
		minAge:   o.MinAge,
		log:      o.Logger,
		now:      o.Now,
		nudged:   make(chan struct{}, 1),
		nudgeGap: o.NudgeGap,
	}
	if e.nudgeGap <= 0 {
		e.nudgeGap = DefaultNudgeGap
	}
	if e.lowWater <= 0 || e.lowWater > 1 {
		e.lowWater = DefaultLowWater
	}
	switch {
	case e.minAge == 0:
		e.minAge = DefaultMinAge
	case e.minAge < 0:
		e.minAge = 0
	}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	if e.now == nil {
		e.now = time.Now
	}
	e.maxBytes.Store(o.MaxBytes)
	e.metrics = newMetrics(o.Registerer, e.log)
	return e
}

// SetMaxBytes changes the limit for the sweeps that follow; a
// configuration reload calls it. 0 or less means unlimited.
func (e *Evictor) SetMaxBytes(n int64) { e.maxBytes.Store(n) }

// candidate is a blob that may be evicted.
type candidate struct {
	digest digest.Digest
	size   int64
	used   time.Time // later of commit time and last use
}

// Sweep measures the cache and, if it holds more than MaxBytes (blobs,
// spools and index together), deletes the least recently used blobs that
// are older than MinAge until it holds at most LowWater × MaxBytes or
// nothing old enough is left. The first sweep after a Nudge (a full
// volume) takes what the cache holds, when that is less, as its maximum:
// the volume is smaller than MaxBytes allows for, and room must still be
// made. With no maximum nothing is ever deleted.
//
// It stops early when ctx ends. A blob that cannot be deleted is skipped
// and reported in the returned error after the others are tried; the
// Result counts what was done either way.
func (e *Evictor) Sweep(ctx context.Context) (Result, error) {
	if e.blobs == nil {
		return Result{}, errors.New("evict: no blob store to sweep")
	}
	e.sweeping.Lock()
	defer e.sweeping.Unlock()
	full := e.full.Swap(false)

	// The first walk only measures, in constant memory: most sweeps end
	// there. One over the maximum walks again for candidates.
	var res Result
	err := e.blobs.Walk(ctx, func(d digest.Digest, size int64, modTime time.Time) error {
		res.Blobs++
		res.Before += size
		return nil
	})
	if err != nil {
		return Result{}, fmt.Errorf("evict: measuring the blob store: %w", err)
	}
	res.After = res.Before
	// Spools are measured after the walk, so a fill that commits meanwhile
	// counts once (as a blob, if the walk saw it) or not at all, like one
	// that commits just after the sweep; never twice, which would evict
	// for room nobody takes.
	res.Spool = e.blobs.SpoolBytes()
	if e.index != nil {
		if res.Index, err = e.index.DiskSize(); err != nil {
			return res, fmt.Errorf("evict: measuring the metadata index: %w", err)
		}
	}
	defer func() {
		e.metrics.size.Set(float64(res.After))
		e.metrics.spool.Set(float64(res.Spool))
		e.metrics.index.Set(float64(res.Index))
	}()
	maxBytes := e.maxBytes.Load()
	if maxBytes <= 0 || (res.total() <= maxBytes && !full) {
		return res, nil
	}
	target := int64(e.lowWater * float64(min(maxBytes, res.total())))

	oldest, err := e.candidates(ctx)
	if err != nil {
		return res, err
	}
	all := oldest.items
	slices.SortFunc(all, func(a, b candidate) int {
		if older(a, b) {
			return -1
		}
		return 1
	})
	err = e.trim(ctx, all, target, &res)
	if oldest.dropped && res.total() > target {
		// This sweep could hold only part of the blobs old enough to go;
		// the next one takes the rest without waiting a whole interval.
		e.again()
	}
	return res, err
}

// total is what counts toward the maximum after the sweep.
func (r Result) total() int64 { return r.After + r.Spool + r.Index }

// maxCandidates is the most blobs one sweep holds in memory as eviction
// candidates (about 8 MiB), so that a store of millions of blobs costs a
// sweep no more memory than one of thousands. A sweep that needs more
// evicts these and asks for the next sweep at once (after NudgeGap).
const maxCandidates = 1 << 16

// candidates walks the store for the least recently used blobs that are
// older than MinAge, at most maxCandidates of them. It costs one index
// lookup per blob, which is why only a sweep over the maximum calls it.
func (e *Evictor) candidates(ctx context.Context) (*candidateHeap, error) {
	h := &candidateHeap{max: maxCandidates}
	cutoff := e.now().Add(-e.minAge)
	err := e.blobs.Walk(ctx, func(d digest.Digest, size int64, modTime time.Time) error {
		if modTime.After(cutoff) {
			return nil // committed within MinAge: never evicted
		}
		c := candidate{digest: d, size: size, used: modTime}
		if e.uses != nil {
			t, err := e.lastUse(ctx, d)
			if err != nil {
				return err
			}
			if t.After(c.used) {
				c.used = t
			}
		}
		if !c.used.After(cutoff) {
			h.offer(c)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("evict: choosing blobs to evict: %w", err)
	}
	return h, nil
}

// candidateHeap keeps the max least recently used candidates offered to
// it, in a max-heap by last use.
type candidateHeap struct {
	max     int
	items   []candidate
	dropped bool // some candidate offered was left out
}

func (h *candidateHeap) offer(c candidate) {
	if len(h.items) < h.max {
		h.items = append(h.items, c)
		h.up(len(h.items) - 1)
		return
	}
	h.dropped = true
	if !older(c, h.items[0]) {
		return
	}
	h.items[0] = c
	h.down(0)
}

// older orders candidates by last use, then digest, so that the same
// store always yields the same order.
func older(a, b candidate) bool {
	if c := a.used.Compare(b.used); c != 0 {
		return c < 0
	}
	return cmp.Less(a.digest, b.digest)
}

func (h *candidateHeap) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !older(h.items[p], h.items[i]) {
			return
		}
		h.items[p], h.items[i] = h.items[i], h.items[p]
		i = p
	}
}

func (h *candidateHeap) down(i int) {
	for {
		top := i
		for _, child := range []int{2*i + 1, 2*i + 2} {
			if child < len(h.items) && older(h.items[top], h.items[child]) {
				top = child
			}
		}
		if top == i {
			return
		}
		h.items[i], h.items[top] = h.items[top], h.items[i]
		i = top
	}
}

// lastUse is Uses.LastUse with "never used" as the zero time.
func (e *Evictor) lastUse(ctx context.Context, d digest.Digest) (time.Time, error) {
	t, err := e.uses.LastUse(ctx, d)
	if errors.Is(err, storage.ErrNotFound) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("evict: reading the last use of %s: %w", d, err)
	}
	return t, nil
}

// trim deletes candidates, oldest first, until the cache holds at most
// target bytes.
func (e *Evictor) trim(ctx context.Context, oldestFirst []candidate, target int64, res *Result) error {
	cutoff := e.now().Add(-e.minAge)
	var errs []error
	for _, c := range oldestFirst {
		if res.total() <= target {
			break
		}
		if c.used.After(cutoff) {
			break // sorted: everything after it is younger still
		}
		if err := ctx.Err(); err != nil {
			errs = append(errs, fmt.Errorf("evict: sweep stopped: %w", err))
			break
		}
		// The walk may be minutes old on a large remote store; a pull may
		// have used the blob since.
		if e.uses != nil {
			t, err := e.lastUse(ctx, c.digest)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if t.After(cutoff) {
				continue
			}
		}
		err := e.blobs.Delete(ctx, c.digest)
		switch {
		case errors.Is(err, storage.ErrNotFound):
			res.After -= c.size // gone already; it no longer counts
		case err != nil:
			errs = append(errs, fmt.Errorf("evict: deleting blob %s: %w", c.digest, err))
		default:
			res.After -= c.size
			res.Evicted++
			res.EvictedBytes += c.size
			e.metrics.evictions.Inc()
			e.metrics.evictedBytes.Add(float64(c.size))
		}
	}
	return errors.Join(errs...)
}

// Nudge asks Run for a sweep now rather than at the next interval: call it
// when a write found the volume full (storage.ErrNoSpace), so that room is
// made within seconds instead of minutes. That sweep makes room even if the
// cache is under MaxBytes (the volume is smaller than MaxBytes allows for):
// it trims to LowWater of what the cache holds. Do not call it when only
// one large blob did not fit; that is no reason to shrink the cache. It
// never blocks. Nudges while one is pending are one nudge, and Run waits
// NudgeGap after a sweep before it answers one.
func (e *Evictor) Nudge() {
	e.full.Store(true)
	e.again()
}

// again asks Run for another sweep, as Nudge does, without saying the
// volume is full.
func (e *Evictor) again() {
	select {
	case e.nudged <- struct{}{}:
	default:
	}
}

// Run sweeps at once, then every interval (DefaultInterval if interval is
// not positive) and when nudged, until ctx ends. It logs each sweep that
// evicts at Info and each failure at Warn, and keeps going after failures.
func (e *Evictor) Run(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = DefaultInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		e.sweepAndLog(ctx)
		last := time.Now()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-e.nudged:
			gap := time.NewTimer(e.nudgeGap - time.Since(last))
			select {
			case <-ctx.Done():
				gap.Stop()
				return
			case <-gap.C:
			}
		}
	}
}

func (e *Evictor) sweepAndLog(ctx context.Context) {
	// A fault in a storage driver must not take down the process that
	// serves pulls; the next sweep tries again.
	defer func() {
		if r := recover(); r != nil {
			e.log.Warn("cache eviction sweep failed", "panic", fmt.Sprint(r))
		}
	}()
	start := e.now()
	res, err := e.Sweep(ctx)
	if err != nil && ctx.Err() != nil {
		// Shutting down: the sweep stopped part way. What it evicted
		// before it stopped is still worth a line; the rest is not a
		// failure.
		if res.Evicted == 0 {
			return
		}
		err = nil
	}
	attrs := []any{
		"blobs", res.Blobs,
		"before_bytes", res.Before,
		"after_bytes", res.After,
		"spool_bytes", res.Spool,
		"index_bytes", res.Index,
		"max_bytes", e.maxBytes.Load(),
		"evicted", res.Evicted,
		"evicted_bytes", res.EvictedBytes,
		"duration", e.now().Sub(start),
	}
	switch {
	case err != nil:
		e.log.Warn("cache eviction sweep failed", append(attrs, "error", err)...)
	case res.Evicted > 0:
		e.log.Info("evicted least recently used blobs", attrs...)
	case ctx.Err() != nil:
		// Stopped part way: being over the maximum says nothing.
	case e.maxBytes.Load() > 0 && res.total() > e.maxBytes.Load():
		e.log.Warn("cache is over its maximum but every blob left was used within the minimum age (or downloads in progress and the index alone exceed it); raise cache.maxSize or grow the volume",
			append(attrs, "min_age", e.minAge)...)
	default:
		e.log.Debug("cache eviction sweep", attrs...)
	}
}
