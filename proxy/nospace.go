package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
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

// noSpace passes err through, noting when it says the cache volume is full:
// from then on, for fullBackoff, misses are served without caching, and the
// evictor is asked to make room now rather than at its next sweep.
func (p *Proxy) noSpace(ctx context.Context, rq *request, err error) error {
	if !errors.Is(err, storage.ErrNoSpace) {
		return err
	}
	until := p.now().Add(fullBackoff).UnixNano()
	if p.fullUntil.Swap(until) < p.now().UnixNano() {
		// Once per episode, not once per blob.
		p.log.LogAttrs(ctx, slog.LevelError, "cache volume full: serving blobs from their upstreams without caching",
			slog.String("upstream", rq.route.Upstream.Name), slog.Duration("for", fullBackoff), slog.String("error", err.Error()))
	}
	if p.onNoSpace != nil {
		p.onNoSpace()
	}
	return err
}

// diskFull reports whether the cache volume was found full lately.
func (p *Proxy) diskFull() bool { return p.now().UnixNano() < p.fullUntil.Load() }

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

// copyHoldingLastByte copies r to w but writes the last byte only after r
// ended cleanly, so that an error at EOF (a digest mismatch) leaves the
// receiver one byte short.
func copyHoldingLastByte(w io.Writer, r io.Reader) error {
	buf := make([]byte, fillChunk+1)
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
