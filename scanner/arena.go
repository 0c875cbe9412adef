package scanner

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	"github.com/quay/claircore"
	"github.com/quay/claircore/indexer"
	"golang.org/x/sync/errgroup"
)

// arena is claircore's FetchArena over airlock's own blobs: a layer is
// read from Options.Content (the proxy's cache, which fetches what it
// lacks from the upstream once), verified against its digest, and
// uncompressed into a file in dir that is unlinked as soon as it is
// created, so no crash leaves layers behind.
type arena struct {
	dir     string
	content Content
	metrics *metrics
	// expandFloor is what the layers of one manifest may always expand
	// to; past it, at most maxExpansion times their compressed size.
	expandFloor int64
}

// The expansion of a manifest's layers is bounded, all of them together:
// a few kilobytes of gzip can hold gigabytes of zeros, a manifest can
// list a thousand such layers, and the work directory is on a disk shared
// with the cache as a rule. Real layers expand 2 to 10 times; layers past
// both bounds are refused as a decompression bomb (the scan fails, the
// image is held, an admin can release it).
const (
	defaultExpandFloor = 1 << 30
	maxExpansion       = 64
)

var _ indexer.FetchArena = (*arena)(nil)

func newArena(dir string, c Content, m *metrics) (*arena, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("scanner: work directory: %w", err)
	}
	return &arena{dir: dir, content: c, metrics: m, expandFloor: defaultExpandFloor}, nil
}

// Realizer returns the realizer of one Index call.
func (a *arena) Realizer(context.Context) indexer.Realizer {
	return &realizer{a: a, budget: &expansion{floor: a.expandFloor}}
}

// Close implements indexer.FetchArena; the arena holds nothing between
// calls.
func (a *arena) Close(context.Context) error { return nil }

// jobKey carries the repository the layers of the manifest being indexed
// are read through: claircore passes Index's context to the realizer.
type jobKey struct{}

func withRepository(ctx context.Context, repo string) context.Context {
	return context.WithValue(ctx, jobKey{}, repo)
}

// realizer fetches the layers of one manifest and closes them after.
type realizer struct {
	a      *arena
	budget *expansion
	mu     sync.Mutex
	layers []*claircore.Layer
	files  []*os.File
}

// layerTar is the media type the realizer hands claircore: the layer is
// uncompressed already, whatever the manifest said.
const layerTar = "application/vnd.oci.image.layer.v1.tar"

// Realize fetches ls (the layers claircore has not indexed yet) and
// initialises each over its uncompressed tar.
func (r *realizer) Realize(ctx context.Context, ls []*claircore.Layer) error {
	repo, _ := ctx.Value(jobKey{}).(string)
	if repo == "" {
		return errors.New("scanner: programmer error: Index called without a repository")
	}
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(2)
	for _, l := range ls {
		g.Go(func() error {
			d, err := digest.Parse(l.Hash.String())
			if err != nil {
				return fmt.Errorf("layer %s: %w", l.Hash, err)
			}
			f, err := r.fetch(ctx, repo, d)
			if err != nil {
				return fmt.Errorf("layer %s: %w", d, err)
			}
			desc := claircore.LayerDescription{Digest: d.String(), MediaType: layerTar}
			if err := l.Init(ctx, &desc, f); err != nil {
				f.Close()
				return fmt.Errorf("layer %s: %w", d, err)
			}
			r.mu.Lock()
			r.layers = append(r.layers, l)
			r.files = append(r.files, f)
			r.mu.Unlock()
			r.a.metrics.layers.Inc()
			return nil
		})
	}
	return g.Wait()
}

// Close closes every layer Realize initialised (claircore's finaliser
// panics on one left open) and its file.
func (r *realizer) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var errs []error
	for i, l := range r.layers {
		errs = append(errs, l.Close(), r.files[i].Close())
	}
	r.layers, r.files = nil, nil
	return errors.Join(errs...)
}

// fetch fetches one layer of the manifest being indexed.
func (r *realizer) fetch(ctx context.Context, repo string, d digest.Digest) (*os.File, error) {
	return r.a.fetch(ctx, repo, d, r.budget)
}

// Compression magic numbers.
var (
	gzipMagic = []byte{0x1f, 0x8b}
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// fetch reads blob d of repo, checks its digest and returns its content
// uncompressed in an unlinked temporary file, positioned anywhere (the
// caller reads it with ReadAt). What it reads and writes counts against
// budget.
func (a *arena) fetch(ctx context.Context, repo string, d digest.Digest, budget *expansion) (*os.File, error) {
	rc, err := a.content.Blob(ctx, repo, d)
	if err != nil {
		return nil, fmt.Errorf("reading the blob: %w", err)
	}
	defer rc.Close()
	f, err := os.CreateTemp(a.dir, "layer-")
	if err != nil {
		return nil, fmt.Errorf("scanner work directory: %w", err)
	}
	// Unlinked at once: the open file is all that is needed, and a crash
	// leaves nothing to clean up.
	os.Remove(f.Name())
	ok := false
	defer func() {
		if !ok {
			f.Close()
		}
	}()

	verifier := d.Verifier()
	compressed := &countingReader{r: rc, n: &budget.compressed}
	br := bufio.NewReaderSize(io.TeeReader(compressed, verifier), 64<<10)
	head, _ := br.Peek(4)
	var src io.Reader = br
	switch {
	case bytes.HasPrefix(head, gzipMagic):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("gzip: %w", err)
		}
		defer zr.Close()
		src = zr
	case bytes.HasPrefix(head, zstdMagic):
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, fmt.Errorf("zstd: %w", err)
		}
		defer zr.Close()
		src = zr
	}
	n, err := io.Copy(&boundedWriter{w: f, budget: budget}, ctxReader{ctx, src})
	if err != nil {
		if errors.Is(err, errBomb) {
			return nil, permanent(fmt.Errorf("%w: the manifest's layers expand past %d bytes, more than %d times the %d compressed bytes read",
				errBomb, budget.expanded.Load(), maxExpansion, budget.compressed.Load()))
		}
		return nil, fmt.Errorf("uncompressing: %w", err)
	}
	// The decompressor may stop at the end of its stream: read the rest
	// so the digest covers the whole blob.
	if _, err := io.Copy(io.Discard, br); err != nil {
		return nil, fmt.Errorf("reading the blob: %w", err)
	}
	if !verifier.Verified() {
		return nil, fmt.Errorf("the blob read does not match its digest")
	}
	a.metrics.layerBytes.Add(float64(n))
	ok = true
	return f, nil
}

// ctxReader stops a long copy when the scan is cancelled.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

var errBomb = errors.New("the layer is refused as a decompression bomb")

// expansion is what the layers of one manifest read and wrote so far;
// two layers are fetched at once.
type expansion struct {
	floor      int64
	compressed atomic.Int64
	expanded   atomic.Int64
}

// countingReader counts the bytes read through it into n.
type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// boundedWriter writes an uncompressed layer while the manifest's layers
// stay within their budget: at most its floor, or maxExpansion times the
// compressed bytes read so far.
type boundedWriter struct {
	w      io.Writer
	budget *expansion
}

func (b *boundedWriter) Write(p []byte) (int, error) {
	next := b.budget.expanded.Add(int64(len(p)))
	if next > b.budget.floor && next > maxExpansion*b.budget.compressed.Load() {
		return 0, errBomb
	}
	return b.w.Write(p)
}
