package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/storage"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// contentIndex is what the admin's view of cached content needs from the
// metadata index beyond serving (*metadata.DB implements it).
type contentIndex interface {
	Manifest(ctx context.Context, d digest.Digest) (metadata.ManifestRecord, error)
	ManifestLinks(ctx context.Context, repo string) (map[digest.Digest]metadata.Link, error)
	WithdrawManifest(ctx context.Context, repo string, d digest.Digest, blobs []digest.Digest) error
	UnlinkImage(ctx context.Context, repo string, d digest.Digest, blobs []digest.Digest) ([]digest.Digest, error)
}

type blobDeleter interface {
	Delete(ctx context.Context, d digest.Digest) error
}

func (p *Proxy) index() (contentIndex, error) {
	ix, ok := p.meta.(contentIndex)
	if !ok {
		return nil, errors.New("proxy: the metadata index cannot list or withdraw content")
	}
	return ix, nil
}

// Withdraw makes the blobs of the manifest repo@d unreadable in repo (a
// repository the gate governs), except those that another manifest there,
// admitted and still servable, lists. The manifest's own admission goes
// too: if it becomes servable again, its next serve admits it anew.
func (p *Proxy) Withdraw(ctx context.Context, repo string, d digest.Digest, servable func(digest.Digest) bool) error {
	ix, err := p.index()
	if err != nil {
		return err
	}
	p.storing.change(repo+"\x00"+d.String(), func(m repoManifest) repoManifest {
		m.link.Flags &^= metadata.Admitted
		return m
	})
	// Not only what this manifest admitted: a signature artifact there may
	// list, and have admitted, its blobs. So a manifest still being
	// written counts too.
	rec, link, err := p.repoManifest(ctx, repo, d)
	if errors.Is(err, storage.ErrNotFound) {
		return nil // nothing cached, nothing admitted
	}
	if err != nil {
		return fmt.Errorf("reading manifest %s@%s: %w", repo, d, err)
	}
	keep, err := p.listedBlobs(ctx, ix, repo, func(other digest.Digest, l metadata.Link) bool {
		return other != d && l.Has(metadata.Admitted) && servable(other)
	})
	if err != nil {
		return err
	}
	var drop []digest.Digest
	for _, b := range referencedBlobs(mediaTypeOf(rec, link), rec.Body) {
		if !keep[b.Digest] {
			drop = append(drop, b.Digest)
		}
	}
	return ix.WithdrawManifest(ctx, repo, d, drop)
}

// Admitted reports whether the manifest repo@d's admission is in force:
// its blobs were made readable through it and not withdrawn since. An
// error reads as true, the safe answer for a caller deciding whether to
// withdraw.
func (p *Proxy) Admitted(ctx context.Context, repo string, d digest.Digest) bool {
	_, link, err := p.repoManifest(ctx, repo, d)
	if errors.Is(err, storage.ErrNotFound) {
		return false
	}
	return err != nil || link.Has(metadata.Admitted)
}

// listedBlobs returns the blobs listed by the manifests linked in repo that
// want selects.
func (p *Proxy) listedBlobs(ctx context.Context, ix contentIndex, repo string, want func(digest.Digest, metadata.Link) bool) (map[digest.Digest]bool, error) {
	links, err := ix.ManifestLinks(ctx, repo)
	if err != nil {
		return nil, fmt.Errorf("listing the manifests of %s: %w", repo, err)
	}
	out := map[digest.Digest]bool{}
	for od, ol := range links {
		if !want(od, ol) {
			continue
		}
		orec, err := ix.Manifest(ctx, od)
		if errors.Is(err, storage.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("reading manifest %s: %w", od, err)
		}
		for _, b := range referencedBlobs(mediaTypeOf(orec, ol), orec.Body) {
			out[b.Digest] = true
		}
		for _, c := range childManifests(mediaTypeOf(orec, ol), orec.Body) {
			out[c] = true
		}
	}
	return out, nil
}

func mediaTypeOf(rec metadata.ManifestRecord, l metadata.Link) string {
	if l.MediaType != "" {
		return l.MediaType
	}
	return rec.MediaType
}

// Remove deletes the cached manifest repo@d: its link, its tags, the links
// of the blobs no other manifest in repo lists, and, for an index, the
// platform manifests no other index there lists. Blobs that no repository
// links any more are deleted from the store.
func (p *Proxy) Remove(ctx context.Context, repo string, d digest.Digest) error {
	ix, err := p.index()
	if err != nil {
		return err
	}
	if err := p.remove(ctx, ix, repo, d, true); err != nil {
		return err
	}
	prefix := repo + "\x00"
	p.storing.forgetPrefix(prefix)
	p.declaring.forgetPrefix(prefix)
	p.tagging.forgetPrefix(prefix)
	p.narrowTags.forgetPrefix(prefix)
	return nil
}

func (p *Proxy) remove(ctx context.Context, ix contentIndex, repo string, d digest.Digest, children bool) error {
	if err := p.settle(ctx, repo, d); err != nil {
		return err
	}
	rec, link, err := p.meta.RepoManifest(ctx, repo, d)
	if errors.Is(err, storage.ErrNotFound) {
		_, err = ix.UnlinkImage(ctx, repo, d, nil) // tags may still name it
		return err
	}
	if err != nil {
		return fmt.Errorf("reading manifest %s@%s: %w", repo, d, err)
	}
	mt := mediaTypeOf(rec, link)
	others, err := p.listedBlobs(ctx, ix, repo, func(other digest.Digest, _ metadata.Link) bool { return other != d })
	if err != nil {
		return err
	}
	var drop []digest.Digest
	for _, b := range referencedBlobs(mt, rec.Body) {
		if !others[b.Digest] {
			drop = append(drop, b.Digest)
		}
	}
	orphans, err := ix.UnlinkImage(ctx, repo, d, drop)
	if err != nil {
		return fmt.Errorf("removing %s@%s from the index: %w", repo, d, err)
	}
	if del, ok := p.blobs.(blobDeleter); ok {
		for _, o := range orphans {
			p.settleFills(ctx, o)
			if err := del.Delete(ctx, o); err != nil && !errors.Is(err, storage.ErrNotFound) {
				p.log.LogAttrs(ctx, slog.LevelWarn, "deleting a blob no repository uses failed; eviction will remove it",
					slog.String("digest", o.String()), slog.String("error", err.Error()))
			}
		}
	}
	if !children {
		return nil
	}
	for _, c := range childManifests(mt, rec.Body) {
		if others[c] {
			continue // another index here lists it
		}
		if err := p.remove(ctx, ix, repo, c, false); err != nil {
			return err
		}
	}
	return nil
}

// settleWait bounds how long Remove waits for a running fill of a blob it
// deletes.
const settleWait = 5 * time.Second

// settleFills waits, for at most settleWait, until no fill of d is running.
// A fill stays in the fill set for a moment after its commit, and a
// request arriving then reads along it: deleting the blob under it would
// leave that request served what the admin just removed, and a fill still
// fetching would put the blob back after the delete. A fill longer than
// the wait is left to finish; its blob, linked nowhere, goes at the next
// eviction.
func (p *Proxy) settleFills(ctx context.Context, d digest.Digest) {
	deadline := time.Now().Add(settleWait)
	for p.fills.running(d) && time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// CachedBytes is what repo@d occupies in the cache: its manifest, its
// platforms' manifests and every blob they list that is stored, each
// counted once.
func (p *Proxy) CachedBytes(ctx context.Context, repo string, d digest.Digest) (int64, error) {
	rec, link, err := p.repoManifest(ctx, repo, d)
	if errors.Is(err, storage.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	total := int64(len(rec.Body))
	mt := mediaTypeOf(rec, link)
	blobs := referencedBlobs(mt, rec.Body)
	for _, c := range childManifests(mt, rec.Body) {
		crec, clink, err := p.repoManifest(ctx, repo, c)
		if err != nil {
			continue
		}
		total += int64(len(crec.Body))
		blobs = append(blobs, referencedBlobs(mediaTypeOf(crec, clink), crec.Body)...)
	}
	seen := map[digest.Digest]bool{}
	for _, b := range blobs {
		if seen[b.Digest] {
			continue
		}
		seen[b.Digest] = true
		if n, err := p.blobs.Stat(ctx, b.Digest); err == nil {
			total += n
		}
	}
	return total, nil
}

// Known reports whether repo ("<upstream>/<repository>") is a repository
// the running configuration serves.
func (p *Proxy) Known(repo string) bool { return p.table.Load().router.Known(repo) }

// repoManifest is the manifest repo@d as stored, or as fetched a moment ago
// and still being written.
func (p *Proxy) repoManifest(ctx context.Context, repo string, d digest.Digest) (metadata.ManifestRecord, metadata.Link, error) {
	if m, _, ok := p.storing.get(repo+"\x00"+d.String(), p.now()); ok {
		return m.rec, m.link, nil
	}
	return p.meta.RepoManifest(ctx, repo, d)
}

// settle waits for a background write of the manifest repo@d to land, so
// that what is removed is not written back a moment later.
func (p *Proxy) settle(ctx context.Context, repo string, d digest.Digest) error {
	key := repo + "\x00" + d.String()
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	for {
		if _, _, ok := p.storing.get(key, p.now()); !ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("manifest %s@%s is still being written; try again: %w", repo, d, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}
