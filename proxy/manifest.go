package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	"go.opentelemetry.io/otel/attribute"

	"github.com/airlock-registry/airlock/proxy/upstream"
	"github.com/airlock-registry/airlock/storage"
	"github.com/airlock-registry/airlock/storage/metadata"
	"github.com/airlock-registry/airlock/verify"
)

// Manifest media types airlock knows. Any other type an upstream sends is
// passed through unchanged.
const (
	mediaOCIIndex      = "application/vnd.oci.image.index.v1+json"
	mediaOCIManifest   = "application/vnd.oci.image.manifest.v1+json"
	mediaDockerList    = "application/vnd.docker.distribution.manifest.list.v2+json"
	mediaDockerV2      = "application/vnd.docker.distribution.manifest.v2+json"
	mediaDockerV1      = "application/vnd.docker.distribution.manifest.v1+prettyjws"
	mediaOctetStream   = "application/octet-stream"
	lookupTimeout      = 2 * time.Minute
	staleServeLogLevel = slog.LevelWarn
)

// allManifestTypes is sent upstream when fetching by digest: the bytes are
// fixed by the digest, so any type is acceptable.
var allManifestTypes = []string{mediaOCIIndex, mediaOCIManifest, mediaDockerList, mediaDockerV2}

// parseAccept collects the media types of all Accept headers, without
// parameters, in order.
func parseAccept(h http.Header) []string {
	var out []string
	for _, v := range h.Values("Accept") {
		for _, part := range strings.Split(v, ",") {
			mt, _, err := mime.ParseMediaType(strings.TrimSpace(part))
			if err != nil || mt == "" || slices.Contains(out, mt) {
				continue
			}
			out = append(out, mt)
		}
	}
	return out
}

// acceptable reports whether a client with this Accept list takes mediaType.
// No Accept at all means the client takes whatever the registry has.
func acceptable(mediaType string, accept []string) bool {
	if len(accept) == 0 || mediaType == "" {
		return true
	}
	return slices.Contains(accept, mediaType) || slices.Contains(accept, "*/*")
}

func (p *Proxy) serveManifest(w http.ResponseWriter, r *http.Request, rq *request) error {
	ctx := r.Context()
	rt := rq.route
	accept := parseAccept(r.Header)
	var (
		rec metadata.ManifestRecord
		err error
		tag string
	)
	if strings.Contains(rt.Reference, ":") {
		d, _ := parseDigest(rt.Reference) // validated by ParseEndpoint
		rec, err = p.manifestByDigest(ctx, rq, d)
	} else {
		tag = rt.Reference
		rec, err = p.manifestByTag(ctx, rq, tag, accept)
	}
	if err != nil {
		return withNotFound(err, CodeManifestUnknown)
	}
	if p.gate != nil {
		dec, err := p.gate.Admit(ctx, Subject{Upstream: rt.Upstream.Name, Repository: rt.Repo, Tag: tag,
			Digest: rec.Digest, MediaType: rec.MediaType, Body: rec.Body})
		if err != nil {
			return fmt.Errorf("gate for %s@%s: %w", rt.Key(), rec.Digest, err)
		}
		if !dec.Allow {
			msg := fmt.Sprintf("%s@%s is not approved", rt.Key(), rec.Digest)
			if len(dec.Reasons) > 0 {
				msg += ": " + strings.Join(dec.Reasons, "; ")
			}
			return &Error{Status: http.StatusForbidden, Code: CodeDenied, Message: msg, RetryAfter: dec.RetryAfter}
		}
	}
	h := w.Header()
	h.Set("Content-Type", rec.MediaType)
	h.Set("Docker-Content-Digest", rec.Digest.String())
	h.Set("Content-Length", strconv.Itoa(len(rec.Body)))
	h.Set("ETag", `"`+rec.Digest.String()+`"`)
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return nil
	}
	_, err = w.Write(rec.Body)
	return err
}

// withNotFound makes an upstream "not found" answer carry the right OCI code.
func withNotFound(err error, code Code) error {
	if errors.Is(err, upstream.ErrNotFound) || errors.Is(err, storage.ErrNotFound) {
		return &Error{Status: http.StatusNotFound, Code: code, Message: err.Error()}
	}
	return err
}

// manifestByDigest serves a manifest from the cache when this repository
// references it, and fetches it (once, however many ask) otherwise. A
// manifest cached for another repository is not served here, online or
// offline: that repository's upstream may not have it, or not for us.
func (p *Proxy) manifestByDigest(ctx context.Context, rq *request, d digest.Digest) (metadata.ManifestRecord, error) {
	key := rq.route.Key()
	_, span := p.span(ctx, "cache.manifest")
	rec, err := p.meta.Manifest(ctx, d)
	span.End()
	if err == nil {
		if ok, _ := p.meta.Linked(ctx, key, d); ok {
			rq.cache = "hit"
			p.metrics.cacheResult(rq.route.Upstream.Name, "manifest", "hit")
			p.meta.Touch(key, d)
			return rec, nil
		}
	}
	rq.cache = "miss"
	p.metrics.cacheResult(rq.route.Upstream.Name, "manifest", "miss")
	return p.fetchManifest(ctx, rq, d)
}

// manifestByTag resolves a tag: within its TTL from the cache, otherwise by
// a HEAD upstream (which Docker Hub does not count as a pull); when the
// upstream cannot answer, from the last known mapping.
func (p *Proxy) manifestByTag(ctx context.Context, rq *request, tag string, accept []string) (metadata.ManifestRecord, error) {
	key := rq.route.Key()
	tr, terr := p.meta.Tag(ctx, key, tag)
	known := terr == nil && acceptable(tr.MediaType, accept)
	if known && p.now().Sub(tr.Resolved) < rq.tagTTL {
		rec, err := p.manifestByDigest(ctx, rq, tr.Digest)
		if err == nil {
			return rec, nil
		}
	}
	v, err := p.shared(ctx, "tag\x00"+key+"\x00"+tag+"\x00"+strings.Join(accept, ","), func() (any, error) {
		lctx, cancel := p.detached(ctx, lookupTimeout)
		defer cancel()
		lctx, span := p.span(lctx, "upstream.resolve_tag", attribute.String("airlock.tag", tag))
		desc, err := rq.registry.HeadManifest(lctx, rq.route.Repo, tag, accept)
		endChild(span, err)
		if err != nil {
			return nil, err
		}
		return desc, nil
	})
	if err != nil {
		if known && offline(err) {
			p.staleServe(ctx, rq, "tag "+tag, err)
			return p.manifestByDigest(ctx, rq, tr.Digest)
		}
		return metadata.ManifestRecord{}, err
	}
	desc := v.(upstream.Descriptor)
	rec, err := p.manifestByDigest(ctx, rq, desc.Digest)
	if err != nil {
		if known && offline(err) && tr.Digest != desc.Digest {
			p.staleServe(ctx, rq, "tag "+tag, err)
			return p.manifestByDigest(ctx, rq, tr.Digest)
		}
		return rec, err
	}
	// A client that takes no index may have been handed one platform's
	// manifest; that answer is not the tag's for everyone else.
	if len(accept) == 0 || slices.Contains(accept, "*/*") || slices.Contains(accept, mediaOCIIndex) || slices.Contains(accept, mediaDockerList) {
		if err := p.meta.PutTag(ctx, key, tag, metadata.TagRecord{
			Digest: rec.Digest, MediaType: rec.MediaType, Size: int64(len(rec.Body)), Resolved: p.now(),
		}); err != nil {
			p.log.LogAttrs(ctx, slog.LevelError, "recording tag failed", slog.String("repository", key),
				slog.String("tag", tag), slog.String("error", err.Error()))
		}
	}
	return rec, nil
}

// offline reports whether err means the upstream could not answer, as
// opposed to answering "no".
func offline(err error) bool {
	return errors.Is(err, upstream.ErrUnavailable) || errors.Is(err, upstream.ErrRateLimited) ||
		errors.Is(err, context.DeadlineExceeded)
}

func (p *Proxy) staleServe(ctx context.Context, rq *request, what string, cause error) {
	rq.cache = "stale"
	p.metrics.staleServe(rq.route.Upstream.Name)
	p.log.LogAttrs(ctx, staleServeLogLevel, "serving stale content: upstream unavailable",
		slog.String("upstream", rq.route.Upstream.Name), slog.String("repository", rq.route.Repo),
		slog.String("what", what), slog.String("error", cause.Error()))
}

// fetchManifest downloads a manifest by digest, verifies it, stores it and
// records what it references. Concurrent callers share one download.
func (p *Proxy) fetchManifest(ctx context.Context, rq *request, d digest.Digest) (metadata.ManifestRecord, error) {
	key := rq.route.Key()
	v, err := p.shared(ctx, "manifest\x00"+key+"\x00"+d.String(), func() (any, error) {
		fctx, cancel := p.detached(ctx, lookupTimeout)
		defer cancel()
		fctx, span := p.span(fctx, "upstream.fetch_manifest", attribute.String("airlock.digest", d.String()))
		rec, err := p.downloadManifest(fctx, rq, d)
		endChild(span, err)
		return rec, err
	})
	if err != nil {
		return metadata.ManifestRecord{}, err
	}
	return v.(metadata.ManifestRecord), nil
}

// shared runs fn once for all concurrent callers with the same key. fn runs
// detached from any one client; a caller whose client hangs up stops
// waiting without cancelling the others.
func (p *Proxy) shared(ctx context.Context, key string, fn func() (any, error)) (any, error) {
	select {
	case res := <-p.flights.DoChan(key, fn):
		return res.Val, res.Err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (p *Proxy) downloadManifest(ctx context.Context, rq *request, d digest.Digest) (metadata.ManifestRecord, error) {
	up, key := rq.route.Upstream.Name, rq.route.Key()
	desc, body, err := rq.registry.GetManifest(ctx, rq.route.Repo, d.String(), allManifestTypes)
	if err != nil {
		return metadata.ManifestRecord{}, err
	}
	defer body.Close()
	if desc.Size > p.maxMan {
		return metadata.ManifestRecord{}, fmt.Errorf("manifest %s of %s is %d bytes, over the %d byte limit: %w",
			d, key, desc.Size, p.maxMan, verify.ErrTooLarge)
	}
	data, err := io.ReadAll(verify.NewReader(body, d, desc.Size, p.maxMan))
	if err != nil {
		if errors.Is(err, verify.ErrDigestMismatch) {
			p.metrics.digestMismatch(up, "manifest")
			p.log.LogAttrs(ctx, slog.LevelError, "digest mismatch from upstream: manifest not cached",
				slog.String("upstream", up), slog.String("repository", rq.route.Repo),
				slog.String("digest", d.String()), slog.String("error", err.Error()))
		}
		return metadata.ManifestRecord{}, fmt.Errorf("manifest %s from upstream %s: %w", d, up, err)
	}
	rec := metadata.ManifestRecord{Digest: d, MediaType: manifestMediaType(desc.MediaType, data), Body: data}
	// Record with the manifest which blobs it references, so later gates can
	// serve a blob only where an allowed manifest uses it.
	if err := p.meta.PutManifest(ctx, key, rec, referencedBlobs(data)...); err != nil {
		return metadata.ManifestRecord{}, fmt.Errorf("storing manifest %s of %s: %w", d, key, err)
	}
	return rec, nil
}

// manifestMediaType prefers the upstream's Content-Type and falls back to
// the manifest's own mediaType field when the upstream sent a generic one.
func manifestMediaType(contentType string, body []byte) string {
	if mt, _, err := mime.ParseMediaType(contentType); err == nil && mt != "" &&
		mt != mediaOctetStream && mt != "application/json" && mt != "text/plain" {
		return mt
	}
	var m struct {
		MediaType string          `json:"mediaType"`
		Manifests json.RawMessage `json:"manifests"`
		Config    json.RawMessage `json:"config"`
	}
	if json.Unmarshal(body, &m) == nil {
		switch {
		case m.MediaType != "":
			return m.MediaType
		case m.Manifests != nil:
			return mediaOCIIndex
		case m.Config != nil:
			return mediaOCIManifest
		}
	}
	if contentType != "" {
		return contentType
	}
	return mediaOCIManifest
}

type blobRef struct {
	Digest digest.Digest `json:"digest"`
	Size   int64         `json:"size"`
}

// referencedBlobs lists the config and layers of an image manifest. An index
// references manifests, not blobs, and yields nothing.
func referencedBlobs(body []byte) []metadata.BlobLink {
	var m struct {
		Config *blobRef   `json:"config"`
		Layers []blobRef  `json:"layers"`
		Blobs  []blobRef  `json:"blobs"`
		FSL    []struct { // Docker schema 1
			BlobSum digest.Digest `json:"blobSum"`
		} `json:"fsLayers"`
	}
	if json.Unmarshal(body, &m) != nil {
		return nil
	}
	var out []blobRef
	if m.Config != nil {
		out = append(out, *m.Config)
	}
	out = append(out, m.Layers...)
	out = append(out, m.Blobs...)
	for _, l := range m.FSL {
		out = append(out, blobRef{Digest: l.BlobSum}) // schema 1 gives no sizes
	}
	var valid []metadata.BlobLink
	for _, b := range out {
		if b.Digest.Validate() == nil && b.Size >= 0 {
			valid = append(valid, metadata.BlobLink{Digest: b.Digest, Size: b.Size})
		}
	}
	return valid
}
