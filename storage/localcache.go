package storage

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/verify"
)

// WithLocalCache keeps, for a remote driver, a copy on local disk of each
// blob this store commits, in dir, up to maxBytes (the least recently used
// go first). Hits on those blobs are then served from an *os.File
// (sendfile) without a round trip to the object store, and keep being
// served while it is down. dir must be on the same filesystem as the spool
// directory: a committed spool becomes the copy by a rename. Blobs that
// other replicas committed are read from the object store and not copied.
// Ignored on the local fast path, which is all local already.
func WithLocalCache(dir string, maxBytes int64) Option {
	return func(b *Blobs) { b.cache = &localCache{dir: dir, max: maxBytes} }
}

// localCache is the local copy of remote blobs. Its index lives in memory,
// so a hit costs no disk access but the open, and recency is kept there
// too: a warm pull writes nothing to disk. After a restart, recency starts
// from the files' modification times, which are their commit times.
type localCache struct {
	dir string
	max int64

	mu    sync.Mutex
	index map[digest.Digest]*cached
	total int64
}

type cached struct {
	size    int64
	lastUse time.Time
}

// open creates the directory, checks that a spool can be renamed into it,
// and reads the copies an earlier run left.
func (c *localCache) open(spoolDir string) error {
	if c.max <= 0 {
		return fmt.Errorf("storage: local cache %s: a positive size bound is required", c.dir)
	}
	if err := os.MkdirAll(c.dir, 0o750); err != nil {
		return fmt.Errorf("storage: creating local cache directory: %w", err)
	}
	f, err := os.CreateTemp(spoolDir, "probe-*"+spoolSuffix)
	if err != nil {
		return fmt.Errorf("storage: spool directory %s is not writable: %w", spoolDir, err)
	}
	f.Close()
	dst := filepath.Join(c.dir, filepath.Base(f.Name()))
	err = os.Rename(f.Name(), dst)
	os.Remove(f.Name())
	os.Remove(dst)
	if err != nil {
		return fmt.Errorf("storage: spool directory %s must be on the same filesystem as local cache %s: %w",
			spoolDir, c.dir, err)
	}
	return c.load()
}

func (c *localCache) load() error {
	entries, err := os.ReadDir(c.dir)
	if err != nil {
		return fmt.Errorf("storage: reading local cache: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.index = make(map[digest.Digest]*cached, len(entries))
	for _, e := range entries {
		d, ok := cacheName(e.Name())
		fi, err := e.Info()
		if !ok || err != nil || !fi.Mode().IsRegular() {
			// A probe or anything else a crash left: not a copy.
			os.Remove(filepath.Join(c.dir, e.Name()))
			continue
		}
		c.index[d] = &cached{size: fi.Size(), lastUse: fi.ModTime()}
		c.total += fi.Size()
	}
	c.shrinkLocked()
	return nil
}

// path is where the copy of d lives: the digest, algorithm first, as one
// file name.
func (c *localCache) path(d digest.Digest) string {
	return filepath.Join(c.dir, string(d.Algorithm())+"-"+d.Encoded())
}

func cacheName(name string) (digest.Digest, bool) {
	alg, hex, ok := strings.Cut(name, "-")
	if !ok {
		return "", false
	}
	d := digest.NewDigestFromEncoded(digest.Algorithm(alg), hex)
	return d, verify.Check(d) == nil
}

// get opens the copy of d, if there is one, and marks it used. A nil cache
// has no copies.
func (c *localCache) get(d digest.Digest) (*os.File, int64, bool) {
	if c == nil {
		return nil, 0, false
	}
	c.mu.Lock()
	e, ok := c.index[d]
	if ok {
		e.lastUse = time.Now()
	}
	c.mu.Unlock()
	if !ok {
		return nil, 0, false
	}
	f, err := os.Open(c.path(d))
	if err != nil {
		// Removed under the index (by hand, or a shrink that raced this
		// open): the object store still has the blob.
		c.drop(d)
		return nil, 0, false
	}
	return f, e.size, true
}

// has reports whether there is a copy of d, without opening it. A nil
// cache has no copies.
func (c *localCache) has(d digest.Digest) (int64, bool) {
	if c == nil {
		return 0, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.index[d]
	if !ok {
		return 0, false
	}
	return e.size, true
}

// adopt makes the committed spool s the copy of its blob. The spool's
// bytes were verified and are synced first, so a crash leaves either no
// copy or a whole one. It reports whether the spool file was taken; when
// it was not, the caller removes it as usual. A copy that cannot be made
// costs only the local hit, so adopt returns no error.
func (c *localCache) adopt(s *Spool) bool {
	size := s.Size()
	if size > c.max {
		return false
	}
	if s.reserved.Load() > size && s.f.Truncate(size) != nil {
		return false
	}
	if s.f.Sync() != nil {
		return false
	}
	// The rename is made under the lock: a shrink or drop of the same
	// digest, which removes its file under the lock, could otherwise
	// remove the copy just renamed in, and the index would then count a
	// file that is not there (two fills of one digest commit twice).
	c.mu.Lock()
	defer c.mu.Unlock()
	if os.Rename(s.path, c.path(s.digest)) != nil {
		return false
	}
	if old, ok := c.index[s.digest]; ok {
		c.total -= old.size
	}
	c.index[s.digest] = &cached{size: size, lastUse: time.Now()}
	c.total += size
	c.shrinkLocked()
	return true
}

// drop removes the copy of d, if any.
func (c *localCache) drop(d digest.Digest) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.removeLocked(d)
}

func (c *localCache) removeLocked(d digest.Digest) {
	e, ok := c.index[d]
	if !ok {
		return
	}
	delete(c.index, d)
	c.total -= e.size
	// Readers that have the file open read on: the data goes with the
	// last handle. A file that cannot be removed is out of the index all
	// the same, and so never served; the next load counts it again.
	os.Remove(c.path(d))
}

// shrinkLocked removes the least recently used copies until the cache is
// within its bound.
func (c *localCache) shrinkLocked() {
	if c.total <= c.max {
		return
	}
	type use struct {
		d digest.Digest
		t time.Time
	}
	uses := make([]use, 0, len(c.index))
	for d, e := range c.index {
		uses = append(uses, use{d, e.lastUse})
	}
	slices.SortFunc(uses, func(a, b use) int { return cmp.Compare(a.t.UnixNano(), b.t.UnixNano()) })
	for _, u := range uses {
		if c.total <= c.max {
			return
		}
		c.removeLocked(u.d)
	}
}

// cacheDriver is the driver of a store with a local cache: every deletion,
// Blobs.Delete's eviction or a commit's removal of a wrong object, goes
// through it, and takes the local copy of the blob with it.
type cacheDriver struct {
	storagedriver.StorageDriver
	cache *localCache
}

func (c cacheDriver) Delete(ctx context.Context, p string) error {
	if d, ok := parseBlobPath(p); ok {
		c.cache.drop(d)
	}
	return c.StorageDriver.Delete(ctx, p)
}
