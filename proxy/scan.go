package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/storage"
)

// scanKey marks an internal request that reads content for the
// vulnerability scanner.
type scanKey struct{}

// scanning reports whether ctx belongs to a read for the scanner. Such a
// read may take blobs of an image the gate has not admitted (it is being
// checked so that it can be); what it caches stays unreadable to clients
// until a manifest listing it is admitted.
func scanning(ctx context.Context) bool { return ctx.Value(scanKey{}) != nil }

// ScanContent is what the vulnerability scanner reads: manifests and blobs
// of one repository, from the cache, fetched once through the proxy
// (routed, verified, shared with clients' fills) when missing. It
// implements scanner.Content.
type ScanContent struct{ p *Proxy }

// ScanContent returns the scanner's view of the cache.
func (p *Proxy) ScanContent() *ScanContent { return &ScanContent{p: p} }

// Manifest returns the cached manifest repo@d. The scanner is asked to
// scan a manifest only after a pull fetched it, so it is in the cache (or
// on its way there); one that is not is an error, not a fetch: the gate
// would refuse the scanner's own request for a manifest it has not
// decided.
func (c *ScanContent) Manifest(ctx context.Context, repo string, d digest.Digest) ([]byte, string, error) {
	rec, _, err := c.p.repoManifest(ctx, repo, d)
	if err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			return nil, "", fmt.Errorf("manifest %s@%s is not in the cache; pull it again to have it scanned: %w", repo, d, err)
		}
		return nil, "", fmt.Errorf("reading manifest %s@%s: %w", repo, d, err)
	}
	return rec.Body, rec.MediaType, nil
}

// Blob opens blob d as stored. A blob not cached yet is fetched from repo's
// upstream first, as a pull would fetch it (joining a client's fill of it,
// if one runs).
func (c *ScanContent) Blob(ctx context.Context, repo string, d digest.Digest) (io.ReadCloser, error) {
	if err := d.Validate(); err != nil {
		return nil, fmt.Errorf("blob %q: %w", d, err)
	}
	rc, _, err := c.p.blobs.Open(ctx, d)
	if err == nil {
		return rc, nil
	}
	if !errors.Is(err, storage.ErrNotFound) {
		return nil, fmt.Errorf("opening cached blob %s: %w", d, err)
	}
	if err := c.fetch(ctx, repo, d); err != nil {
		return nil, err
	}
	// The fill hands out the last byte before it commits: wait for the
	// commit while the fill is still there.
	for {
		rc, _, err = c.p.blobs.Open(ctx, d)
		if !errors.Is(err, storage.ErrNotFound) || !c.p.fills.running(d) {
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for blob %s to be cached: %w", d, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	if errors.Is(err, storage.ErrNotFound) {
		// Served straight from the upstream without being cached (the
		// volume is full): there is nothing to scan it from.
		return nil, fmt.Errorf("blob %s of %s was fetched but not cached (is the cache volume full?); the scan is retried", d, repo)
	}
	if err != nil {
		return nil, fmt.Errorf("opening blob %s after fetching it: %w", d, err)
	}
	return rc, nil
}

// fetch reads repo's blob d through the proxy, throwing the bytes away:
// the fill caches them on the way.
func (c *ScanContent) fetch(ctx context.Context, repo string, d digest.Digest) error {
	ctx = context.WithValue(context.WithValue(ctx, internalKey{}, true), scanKey{}, true)
	u := &url.URL{Path: "/v2/" + repo + "/blobs/" + d.String()}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return err
	}
	req.RemoteAddr = "airlock"
	w := &discardWriter{header: http.Header{}}
	if err := c.serve(w, req); err != nil {
		return err
	}
	if w.status != http.StatusOK {
		msg := strings.TrimSpace(string(w.head))
		return fmt.Errorf("fetching blob %s of %s for scanning: %d %s", d, repo, w.status, msg)
	}
	return nil
}

func (c *ScanContent) serve(w http.ResponseWriter, req *http.Request) (err error) {
	defer func() {
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler {
				panic(v)
			}
			err = fmt.Errorf("fetching %s for scanning: the transfer was aborted", req.URL.Path)
		}
	}()
	c.p.ServeHTTP(w, req)
	return nil
}

// discardWriter is an http.ResponseWriter that keeps the status and the
// first bytes of an error body, and throws everything else away.
type discardWriter struct {
	header http.Header
	status int
	head   []byte
}

func (w *discardWriter) Header() http.Header { return w.header }

func (w *discardWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
}

func (w *discardWriter) Write(b []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	if w.status != http.StatusOK && len(w.head) < 4096 {
		w.head = append(w.head, b[:min(len(b), 4096-len(w.head))]...)
	}
	return len(b), nil
}

func (w *discardWriter) Flush() {}
