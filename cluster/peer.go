package cluster

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/opencontainers/go-digest"
)

// The peer protocol's headers. A peer's answer to a fill request carries
// the blob's whole size (-1 while unknown) and the repository its fill
// fetches from ("<upstream>/<repo>", empty when it answers from the store),
// so the reader can hold the bytes to the size and tell whether its own
// repository's upstream still has to vouch for the blob.
const (
	HeaderBlobSize       = "Airlock-Blob-Size"
	HeaderFillRepository = "Airlock-Fill-Repository"
)

// FillSource is what the peer listener serves from: this replica's running
// fills and its blob store (*proxy.Proxy implements it).
type FillSource interface {
	// StreamFill writes blob d of upstream from offset off to the end: from
	// the running fill, as its bytes arrive, or from the store. Before the
	// first byte it calls start, once, with the blob's size (-1 while
	// unknown) and the fill's repository ("" from the store), and writes to
	// the writer start returns. found is false, with start not called,
	// when there is neither a fill nor a stored blob. An error after start
	// means the stream broke.
	StreamFill(ctx context.Context, upstream string, d digest.Digest, off int64,
		start func(size int64, repository string) io.Writer) (found bool, err error)
}

// Handler is the peer listener: GET /v1/fills/<upstream>/<digest>?offset=N
// streams a running fill or a stored blob to a peer. It answers only
// requests that carry the cluster's secret, so that it is no way around
// the gate: it serves replicas that already decided a client may have the
// blob, never clients.
func (c *Cluster) Handler(src FillSource) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /v1/fills/{upstream}/{digest}", c.serveFill(src))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !c.authorized(r) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="airlock-cluster"`)
			http.Error(w, "the peer listener serves only airlock replicas presenting the cluster secret", http.StatusUnauthorized)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

func (c *Cluster) authorized(r *http.Request) bool {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(got), []byte(c.secret)) == 1
}

func (c *Cluster) serveFill(src FillSource) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		upstream := r.PathValue("upstream")
		d, err := digest.Parse(r.PathValue("digest"))
		if err != nil {
			http.Error(w, fmt.Sprintf("malformed digest: %v", err), http.StatusBadRequest)
			return
		}
		off, err := strconv.ParseInt(r.URL.Query().Get("offset"), 10, 64)
		if err != nil || off < 0 {
			http.Error(w, "offset must be a byte offset, 0 or more", http.StatusBadRequest)
			return
		}
		started := false
		found, err := src.StreamFill(r.Context(), upstream, d, off, func(size int64, repo string) io.Writer {
			started = true
			h := w.Header()
			h.Set("Content-Type", "application/octet-stream")
			h.Set(HeaderBlobSize, strconv.FormatInt(size, 10))
			h.Set(HeaderFillRepository, repo)
			if size >= 0 {
				h.Set("Content-Length", strconv.FormatInt(size-off, 10))
			}
			w.WriteHeader(http.StatusOK)
			return w
		})
		switch {
		case started && err != nil:
			// Part of the blob is out: only a broken stream says so.
			panic(http.ErrAbortHandler)
		case err != nil:
			http.Error(w, fmt.Sprintf("streaming blob %s of %s: %v", d, upstream, err), http.StatusInternalServerError)
		case !found:
			http.Error(w, fmt.Sprintf("no fill of blob %s from %s runs here, and the blob is not stored", d, upstream), http.StatusNotFound)
		}
	})
}

// OpenPeerFill reads blob d of upstream from offset off from peer, the
// replica that holds the fill's lease. size is the whole blob's size as
// the peer announced it (-1 if unknown) and repository the repository its
// fill fetches from ("" when it answered from the store). Nothing the peer
// sends is trusted: the caller bounds, hashes and verifies it as it would
// an upstream's.
//
// A nil body with a nil error means the peer has neither a fill nor the
// blob (its fill ended): claim again. An error means the peer could not be
// asked (partition, refusal): the caller fetches the blob itself.
//
// The body breaks when the peer dies: when its lease lapses while no
// bytes arrive, which a peer that lost its machine or its network never
// tells by closing the connection.
func (c *Cluster) OpenPeerFill(ctx context.Context, peer, upstream string, d digest.Digest, off int64) (io.ReadCloser, int64, string, error) {
	u := peer + "/v1/fills/" + url.PathEscape(upstream) + "/" + url.PathEscape(d.String()) + "?offset=" + strconv.FormatInt(off, 10)
	wctx, cancel := context.WithCancelCause(ctx)
	body := &peerBody{ctx: wctx, cancel: cancel}
	req, err := http.NewRequestWithContext(wctx, http.MethodGet, u, nil)
	if err != nil {
		cancel(nil)
		return nil, 0, "", c.fallback(ctx, peer, upstream, d, fmt.Errorf("cluster: peer address %q: %w", peer, err))
	}
	req.Header.Set("Authorization", "Bearer "+c.secret)
	watched := make(chan struct{})
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer close(watched)
		c.watchPeer(wctx, fillKey{upstream, d.String()}, peer, body)
	}()
	body.watched = watched
	resp, err := c.client.Do(req)
	if err != nil {
		if cause := context.Cause(wctx); cause != nil && ctx.Err() == nil {
			err = cause // the peer's lease lapsed while it did not answer
		}
		body.Close()
		return nil, 0, "", c.fallback(ctx, peer, upstream, d, fmt.Errorf("cluster: asking peer %s for blob %s: %w", peer, d, err))
	}
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		drain(resp)
		body.Close()
		return nil, 0, "", nil
	default:
		msg := c.peerMessage(resp)
		drain(resp)
		body.Close()
		return nil, 0, "", c.fallback(ctx, peer, upstream, d,
			fmt.Errorf("cluster: peer %s answered HTTP %d for blob %s: %s", peer, resp.StatusCode, d, msg))
	}
	size, err := strconv.ParseInt(resp.Header.Get(HeaderBlobSize), 10, 64)
	if err != nil || size < -1 {
		drain(resp)
		body.Close()
		return nil, 0, "", c.fallback(ctx, peer, upstream, d,
			fmt.Errorf("cluster: peer %s sent %s %q for blob %s", peer, HeaderBlobSize, resp.Header.Get(HeaderBlobSize), d))
	}
	body.rc = resp.Body
	c.metrics.followed.Inc()
	return body, size, resp.Header.Get(HeaderFillRepository), nil
}

// fallback records that a fill is fetched from the upstream because its
// leader could not be read, and returns why.
func (c *Cluster) fallback(ctx context.Context, peer, upstream string, d digest.Digest, err error) error {
	if ctx.Err() != nil {
		return err // the fill itself ended
	}
	c.metrics.fallbacks.Inc()
	c.log.Warn("peer unreachable: fetching the blob from the upstream instead", slog.String("peer", peer),
		slog.String("upstream", upstream), slog.String("digest", d.String()), slog.String("error", err.Error()))
	return err
}

// peerMessageMax is how much of a peer's refusal goes into the error.
const peerMessageMax = 512

// peerMessage is the start of what a peer answered instead of a blob, for
// the error and the log, with the cluster secret taken out: whatever
// answers at a peer's address (a proxy's error page, a debugging echo) may
// repeat the request's Authorization header. Enough is read beyond the
// bound that a secret straddling it is found whole.
func (c *Cluster) peerMessage(resp *http.Response) string {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, int64(peerMessageMax+len(c.secret))))
	msg := strings.ReplaceAll(string(b), c.secret, "[cluster secret]")
	if len(msg) > peerMessageMax {
		msg = msg[:peerMessageMax]
	}
	return strings.ToValidUTF8(strings.TrimSpace(msg), "?")
}

func drain(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	resp.Body.Close()
}

// errPeerLapsed cuts a peer's stream whose lease lapsed while it sent
// nothing.
var errPeerLapsed = errors.New("the peer stopped renewing its fill lease and stopped sending: it is gone")

// errPeerStalled cuts a peer's stream that sent nothing for stallLeases
// lease lifetimes while the peer kept its lease: a connection lost in a
// partition, which TCP would take minutes to notice. Reading the peer
// again costs a reconnection if the peer was merely waiting on a slow
// upstream.
var errPeerStalled = errors.New("the peer holds its fill lease but sent nothing for too long")

// stallLeases is how many lease lifetimes a peer's stream may go without
// a byte.
const stallLeases = 3

// watchPeer checks, every half lease TTL until ctx ends, that peer still
// holds the fill's lease or is still sending. A peer whose lease expired,
// or whose lease is gone (its fill ended), and that sent nothing since the
// last check, is dead or stuck: the stream is cut, so that the reader
// claims the fill again instead of waiting on a connection no one will
// close. So is a stream that brought nothing for stallLeases lease
// lifetimes, whatever the lease says. A database that cannot be asked
// cuts nothing but a stalled stream.
func (c *Cluster) watchPeer(ctx context.Context, k fillKey, peer string, b *peerBody) {
	t := time.NewTicker(c.ttl / 2)
	defer t.Stop()
	seen := b.n.Load()
	moved := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.ctx.Done():
			return
		case <-t.C:
		}
		n := b.n.Load()
		progressed := n != seen
		seen = n
		if progressed {
			moved = time.Now()
		} else if time.Since(moved) >= stallLeases*c.ttl {
			b.cancel(errPeerStalled)
			return
		}
		var live bool
		qctx, cancel := context.WithTimeout(ctx, c.ttl/2)
		err := c.pool.QueryRow(qctx, `SELECT expires > now() FROM airlock_cluster_fills
			WHERE upstream = $1 AND digest = $2 AND advertise = $3`, k.upstream, k.digest, peer).Scan(&live)
		cancel()
		if errors.Is(err, pgx.ErrNoRows) {
			err, live = nil, false
		}
		if err == nil && !live && !progressed {
			b.cancel(errPeerLapsed)
			return
		}
	}
}

// peerBody is a peer's stream, counting what arrives for watchPeer.
type peerBody struct {
	ctx     context.Context
	rc      io.ReadCloser
	n       atomic.Int64
	cancel  context.CancelCauseFunc
	watched chan struct{}
	closed  atomic.Bool
}

func (b *peerBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	b.n.Add(int64(n))
	if err != nil && err != io.EOF {
		if cause := context.Cause(b.ctx); errors.Is(cause, errPeerLapsed) || errors.Is(cause, errPeerStalled) {
			err = fmt.Errorf("%w: %w", cause, err)
		}
	}
	return n, err
}

func (b *peerBody) Close() error {
	if b.closed.Swap(true) {
		return nil
	}
	b.cancel(context.Canceled)
	<-b.watched
	if b.rc != nil {
		return b.rc.Close()
	}
	return nil
}
