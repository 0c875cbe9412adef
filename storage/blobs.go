package storage

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"sync"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/verify"
)

// uploadsDir is the driver directory for remote commits in progress. It sits
// outside /blobs so that nothing under /blobs is ever partial.
const uploadsDir = "/_uploads"

// defaultUploadGrace is how old a temporary upload must be before Recover
// treats it as abandoned. Several airlock instances may share one remote
// bucket, so a young upload may belong to a live peer.
const defaultUploadGrace = time.Hour

// Blobs is a content-addressed blob store over a storage driver. It is safe
// for concurrent use.
type Blobs struct {
	driver    storagedriver.StorageDriver
	localRoot string // driver root on local disk, or "" for remote drivers
	spoolDir  string

	uploadGrace time.Duration
	// redirects lets RedirectURL hand out the driver's presigned URLs.
	redirects bool
	// cache is the local copy of a remote store's blobs, or nil.
	cache *localCache

	mu     sync.Mutex
	spools map[string]*Spool // live spools by path, which Recover must keep

	lookMu      sync.Mutex
	looks       map[digest.Digest]*look // Open's driver Stats in flight
	lookTimeout time.Duration           // lookTimeout; tests shorten it
}

// look is one driver Stat that concurrent Opens of a blob share.
type look struct {
	done chan struct{}
	size int64
	err  error
}

// lookTimeout bounds a shared look: it runs on behalf of every Open
// waiting for it, not on any one's context.
const lookTimeout = time.Minute

// Option changes how NewBlobs sets a store up.
type Option func(*Blobs)

// WithRedirects says whether RedirectURL hands out the driver's URLs
// (presigned S3, GCS or Azure URLs), sending clients to the object store
// for the bytes of a hit. Default: on. Turn it off when clients cannot
// reach the object store's endpoint (a cluster-internal address), or to
// keep every byte served by airlock.
func WithRedirects(on bool) Option { return func(b *Blobs) { b.redirects = on } }

// NewBlobs returns a store over driver.
//
// localRoot, when non-empty, must be the root directory of a filesystem
// driver; the store then serves *os.File handles and commits by rename.
// spoolDir holds downloads in progress and must be on the same filesystem as
// localRoot when that is set. Both directories are created if missing, and
// NewBlobs checks by a probe rename that they share a filesystem and that
// localRoot is indeed what the driver sees.
func NewBlobs(driver storagedriver.StorageDriver, localRoot, spoolDir string, opts ...Option) (*Blobs, error) {
	if driver == nil {
		return nil, errors.New("storage: a storage driver is required")
	}
	if spoolDir == "" {
		return nil, errors.New("storage: a spool directory is required for downloads in progress")
	}
	if err := os.MkdirAll(spoolDir, 0o750); err != nil {
		return nil, fmt.Errorf("storage: creating spool directory: %w", err)
	}
	b := &Blobs{
		driver:      driver,
		localRoot:   localRoot,
		spoolDir:    spoolDir,
		uploadGrace: defaultUploadGrace,
		lookTimeout: lookTimeout,
		redirects:   true,
		spools:      make(map[string]*Spool),
		looks:       make(map[digest.Digest]*look),
	}
	for _, o := range opts {
		o(b)
	}
	if b.cache != nil && localRoot != "" {
		b.cache = nil // the blobs are local already
	}
	if b.cache != nil {
		if err := b.cache.open(spoolDir); err != nil {
			return nil, err
		}
		b.driver = cacheDriver{StorageDriver: driver, cache: b.cache}
	}
	if localRoot != "" {
		if err := os.MkdirAll(localRoot, 0o750); err != nil {
			return nil, fmt.Errorf("storage: creating blob root: %w", err)
		}
		if err := b.probeLocal(); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// NewFilesystem returns the embedded default store: a filesystem driver
// rooted at dir/blobs with downloads spooled in dir/spool.
func NewFilesystem(dir string) (*Blobs, error) {
	root := filepath.Join(dir, "blobs")
	drv := filesystem.New(filesystem.DriverParameters{RootDirectory: root, MaxThreads: 100})
	return NewBlobs(drv, root, filepath.Join(dir, "spool"))
}

// probeLocal renames a file from the spool directory into localRoot and looks
// for it through the driver. A spool on another filesystem would make every
// commit fail with EXDEV, and a localRoot that is not the driver's root would
// publish blobs the driver never sees; both are configuration mistakes best
// reported at start-up.
//
// A full volume skips the probe rather than fail: the spools a crash left
// behind may be what fills it, and only a store that starts can remove
// them (Recover) and make room (eviction). Until then commits fail with
// ErrNoSpace, which callers survive by not caching.
func (b *Blobs) probeLocal() error {
	f, err := os.CreateTemp(b.spoolDir, "probe-*"+spoolSuffix)
	if errors.Is(noSpace(err), ErrNoSpace) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("storage: spool directory %s is not writable: %w", b.spoolDir, err)
	}
	src := f.Name()
	f.Close()
	name := "_probe-" + filepath.Base(src)
	dst := filepath.Join(b.localRoot, name)
	if err := os.Rename(src, dst); err != nil {
		os.Remove(src)
		if errors.Is(noSpace(err), ErrNoSpace) {
			return nil
		}
		return fmt.Errorf("storage: spool directory %s must be on the same filesystem as blob root %s: %w",
			b.spoolDir, b.localRoot, err)
	}
	defer os.Remove(dst)
	if _, err := b.driver.Stat(context.Background(), "/"+name); err != nil {
		return fmt.Errorf("storage: blob root %s is not the root directory of the %s driver: %w",
			b.localRoot, b.driver.Name(), err)
	}
	return nil
}

// probeTimeout bounds Probe: an endpoint that drops packets would otherwise
// hold start-up for as long as TCP keeps trying.
const probeTimeout = 30 * time.Second

// Probe checks that a remote driver's store takes writes: it writes a
// small object under the uploads directory and deletes it again. A missing
// bucket, wrong credentials or an unreachable endpoint would otherwise show
// only on the first commit, as a cache that never fills; they are
// configuration mistakes best reported at start-up. The error wraps
// ErrUnavailable. On the local fast path NewBlobs has probed already, and
// Probe does nothing.
//
// A probe a crash leaves behind is removed by Recover, like any abandoned
// upload.
func (b *Blobs) Probe(ctx context.Context) error {
	if b.localRoot != "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	var r [8]byte
	rand.Read(r[:])
	p := path.Join(uploadsDir, "probe-"+hex.EncodeToString(r[:]))
	err := b.driver.PutContent(ctx, p, []byte("airlock start-up probe\n"))
	if err == nil {
		err = b.driver.Delete(ctx, p)
	}
	if err != nil {
		return fmt.Errorf("storage: writing a probe object: %w",
			&storeError{driver: b.driver.Name(), unreachable: unreachable(err), err: err})
	}
	// A miss must read as a miss: credentials that may write but not list
	// make S3 answer 403 for a missing object, which the driver cannot tell
	// from a refusal, and every cold pull would then be a 503.
	_, err = b.driver.Stat(ctx, p)
	var pnf storagedriver.PathNotFoundError
	if !errors.As(err, &pnf) {
		if err == nil {
			err = errors.New("the deleted probe object is still there")
		}
		return fmt.Errorf("storage: looking up a deleted probe object must answer \"not found\" (do the credentials allow listing the bucket?): %w",
			&storeError{driver: b.driver.Name(), unreachable: unreachable(err), err: err})
	}
	return nil
}

// blobPath is the driver path of d. d must have passed verify.Check.
func blobPath(d digest.Digest) string {
	hex := d.Encoded()
	return path.Join("/blobs", string(d.Algorithm()), hex[:2], hex, "data")
}

// localPath is the file of d on the local fast path.
func (b *Blobs) localPath(d digest.Digest) string {
	return filepath.Join(b.localRoot, filepath.FromSlash(blobPath(d)))
}

// Stat returns the size of blob d, or an error wrapping ErrNotFound when
// the store does not hold it. For a remote driver that cannot answer, the
// error wraps ErrUnavailable instead: a store that is down is not a miss.
func (b *Blobs) Stat(ctx context.Context, d digest.Digest) (int64, error) {
	if err := verify.Check(d); err != nil {
		return 0, err
	}
	if b.localRoot != "" {
		fi, err := os.Stat(b.localPath(d))
		if err != nil {
			return 0, notFound(d, err)
		}
		return fi.Size(), nil
	}
	if size, ok := b.cache.has(d); ok {
		return size, nil
	}
	fi, err := b.driver.Stat(ctx, blobPath(d))
	if err != nil {
		return 0, b.remoteErr(ctx, d, err)
	}
	if fi.IsDir() {
		return 0, fmt.Errorf("blob %s: %s is a directory in the %s driver", d, blobPath(d), b.driver.Name())
	}
	return fi.Size(), nil
}

// Open returns blob d for reading and seeking, with its size. On the local
// fast path the reader is an *os.File. For remote drivers it reopens the
// driver's reader at the new offset after a Seek; it uses ctx for those
// reads, so it must not outlive ctx.
func (b *Blobs) Open(ctx context.Context, d digest.Digest) (io.ReadSeekCloser, int64, error) {
	if err := verify.Check(d); err != nil {
		return nil, 0, err
	}
	if b.localRoot != "" {
		f, err := os.Open(b.localPath(d))
		if err != nil {
			return nil, 0, notFound(d, err)
		}
		fi, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, 0, fmt.Errorf("blob %s: %w", d, err)
		}
		return f, fi.Size(), nil
	}
	if f, size, ok := b.cache.get(d); ok {
		return f, size, nil
	}
	size, err := b.sharedStat(ctx, d)
	if err != nil {
		return nil, 0, err
	}
	return &driverReader{ctx: ctx, driver: b.driver, path: blobPath(d), size: size,
		fail: func(err error) error { return b.remoteErr(ctx, d, err) }}, size, nil
}

// sharedStat is Stat for Open: concurrent Opens of one blob share one
// request to the object store. A cold burst sends every client of a layer
// to the store at once, each with a round trip the store answers alike;
// one asks, the others wait for its answer or for their own context. A
// commit through this store forgets the look in flight (forgetLook), so
// an Open after it finds the blob. An Open that joins a look begun just
// before another replica's commit may miss the blob, as it would have a
// moment earlier: in a pull a miss only sends the request to the blob's
// fill, whose own look (Stat, never shared) finds the commit.
func (b *Blobs) sharedStat(ctx context.Context, d digest.Digest) (int64, error) {
	b.lookMu.Lock()
	l := b.looks[d]
	if l == nil {
		l = &look{done: make(chan struct{})}
		b.looks[d] = l
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.lookTimeout)
		go func() {
			defer cancel()
			l.size, l.err = b.Stat(lctx, d)
			if l.err != nil && !errors.Is(l.err, ErrNotFound) && lctx.Err() != nil {
				// The deadline is the look's own, which no Open set: the
				// store did not answer, and every Open waiting says so
				// rather than that its own time ran out.
				l.err = fmt.Errorf("blob %s: %w", d, &storeError{driver: b.driver.Name(), unreachable: true,
					err: fmt.Errorf("no answer within %v", b.lookTimeout)})
			}
			b.lookMu.Lock()
			if b.looks[d] == l {
				delete(b.looks, d)
			}
			b.lookMu.Unlock()
			close(l.done)
		}()
	}
	b.lookMu.Unlock()
	select {
	case <-l.done:
		return l.size, l.err
	case <-ctx.Done():
		return 0, context.Cause(ctx)
	}
}

// forgetLook makes Opens of d begun from now on ask the store anew: a
// look in flight may have begun before d was committed or deleted, and
// an Open that starts after the commit returned must find the blob (a
// scan reopens one right after its fill, and takes a miss as the fill's
// failure), one after a delete must miss it. Those already waiting keep
// the look's answer, as of when they asked.
func (b *Blobs) forgetLook(d digest.Digest) {
	b.lookMu.Lock()
	delete(b.looks, d)
	b.lookMu.Unlock()
}

// RedirectURL returns a URL the client of r may fetch blob d from directly
// (a presigned S3, GCS or Azure URL), or "" when the driver offers none or
// redirects are off (WithRedirects).
func (b *Blobs) RedirectURL(r *http.Request, d digest.Digest) (string, error) {
	if err := verify.Check(d); err != nil {
		return "", err
	}
	if b.localRoot != "" || !b.redirects {
		return "", nil
	}
	// A local copy is closer than any redirect.
	if _, ok := b.cache.has(d); ok {
		return "", nil
	}
	u, err := b.driver.RedirectURL(r, blobPath(d))
	if err != nil {
		return "", fmt.Errorf("blob %s: redirect URL from the %s driver: %w", d, b.driver.Name(), err)
	}
	return u, nil
}

// notFound maps "does not exist" from either the OS or a driver to
// ErrNotFound, marks any other failure a driver reports as ErrUnavailable,
// and wraps anything else with the digest.
func notFound(d digest.Digest, err error) error {
	var pnf storagedriver.PathNotFoundError
	if errors.Is(err, os.ErrNotExist) || errors.As(err, &pnf) {
		return fmt.Errorf("blob %s: %w", d, ErrNotFound)
	}
	if de, ok := errors.AsType[storagedriver.Error](err); ok {
		return fmt.Errorf("blob %s: %w", d, &storeError{driver: de.DriverName, unreachable: unreachable(err), err: err})
	}
	return fmt.Errorf("blob %s: %w", d, err)
}
