package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/storage"
	"github.com/airlock-registry/airlock/storage/metadata"
	"github.com/airlock-registry/airlock/verify"
)

// fullBackoff is how long after the cache volume was found full blobs are
// served straight from their upstream without trying to cache them. The
// evictor is asked to make room meanwhile.
const fullBackoff = 30 * time.Second

// fullVolume is what the proxy knows of room on the cache volume: for
// fullBackoff after a write failed for want of room, misses skip the
// cache. A blob that only found too little room for its own size (its
// reservation failed) says nothing of smaller blobs: they still try the
// cache, so that one huge layer does not turn caching off for all.
type fullVolume struct {
	mu    sync.Mutex
	until time.Time
	// from is the smallest size found not to fit during the episode; 0
	// means nothing fits (a write or commit found the volume full).
	from int64
	// misfits are the blobs found not to fit during the episode, so that
	// the next request for one of unknown size goes straight upstream.
	misfits map[digest.Digest]struct{}
}

// maxMisfits bounds fullVolume.misfits; past it, a blob that does not fit
// is only tried once more.
const maxMisfits = 1024

// noSpace passes err through, noting when it says the cache volume is full:
// from then on, for fullBackoff, misses are served without caching, and the
// evictor is asked to make room now rather than at its next sweep.
func (p *Proxy) noSpace(ctx context.Context, rq *request, err error) error {
	return p.noRoomFor(ctx, rq, "", 0, err)
}

// noRoomFor is noSpace for a reservation of size bytes for blob d that
// failed: only d and blobs at least that large skip the cache.
func (p *Proxy) noRoomFor(ctx context.Context, rq *request, d digest.Digest, size int64, err error) error {
	if !errors.Is(err, storage.ErrNoSpace) {
		return err
	}
	now := p.now()
	v := &p.full
	v.mu.Lock()
	fresh := !now.Before(v.until)
	if fresh {
		v.misfits = nil
	}
	if fresh || size < v.from {
		v.from = size
	}
	if d != "" && len(v.misfits) < maxMisfits {
		if v.misfits == nil {
			v.misfits = make(map[digest.Digest]struct{})
		}
		v.misfits[d] = struct{}{}
	}
	v.until = now.Add(fullBackoff)
	v.mu.Unlock()
	if fresh {
		// Once per episode, not once per blob.
		p.log.LogAttrs(ctx, slog.LevelError, "cache volume full: serving blobs from their upstreams without caching",
			slog.String("upstream", rq.route.Upstream.Name), slog.Duration("for", fullBackoff), slog.String("error", err.Error()))
	}
	// Only a volume that is full asks eviction for room; a blob that did
	// not fit may be larger than all the cache holds, and shrinking the
	// cache for it would let one request empty the cache.
	if size == 0 && p.onNoSpace != nil {
		p.onNoSpace()
	}
	return err
}

// diskFull reports whether blob d of size bytes (0 if unknown) should skip
// the cache because the volume was found full lately. One of unknown size
// tries the cache unless nothing fitted or it did not: a fill that finds no
// room before its first byte still hands its client to the pass-through.
func (p *Proxy) diskFull(d digest.Digest, size int64) bool {
	v := &p.full
	v.mu.Lock()
	defer v.mu.Unlock()
	if !p.now().Before(v.until) {
		return false
	}
	if _, misfit := v.misfits[d]; misfit {
		return true
	}
	return v.from == 0 || (size > 0 && size >= v.from)
}

// passThrough serves blob d straight from the repository's upstream, for a
// cache volume that is full: nothing is stored, every byte is still checked
// against the digest, and the last byte is held back until it matched, so a
// client never gets a complete wrong blob. A Range is answered with the
// whole blob, which HTTP allows.
func (p *Proxy) passThrough(w http.ResponseWriter, r *http.Request, rq *request, d digest.Digest, link metadata.Link) error {
	ctx := r.Context()
	up := rq.route.Upstream.Name
	rq.cache = "miss"
	p.metrics.uncached.WithLabelValues(up).Inc()
	declared := link.Size
	if declared > p.maxBlob {
		return fmt.Errorf("blob %s is declared %d bytes, over the %d byte limit: %w", d, declared, p.maxBlob, verify.ErrTooLarge)
	}
	body, size, err := rq.registry.GetBlob(ctx, rq.route.Repo, d)
	if err != nil {
		return withNotFound(err, CodeBlobUnknown)
	}
	defer body.Close()
	limit, err := p.fillLimit(&fill{digest: d, upstream: up, declared: declared}, size)
	if err != nil {
		return err
	}
	if size < 0 && declared > 0 {
		size = declared
	}
	// The verifier fails at EOF on a digest mismatch and as soon as the body
	// runs past size or limit.
	vr := verify.NewReader(body, d, size, limit)
	h := w.Header()
	h.Set("Content-Type", mediaOctetStream)
	h.Set("Docker-Content-Digest", d.String())
	if size >= 0 {
		h.Set("Content-Length", strconv.FormatInt(size, 10))
	}
	w.WriteHeader(http.StatusOK)
	cw := &countingWriter{ResponseWriter: w}
	if err := copyHoldingLastByte(cw, vr); err != nil {
		p.log.LogAttrs(ctx, slog.LevelWarn, "uncached blob transfer failed", slog.String("upstream", up),
			slog.String("repository", rq.route.Repo), slog.String("digest", d.String()), slog.String("error", err.Error()))
		panic(http.ErrAbortHandler)
	}
	p.metrics.bytesFrom(up, "upstream", int(cw.n))
	return nil
}

// passChunk is the most an uncached transfer reads from the upstream at a
// time.
const passChunk = 256 << 10

// copyHoldingLastByte copies r to w but writes the last byte only after r
// ended cleanly, so that an error at EOF (a digest mismatch) leaves the
// receiver one byte short.
func copyHoldingLastByte(w io.Writer, r io.Reader) error {
	buf := make([]byte, passChunk+1)
	held := 0 // 0 or 1: a byte kept back at buf[0]
	for {
		n, err := r.Read(buf[held:])
		n += held
		if n > 1 {
			if _, werr := w.Write(buf[:n-1]); werr != nil {
				return werr
			}
			buf[0] = buf[n-1]
			held = 1
		} else {
			held = n
		}
		if err == io.EOF {
			if held == 1 {
				_, werr := w.Write(buf[:1])
				return werr
			}
			return nil
		}
		if err != nil {
			return err
		}
	}
}
