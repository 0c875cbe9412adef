package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/opencontainers/go-digest"
)

// GetBlob streams blob d of repo from offset 0. size is the Content-Length,
// or -1 if the upstream did not send one. The caller verifies the digest and
// must close body.
//
// The body survives a dropped connection: when a read fails mid-body (reset,
// unexpected EOF, or no progress for IdleTimeout) it asks again with
// "Range: bytes=N-" and carries on, invisibly to the reader, provided the
// upstream answers 206 with a Content-Range starting at N. At most
// MaxAttempts-1 resumes are made per body. Slow progress never fails.
func (r *Registry) GetBlob(ctx context.Context, repo string, d digest.Digest) (io.ReadCloser, int64, error) {
	c := &call{upstream: r.o.Name, op: "blob", method: http.MethodGet, repo: repo, ref: d.String(), auth: true}
	if !validRepo(repo) || d.Validate() != nil {
		return nil, 0, c.errorf(ErrInvalid, nil, "malformed repository or digest")
	}
	c.url = r.endpoint(repo, "blobs", d.String())
	release, err := r.blobSlot(ctx, c)
	if err != nil {
		return nil, 0, err
	}
	resp, err := r.do(ctx, c)
	if err != nil {
		release()
		return nil, 0, err
	}
	b := &blobReader{r: r, ctx: ctx, c: c, body: resp.Body, size: resp.ContentLength, release: release}
	return b, b.size, nil
}

// GetBlobFrom streams blob d of repo from byte off: how a transfer that
// already holds the first off bytes (read from a peer replica that died
// mid-blob) goes on without fetching them again. known is the whole blob's
// size if the caller knows it, else -1; size is the whole blob's size as
// the upstream gave it, -1 if unknown. Only a 206 whose Content-Range starts at off is
// accepted: anything else would splice foreign bytes into the blob, and is
// an error the caller answers by fetching the whole blob. The body resumes
// after a dropped connection as GetBlob's does.
//
// Some registries (go-containerregistry's among them) refuse an open-ended
// range with 416 and want both ends; without a known size, the size for
// that comes from a HEAD.
func (r *Registry) GetBlobFrom(ctx context.Context, repo string, d digest.Digest, off, known int64) (io.ReadCloser, int64, error) {
	if off <= 0 {
		return r.GetBlob(ctx, repo, d)
	}
	c := &call{upstream: r.o.Name, op: "blob", method: http.MethodGet, repo: repo, ref: d.String(), auth: true}
	if !validRepo(repo) || d.Validate() != nil {
		return nil, 0, c.errorf(ErrInvalid, nil, "malformed repository or digest")
	}
	c.url = r.endpoint(repo, "blobs", d.String())
	release, err := r.blobSlot(ctx, c)
	if err != nil {
		return nil, 0, err
	}
	b := &blobReader{r: r, ctx: ctx, c: c, size: -1, off: off, release: release}
	if known > off {
		b.size = known
	}
	ranged := *c
	ranged.header = http.Header{"Range": {rangeFrom(off, b.size)}}
	ranged.pass = []int{http.StatusRequestedRangeNotSatisfiable}
	resp, err := r.do(ctx, &ranged)
	if err == nil && resp.StatusCode == http.StatusRequestedRangeNotSatisfiable && b.size < 0 {
		discard(resp)
		size, herr := r.HeadBlob(ctx, repo, d)
		if herr != nil {
			release()
			return nil, 0, herr
		}
		if size <= off {
			release()
			return nil, 0, c.errorf(ErrUnavailable, nil, "cannot resume at byte %d: the upstream refused the range and gives the blob's size as %d", off, size)
		}
		b.size = size
		ranged.header = http.Header{"Range": {fmt.Sprintf("bytes=%d-%d", off, size-1)}}
		ranged.pass = nil
		resp, err = r.do(ctx, &ranged)
	}
	if err != nil {
		release()
		return nil, 0, err
	}
	if err := b.checkRange(resp); err != nil {
		discard(resp)
		release()
		return nil, 0, err
	}
	b.body = resp.Body
	return b, b.size, nil
}

// blobSlot waits for one of MaxBlobTransfers slots; the returned release
// gives it back. The slot is held until the body is closed, resumes
// included.
func (r *Registry) blobSlot(ctx context.Context, c *call) (release func(), err error) {
	if r.blobSlots == nil {
		return func() {}, nil
	}
	select {
	case r.blobSlots <- struct{}{}:
		var once sync.Once
		return func() { once.Do(func() { <-r.blobSlots }) }, nil
	case <-ctx.Done():
		return nil, c.errorf(ErrUnavailable, context.Cause(ctx), "waiting for one of %d blob transfer slots", cap(r.blobSlots))
	}
}

// HeadBlob asks whether repo has blob d, without transferring it, and
// returns its size (-1 if the upstream sent none). An absent blob is an
// error matching ErrNotFound.
func (r *Registry) HeadBlob(ctx context.Context, repo string, d digest.Digest) (int64, error) {
	c := &call{upstream: r.o.Name, op: "blob", method: http.MethodHead, repo: repo, ref: d.String(), auth: true}
	if !validRepo(repo) || d.Validate() != nil {
		return 0, c.errorf(ErrInvalid, nil, "malformed repository or digest")
	}
	c.url = r.endpoint(repo, "blobs", d.String())
	resp, err := r.do(ctx, c)
	if err != nil {
		return 0, err
	}
	discard(resp)
	return resp.ContentLength, nil
}

// blobReader is a blob body that resumes after a broken connection.
type blobReader struct {
	r    *Registry
	ctx  context.Context
	c    *call
	size int64 // -1 until known

	release func() // gives back the transfer slot

	mu      sync.Mutex // guards body and closed against a concurrent Close
	body    io.ReadCloser
	closed  bool
	off     int64
	resumes int
	pending error // failure seen together with data, reported on the next Read
}

func (b *blobReader) Read(p []byte) (int, error) {
	for {
		err := b.pending
		b.pending = nil
		n := 0
		if err == nil {
			n, err = b.body.Read(p)
			b.off += int64(n)
		}
		switch {
		case err == nil:
			return n, nil
		case err == io.EOF:
			if b.size >= 0 && b.off < b.size {
				err = b.c.errorf(ErrUnavailable, io.ErrUnexpectedEOF, "body ended at byte %d of %d", b.off, b.size)
				break
			}
			return n, io.EOF
		case n > 0:
			// Hand out the bytes we have; deal with the failure next time.
			b.pending = err
			return n, nil
		}
		if !b.resumable(err) {
			return 0, err
		}
		if rerr := b.resume(); rerr != nil {
			return 0, rerr
		}
	}
}

// resumable reports whether a failed read is worth a Range request: the
// connection broke, the caller still wants the bytes, and the budget allows.
func (b *blobReader) resumable(err error) bool {
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	return !closed && errors.Is(err, ErrUnavailable) && b.ctx.Err() == nil &&
		b.resumes < b.r.o.MaxAttempts-1 && (b.size < 0 || b.off < b.size)
}

// resume replaces the broken body with one that starts at b.off.
func (b *blobReader) resume() error {
	b.resumes++
	b.r.o.Logger.DebugContext(b.ctx, "resuming blob download",
		"upstream", b.c.upstream, "repo", b.c.repo, "digest", b.c.ref, "offset", b.off, "resume", b.resumes)
	_ = b.body.Close()
	c := *b.c
	c.header = http.Header{"Range": {rangeFrom(b.off, b.size)}}
	resp, err := b.r.do(b.ctx, &c)
	if err != nil {
		return err
	}
	if err := b.checkRange(resp); err != nil {
		discard(resp)
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		_ = resp.Body.Close()
		return b.c.errorf(ErrUnavailable, nil, "body closed")
	}
	b.body = resp.Body
	return nil
}

// rangeFrom is the Range header asking for the bytes from off to the end:
// with both ends when the size is known, since some registries refuse an
// open-ended range.
func rangeFrom(off, size int64) string {
	if size > off {
		return fmt.Sprintf("bytes=%d-%d", off, size-1)
	}
	return fmt.Sprintf("bytes=%d-", off)
}

// checkRange accepts only a 206 whose Content-Range continues exactly where
// the broken body stopped, for the same total size. Anything else would
// splice foreign bytes into the blob.
func (b *blobReader) checkRange(resp *http.Response) error {
	if resp.StatusCode != http.StatusPartialContent {
		return b.c.errorf(ErrUnavailable, nil, "connection dropped at byte %d and the upstream answered the Range request with HTTP %d, so it cannot be resumed", b.off, resp.StatusCode)
	}
	start, total, ok := parseContentRange(resp.Header.Get("Content-Range"))
	if !ok || start != b.off || (b.size >= 0 && total >= 0 && total != b.size) {
		return b.c.errorf(ErrInvalid, nil, "resume at byte %d got Content-Range %q", b.off, resp.Header.Get("Content-Range"))
	}
	if b.size < 0 && total >= 0 {
		b.size = total
	}
	return nil
}

// parseContentRange reads "bytes first-last/total" (total may be "*", -1).
func parseContentRange(v string) (start, total int64, ok bool) {
	rest, found := strings.CutPrefix(v, "bytes ")
	if !found {
		return 0, 0, false
	}
	span, size, found := strings.Cut(rest, "/")
	if !found {
		return 0, 0, false
	}
	first, last, found := strings.Cut(span, "-")
	if !found {
		return 0, 0, false
	}
	start, err1 := strconv.ParseInt(first, 10, 64)
	end, err2 := strconv.ParseInt(last, 10, 64)
	if err1 != nil || err2 != nil || start < 0 || end < start {
		return 0, 0, false
	}
	total = -1
	if size != "*" {
		t, err := strconv.ParseInt(size, 10, 64)
		if err != nil || t <= end {
			return 0, 0, false
		}
		total = t
	}
	return start, total, true
}

func (b *blobReader) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	b.release()
	return b.body.Close()
}
