package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
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

func (p *Proxy) serveManifest(w http.ResponseWriter, r *http.Request, rq *request) error {
	ctx := r.Context()
	rt := rq.route
	accept := parseAccept(r.Header)
	var (
		m   repoManifest
		err error
		tag string
	)
	if strings.Contains(rt.Reference, ":") {
		d, _ := parseDigest(rt.Reference) // validated by ParseEndpoint
		m, err = p.manifestByDigest(ctx, rq, d)
	} else {
		tag = rt.Reference
		m, err = p.manifestByTag(ctx, rq, tag, accept)
	}
	if err != nil {
		return withNotFound(err, CodeManifestUnknown)
	}
	rec := m.rec
	if p.gate != nil {
		dec, err := p.gate.Admit(ctx, Subject{Upstream: rt.Upstream.Name, Repository: rt.Repo, Tag: tag,
			Digest: rec.Digest, MediaType: rec.MediaType, Body: rec.Body, Head: r.Method == http.MethodHead})
		if err != nil {
			return fmt.Errorf("gate for %s@%s: %w", rt.Key(), rec.Digest, err)
		}
		if !dec.Allow {
			msg := dec.Message
			if msg == "" {
				msg = fmt.Sprintf("%s@%s is not approved", rt.Key(), rec.Digest)
				if len(dec.Reasons) > 0 {
					msg += ": " + strings.Join(dec.Reasons, "; ")
				}
			}
			return &Error{Status: http.StatusForbidden, Code: CodeDenied, Message: msg, RetryAfter: dec.RetryAfter}
		}
	}
	if !m.link.Has(metadata.Admitted) {
		// The first time this manifest is served here, the blobs it lists
		// become readable in this repository (once its upstream confirms
		// each). Later hits find the flag and write nothing.
		err := p.meta.AdmitManifest(ctx, rt.Key(), rec.Digest, referencedBlobs(rec.MediaType, rec.Body))
		if err == nil {
			// A manifest still being written is served from memory: it
			// must say the admission is done too, or every pull until the
			// write lands admits it again.
			p.storing.change(rt.Key()+"\x00"+rec.Digest.String(), func(m repoManifest) repoManifest {
				m.link.Flags |= metadata.Admitted
				return m
			})
			p.recheck(ctx, rq, rec.Digest)
		}
		if err != nil {
			err = p.noSpace(ctx, rq, fmt.Errorf("recording the blobs of %s@%s: %w", rt.Key(), rec.Digest, err))
			// Where no policy applies the record only saves work; under a
			// policy it is what makes the blobs readable, so a full volume
			// fails the pull there.
			if !errors.Is(err, storage.ErrNoSpace) {
				return err
			}
			if p.governs(rq) {
				return &Error{Status: http.StatusServiceUnavailable, Code: CodeUnavailable, RetryAfter: fullBackoff,
					Message: "airlock's cache volume is full; retry shortly", Err: err}
			}
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

// recheck withdraws what admitting d in the request's repository made
// readable if the gate stopped allowing d meanwhile: its own withdrawal
// may have run before the admission was written. The gate changes memory
// before it withdraws, and this asks after writing, so one of the two
// sees the other.
func (p *Proxy) recheck(ctx context.Context, rq *request, d digest.Digest) {
	rc, ok := p.gate.(Rechecker)
	if !ok {
		return
	}
	up, repo := rq.route.Upstream.Name, rq.route.Repo
	if rc.Servable(up, repo, d) {
		if rc.Artifact(up, repo, d) {
			p.withholdRefusedBlobs(ctx, rq, rc, d)
		}
		return
	}
	servable := func(o digest.Digest) bool { return rc.Servable(up, repo, o) }
	if err := p.Withdraw(context.WithoutCancel(ctx), rq.route.Key(), d, servable); err != nil {
		p.log.LogAttrs(ctx, slog.LevelError, "withdrawing the blobs of a manifest refused while it was served failed",
			slog.String("repository", rq.route.Key()), slog.String("digest", d.String()), slog.String("error", err.Error()))
	}
}

// withholdRefusedBlobs withdraws, from the artifact d just admitted, the
// blobs that a refused manifest in the request's repository lists and no
// servable image there does: an upstream could otherwise publish a
// "signature" whose layers are a quarantined image's. Such an artifact is
// admitted again on its next pull, and withheld again.
func (p *Proxy) withholdRefusedBlobs(ctx context.Context, rq *request, rc Rechecker, d digest.Digest) {
	ctx = context.WithoutCancel(ctx)
	up, repo, key := rq.route.Upstream.Name, rq.route.Repo, rq.route.Key()
	fail := func(err error) {
		p.log.LogAttrs(ctx, slog.LevelError, "checking a signature artifact's blobs against refused images failed",
			slog.String("repository", key), slog.String("digest", d.String()), slog.String("error", err.Error()))
	}
	ix, err := p.index()
	if err != nil {
		fail(err)
		return
	}
	rec, link, err := p.repoManifest(ctx, key, d)
	if err != nil {
		fail(err)
		return
	}
	refused, err := p.listedBlobs(ctx, ix, key, func(o digest.Digest, _ metadata.Link) bool { return o != d && !rc.Servable(up, repo, o) })
	if err != nil || len(refused) == 0 {
		if err != nil {
			fail(err)
		}
		return
	}
	kept, err := p.listedBlobs(ctx, ix, key, func(o digest.Digest, l metadata.Link) bool {
		return o != d && l.Has(metadata.Admitted) && rc.Servable(up, repo, o) && !rc.Artifact(up, repo, o)
	})
	if err != nil {
		fail(err)
		return
	}
	var drop []digest.Digest
	for _, b := range referencedBlobs(mediaTypeOf(rec, link), rec.Body) {
		if refused[b.Digest] && !kept[b.Digest] {
			drop = append(drop, b.Digest)
		}
	}
	if len(drop) == 0 {
		return
	}
	p.storing.change(key+"\x00"+d.String(), func(m repoManifest) repoManifest {
		m.link.Flags &^= metadata.Admitted
		return m
	})
	if err := ix.WithdrawManifest(ctx, key, d, drop); err != nil {
		fail(err)
		return
	}
	p.log.LogAttrs(ctx, slog.LevelWarn, "a signature artifact lists blobs of refused images; they stay unreadable",
		slog.String("repository", key), slog.String("digest", d.String()), slog.Int("blobs", len(drop)))
}

// withNotFound makes an upstream "not found" answer carry the right OCI code.
func withNotFound(err error, code Code) error {
	if errors.Is(err, upstream.ErrNotFound) || errors.Is(err, storage.ErrNotFound) {
		return &Error{Status: http.StatusNotFound, Code: code, Message: publicMessage(err, "not found"), Err: err}
	}
	return err
}

// repoManifest is a manifest as one repository serves it: rec.MediaType is
// the repository's own (see servedMediaType), link what it knows of it.
type repoManifest struct {
	rec  metadata.ManifestRecord
	link metadata.Link
}

// manifestByDigest serves a manifest from the cache when this repository's
// upstream has vouched for it, and fetches it (once, however many ask)
// otherwise. A manifest cached through another repository or upstream is
// served here only after this repository's upstream confirms it has it,
// online: the other upstream's word, or a manifest's list of digests, is
// not this upstream's.
func (p *Proxy) manifestByDigest(ctx context.Context, rq *request, d digest.Digest) (repoManifest, error) {
	key := rq.route.Key()
	if m, fresh, _ := p.storing.get(key+"\x00"+d.String(), p.now()); fresh {
		// Fetched a moment ago and still being written.
		rq.cache = "hit"
		return m, nil
	}
	_, span := p.span(ctx, "cache.manifest")
	rec, link, err := p.meta.RepoManifest(ctx, key, d)
	span.End()
	if err == nil && link.Has(metadata.Confirmed) {
		rq.cache = "hit"
		p.meta.Touch(key, d)
		rec.MediaType = link.MediaType
		return repoManifest{rec, link}, nil
	}
	if rec.Digest == d {
		// The bytes are here; only this repository's say-so is missing.
		if m, err := p.confirmManifest(ctx, rq, rec); err == nil {
			rq.cache = "hit"
			p.meta.Touch(key, d)
			return m, nil
		} else if errors.Is(err, upstream.ErrNotFound) {
			return repoManifest{}, err
		}
	}
	rq.cache = "miss"
	return p.fetchManifest(ctx, rq, d)
}

// confirmManifest asks this repository's upstream, without a transfer,
// whether it holds the cached manifest rec, and links it here if so.
func (p *Proxy) confirmManifest(ctx context.Context, rq *request, rec metadata.ManifestRecord) (repoManifest, error) {
	key := rq.route.Key()
	v, err := p.shared(ctx, "confirm\x00"+key+"\x00"+rec.Digest.String(), func() (any, error) {
		lctx, cancel := p.detached(ctx, lookupTimeout)
		defer cancel()
		lctx, span := p.span(lctx, "upstream.confirm_manifest", attribute.String("airlock.digest", rec.Digest.String()))
		desc, err := rq.registry.HeadManifest(lctx, rq.route.Repo, rec.Digest.String(), allManifestTypes)
		endChild(span, err)
		if err != nil {
			return nil, err
		}
		if desc.Digest != "" && desc.Digest != rec.Digest {
			return nil, fmt.Errorf("upstream %s answered for %s with digest %s: %w",
				rq.route.Upstream.Name, rec.Digest, desc.Digest, upstream.ErrInvalid)
		}
		link := metadata.Link{Flags: metadata.Confirmed, MediaType: servedMediaType(desc.MediaType, rec.Body)}
		if err := p.meta.LinkManifest(lctx, key, rec.Digest, link); err != nil {
			return nil, fmt.Errorf("linking manifest %s to %s: %w", rec.Digest, key, err)
		}
		return link, nil
	})
	if err != nil {
		return repoManifest{}, err
	}
	link := v.(metadata.Link)
	rec.MediaType = link.MediaType
	// The Admitted flag may already be on the stored link; reading it again
	// is cheaper than admitting twice, and admitting twice is harmless.
	if l, err := p.meta.ManifestLink(ctx, key, rec.Digest); err == nil {
		link = l
	}
	return repoManifest{rec, link}, nil
}

// manifestByTag resolves a tag: within its TTL from the cache, otherwise by
// a HEAD upstream (which Docker Hub does not count as a pull); when the
// upstream cannot answer, from the last known mapping.
func (p *Proxy) manifestByTag(ctx context.Context, rq *request, tag string, accept []string) (repoManifest, error) {
	key := rq.route.Key()
	tr, terr := p.meta.Tag(ctx, key, tag)
	if rec, _, ok := p.tagging.get(key+"\x00"+tag, p.now()); ok && (terr != nil || rec.Resolved.After(tr.Resolved)) {
		// Resolved a moment ago and still being written: newer than any
		// record on disk, which may be the one this answer replaces.
		tr, terr = rec, nil
	}
	known := terr == nil && acceptable(tr.MediaType, accept)
	if known && p.now().Sub(tr.Resolved) < rq.tagTTL {
		m, err := p.manifestByDigest(ctx, rq, tr.Digest)
		if err == nil {
			return m, nil
		}
	}
	// What the tag gave clients with this very Accept list, when that was
	// not the tag's answer for everyone.
	narrow := key + "\x00" + tag + "\x00" + acceptKey(accept)
	nd, nfresh, nok := digest.Digest(""), false, false
	if !known {
		nd, nfresh, nok = p.narrowTags.get(narrow, p.now())
		if nfresh {
			if m, err := p.manifestByDigest(ctx, rq, nd); err == nil {
				return m, nil
			}
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
		switch {
		case known && offline(err):
			return p.staleManifest(ctx, rq, tag, tr.Digest, err)
		case nok && offline(err):
			return p.staleManifest(ctx, rq, tag, nd, err)
		}
		return repoManifest{}, err
	}
	desc := v.(upstream.Descriptor)
	if err := verify.Check(desc.Digest); err != nil {
		// The digest comes from the upstream, not the client: one airlock
		// cannot verify (sha384, say) is the upstream's fault, not an
		// internal error.
		return repoManifest{}, fmt.Errorf("upstream %s names %s:%s by a digest airlock cannot verify: %w: %w",
			rq.route.Upstream.Name, key, tag, err, upstream.ErrInvalid)
	}
	m, err := p.manifestByDigest(ctx, rq, desc.Digest)
	if err != nil {
		if known && offline(err) && tr.Digest != desc.Digest {
			return p.staleManifest(ctx, rq, tag, tr.Digest, err)
		}
		return m, err
	}
	if everyClientGets(m.rec.MediaType, accept) {
		// Written in the background like the manifest, and kept in memory
		// meanwhile.
		rec := metadata.TagRecord{Digest: m.rec.Digest, MediaType: m.rec.MediaType, Size: int64(len(m.rec.Body)), Resolved: p.now()}
		pending := key + "\x00" + tag
		p.tagging.put(pending, rec, p.now().Add(storingMemory))
		p.persist(rq, "recording tag "+tag, func(ctx context.Context) error {
			// Two resolutions of one tag can be on their way at once (a
			// short TTL, a slow volume); their writes must not land out of
			// order. Under the tag's lock, a record no longer the latest
			// in memory is not written: a newer one was resolved and is
			// written after it, or was already.
			mu := p.tagLock(pending)
			mu.Lock()
			defer mu.Unlock()
			if cur, _, ok := p.tagging.get(pending, p.now()); !ok || cur != rec {
				return nil
			}
			err := p.meta.PutTag(ctx, key, tag, rec)
			if err == nil {
				p.tagging.forgetIf(pending, func(cur metadata.TagRecord) bool { return cur == rec })
			}
			return err
		})
	} else {
		p.narrowTags.put(narrow, m.rec.Digest, p.now().Add(rq.tagTTL))
	}
	return m, nil
}

// staleManifest serves the last known mapping of tag while the upstream
// cannot answer. Only what this repository's upstream vouched for is
// served: confirming anything else would need the upstream.
func (p *Proxy) staleManifest(ctx context.Context, rq *request, tag string, d digest.Digest, cause error) (repoManifest, error) {
	key := rq.route.Key()
	if m, _, ok := p.storing.get(key+"\x00"+d.String(), p.now()); ok {
		p.staleServe(ctx, rq, "tag "+tag, cause)
		return m, nil
	}
	rec, link, err := p.meta.RepoManifest(ctx, key, d)
	if err != nil || !link.Has(metadata.Confirmed) {
		return repoManifest{}, cause
	}
	p.staleServe(ctx, rq, "tag "+tag, cause)
	p.meta.Touch(key, d)
	rec.MediaType = link.MediaType
	return repoManifest{rec, link}, nil
}

// staleServe records that the request is answered from what airlock knew
// while the upstream could not answer.
func (p *Proxy) staleServe(ctx context.Context, rq *request, what string, cause error) {
	rq.cache = "stale"
	p.metrics.staleServe(rq.route.Upstream.Name)
	p.log.LogAttrs(ctx, staleServeLogLevel, "serving stale content: upstream unavailable",
		slog.String("upstream", rq.route.Upstream.Name), slog.String("repository", rq.route.Repo),
		slog.String("what", what), slog.String("error", cause.Error()))
}

// offline reports whether err means the upstream could not answer, as
// opposed to answering "no".
func offline(err error) bool {
	return errors.Is(err, upstream.ErrUnavailable) || errors.Is(err, upstream.ErrRateLimited) ||
		errors.Is(err, context.DeadlineExceeded)
}

// fetchManifest downloads a manifest by digest, verifies it, stores it and
// links it to the repository. Concurrent callers share one download.
func (p *Proxy) fetchManifest(ctx context.Context, rq *request, d digest.Digest) (repoManifest, error) {
	key := rq.route.Key()
	v, err := p.shared(ctx, "manifest\x00"+key+"\x00"+d.String(), func() (any, error) {
		fctx, cancel := p.detached(ctx, lookupTimeout)
		defer cancel()
		fctx, span := p.span(fctx, "upstream.fetch_manifest", attribute.String("airlock.digest", d.String()))
		m, err := p.downloadManifest(fctx, rq, d)
		endChild(span, err)
		return m, err
	})
	if err != nil {
		return repoManifest{}, err
	}
	m := v.(repoManifest)
	// The link may have been admitted since (by a concurrent request), and
	// callers share the record: give each its own view.
	if l, err := p.meta.ManifestLink(ctx, key, d); err == nil {
		m.link = l
	}
	return m, nil
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

func (p *Proxy) downloadManifest(ctx context.Context, rq *request, d digest.Digest) (repoManifest, error) {
	up, key := rq.route.Upstream.Name, rq.route.Key()
	desc, body, err := rq.registry.GetManifest(ctx, rq.route.Repo, d.String(), allManifestTypes)
	if err != nil {
		return repoManifest{}, err
	}
	defer body.Close()
	if desc.Size > p.maxMan {
		return repoManifest{}, fmt.Errorf("manifest %s of %s is %d bytes, over the %d byte limit: %w",
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
		return repoManifest{}, fmt.Errorf("manifest %s from upstream %s: %w", d, up, err)
	}
	mt := servedMediaType(desc.MediaType, data)
	rec := metadata.ManifestRecord{Digest: d, MediaType: mt, Body: data}
	link := metadata.Link{Flags: metadata.Confirmed, MediaType: mt}
	var admit []metadata.BlobLink
	if !p.governs(rq) {
		// No policy applies here, so serving admits: record that with the
		// manifest, in one commit.
		link.Flags |= metadata.Admitted
		admit = referencedBlobs(mt, data)
	}
	// The manifest is verified: it is served now and written in the
	// background, kept in memory meanwhile. The write's fsync can wait
	// behind the dirty pages of other pulls' blobs on the same disk for
	// longer than the whole pull takes otherwise.
	m := repoManifest{rec: rec, link: link}
	pending := key + "\x00" + d.String()
	p.storing.put(pending, m, p.now().Add(storingMemory))
	for _, b := range admit {
		// The sizes it declares bound the fills of its blobs at once. The
		// first declaration stands, as in the store, where a declaration
		// never replaces a size already known.
		p.declaring.add(key+"\x00"+b.Digest.String(), b.Size, p.now(), p.now().Add(storingMemory))
	}
	p.persist(rq, "storing manifest", func(ctx context.Context) error {
		err := p.meta.PutManifest(ctx, key, rec, link, admit...)
		if err == nil {
			p.storing.forget(pending)
			for _, b := range admit {
				p.declaring.forget(key + "\x00" + b.Digest.String())
			}
			if len(admit) > 0 && p.governs(rq) {
				// The repository became governed since (an admin's block,
				// a policy reloaded): the gate's withdrawal may have found
				// nothing yet to withdraw.
				p.recheck(ctx, rq, d)
			}
		}
		// The index shares a full cache volume: the manifest was served,
		// only not kept.
		return p.noSpace(ctx, rq, err)
	})
	return m, nil
}

// storingMemory is how long a fetched manifest is served from memory while
// it is written: longer than a background write may take (see persist), so
// that memory never lapses before the write lands.
const storingMemory = lookupTimeout + time.Minute
