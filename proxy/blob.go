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
	"go.opentelemetry.io/otel/attribute"

	"github.com/airlock-registry/airlock/proxy/upstream"
	"github.com/airlock-registry/airlock/storage"
	"github.com/airlock-registry/airlock/storage/metadata"
)

func (p *Proxy) serveBlob(w http.ResponseWriter, r *http.Request, rq *request) error {
	d, _ := parseDigest(rq.route.Reference) // validated by ParseEndpoint
	link, err := p.blobLink(r.Context(), rq, d)
	if err != nil {
		return err
	}
	// A few passes at most: a fill that finds the blob committed since the
	// cache miss sends the request back to the store once, and a fill of
	// another repository that failed before sending a byte sends it to a
	// fill of its own.
	private := false
	for pass := range 3 {
		var (
			f      *fill
			leader bool
		)
		if pass == 0 && p.fills.n.Load() > 0 {
			// A burst of pulls of one cold layer: every request after the
			// first finds the fill running and reads along it without asking
			// the store, which an object store answers with a round trip
			// each. The fill looked in the store itself; one that finds the
			// blob stored sends its readers there.
			if f, _ = p.joinFill(r.Context(), rq, d, link.Size, false, false); f != nil {
				if s := f.snapshot(); s.verified || s.done {
					// Its bytes are all there and being committed, or
					// committed: the store is the place to read them.
					f.release()
					f = nil
				} else {
					rq.cache = "miss"
				}
			}
		}
		if f == nil {
			served, err := p.serveCachedBlob(w, r, rq, d, &link)
			if served || err != nil {
				return err
			}
			if r.Method != http.MethodHead && p.diskFull(d, link.Size) {
				return p.passThrough(w, r, rq, d, link)
			}
			// A HEAD asks whether the blob exists, not for its bytes: it
			// reads along a running fill, or asks the upstream, but starts
			// no transfer.
			f, leader = p.joinFill(r.Context(), rq, d, link.Size, r.Method != http.MethodHead, private)
		}
		if f == nil {
			if r.Method != http.MethodHead {
				return &Error{Status: http.StatusServiceUnavailable, Code: CodeUnavailable, RetryAfter: time.Second,
					Message: "airlock is shutting down; retry shortly"}
			}
			return p.headUpstreamBlob(w, r, rq, d)
		}
		// serveFill aborts a broken transfer by panicking with
		// http.ErrAbortHandler; the reference must be dropped either way.
		defer f.release()
		var confirm func(size int64) error
		foreign := !leader && f.key != rq.route.Key()
		if foreign {
			// Another repository of the same upstream is fetching it: this
			// repository's upstream must vouch for the blob first, as it
			// would for the stored blob, once the fill knows its size.
			confirm = func(size int64) error { return p.confirmBlob(r.Context(), rq, d, size, &link) }
		}
		err = p.serveFill(w, r, rq, f, leader, confirm)
		var ferr *fillError
		switch {
		case errors.Is(err, errFillStored):
			continue
		case errors.As(err, &ferr) && errors.Is(err, storage.ErrNoSpace):
			// The cache volume is full and nothing was sent yet: the
			// client still gets the blob, straight from the upstream; a
			// HEAD gets the upstream's HEAD, not a download thrown away.
			if r.Method == http.MethodHead {
				return p.headUpstreamBlob(w, r, rq, d)
			}
			return p.passThrough(w, r, rq, d, link)
		case foreign && errors.As(err, &ferr):
			// The other repository's upstream lacks or refuses the blob, or
			// its manifest declared a wrong size: that is no answer for
			// this repository. Its own fill, shared with no one, is.
			private = true
			continue
		}
		return err
	}
	return fmt.Errorf("blob %s is in the store but cannot be opened", d)
}

// blobLink returns what the request's repository knows of blob d. Blobs are
// stored once for all repositories and upstreams, so the link is what
// decides whether this repository may read one. In a repository the gate
// governs, a blob is readable only when an admitted manifest there lists
// it: otherwise a client could pull the layers of a refused image by digest.
func (p *Proxy) blobLink(ctx context.Context, rq *request, d digest.Digest) (metadata.Link, error) {
	key := rq.route.Key()
	link, err := p.meta.BlobLink(ctx, key, d)
	if err != nil && !errors.Is(err, storage.ErrNotFound) {
		return link, fmt.Errorf("checking blob %s in %s: %w", d, key, err)
	}
	if link.Size == 0 {
		// A manifest fetched a moment ago may have declared it, in a write
		// still on its way to disk.
		if size, _, ok := p.declaring.get(key+"\x00"+d.String(), p.now()); ok {
			link.Size = size
		}
	}
	if !link.Has(metadata.Admitted) && p.governs(rq) && !scanning(ctx) {
		return link, &Error{Status: http.StatusForbidden, Code: CodeDenied,
			Message: fmt.Sprintf("blob %s is not part of an image admitted in %s: pull the image by its tag or manifest digest first", d, key)}
	}
	return link, nil
}

// governs reports whether the gate applies policy to the request's
// repository.
func (p *Proxy) governs(rq *request) bool {
	if p.gate == nil {
		return false
	}
	if g, ok := p.gate.(Governor); ok {
		return g.Governs(rq.route.Upstream.Name, rq.route.Repo)
	}
	return true
}

// confirmBlob makes sure the request's upstream holds blob d for its
// repository before airlock serves it bytes it got elsewhere: one HEAD with
// the repository's credentials, once; the answer is kept on the link. size
// is the blob's size when airlock knows it (-1 otherwise): an answer that
// announces another length is about something else (an upstream answering
// every path with a web page) and confirms nothing.
func (p *Proxy) confirmBlob(ctx context.Context, rq *request, d digest.Digest, size int64, link *metadata.Link) error {
	if link.Has(metadata.Confirmed) {
		return nil
	}
	key := rq.route.Key()
	recent := key + "\x00" + d.String()
	if announced, fresh, _ := p.confirmed.get(recent, p.now()); fresh && (size < 0 || announced < 0 || announced == size) {
		// Confirmed a moment ago; the link is on its way to disk.
		link.Flags |= metadata.Confirmed
		return nil
	}
	flight := "confirm-blob\x00" + key + "\x00" + d.String() + "\x00" + strconv.FormatInt(size, 10)
	_, err := p.shared(ctx, flight, func() (any, error) {
		lctx, cancel := p.detached(ctx, lookupTimeout)
		defer cancel()
		lctx, span := p.span(lctx, "upstream.confirm_blob", attribute.String("airlock.digest", d.String()))
		announced, err := rq.registry.HeadBlob(lctx, rq.route.Repo, d)
		endChild(span, err)
		if err != nil {
			return nil, err
		}
		if size >= 0 && announced >= 0 && announced != size {
			return nil, fmt.Errorf("upstream %s answered for blob %s in %s with %d bytes, but the blob is %d: %w",
				rq.route.Upstream.Name, d, rq.route.Repo, announced, size, upstream.ErrNotFound)
		}
		// The answer is remembered in memory at once and written in the
		// background: the write's fsync can wait behind other pulls' dirty
		// pages, and this request need not. Should it fail, the next
		// request simply asks the upstream again.
		p.confirmed.put(recent, announced, p.now().Add(confirmMemory))
		p.persist(rq, "linking confirmed blob", func(ctx context.Context) error {
			return p.meta.LinkBlobs(ctx, key, metadata.BlobLink{Digest: d, Size: max(announced, 0), Flags: metadata.Confirmed, UpstreamSize: true})
		})
		return nil, nil
	})
	if err != nil {
		return withNotFound(err, CodeBlobUnknown)
	}
	link.Flags |= metadata.Confirmed
	return nil
}

// confirmMemory is how long an upstream's confirmation is kept in memory
// while its link is written: longer than a background write may take (see
// persist), so that memory never lapses before the write lands.
const confirmMemory = lookupTimeout + time.Minute

// persist runs a metadata write detached from the request, tracked so that
// Close waits for it. A full volume only keeps the write from being
// remembered; anything else is logged. At most cap(p.writes) writes wait
// in the background: past that (a burst of distinct manifests on a slow
// volume) the caller writes its own, so neither goroutines nor the bodies
// they hold pile up faster than the volume commits. After Close the write
// is dropped: the metadata store is being closed, and a lost background
// write only means the next request asks the upstream again.
func (p *Proxy) persist(rq *request, what string, write func(context.Context) error) {
	run := func() {
		ctx, cancel := context.WithTimeout(p.ctx, lookupTimeout)
		defer cancel()
		if err := write(ctx); err != nil && !errors.Is(err, storage.ErrNoSpace) {
			p.log.LogAttrs(ctx, slog.LevelError, what+" failed", slog.String("repository", rq.route.Key()),
				slog.String("error", err.Error()))
		}
	}
	if !p.track() {
		return
	}
	defer p.wg.Done()
	select {
	case p.writes <- struct{}{}:
	default:
		run()
		return
	}
	p.wg.Add(1) // for the goroutine; the caller's count is dropped on return
	go func() {
		defer p.wg.Done()
		defer func() { <-p.writes }()
		run()
	}()
}

// headUpstreamBlob answers a HEAD for a blob airlock does not hold with the
// upstream's own HEAD.
func (p *Proxy) headUpstreamBlob(w http.ResponseWriter, r *http.Request, rq *request, d digest.Digest) error {
	size, err := rq.registry.HeadBlob(r.Context(), rq.route.Repo, d)
	if err != nil {
		return withNotFound(err, CodeBlobUnknown)
	}
	h := w.Header()
	h.Set("Content-Type", mediaOctetStream)
	h.Set("Docker-Content-Digest", d.String())
	h.Set("Accept-Ranges", "bytes")
	if size >= 0 {
		h.Set("Content-Length", strconv.FormatInt(size, 10))
	}
	w.WriteHeader(http.StatusOK)
	return nil
}

// fillError is a fill's failure before it sent a byte, as its readers
// see it.
type fillError struct{ err error }

func (e *fillError) Error() string { return e.err.Error() }
func (e *fillError) Unwrap() error { return e.err }

// errFillStored sends a request back to the store: the blob was committed
// before its fill began, so the fill fetched nothing.
var errFillStored = errors.New("blob was committed before the fill began")

// serveCachedBlob serves a committed blob. It reports false when the blob
// is not in the store. A hit does no synchronous metadata write.
func (p *Proxy) serveCachedBlob(w http.ResponseWriter, r *http.Request, rq *request, d digest.Digest, link *metadata.Link) (bool, error) {
	up := rq.route.Upstream.Name
	content, size, err := p.blobs.Open(r.Context(), d)
	if errors.Is(err, storage.ErrNotFound) {
		rq.cache = "miss"
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("opening cached blob %s: %w", d, err)
	}
	if err := p.confirmBlob(r.Context(), rq, d, size, link); err != nil {
		content.Close()
		return true, err
	}
	// Object stores hand out presigned URLs for any path, so the redirect
	// is asked for only once the blob is known to be there.
	if u, err := p.blobs.RedirectURL(r, d); err == nil && u != "" {
		content.Close()
		rq.cache = "hit"
		p.meta.Touch(rq.route.Key(), d)
		http.Redirect(w, r, u, http.StatusTemporaryRedirect)
		return true, nil
	}
	defer content.Close()
	if rng := r.Header.Get("Range"); rng != "" {
		// Unsatisfiable ranges get the same OCI error as on a cold blob;
		// http.ServeContent would answer them in plain text.
		if _, _, err := parseRange(rng, size); err != nil && !errors.Is(err, errRangeIgnored) {
			w.Header().Set("Content-Range", "bytes */"+strconv.FormatInt(size, 10))
			return true, err
		}
	}
	rq.cache = "hit"
	p.meta.Touch(rq.route.Key(), d)
	h := w.Header()
	h.Set("Content-Type", mediaOctetStream)
	h.Set("Docker-Content-Digest", d.String())
	h.Set("ETag", `"`+d.String()+`"`)
	h.Set("Cache-Control", "max-age=31536000, immutable")
	// ServeContent answers Range (206/416), conditional requests and HEAD,
	// and hands an *os.File to sendfile.
	cw := &countingWriter{ResponseWriter: w}
	http.ServeContent(cw, r, "", time.Time{}, content)
	p.metrics.bytesFrom(up, "cache", int(cw.n))
	p.metrics.bytesSaved(up, cw.n)
	return true, nil
}

// serveFill answers from a running fill: headers as soon as the upstream's
// length is known, then bytes as they arrive. confirm, when set, must
// accept the fill's size (-1 if unknown) before any byte is sent.
func (p *Proxy) serveFill(w http.ResponseWriter, r *http.Request, rq *request, f *fill, leader bool, confirm func(size int64) error) error {
	ctx := r.Context()
	s, err := f.waitStarted(ctx)
	if err != nil {
		return err
	}
	if s.stored {
		return errFillStored
	}
	if s.err != nil {
		// Failed before this client saw a byte: a proper OCI error.
		return &fillError{withNotFound(s.err, CodeBlobUnknown)}
	}
	size := s.size
	if confirm != nil {
		if err := confirm(size); err != nil {
			return err
		}
	}
	off, end, status := int64(0), size, http.StatusOK
	h := w.Header()
	if rng := r.Header.Get("Range"); rng != "" && size >= 0 {
		start, last, err := parseRange(rng, size)
		switch {
		case errors.Is(err, errRangeIgnored):
		case err != nil:
			h.Set("Content-Range", "bytes */"+strconv.FormatInt(size, 10))
			return err
		default:
			off, end, status = start, last+1, http.StatusPartialContent
			h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, last, size))
		}
	}
	h.Set("Content-Type", mediaOctetStream)
	h.Set("Docker-Content-Digest", f.digest.String())
	h.Set("Accept-Ranges", "bytes")
	if end >= 0 {
		h.Set("Content-Length", strconv.FormatInt(end-off, 10))
	}
	w.WriteHeader(status)
	if r.Method == http.MethodHead {
		return nil
	}
	cw := &countingWriter{ResponseWriter: w}
	if !leader {
		// A follower's bytes cost no upstream transfer of their own.
		up := rq.route.Upstream.Name
		p.metrics.followers.WithLabelValues(up).Inc()
		defer func() {
			p.metrics.followers.WithLabelValues(up).Dec()
			p.metrics.bytesSaved(up, cw.n)
		}()
	}
	if err := f.copyRange(ctx, cw, off, end); err != nil {
		// Headers and some bytes are out: the only honest signal left is a
		// broken transfer, so the client never mistakes it for the blob.
		panic(http.ErrAbortHandler)
	}
	return nil
}

// countingWriter counts body bytes and keeps io.ReaderFrom for sendfile.
type countingWriter struct {
	http.ResponseWriter
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n += int64(n)
	return n, err
}

func (c *countingWriter) ReadFrom(r io.Reader) (int64, error) {
	var n int64
	var err error
	if rf, ok := c.ResponseWriter.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(r)
	} else {
		n, err = io.Copy(c.ResponseWriter, r)
	}
	c.n += n
	return n, err
}

// Flush passes through so fill followers push bytes as they arrive.
func (c *countingWriter) Flush() {
	if f, ok := c.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}
