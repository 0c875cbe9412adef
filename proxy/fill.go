package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	"go.opentelemetry.io/otel/attribute"

	"github.com/airlock-registry/airlock/storage"
	"github.com/airlock-registry/airlock/storage/metadata"
	"github.com/airlock-registry/airlock/verify"
)

// fill is one upstream transfer of a blob into a spool file. Every client
// asking for the blob while the fill runs — the one that started it
// included — reads the spool as it grows, so there is one upstream transfer
// per digest at a time for all the repositories of an upstream that agree
// on its size (see fillSet).
//
// The last byte is held back from readers until the digest is verified:
// a client can receive a truncated transfer, never a complete wrong blob.
//
// In a cluster (Options.Cluster) a fill first claims the blob's lease
// across the replicas: the replica that gets it fetches from the
// upstream, the others read its fill from its peer listener into spools of
// their own, verified the same way (see cluster.go).
type fill struct {
	digest   digest.Digest
	upstream string
	key      string // the repository the fill fetches from, "<upstream>/<repo>"
	// declared is the size the repository's admitted manifest gave the
	// blob, 0 if none did; the transfer may not differ from it.
	declared int64
	// setKey is the fill's key in the fill set.
	setKey fillKey
	// followers counts the requests that joined, for the fill's log line.
	followers int
	// lease releases the fill's cluster-wide lease; set, by the fill's
	// own goroutine, once this replica leads the fill across the cluster.
	lease func()

	mu sync.Mutex
	// wake is closed and replaced whenever the state below changes.
	wake     chan struct{}
	started  bool  // size is known and spool exists (or the fill failed)
	verified bool  // every byte is in and matched the digest
	size     int64 // from the upstream's Content-Length; -1 if unknown
	spool    *storage.Spool
	written  int64
	done     bool
	stored   bool // the blob was already in the store: nothing was fetched
	err      error
	refs     int // readers plus the fill itself; the spool closes at zero
	// discardLast is set when a verified spool could not be committed: its
	// readers still read it, and the last of them discards it (release).
	discardLast bool
	// discard removes a spool that was not committed.
	discard func(*storage.Spool) error
}

// fillSet holds the running fills by upstream, digest and declared size. A
// client reads along a fill of its own upstream only: another upstream's
// transfer may be slower, or may not be allowed to answer for this one at
// all. And it reads along a fill bounded by the size its own repository
// declared, or by no declared size: a fill fails when the upstream's blob
// differs from its declared size, so sharing fills across declarations
// would let one repository's manifest that lies about a popular layer's
// size break that layer's pull for every repository of the upstream.
type fillSet struct {
	mu sync.Mutex
	m  map[fillKey]*fill
	// n is len(m), read without the lock: a warm hit asks whether any
	// fill runs at all before it takes the lock to look for one.
	n atomic.Int64
	// distrusted holds, until when, the peers whose bytes made a fill of
	// a blob fail its checks (see distrust); nil until one does.
	distrusted map[peerBlob]time.Time
}

type fillKey struct {
	upstream string
	digest   digest.Digest
	declared int64
	// private is set, to the repository, for a fill no other repository
	// may join: one started because another repository's fill failed, so
	// that the same failure cannot be this request's answer twice.
	private string
}

// running reports whether a fill of d is in the set (fetching, or
// committing what it fetched).
func (s *fillSet) running(d digest.Digest) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k := range s.m {
		if k.digest == d {
			return true
		}
	}
	return false
}

// state is a consistent snapshot of a fill for a reader.
type fillState struct {
	started bool
	size    int64
	// avail is how many bytes readers may send now.
	avail    int64
	done     bool
	verified bool
	stored   bool
	err      error
	wake     <-chan struct{}
}

func (f *fill) snapshot() fillState {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := fillState{started: f.started, size: f.size, avail: f.written, done: f.done, verified: f.verified, stored: f.stored, err: f.err, wake: f.wake}
	if !f.verified && !f.done && s.avail > 0 {
		s.avail-- // hold back the last byte until verified
	}
	return s
}

func (f *fill) update(change func()) {
	f.mu.Lock()
	change()
	close(f.wake)
	f.wake = make(chan struct{})
	f.mu.Unlock()
}

// release drops one reference; the last one closes the spool file, or
// discards it if it was verified but not committed. The spool's bytes stay
// readable after Commit until then.
func (f *fill) release() {
	f.mu.Lock()
	f.refs--
	last := f.refs == 0
	s, discard := f.spool, f.discardLast
	f.mu.Unlock()
	switch {
	case !last || s == nil:
	case discard:
		_ = f.discard(s)
	default:
		_ = s.Close()
	}
}

// dropSpool disposes of the spool of a fill that did not commit it. Bytes
// that matched the digest are still right for the readers streaming them,
// only not cached: that spool goes with its last reader (see release), and
// counts in the spool volume's use until then. Any other is discarded now,
// and its readers find it ended.
func (f *fill) dropSpool(s *storage.Spool) {
	f.mu.Lock()
	keep := f.verified && f.spool == s
	f.discardLast = keep
	f.mu.Unlock()
	if !keep {
		_ = f.discard(s)
	}
}

// joinFill returns the running fill for d, starting one if there is none
// and start is set (otherwise, or after Close, f is nil); leader reports
// that this request started it. ctx only lends the fill its trace. The
// caller must release the fill.
func (p *Proxy) joinFill(ctx context.Context, rq *request, d digest.Digest, declared int64, start, private bool) (f *fill, leader bool) {
	k := fillKey{rq.route.Upstream.Name, d, declared, ""}
	if private {
		k.private = rq.route.Key()
	}
	p.fills.mu.Lock()
	defer p.fills.mu.Unlock()
	f = p.fills.m[k]
	if f == nil && declared != 0 && !private {
		// A fill no size was declared for fails on no one's declaration,
		// so it serves any: the digest decides.
		f = p.fills.m[fillKey{k.upstream, d, 0, ""}]
	}
	if f == nil && declared == 0 && !private {
		// Nothing is known of the size here: this repository's own fill,
		// bound by its own declaration, will do. Not another repository's
		// bound by that one's: any manifest on the upstream can declare a
		// wrong size for a popular layer, and a fill from an upstream that
		// sends no length fails on it only after streaming the declared
		// bytes, breaking every reader mid-transfer.
		for fk, running := range p.fills.m {
			if fk.upstream == k.upstream && fk.digest == d && fk.private == "" && running.key == rq.route.Key() {
				f = running
				break
			}
		}
	}
	if f != nil {
		f.mu.Lock()
		f.refs++
		f.followers++
		f.mu.Unlock()
		p.metrics.coalesced(f.upstream)
		return f, false
	}
	if !start || !p.track() {
		// After Close no fill starts: its WaitGroup is no longer waited on,
		// and the stores are being closed.
		return nil, false
	}
	f = &fill{digest: d, upstream: rq.route.Upstream.Name, key: rq.route.Key(), declared: declared,
		setKey: k, wake: make(chan struct{}), size: -1, refs: 2, discard: p.blobs.Discard}
	p.fills.m[k] = f
	p.fills.n.Store(int64(len(p.fills.m)))
	go p.runFill(ctx, f, rq) // counted by track
	return f, true
}

// runFill downloads the blob on a context detached from every client,
// verifies it while it streams and commits it atomically.
func (p *Proxy) runFill(from context.Context, f *fill, rq *request) {
	defer p.wg.Done()
	defer f.release()
	ctx, cancel := p.detached(from, p.fillTTL)
	defer cancel()
	up := rq.route.Upstream.Name
	p.metrics.fillStarted(up)
	defer p.metrics.fillEnded(up)

	ctx, span := p.span(ctx, "fill", attribute.String("airlock.upstream", up),
		attribute.String("airlock.repository", rq.route.Repo), attribute.String("airlock.digest", f.digest.String()))
	// A fill that finished between the caller's cache miss and now has
	// already committed; fetching again would transfer the blob twice. The
	// store is asked here, outside the fill set's lock, so a slow store
	// holds up only the requests for this digest; and beside the cluster's
	// lease, so that a replica that follows another's fill does not wait
	// for an object store's answer before its first byte.
	start := time.Now()
	stored := false
	check := p.checkStore(ctx, f.digest)
	defer func() {
		cancel()
		<-check.done
	}()
	err := p.transfer(ctx, f, rq, check)
	if errors.Is(err, errStoredMeanwhile) {
		stored, err = true, nil
	}
	span.SetAttributes(attribute.Int64("airlock.bytes", f.written))
	endChild(span, err)
	// Leave the set before announcing the end, and only after Commit, so a
	// new request either joins this fill or finds the committed blob.
	p.fills.mu.Lock()
	delete(p.fills.m, f.setKey)
	p.fills.n.Store(int64(len(p.fills.m)))
	p.fills.mu.Unlock()
	// The cluster's lease goes last, after the commit: a peer that claims
	// the blob next finds it in the store the replicas share.
	if f.lease != nil {
		f.lease()
	}
	f.update(func() { f.done, f.stored, f.err = true, stored, err })
	f.mu.Lock()
	if stored || (err != nil && !f.started) {
		// Nothing was transferred: the requests waiting on the fill report
		// the failure on their own log lines.
		f.mu.Unlock()
		return
	}
	attrs := []slog.Attr{slog.String("upstream", up), slog.String("repository", rq.route.Repo),
		slog.String("digest", f.digest.String()), slog.Int64("bytes", f.written), slog.Int64("size", f.size),
		slog.Float64("duration_s", time.Since(start).Seconds()), slog.Int("followers", f.followers)}
	f.mu.Unlock()
	if err == nil {
		p.log.LogAttrs(ctx, slog.LevelInfo, "blob fill done", attrs...)
		return
	}
	lvl := slog.LevelWarn
	if errors.Is(err, verify.ErrDigestMismatch) || errors.Is(err, verify.ErrTooLarge) {
		lvl = slog.LevelError
		p.metrics.digestMismatch(up, "blob")
	}
	p.log.LogAttrs(ctx, lvl, "blob fill failed: nothing cached", append(attrs, slog.String("error", err.Error()))...)
}

// fillProgressEvery is how often a long transfer logs how far it got, so an
// operator can see a slow pull before it ends.
const fillProgressEvery = 30 * time.Second

// storeCheck is a fill's look in the store for its blob, asked while the
// fill claims its source.
type storeCheck struct {
	digest digest.Digest
	done   chan struct{}
	err    error // nil: the blob is stored
}

func (p *Proxy) checkStore(ctx context.Context, d digest.Digest) *storeCheck {
	c := &storeCheck{digest: d, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		_, c.err = p.blobs.Stat(ctx, d)
	}()
	return c
}

// wait returns errStoredMeanwhile when the blob is stored, nil when it is
// not, and why the store could not say otherwise.
func (c *storeCheck) wait(ctx context.Context) error {
	select {
	case <-c.done:
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	switch {
	case c.err == nil:
		return errStoredMeanwhile
	case errors.Is(c.err, storage.ErrNotFound):
		return nil
	}
	return fmt.Errorf("checking blob %s in the store: %w", c.digest, c.err)
}

// transfer fetches the fill's blob into a spool and commits it. The
// source is the upstream, or the replica leading the fill; an upstream
// transfer waits for check, which says whether the blob was committed
// since the cache miss.
func (p *Proxy) transfer(ctx context.Context, f *fill, rq *request, check *storeCheck) (err error) {
	up := rq.route.Upstream.Name
	if f.declared > p.maxBlob {
		if err := check.wait(ctx); err != nil {
			return err // stored: the digest vouches for what is served
		}
		// Refused before any transfer: the declaration proves nothing, a
		// hostile upstream writes the manifest as well as the blob.
		return fmt.Errorf("blob %s of %s is declared %d bytes, over the %d byte limit: %w",
			f.digest, rq.route.Key(), f.declared, p.maxBlob, verify.ErrTooLarge)
	}
	// The spool is opened while the upstream answers: creating a file, and
	// reserving room for a declared size, wait on the volume's journal,
	// which a busy cache volume holds for tens of milliseconds at times.
	// The upstream's round trip hides that wait instead of adding to it.
	opened := make(chan openedSpool, 1)
	go func() { opened <- p.openSpool(f.digest, f.declared) }()
	src, err := p.openSource(ctx, f, rq, 0, "", check)
	o := <-opened
	spool := o.spool
	committed := false
	defer func() {
		src.close()
		if spool != nil && !committed {
			f.dropSpool(spool)
		}
	}()
	if err != nil {
		return err
	}
	// peers are the peers this fill read from: should the blob fail its
	// checks, they are not followed for it again for a while.
	var peers []string
	defer func() {
		if err != nil && len(peers) > 0 && (errors.Is(err, verify.ErrDigestMismatch) || errors.Is(err, verify.ErrTooLarge)) {
			p.distrust(ctx, up, f.digest, peers, err)
		}
	}()
	if src.peer != "" {
		peers = append(peers, src.peer)
	}
	size := src.size
	limit, err := p.fillLimit(f, size)
	if err != nil {
		if f.declared > 0 && size > 0 && size <= p.maxBlob && src.peer == "" {
			// The repository's own upstream contradicts the size one of its
			// manifests declared. Its word replaces the declaration, so a
			// manifest that lied (or erred) fails this fill only, not every
			// later one; the digest still decides what is served.
			if lerr := p.meta.LinkBlobs(ctx, rq.route.Key(), metadata.BlobLink{Digest: f.digest, Size: size, UpstreamSize: true}); lerr != nil {
				p.log.LogAttrs(ctx, slog.LevelError, "recording the upstream's blob size failed",
					slog.String("digest", f.digest.String()), slog.String("error", lerr.Error()))
			}
		}
		return err
	}
	p.log.LogAttrs(ctx, slog.LevelInfo, "blob fill started", slog.String("upstream", up),
		slog.String("repository", rq.route.Repo), slog.String("digest", f.digest.String()),
		slog.Int64("size", size), slog.Int64("declared", f.declared), slog.String("from", src.name))
	if o.err != nil {
		return p.noSpace(ctx, rq, fmt.Errorf("creating spool for %s: %w", f.digest, o.err))
	}
	if size < 0 && f.declared > 0 {
		// No Content-Length: the admitted manifest's size is the length
		// readers announce, and the transfer must match it.
		size = f.declared
	}
	if size > 0 {
		// Claim the room now, so a full volume is found before any client
		// has a byte and can still be served without the cache. A declared
		// size is claimed already (fillLimit holds the upstream to it).
		err := o.reserveErr
		if err == nil {
			err = spool.Reserve(size)
		}
		if err != nil {
			return p.noRoomFor(ctx, rq, f.digest, size, fmt.Errorf("reserving %d bytes for %s: %w", size, f.digest, err))
		}
	}
	f.update(func() { f.started, f.size, f.spool = true, size, spool })

	// The spool hashes what it is given and Commit refuses a mismatch, so
	// the body is only bounded here, not hashed a second time. Each piece
	// reaches readers once it is in the spool file; the spool hashes it on
	// another goroutine meanwhile, and only the last byte waits for the
	// hash (see snapshot).
	next := time.Now().Add(fillProgressEvery)
	var sent int64
	for switches := 0; ; switches++ {
		off := spool.Size()
		// A source after the first one is held to the same bounds, from
		// where the last one stopped.
		vr := &lengthReader{r: src.body, want: -1, max: limit - off}
		if f.declared == 0 && size >= 0 {
			vr.want = size - off
		}
		fromSource := p.metrics.bytes.WithLabelValues(up, "upstream")
		if src.peer != "" {
			fromSource = p.metrics.bytes.WithLabelValues(up, "peer")
		}
		sent = off
		_, err = spool.Append(sourceBody{vr, f.digest, src.name}, func(n int64) {
			fromSource.Add(float64(n - sent))
			sent = n
			f.update(func() { f.written = n })
			if now := time.Now(); now.After(next) {
				next = now.Add(fillProgressEvery)
				p.log.LogAttrs(ctx, slog.LevelInfo, "blob fill progress", slog.String("upstream", up),
					slog.String("repository", rq.route.Repo), slog.String("digest", f.digest.String()),
					slog.Int64("bytes", n), slog.Int64("size", size), slog.String("from", src.name))
			}
		})
		if err == nil {
			break
		}
		if !resumable(ctx, src, err) || switches >= maxSourceSwitches {
			// A full volume is the cache's failure, not the upstream's.
			return p.noSpace(ctx, rq, err)
		}
		// The leader's stream broke (it died, or the network did): carry
		// on from what this replica has, from whoever can send it now.
		off = spool.Size()
		p.log.LogAttrs(ctx, slog.LevelWarn, "peer stream broke: resuming the blob", slog.String("upstream", up),
			slog.String("digest", f.digest.String()), slog.Int64("offset", off), slog.String("from", src.name),
			slog.String("error", err.Error()))
		src.close()
		broken := src.peer
		src, err = p.openSource(ctx, f, rq, off, broken, nil)
		if err != nil {
			return err
		}
		if src.peer != "" {
			peers = append(peers, src.peer)
		}
		if src.size >= 0 && size >= 0 && src.size != size {
			return fmt.Errorf("blob %s: %s announced %d bytes, the fill's first source %d: %w",
				f.digest, src.name, src.size, size, verify.ErrDigestMismatch)
		}
	}
	n := spool.Size()
	if f.declared > 0 && n != f.declared {
		return fmt.Errorf("blob %s from %s is %d bytes, its manifest declares %d: %w",
			f.digest, src.name, n, f.declared, verify.ErrDigestMismatch)
	}
	// Release the last byte to readers as soon as the digest matches: the
	// bytes are right, and making them durable need not delay any client.
	if err := spool.Verify(); err != nil {
		return fmt.Errorf("blob %s from %s: %w", f.digest, src.name, err)
	}
	f.update(func() { f.verified = true })
	// The repository's upstream has served the blob: link it confirmed
	// before the blob becomes visible in the store. Until the commit below
	// the fill stays in the fill set, so a request arriving after a pull
	// ended reads along it; after the commit it finds the link. Either way
	// it never asks the upstream again (or fails while it is down). The
	// link's fsync waits behind the spool's dirty pages on the same disk,
	// which is why it comes after the last byte is released, not before.
	if err := p.meta.LinkBlobs(ctx, rq.route.Key(), metadata.BlobLink{Digest: f.digest, Size: n, Flags: metadata.Confirmed, UpstreamSize: true}); err != nil {
		p.log.LogAttrs(ctx, slog.LevelError, "linking blob failed", slog.String("digest", f.digest.String()),
			slog.String("error", err.Error()))
	}
	if src.peer != "" && f.lease == nil {
		p.awaitPeerCommit(ctx, f, up)
	}
	_, commitSpan := p.span(ctx, "verify.commit")
	err = p.blobs.Commit(ctx, f.digest, spool)
	endChild(commitSpan, err)
	if err != nil {
		// The readers still get every byte (see dropSpool); only the
		// cache lost them.
		return p.noSpace(ctx, rq, fmt.Errorf("committing blob %s: %w", f.digest, err))
	}
	committed = true
	if f.size < 0 {
		f.update(func() { f.size = f.written })
	}
	return nil
}

// openedSpool is a spool opened for a fill, or why it could not be.
type openedSpool struct {
	spool *storage.Spool
	err   error // creating the spool failed; spool is nil
	// reserveErr is the failure to reserve the declared size.
	reserveErr error
}

// openSpool creates the spool for a fill of d and, when the blob's size
// was declared, reserves room for it.
func (p *Proxy) openSpool(d digest.Digest, declared int64) openedSpool {
	s, err := p.blobs.NewSpool(d)
	if err != nil {
		return openedSpool{err: err}
	}
	o := openedSpool{spool: s}
	if declared > 0 {
		o.reserveErr = s.Reserve(declared)
	}
	return o
}

// fillLimit is the most bytes a transfer may bring: the size the
// repository's manifest declared, else the configured maximum; never more
// than the maximum (transfer refuses a larger declaration up front). An
// upstream that announces a different length is refused before any byte is
// stored.
func (p *Proxy) fillLimit(f *fill, announced int64) (int64, error) {
	switch {
	case f.declared > 0 && announced >= 0 && announced != f.declared:
		return 0, fmt.Errorf("upstream %s announced %d bytes for blob %s, its manifest declares %d: %w",
			f.upstream, announced, f.digest, f.declared, verify.ErrDigestMismatch)
	case f.declared > 0:
		return f.declared, nil
	case announced > p.maxBlob:
		return 0, fmt.Errorf("upstream %s announced %d bytes for blob %s, over the %d byte limit: %w",
			f.upstream, announced, f.digest, p.maxBlob, verify.ErrTooLarge)
	}
	return p.maxBlob, nil
}

// waitStarted blocks until the fill knows its size or has failed.
func (f *fill) waitStarted(ctx context.Context) (fillState, error) {
	for {
		s := f.snapshot()
		if s.started || s.done {
			return s, nil
		}
		select {
		case <-s.wake:
		case <-ctx.Done():
			return s, ctx.Err()
		}
	}
}

// copyRange writes bytes [off, end) of the fill to w as they arrive. An
// error after the first byte means the response must be aborted.
func (f *fill) copyRange(ctx context.Context, w io.Writer, off, end int64) error {
	if end >= 0 && off >= end {
		// Nothing to send, so no last byte to hold back: the response
		// still completes only once the digest matched.
		return f.waitVerified(ctx)
	}
	flusher, _ := w.(interface{ Flush() })
	src := f.spoolReader(off)
	defer src.close()
	for end < 0 || off < end {
		s := f.snapshot()
		if s.err != nil && !s.verified {
			// A fill that failed after its bytes matched the digest failed
			// to cache them: they are still the blob, so its readers go on.
			return s.err
		}
		limit := s.avail
		if end >= 0 && limit > end {
			limit = end
		}
		if end >= 0 && !s.verified && !(s.done && s.err == nil) && limit == end {
			// A range ending before the blob does is held back by its last
			// byte too: no response completes before the digest matched.
			limit = end - 1
		}
		if want := limit - off; want > 0 {
			n, err := src.copy(w, off, want)
			off += n
			if err != nil {
				return err
			}
			if flusher != nil {
				flusher.Flush()
			}
			if n == want {
				continue
			}
			// The spool ended short of what the fill published: a failed
			// fill emptied it (see storage's Discard) and is about to say
			// so. Copying again would copy nothing, on a core, until then.
			if s.done {
				return fmt.Errorf("blob %s: its spool ended at %d bytes of the %d published", f.digest, off, limit)
			}
		} else if s.done || (end < 0 && s.verified) {
			if end < 0 {
				// Unknown length: everything is out once the digest
				// matched, and the commit is no reason to keep the client.
				return nil
			}
			return fmt.Errorf("blob %s ended at %d bytes, expected %d", f.digest, s.avail, end)
		}
		select {
		case <-s.wake:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// waitVerified blocks until the fill's bytes matched the digest, or
// returns why they never will.
func (f *fill) waitVerified(ctx context.Context) error {
	for {
		s := f.snapshot()
		switch {
		case s.verified:
			return nil
		case s.err != nil:
			return s.err
		case s.done:
			return nil
		}
		select {
		case <-s.wake:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// spoolReader is one reader's way through a fill's spool. With a handle of
// its own on the spool file it hands net/http an *os.File, which goes to
// the socket by sendfile, without passing through user space: on loopback
// that cut the CPU time of a cold transfer's reader by more than half. A
// handle of its own because sendfile sends from the handle's position.
// Without one (no /proc, or out of file descriptors) it reads with ReadAt
// through the fill's shared handle.
type spoolReader struct {
	spool *storage.Spool
	own   *os.File // positioned where the next copy starts; nil: ReadAt
}

func (f *fill) spoolReader(off int64) *spoolReader {
	r := &spoolReader{spool: f.spool}
	if own, err := f.spool.OpenReader(); err == nil {
		if _, err := own.Seek(off, io.SeekStart); err == nil {
			r.own = own
		} else {
			own.Close()
		}
	}
	return r
}

// copy writes n bytes at off to w; off must be where the last copy ended.
func (r *spoolReader) copy(w io.Writer, off, n int64) (int64, error) {
	if r.own == nil {
		return io.Copy(w, io.NewSectionReader(r.spool, off, n))
	}
	// A short copy leaves the handle's position after the bytes it sent,
	// where the next copy, if any, starts.
	return io.Copy(w, io.LimitReader(r.own, n))
}

func (r *spoolReader) close() {
	if r.own != nil {
		r.own.Close()
	}
}

// sourceBody names the source and the blob in its read errors, which the
// spool passes on as they are, and marks them as the source's (see
// resumable).
type sourceBody struct {
	r      io.Reader
	digest digest.Digest
	from   string // "upstream <name>" or "peer <address>"
}

func (u sourceBody) Read(p []byte) (int, error) {
	n, err := u.r.Read(p)
	if err != nil && err != io.EOF {
		err = &sourceError{fmt.Errorf("blob %s from %s: %w", u.digest, u.from, err)}
	}
	return n, err
}

// lengthReader fails as soon as a body runs past the length its source
// (the upstream, or a peer) announced or past max, and at EOF if it fell
// short of the announced length. want < 0 means unknown.
type lengthReader struct {
	r    io.Reader
	want int64
	max  int64
	n    int64
}

func (l *lengthReader) Read(p []byte) (int, error) {
	bound := l.max
	if l.want >= 0 && l.want < bound {
		bound = l.want
	}
	if int64(len(p)) > bound-l.n+1 {
		p = p[:bound-l.n+1] // one byte past the end is enough to notice
	}
	n, err := l.r.Read(p)
	l.n += int64(n)
	if l.want >= 0 && l.n > l.want {
		return n, fmt.Errorf("body ran past its announced length of %d bytes: %w", l.want, verify.ErrTooLarge)
	}
	if l.n > l.max {
		return n, fmt.Errorf("body ran past the %d bytes allowed for this blob: %w", l.max, verify.ErrTooLarge)
	}
	if err == io.EOF && l.want >= 0 && l.n != l.want {
		return n, fmt.Errorf("body ended at %d of %d bytes: %w", l.n, l.want, io.ErrUnexpectedEOF)
	}
	return n, err
}
