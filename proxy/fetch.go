package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// internalKey marks a request the proxy makes of itself.
type internalKey struct{}

// Internal reports whether ctx belongs to a request airlock made of itself
// (to read an image's signatures), not a client's.
func Internal(ctx context.Context) bool { return ctx.Value(internalKey{}) != nil }

// Fetcher reads one repository through the proxy itself, as a client
// would: routed, cached, verified and gated like any pull, so signature
// artifacts are fetched once and later served to clients from the cache.
// It implements verify/signature's Fetcher. Its requests are marked Internal, skip
// client permissions (airlock reads for itself) and are answered in
// memory, bounded. What the registry does not hold is an error wrapping
// ErrFetchNotFound.
type Fetcher struct {
	p *Proxy
	// repo is "<upstream>/<repository>".
	repo string
}

// Fetcher returns a Fetcher for repo ("<upstream>/<repository>").
func (p *Proxy) Fetcher(repo string) *Fetcher { return &Fetcher{p: p, repo: repo} }

// maxReferrersBytes bounds a referrers list read for verification.
const maxReferrersBytes = 4 << 20

// Manifest fetches a manifest by tag or digest.
func (f *Fetcher) Manifest(ctx context.Context, ref string) ([]byte, string, digest.Digest, error) {
	h, body, err := f.get(ctx, "manifests/"+ref, nil, f.p.maxMan)
	if err != nil {
		return nil, "", "", err
	}
	d := digest.Digest(h.Get("Docker-Content-Digest"))
	if d.Validate() != nil {
		d = digest.FromBytes(body)
	}
	return body, h.Get("Content-Type"), d, nil
}

// Blob fetches a blob of at most max bytes.
func (f *Fetcher) Blob(ctx context.Context, d digest.Digest, max int64) ([]byte, error) {
	_, body, err := f.get(ctx, "blobs/"+d.String(), nil, max)
	return body, err
}

// Referrers lists the manifests whose subject is d.
func (f *Fetcher) Referrers(ctx context.Context, d digest.Digest, artifactType string) ([]ocispec.Descriptor, error) {
	q := url.Values{}
	if artifactType != "" {
		q.Set("artifactType", artifactType)
	}
	_, body, err := f.get(ctx, "referrers/"+d.String(), q, maxReferrersBytes)
	if err != nil {
		return nil, err
	}
	var idx ocispec.Index
	if err := json.Unmarshal(body, &idx); err != nil {
		return nil, fmt.Errorf("referrers of %s@%s: %w", f.repo, d, err)
	}
	out := idx.Manifests[:0]
	for _, m := range idx.Manifests {
		if artifactType == "" || m.ArtifactType == artifactType {
			out = append(out, m)
		}
	}
	return out, nil
}

// get serves GET /v2/<repo>/<path> in memory and returns the headers and
// at most max body bytes; a larger body is an error.
func (f *Fetcher) get(ctx context.Context, path string, q url.Values, max int64) (http.Header, []byte, error) {
	u := &url.URL{Path: "/v2/" + f.repo + "/" + path, RawQuery: q.Encode()}
	req, err := http.NewRequestWithContext(context.WithValue(ctx, internalKey{}, true), http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, nil, err
	}
	req.RemoteAddr = "airlock"
	req.Header.Set("Accept", strings.Join(append(allManifestTypes, mediaOCIArtifact), ", "))
	w := &memoryWriter{header: http.Header{}, max: max}
	if err := f.serve(w, req); err != nil {
		return nil, nil, err
	}
	switch {
	case w.status == http.StatusOK:
		return w.header, w.body.Bytes(), nil
	case w.status == http.StatusNotFound:
		return nil, nil, fmt.Errorf("%s@%s: %w", f.repo, path, ErrFetchNotFound)
	}
	msg := strings.TrimSpace(w.body.String())
	var oe struct {
		Errors []struct{ Message string } `json:"errors"`
	}
	if json.Unmarshal(w.body.Bytes(), &oe) == nil && len(oe.Errors) > 0 {
		msg = oe.Errors[0].Message
	}
	return nil, nil, fmt.Errorf("reading %s of %s: %d %s", path, f.repo, w.status, msg)
}

// serve runs the proxy on req; a transfer the proxy aborts (it panics
// with http.ErrAbortHandler, as net/http expects) becomes an error.
func (f *Fetcher) serve(w *memoryWriter, req *http.Request) (err error) {
	defer func() {
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler {
				panic(v)
			}
			err = fmt.Errorf("reading %s: the transfer was aborted", req.URL.Path)
			if w.over {
				err = fmt.Errorf("reading %s: larger than %d bytes", req.URL.Path, w.max)
			}
		}
	}()
	f.p.ServeHTTP(w, req)
	if w.over {
		return fmt.Errorf("reading %s: larger than %d bytes", req.URL.Path, w.max)
	}
	return nil
}

// memoryWriter is a bounded in-memory http.ResponseWriter.
type memoryWriter struct {
	header http.Header
	status int
	body   bytes.Buffer
	max    int64
	over   bool
}

func (w *memoryWriter) Header() http.Header { return w.header }

func (w *memoryWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
}

func (w *memoryWriter) Write(b []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	if int64(w.body.Len())+int64(len(b)) > w.max {
		w.over = true
		return 0, errTooLarge
	}
	return w.body.Write(b)
}

func (w *memoryWriter) Flush() {}

var errTooLarge = errors.New("response larger than the reader accepts")

// ErrFetchNotFound is wrapped by a Fetcher's errors for what the registry
// does not hold. Its NotFound method is how verify/signature recognises
// it.
var ErrFetchNotFound error = notFound{}

type notFound struct{}

func (notFound) Error() string { return "not found" }

// NotFound marks the error as "not found" for packages that do not import
// this one.
func (notFound) NotFound() {}
