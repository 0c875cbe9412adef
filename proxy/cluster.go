package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/storage"
	"github.com/airlock-registry/airlock/verify"
)

// Cluster makes the replicas of one airlock fetch each blob from its
// upstream once between them (*cluster.Cluster implements it). A fill
// claims the blob's lease before its transfer; the replica that gets it
// fetches from the upstream, and the others read its fill from its peer
// listener. Nil in Options is a single replica.
type Cluster interface {
	// ClaimFill takes the cluster-wide lease on the fill of d from
	// upstream. With release set this replica holds it and fetches the
	// blob, calling release once the fill ended; recheck then says that
	// another fill held the lease before and may have stored the blob
	// since the store was last asked. Otherwise peer is the replica to
	// read it from. suspect is a peer whose stream just broke: while it
	// still holds the lease, ClaimFill waits (at most a lease's lifetime)
	// for the lease to expire or be renewed. An error means the lease
	// could not be asked for: the fill fetches the blob itself.
	ClaimFill(ctx context.Context, upstream string, d digest.Digest, suspect string) (release func(), recheck bool, peer string, err error)
	// OpenPeerFill reads d from peer from offset off. size is the whole
	// blob's size as the peer announced it (-1 if unknown), repository the
	// "<upstream>/<repo>" its fill fetches from ("" when it answered from
	// the store). A nil body with a nil error means the peer has neither a
	// fill nor the blob: claim again. An error means the peer could not be
	// read: the fill fetches the blob itself.
	OpenPeerFill(ctx context.Context, peer, upstream string, d digest.Digest, off int64) (body io.ReadCloser, size int64, repository string, err error)
}

// BlobRanger is implemented by a Registry that can fetch a blob from an
// offset: how a fill whose peer died mid-blob resumes from the upstream
// with the bytes it has. known is the whole blob's size if the caller
// knows it, else -1; size is the whole blob's size (-1 if unknown); an
// upstream that ignores the range is an error. Without it, a resuming fill
// fetches the whole blob again and skips what it has.
type BlobRanger interface {
	GetBlobFrom(ctx context.Context, repo string, d digest.Digest, off, known int64) (body io.ReadCloser, size int64, err error)
}

// maxSourceSwitches bounds how often one fill moves to another source
// after a peer's stream broke. Each move waits at most a lease's
// lifetime, so a fill never waits forever on a cluster that keeps losing
// replicas.
const maxSourceSwitches = 8

// blobSource is where a fill's bytes come from: its upstream, or the peer
// that leads the fill.
type blobSource struct {
	body io.ReadCloser
	// size is the whole blob's size as the source announced it, -1 if
	// unknown.
	size int64
	// peer is the leader's address; "" for the upstream.
	peer string
	// name says where the bytes came from in errors and logs.
	name string
}

func (s *blobSource) close() {
	if s.body != nil {
		s.body.Close()
	}
}

// openSource opens the fill's bytes from offset off: from the upstream on
// a single replica or when this replica leads the fill, else from the
// leader. suspect is the peer whose stream just broke, if any. check, at
// the fill's start, is its look in the store: the upstream is asked only
// once the store said it lacks the blob; a leader's stream need not wait
// for that answer.
func (p *Proxy) openSource(ctx context.Context, f *fill, rq *request, off int64, suspect string, check *storeCheck) (blobSource, error) {
	up := rq.route.Upstream.Name
	fromUpstream := func() (blobSource, error) {
		if check != nil {
			if err := check.wait(ctx); err != nil {
				return blobSource{}, err
			}
		}
		return p.upstreamSource(ctx, rq, f, off)
	}
	if p.cluster == nil || f.lease != nil {
		return fromUpstream()
	}
	for attempt := range peerEndedClaims {
		if attempt > 0 {
			// The peer answered that its fill ended, yet held the lease a
			// moment ago: it gives the lease up just after its fill leaves
			// its fill set, so claiming again at once would find it held
			// still, and after a few tries fetch the blob without any lease.
			select {
			case <-time.After(peerEndedWait << (attempt - 1)):
			case <-ctx.Done():
				return blobSource{}, context.Cause(ctx)
			}
		}
		release, recheck, peer, err := p.cluster.ClaimFill(ctx, up, f.digest, suspect)
		if err != nil {
			if ctx.Err() != nil {
				return blobSource{}, err
			}
			p.log.LogAttrs(ctx, slog.LevelWarn, "cluster lease unavailable: fetching the blob without it",
				slog.String("upstream", up), slog.String("digest", f.digest.String()), slog.String("error", err.Error()))
			return fromUpstream()
		}
		if release != nil {
			f.lease = release
			if recheck && off == 0 {
				// The fill that held the lease before gave it up after its
				// commit, perhaps since runFill looked in the store.
				if _, err := p.blobs.Stat(ctx, f.digest); err == nil {
					return blobSource{}, errStoredMeanwhile
				}
			}
			return fromUpstream()
		}
		if p.distrusted(peer, f.digest) {
			// This peer's bytes failed a fill of the blob a moment ago:
			// following it again would fail the same way.
			p.log.LogAttrs(ctx, slog.LevelWarn, "not following a peer that sent a wrong blob: fetching it from the upstream",
				slog.String("upstream", up), slog.String("digest", f.digest.String()), slog.String("peer", peer))
			return fromUpstream()
		}
		body, size, repo, err := p.cluster.OpenPeerFill(ctx, peer, up, f.digest, off)
		if err != nil {
			// A partition: correctness holds without the peer, at the
			// cost of a transfer (the cluster logs and counts it).
			if ctx.Err() != nil {
				return blobSource{}, err
			}
			return fromUpstream()
		}
		if body == nil {
			suspect = "" // the peer's fill ended: the lease is free or someone else's
			continue
		}
		src := blobSource{body: body, size: size, peer: peer, name: "peer " + peer}
		if repo == "" && off == 0 {
			// The leader's fill committed: the blob is in the store the
			// replicas share, and this fill has nothing to fetch.
			if _, err := p.blobs.Stat(ctx, f.digest); err == nil {
				src.close()
				return blobSource{}, errStoredMeanwhile
			}
		}
		if repo != rq.route.Key() {
			// Another repository's fill on the peer, or the peer's store:
			// this repository's own upstream must vouch for the blob, as it
			// would for a local fill of another repository.
			if err := p.confirmAt(ctx, rq, f.digest, size); err != nil {
				src.close()
				return blobSource{}, err
			}
		}
		return src, nil
	}
	return fromUpstream()
}

// peerEndedClaims is how many times a fill claims the lease while the
// peers holding it answer that their fill ended; peerEndedWait is the
// first pause between two claims, doubled at each.
const (
	peerEndedClaims = 5
	peerEndedWait   = 20 * time.Millisecond
)

// distrustFor is how long a peer whose bytes failed a fill of a blob is
// not followed for that blob. A peer's own fill verifies what it fetched,
// so a genuine replica sends a wrong blob only when something beneath it
// is broken (its disk, its memory); its lease, and so the wrong answers,
// may last as long as its fill.
const distrustFor = 10 * time.Minute

// peerBlob is a peer's address and a blob it led.
type peerBlob struct {
	peer   string
	digest digest.Digest
}

// distrust records that a fill of d, which read bytes from peers, failed
// its checks with err: the client that read along got a broken transfer,
// and its retry fetches the blob from the upstream instead of failing the
// same way for as long as the peer holds the blob's lease. The upstream
// may have been at fault as well; it is asked again either way.
func (p *Proxy) distrust(ctx context.Context, upstream string, d digest.Digest, peers []string, err error) {
	now := time.Now()
	p.fills.mu.Lock()
	if p.fills.distrusted == nil {
		p.fills.distrusted = map[peerBlob]time.Time{}
	}
	for k, until := range p.fills.distrusted {
		if now.After(until) {
			delete(p.fills.distrusted, k)
		}
	}
	for _, peer := range peers {
		p.fills.distrusted[peerBlob{peer, d}] = now.Add(distrustFor)
	}
	p.fills.mu.Unlock()
	p.log.LogAttrs(ctx, slog.LevelError, "a fill read from peers failed its checks: not following them for this blob for a while",
		slog.String("upstream", upstream), slog.String("digest", d.String()), slog.Any("peers", peers),
		slog.Duration("for", distrustFor), slog.String("error", err.Error()))
}

// distrusted reports whether peer's bytes failed a fill of d lately.
func (p *Proxy) distrusted(peer string, d digest.Digest) bool {
	p.fills.mu.Lock()
	defer p.fills.mu.Unlock()
	until, ok := p.fills.distrusted[peerBlob{peer, d}]
	return ok && time.Now().Before(until)
}

// errStoredMeanwhile ends a fill that found the blob committed by the
// replica that led it: its readers go to the store.
var errStoredMeanwhile = errors.New("blob was committed by the replica leading its fill")

// confirmAt asks the request's upstream whether its repository holds d,
// of the peer's size when it announced one.
func (p *Proxy) confirmAt(ctx context.Context, rq *request, d digest.Digest, size int64) error {
	lctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	announced, err := rq.registry.HeadBlob(lctx, rq.route.Repo, d)
	if err != nil {
		return err
	}
	if size >= 0 && announced >= 0 && announced != size {
		return fmt.Errorf("upstream %s answered for blob %s in %s with %d bytes, but the peer streaming it announced %d: %w",
			rq.route.Upstream.Name, d, rq.route.Repo, announced, size, verify.ErrDigestMismatch)
	}
	return nil
}

// upstreamSource fetches d from the request's upstream from offset off.
// A resumed fill asks for a range when the registry can; otherwise it
// fetches the whole blob again and skips the bytes it has. Those bytes
// came from a peer and are never checked against the upstream's one by
// one, but the digest covers every byte of the spool: a peer that lied
// fails the fill at the end, before any client has the last byte.
func (p *Proxy) upstreamSource(ctx context.Context, rq *request, f *fill, off int64) (blobSource, error) {
	d := f.digest
	src := blobSource{name: "upstream " + rq.route.Upstream.Name}
	if off == 0 {
		body, size, err := rq.registry.GetBlob(ctx, rq.route.Repo, d)
		src.body, src.size = body, size
		return src, err
	}
	if br, ok := rq.registry.(BlobRanger); ok {
		// The size the fill started with lets the range name both ends.
		known := f.snapshot().size
		if known < 0 && f.declared > 0 {
			known = f.declared
		}
		body, size, err := br.GetBlobFrom(ctx, rq.route.Repo, d, off, known)
		if err == nil {
			src.body, src.size = body, size
			return src, nil
		}
		if ctx.Err() != nil {
			return src, err
		}
		p.log.LogAttrs(ctx, slog.LevelWarn, "resuming a blob from the upstream with a range failed: fetching it whole",
			slog.String("upstream", rq.route.Upstream.Name), slog.String("digest", d.String()),
			slog.Int64("offset", off), slog.String("error", err.Error()))
	}
	body, size, err := rq.registry.GetBlob(ctx, rq.route.Repo, d)
	if err != nil {
		return src, err
	}
	if size >= 0 && size < off {
		body.Close()
		return src, fmt.Errorf("upstream %s announced %d bytes for blob %s, fewer than the %d a peer sent: %w",
			rq.route.Upstream.Name, size, d, off, verify.ErrDigestMismatch)
	}
	if _, err := io.CopyN(io.Discard, body, off); err != nil {
		body.Close()
		return src, fmt.Errorf("blob %s from upstream %s: skipping the %d bytes a peer sent: %w", d, rq.route.Upstream.Name, off, err)
	}
	src.body, src.size = body, size
	return src, nil
}

// sourceError is a failure reading a fill's source, as opposed to writing
// the spool.
type sourceError struct{ err error }

func (e *sourceError) Error() string { return e.err.Error() }
func (e *sourceError) Unwrap() error { return e.err }

// resumable reports whether a fill whose source failed with err may carry
// on from another source: a peer's stream that broke, never a peer that
// sent too much (hostile) and never a full spool volume.
func resumable(ctx context.Context, src blobSource, err error) bool {
	var se *sourceError
	return src.peer != "" && ctx.Err() == nil && errors.As(err, &se) && !errors.Is(err, verify.ErrTooLarge)
}

// awaitPeerCommit gives the leader of a fill this replica followed the
// time to commit the blob to the store the replicas share, so that this
// replica's commit finds it there and stores nothing twice (content
// addressing makes a second put harmless, but on object storage it is a
// whole upload). The leader gives up the lease only after its commit, so
// the wait ends when the blob is stored, or when this replica can take the
// lease (the leader's commit failed, or it died): this replica then
// commits under the lease. Clients have every byte already: this delays
// only the fill's end, at most peerCommitWait.
func (p *Proxy) awaitPeerCommit(ctx context.Context, f *fill, up string) {
	deadline := time.Now().Add(peerCommitWait)
	for wait := 10 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		if _, err := p.blobs.Stat(ctx, f.digest); err == nil || !errors.Is(err, storage.ErrNotFound) {
			return
		}
		release, _, _, err := p.cluster.ClaimFill(ctx, up, f.digest, "")
		if err != nil || release != nil {
			f.lease = release
			return
		}
		if time.Now().After(deadline) {
			return
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return
		}
	}
}

// peerCommitWait bounds awaitPeerCommit: an object store's upload of a
// large layer takes a while.
const peerCommitWait = 2 * time.Minute

// StreamFill serves the peer listener (see cluster.FillSource): blob d of
// upstream from offset off, from a running fill of this replica as it
// grows, else from the store. Its caller answered for the gate already: a
// peer asks only for a blob its own client may have.
func (p *Proxy) StreamFill(ctx context.Context, upstream string, d digest.Digest, off int64,
	start func(size int64, repository string) io.Writer) (bool, error) {
	if f := p.peerFill(upstream, d); f != nil {
		defer f.release()
		s, err := f.waitStarted(ctx)
		if err != nil {
			return false, err
		}
		if !s.stored && s.err == nil {
			if s.size >= 0 && off > s.size {
				return true, fmt.Errorf("offset %d is past the end of blob %s (%d bytes)", off, d, s.size)
			}
			w := start(s.size, f.key)
			return true, f.copyRange(ctx, w, off, s.size)
		}
		// Stored before the fill began, or failed: the store decides.
	}
	content, size, err := p.blobs.Open(ctx, d)
	if errors.Is(err, storage.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("opening blob %s: %w", d, err)
	}
	defer content.Close()
	if off > size {
		return true, fmt.Errorf("offset %d is past the end of blob %s (%d bytes)", off, d, size)
	}
	if _, err := content.Seek(off, io.SeekStart); err != nil {
		return true, fmt.Errorf("seeking blob %s to %d: %w", d, off, err)
	}
	w := start(size, "")
	_, err = io.Copy(w, content)
	return true, err
}

// peerFill returns a running fill of d from upstream that a peer may read,
// with a reference the caller releases, or nil. Any fill of the blob will
// do: the peer verifies the digest itself, so a fill bound by another
// repository's declared size costs it at worst a resume.
func (p *Proxy) peerFill(upstream string, d digest.Digest) *fill {
	p.fills.mu.Lock()
	defer p.fills.mu.Unlock()
	var found *fill
	for k, f := range p.fills.m {
		if k.upstream == upstream && k.digest == d && (found == nil || k.declared == 0) {
			found = f
		}
	}
	if found != nil {
		found.mu.Lock()
		found.refs++
		found.mu.Unlock()
	}
	return found
}
