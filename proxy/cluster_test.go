package proxy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/airlock-registry/airlock/cluster"
	"github.com/airlock-registry/airlock/internal/pgtest"
	"github.com/airlock-registry/airlock/proxy/upstream"
	"github.com/airlock-registry/airlock/storage"
	"github.com/airlock-registry/airlock/storage/metadata"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// The cluster and the proxy meet through these two interfaces only.
var (
	_ Cluster            = (*cluster.Cluster)(nil)
	_ cluster.FillSource = (*Proxy)(nil)
)

// replica is one airlock of a cluster, in process: its own proxy, spool
// directory, metadata and database pool, a client listener and a peer
// listener, over the blob root and the database all replicas share.
type replica struct {
	proxy   *Proxy
	srv     *httptest.Server
	peer    *httptest.Server
	cluster *cluster.Cluster
	pool    *pgxpool.Pool
	reg     *prometheus.Registry
	blobs   *storage.Blobs
	logMu   sync.Mutex
	logs    bytes.Buffer
	killed  bool
}

func (r *replica) logText() string {
	r.logMu.Lock()
	defer r.logMu.Unlock()
	return r.logs.String()
}

// kill stops a replica the way kill -9 would, as far as its peers can
// tell: its peer listener drops every connection and its leases are never
// renewed or given up (its database connections are gone).
func (r *replica) kill() {
	r.killed = true
	r.peer.CloseClientConnections()
	r.peer.Close()
	r.pool.Close()
}

// counter reads a counter of the replica's registry, 0 if absent.
func (r *replica) counter(t *testing.T, name string) float64 {
	t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// newCluster starts n replicas over one database and one blob root.
func newCluster(t *testing.T, o *origin, n int, ttl time.Duration) ([]*replica, string) {
	t.Helper()
	return newClusterWith(t, o, n, ttl, replicaWraps{})
}

// replicaWraps change what a test replica is built with.
type replicaWraps struct {
	// registry wraps the upstream client, blobs the blob store of replica
	// i; nil leaves them be.
	registry func(Registry) Registry
	blobs    func(i int, b *storage.Blobs) BlobStore
}

// newClusterWith is newCluster with the replicas' parts wrapped.
func newClusterWith(t *testing.T, o *origin, n int, ttl time.Duration, wrap replicaWraps) ([]*replica, string) {
	t.Helper()
	dsn := pgtest.DSN(t)
	root := filepath.Join(t.TempDir(), "blobs")
	var rs []*replica
	for i := range n {
		rs = append(rs, newReplica(t, o, dsn, root, i, ttl, wrap))
	}
	return rs, dsn
}

func newReplica(t *testing.T, o *origin, dsn, root string, i int, ttl time.Duration, wrap replicaWraps) *replica {
	t.Helper()
	r := &replica{reg: prometheus.NewRegistry()}
	drv := filesystem.New(filesystem.DriverParameters{RootDirectory: root, MaxThreads: 100})
	var err error
	r.blobs, err = storage.NewBlobs(drv, root, filepath.Join(filepath.Dir(root), fmt.Sprintf("spool-%d", i)))
	if err != nil {
		t.Fatal(err)
	}
	meta, err := metadata.Open(filepath.Join(t.TempDir(), "metadata.db"))
	if err != nil {
		t.Fatal(err)
	}
	r.pool, err = pgxpool.New(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.NewJSONHandler(lockedWriter{&r.logMu, &r.logs}, nil))
	r.peer = httptest.NewUnstartedServer(nil)
	r.cluster, err = cluster.Open(t.Context(), cluster.Options{Pool: r.pool, Advertise: "http://" + r.peer.Listener.Addr().String(),
		LeaseTTL: ttl, Logger: logger, Registerer: r.reg})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := upstream.New(upstream.Options{Name: "hub", URL: o.srv.URL, MaxAttempts: 1, IdleTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	rt, err := NewRouter([]Upstream{{Name: "hub", Hosts: []string{o.host()}, Default: true, Library: true}})
	if err != nil {
		t.Fatal(err)
	}
	var client Registry = reg
	if wrap.registry != nil {
		client = wrap.registry(reg)
	}
	var blobs BlobStore = r.blobs
	if wrap.blobs != nil {
		blobs = wrap.blobs(i, r.blobs)
	}
	r.proxy, err = New(Options{Router: rt, Registries: map[string]Registry{"hub": client}, DefaultTagTTL: time.Minute,
		Blobs: blobs, Meta: meta, Logger: logger, Metrics: NewMetrics(r.reg), Cluster: r.cluster})
	if err != nil {
		t.Fatal(err)
	}
	r.peer.Config.Handler = r.cluster.Handler(r.proxy)
	r.peer.Start()
	r.srv = httptest.NewServer(r.proxy)
	t.Cleanup(func() {
		r.srv.Close()
		r.peer.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := r.proxy.Close(ctx); err != nil {
			t.Errorf("closing replica %d's proxy: %v", i, err)
		}
		if err := r.cluster.Close(); err != nil && !r.killed {
			t.Errorf("closing replica %d's cluster: %v", i, err)
		}
		r.pool.Close()
		meta.Close()
	})
	return r
}

// pull is one client's GET of a blob through a replica.
type pull struct {
	body  []byte
	first time.Time // when the first body byte arrived
	err   error
}

func pullBlob(ctx context.Context, r *replica, d digest.Digest) pull {
	return pullFrom(ctx, r, "library/app", d)
}

func pullFrom(ctx context.Context, r *replica, repo string, d digest.Digest) pull {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.srv.URL+"/v2/"+repo+"/blobs/"+d.String(), nil)
	if err != nil {
		return pull{err: err}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return pull{err: err}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return pull{err: fmt.Errorf("HTTP %d: %s", resp.StatusCode, b)}
	}
	var p pull
	one := make([]byte, 1)
	n, err := io.ReadFull(resp.Body, one)
	p.first = time.Now()
	if err != nil {
		return pull{body: one[:n], err: err}
	}
	rest, err := io.ReadAll(resp.Body)
	p.body, p.err = append(one, rest...), err
	return p
}

func (p pull) check(d digest.Digest) error {
	if p.err != nil {
		return p.err
	}
	if got := digest.FromBytes(p.body); got != d {
		return fmt.Errorf("got %d bytes hashing to %s, want %s", len(p.body), got, d)
	}
	return nil
}

func blobPath(d digest.Digest) string { return "/v2/library/app/blobs/" + d.String() }

// TestClusterOneTransferPerBlob: cold pulls of the same blobs spread over
// three replicas at once cost one upstream GET per blob, every client gets
// the right bytes, and the clients of replicas that did not fetch the blob
// get their first byte while the transfer still runs, not after it.
func TestClusterOneTransferPerBlob(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, false)
	img, err := random.Image(256<<10, 3)
	if err != nil {
		t.Fatal(err)
	}
	o.push(t, "library/app:1", img)
	rs, _ := newCluster(t, o, 3, 2*time.Second)
	o.slowBlob.Store(int64(40 * time.Millisecond)) // 20 pieces: 800 ms a blob
	o.reset()

	type result struct {
		d       digest.Digest
		replica int
		pull
	}
	var mu sync.Mutex
	var results []result
	var wg sync.WaitGroup
	for l := range 3 {
		h, _ := layerOf(t, img, l)
		d := digest.Digest(h.String())
		for c := range 12 {
			wg.Go(func() {
				p := pullBlob(t.Context(), rs[c%3], d)
				mu.Lock()
				results = append(results, result{d, c % 3, p})
				mu.Unlock()
			})
		}
	}
	wg.Wait()
	firsts := map[digest.Digest][]time.Time{}
	for _, r := range results {
		if err := r.check(r.d); err != nil {
			t.Errorf("client of replica %d, blob %s: %v", r.replica, r.d, err)
		}
		firsts[r.d] = append(firsts[r.d], r.first)
	}
	for l := range 3 {
		h, _ := layerOf(t, img, l)
		if n := o.count(http.MethodGet, blobPath(digest.Digest(h.String()))); n != 1 {
			t.Errorf("blob %d: %d upstream GETs across three replicas, want 1", l, n)
		}
	}
	// Every client's first byte within a fraction of the transfer's time
	// of the first client's: remote followers stream the leader's spool.
	for d, ts := range firsts {
		lo, hi := ts[0], ts[0]
		for _, ts := range ts {
			lo, hi = minTime(lo, ts), maxTime(hi, ts)
		}
		if spread := hi.Sub(lo); spread > 400*time.Millisecond {
			t.Errorf("blob %s: first bytes spread over %v, want well under the 800 ms transfer", d, spread)
		} else {
			t.Logf("blob %s: first bytes within %v of each other", d, spread)
		}
	}
	var led, followed float64
	for _, r := range rs {
		led += r.counter(t, "airlock_cluster_fills_led_total")
		followed += r.counter(t, "airlock_cluster_fills_followed_total")
	}
	// A replica whose fill claims a lease its leader just gave up finds
	// the blob stored and fetches nothing, but counts the lease: the
	// upstream's count above is the one that must be exact.
	if led < 3 || followed < 2 {
		t.Errorf("fills led %v, followed %v; want at least 3 led and each blob followed by the other replicas", led, followed)
	}
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// TestClusterLeaderKilledMidBlob: the replica fetching a blob dies with its
// followers part way through; their clients still get the whole, right
// blob, from whichever replica takes the lease over once it expires.
func TestClusterLeaderKilledMidBlob(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		ranges bool
	}{
		{"upstream client without ranges: the successor skips what it has", false},
		{"upstream client with ranges: the successor asks for the rest", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			testLeaderKilled(t, tc.ranges)
		})
	}
}

func testLeaderKilled(t *testing.T, ranges bool) {
	o := newOrigin(t, false)
	img, err := random.Image(512<<10, 1)
	if err != nil {
		t.Fatal(err)
	}
	o.push(t, "library/app:1", img)
	h, _ := layerOf(t, img, 0)
	d := digest.Digest(h.String())
	ttl := time.Second
	var rangers []*rangeRegistry
	var wrap replicaWraps
	if !ranges {
		// Only the methods every Registry has: the upstream client's
		// GetBlobFrom stays hidden.
		wrap.registry = func(r Registry) Registry { return struct{ Registry }{r} }
	}
	if ranges {
		wrap.registry = func(r Registry) Registry {
			rr := &rangeRegistry{Registry: r, base: o.srv.URL}
			rangers = append(rangers, rr)
			return rr
		}
	}
	rs, _ := newClusterWith(t, o, 3, ttl, wrap)
	o.slowBlob.Store(int64(100 * time.Millisecond)) // 2 s a blob
	o.reset()

	lead := make(chan pull, 1)
	go func() { lead <- pullBlob(t.Context(), rs[0], d) }()
	waitUntil(t, 5*time.Second, func() bool { return rs[0].counter(t, "airlock_cluster_fills_led_total") == 1 })
	var wg sync.WaitGroup
	pulls := make([]pull, 4)
	for i := range pulls {
		wg.Go(func() { pulls[i] = pullBlob(t.Context(), rs[1+i%2], d) })
	}
	// Kill the leader once both followers stream from it.
	waitUntil(t, 5*time.Second, func() bool {
		return rs[1].counter(t, "airlock_cluster_fills_followed_total") == 1 &&
			rs[2].counter(t, "airlock_cluster_fills_followed_total") == 1
	})
	time.Sleep(300 * time.Millisecond)
	rs[0].kill()
	wg.Wait()
	for i, p := range pulls {
		if err := p.check(d); err != nil {
			t.Errorf("client %d of replica %d after the leader died: %v", i, 1+i%2, err)
		}
	}
	<-lead
	// One replica took over from the upstream; the other followed it.
	if n := o.count(http.MethodGet, blobPath(d)); n != 2 {
		t.Errorf("%d upstream GETs, want 2: the dead leader's and its successor's\n%s\n%s", n, rs[1].logText(), rs[2].logText())
	}
	logs := rs[1].logText() + rs[2].logText()
	if !strings.Contains(logs, "peer stream broke: resuming the blob") {
		t.Errorf("no replica logged the resume:\n%s", logs)
	}
	// Clients get the last byte once the digest matched, before the fills
	// make the blob durable: each then links it in its metadata and syncs
	// the spool and its directories, the follower only once the
	// successor's commit landed (awaitPeerCommit). On a disk busy writing
	// back, those syncs take seconds, so the store is looked at once both
	// fills logged their end, which each does after its commit.
	waited := time.Now()
	ended := func(r *replica) bool {
		logs := r.logText()
		return strings.Contains(logs, `"msg":"blob fill done"`) || strings.Contains(logs, `"msg":"blob fill failed`)
	}
	waitUntil(t, time.Minute, func() bool { return ended(rs[1]) && ended(rs[2]) })
	t.Logf("the fills of replicas 1 and 2 ended %v after their clients", time.Since(waited))
	for i, r := range rs[1:] {
		if logs := r.logText(); !strings.Contains(logs, `"msg":"blob fill done"`) {
			t.Errorf("replica %d's fill did not commit the blob:\n%s", 1+i, logs)
		}
	}
	if _, err := rs[1].blobs.Stat(t.Context(), d); err != nil {
		t.Errorf("the blob is not in the shared store after the take-over: %v", err)
	}
	if ranges {
		var calls []int64
		for _, r := range rangers {
			calls = append(calls, r.offsets()...)
		}
		if len(calls) != 1 || calls[0] <= 0 {
			t.Errorf("ranged upstream requests at offsets %v, want one past 0 from the successor", calls)
		}
	}
}

// rangeRegistry adds GetBlobFrom to an upstream client, by a plain Range
// request to the test's upstream (which needs no authentication).
type rangeRegistry struct {
	Registry
	base string
	mu   sync.Mutex
	offs []int64
}

func (r *rangeRegistry) offsets() []int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.offs
}

func (r *rangeRegistry) GetBlobFrom(ctx context.Context, repo string, d digest.Digest, off, _ int64) (io.ReadCloser, int64, error) {
	r.mu.Lock()
	r.offs = append(r.offs, off)
	r.mu.Unlock()
	// The test's registry wants the range's end, so the size comes first.
	size, err := r.HeadBlob(ctx, repo, d)
	if err != nil {
		return nil, 0, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.base+"/v2/"+repo+"/blobs/"+d.String(), nil)
	if err != nil {
		return nil, 0, err
	}
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, size-1))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, 0, err
	}
	var first, last, total int64
	if _, err := fmt.Sscanf(resp.Header.Get("Content-Range"), "bytes %d-%d/%d", &first, &last, &total); err != nil ||
		resp.StatusCode != http.StatusPartialContent || first != off {
		resp.Body.Close()
		return nil, 0, fmt.Errorf("range request answered HTTP %d, Content-Range %q", resp.StatusCode, resp.Header.Get("Content-Range"))
	}
	return resp.Body, total, nil
}

func waitUntil(t *testing.T, within time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", within)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// holdLease makes peer the holder of d's fill lease, as a replica would.
func holdLease(t *testing.T, dsn string, d digest.Digest, peer string) {
	t.Helper()
	pool, err := pgxpool.New(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := pool.Exec(t.Context(), `INSERT INTO airlock_cluster_fills (upstream, digest, owner, advertise, expires)
		VALUES ('hub', $1, 'elsewhere', $2, now() + interval '1 hour')`, d.String(), peer); err != nil {
		t.Fatal(err)
	}
}

// TestClusterHostilePeer: a replica holding the lease that sends wrong
// bytes, or too many, gets nothing cached and no client a whole wrong
// blob: the follower verifies what a peer sends as it would an upstream.
func TestClusterHostilePeer(t *testing.T) {
	t.Parallel()
	blob := bytes.Repeat([]byte("layer"), 50000)
	d := digest.FromBytes(blob)
	tests := []struct {
		name string
		send func(w http.ResponseWriter)
		want string
	}{
		{"wrong bytes", func(w http.ResponseWriter) {
			bad := bytes.Clone(blob)
			bad[len(bad)/2] ^= 0xff
			w.Header().Set(cluster.HeaderBlobSize, strconv.Itoa(len(bad)))
			w.Header().Set(cluster.HeaderFillRepository, "hub/library/app")
			_, _ = w.Write(bad)
		}, "digest mismatch"},
		{"more than it announced", func(w http.ResponseWriter) {
			w.Header().Set(cluster.HeaderBlobSize, strconv.Itoa(len(blob)))
			w.Header().Set(cluster.HeaderFillRepository, "hub/library/app")
			_, _ = w.Write(append(bytes.Clone(blob), "more"...))
		}, "ran past its announced length"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			o := newOrigin(t, false)
			hostile := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { tc.send(w) }))
			t.Cleanup(hostile.Close)
			rs, dsn := newCluster(t, o, 1, time.Second)
			holdLease(t, dsn, d, hostile.URL)
			p := pullBlob(t.Context(), rs[0], d)
			if p.err == nil && bytes.Equal(p.body, blob) {
				t.Fatal("the client got the blob, though the peer's bytes were wrong")
			}
			if bytes.Equal(p.body, blob) || len(p.body) >= len(blob) && p.err == nil {
				t.Fatalf("the client got %d bytes without an error", len(p.body))
			}
			waitUntil(t, 5*time.Second, func() bool { return strings.Contains(rs[0].logText(), "blob fill failed: nothing cached") })
			if logs := rs[0].logText(); !strings.Contains(logs, tc.want) {
				t.Fatalf("the fill failed without saying %q:\n%s", tc.want, logs)
			}
			if _, err := rs[0].blobs.Stat(t.Context(), d); err == nil {
				t.Fatal("a blob a hostile peer sent was stored")
			}
		})
	}
}

// TestClusterPartition: a replica that cannot reach the lease's holder
// fetches the blob itself, logs it and counts it.
func TestClusterPartition(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, false)
	img, err := random.Image(64<<10, 1)
	if err != nil {
		t.Fatal(err)
	}
	o.push(t, "library/app:1", img)
	h, _ := layerOf(t, img, 0)
	d := digest.Digest(h.String())
	rs, dsn := newCluster(t, o, 1, time.Second)
	// Port 1 (tcpmux) is privileged and never bound here; a port taken
	// and given back could go to another test's server.
	holdLease(t, dsn, d, "http://127.0.0.1:1")
	o.reset()
	start := time.Now()
	if err := pullBlob(t.Context(), rs[0], d).check(d); err != nil {
		t.Fatalf("pull with the leader out of reach: %v", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("the pull took %v with the leader out of reach", took)
	}
	if n := o.count(http.MethodGet, blobPath(d)); n != 1 {
		t.Errorf("%d upstream GETs, want 1 (its own)", n)
	}
	if n := rs[0].counter(t, "airlock_cluster_peer_fallbacks_total"); n != 1 {
		t.Errorf("peer fallbacks = %v, want 1", n)
	}
	if logs := rs[0].logText(); !strings.Contains(logs, "peer unreachable: fetching the blob from the upstream instead") {
		t.Errorf("the fallback was not logged:\n%s", logs)
	}
}

// TestClusterPeerListenerGuarded: a replica's peer listener serves a
// stored blob to a peer with the secret, and nothing without it.
func TestClusterPeerListenerGuarded(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, false)
	img, err := random.Image(32<<10, 1)
	if err != nil {
		t.Fatal(err)
	}
	o.push(t, "library/app:1", img)
	h, blob := layerOf(t, img, 0)
	d := digest.Digest(h.String())
	rs, dsn := newCluster(t, o, 1, time.Second)
	if err := pullBlob(t.Context(), rs[0], d).check(d); err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.New(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var secret string
	if err := pool.QueryRow(t.Context(), "SELECT value FROM airlock_cluster_settings WHERE name = 'peer_secret'").Scan(&secret); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, auth string
		status     int
		body       []byte
	}{
		{"no secret", "", http.StatusUnauthorized, nil},
		{"wrong secret", "Bearer " + strings.Repeat("a", len(secret)), http.StatusUnauthorized, nil},
		{"the secret", "Bearer " + secret, http.StatusOK, blob[10:]},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, rs[0].peer.URL+"/v1/fills/hub/"+d.String()+"?offset=10", nil)
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.status || (tc.body != nil && !bytes.Equal(body, tc.body)) {
				t.Fatalf("%d with %d bytes, want %d", resp.StatusCode, len(body), tc.status)
			}
			if tc.status == http.StatusUnauthorized && bytes.Contains(body, blob[:64]) {
				t.Fatal("a refusal carried the blob")
			}
		})
	}
}

// TestClusterPeerFillOfAnotherRepository: a replica reads another
// repository's fill from a peer only once its own repository's upstream
// vouched for the blob (one HEAD, no transfer), as it would a local fill
// of another repository; a repository whose upstream lacks the blob gets
// nothing of it.
func TestClusterPeerFillOfAnotherRepository(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		hidden bool
	}{
		{"this repository's upstream has it", false},
		{"this repository's upstream lacks it", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			o := newOrigin(t, false)
			img, err := random.Image(256<<10, 1)
			if err != nil {
				t.Fatal(err)
			}
			o.push(t, "library/app:1", img)
			h, _ := layerOf(t, img, 0)
			d := digest.Digest(h.String())
			other := "/v2/other/app/blobs/" + d.String()
			if tc.hidden {
				o.hidden.Store(other, true)
			}
			rs, _ := newCluster(t, o, 2, 2*time.Second)
			o.slowBlob.Store(int64(50 * time.Millisecond))
			o.reset()
			lead := make(chan pull, 1)
			go func() { lead <- pullBlob(t.Context(), rs[0], d) }()
			waitUntil(t, 5*time.Second, func() bool { return rs[0].counter(t, "airlock_cluster_fills_led_total") == 1 })
			p := pullFrom(t.Context(), rs[1], "other/app", d)
			if err := (<-lead).check(d); err != nil {
				t.Fatalf("the leader's client: %v", err)
			}
			switch {
			case tc.hidden && (p.err == nil || !strings.Contains(p.err.Error(), "HTTP 404")):
				t.Fatalf("pull through a repository without the blob: %v, want 404", p.err)
			case !tc.hidden:
				if err := p.check(d); err != nil {
					t.Fatalf("pull through another repository: %v", err)
				}
			}
			if g, h := o.count(http.MethodGet, other), o.count(http.MethodHead, other); g != 0 || h != 1 {
				t.Fatalf("the other repository saw %d GETs and %d HEADs, want 0 and 1", g, h)
			}
		})
	}
}

// TestClusterDatabaseDown: a replica that cannot ask the database for a
// lease fetches the blob itself, as a single replica would, and says so.
func TestClusterDatabaseDown(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, false)
	img, err := random.Image(32<<10, 1)
	if err != nil {
		t.Fatal(err)
	}
	o.push(t, "library/app:1", img)
	h, _ := layerOf(t, img, 0)
	d := digest.Digest(h.String())
	rs, _ := newCluster(t, o, 1, time.Second)
	rs[0].killed = true // its cluster cannot give up leases at Close
	rs[0].pool.Close()
	o.reset()
	if err := pullBlob(t.Context(), rs[0], d).check(d); err != nil {
		t.Fatalf("pull with the database down: %v", err)
	}
	if n := o.count(http.MethodGet, blobPath(d)); n != 1 {
		t.Errorf("%d upstream GETs, want 1", n)
	}
	if logs := rs[0].logText(); !strings.Contains(logs, "cluster lease unavailable: fetching the blob without it") {
		t.Errorf("the missing lease was not logged:\n%s", logs)
	}
}

// TestClusterFillEndedBeforeClaim: a fill that commits and gives up its
// lease between another replica's look in the store and that replica's
// claim is not fetched again: the claim takes over an ended lease, and
// the claimant looks in the store once more.
func TestClusterFillEndedBeforeClaim(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, false)
	img, err := random.Image(16<<10, 1)
	if err != nil {
		t.Fatal(err)
	}
	o.push(t, "library/app:1", img)
	h, _ := layerOf(t, img, 0)
	d := digest.Digest(h.String())
	// Replica 1's store misses once, for the request's look and the fill's:
	// as if replica 0's commit landed just after both.
	var late *lateStore
	rs, dsn := newClusterWith(t, o, 2, time.Second, replicaWraps{blobs: func(i int, b *storage.Blobs) BlobStore {
		if i == 0 {
			return b
		}
		late = &lateStore{Blobs: b, d: d, opens: 1, stats: 1}
		return late
	}})
	o.reset()
	if err := pullBlob(t.Context(), rs[0], d).check(d); err != nil {
		t.Fatal(err)
	}
	// The client has its bytes before the fill commits; the lease goes
	// after the commit.
	pool, err := pgxpool.New(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	waitUntil(t, 5*time.Second, func() bool {
		var ended bool
		err := pool.QueryRow(t.Context(), "SELECT expires < now() FROM airlock_cluster_fills WHERE digest = $1", d.String()).Scan(&ended)
		return err == nil && ended
	})
	if err := pullBlob(t.Context(), rs[1], d).check(d); err != nil {
		t.Fatalf("pull through the replica that came late: %v", err)
	}
	if logs := rs[1].logText(); strings.Contains(logs, "blob fill started") {
		t.Fatalf("the late replica started a transfer:\n%s", logs)
	}
	if n := o.count(http.MethodGet, blobPath(d)); n != 1 {
		t.Fatalf("%d upstream GETs, want 1", n)
	}
	if late.missed() != 0 {
		t.Fatal("the late replica never looked in its store")
	}
}

// lateStore is a blob store that does not see blob d for its first few
// Open and Stat calls.
type lateStore struct {
	*storage.Blobs
	d            digest.Digest
	mu           sync.Mutex
	opens, stats int
}

func (l *lateStore) missed() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.opens + l.stats
}

func (l *lateStore) miss(n *int, d digest.Digest) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if d != l.d || *n == 0 {
		return false
	}
	*n--
	return true
}

func (l *lateStore) Open(ctx context.Context, d digest.Digest) (io.ReadSeekCloser, int64, error) {
	if l.miss(&l.opens, d) {
		return nil, 0, fmt.Errorf("blob %s: %w", d, storage.ErrNotFound)
	}
	return l.Blobs.Open(ctx, d)
}

func (l *lateStore) Stat(ctx context.Context, d digest.Digest) (int64, error) {
	if l.miss(&l.stats, d) {
		return 0, fmt.Errorf("blob %s: %w", d, storage.ErrNotFound)
	}
	return l.Blobs.Stat(ctx, d)
}

// TestClusterFollowerSkipsSlowStore: an object store's answers are slow;
// a replica following another's fill streams from the leader without
// waiting for its look in the store, and its clients that come while the
// fill runs read along it without asking the store at all.
func TestClusterFollowerSkipsSlowStore(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, false)
	img, err := random.Image(256<<10, 1)
	if err != nil {
		t.Fatal(err)
	}
	o.push(t, "library/app:1", img)
	h, _ := layerOf(t, img, 0)
	d := digest.Digest(h.String())
	var slow *slowStore
	rs, _ := newClusterWith(t, o, 2, 2*time.Second, replicaWraps{blobs: func(i int, b *storage.Blobs) BlobStore {
		if i == 0 {
			return b
		}
		slow = &slowStore{Blobs: b, d: d, hold: make(chan struct{})}
		return slow
	}})
	// The follower's look in the store answers only once every client
	// has its blob (or when its fill ends): a follower that waited for
	// it would leave its clients without a byte until the pulls' deadline.
	released := false
	release := func() {
		if !released {
			released = true
			close(slow.hold)
		}
	}
	defer release()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	o.slowBlob.Store(int64(50 * time.Millisecond)) // 20 pieces: a second a blob
	// The origin holds the body after its first piece until the
	// follower's clients are reading: the fills cannot end before.
	gate := make(chan struct{})
	o.gate = gate
	o.reset()

	leader := make(chan pull, 1)
	go func() { leader <- pullBlob(ctx, rs[0], d) }()
	// Replica 0 leads: its fill holds the lease and has bytes (a fill
	// enters the fill set before it claims the lease).
	waitUntil(t, 10*time.Second, func() bool {
		f := rs[0].proxy.peerFill("hub", d)
		if f == nil {
			return false
		}
		defer f.release()
		return f.snapshot().avail > 0
	})
	first := make(chan pull, 1)
	go func() { first <- pullBlob(ctx, rs[1], d) }()
	waitUntil(t, 5*time.Second, func() bool { return rs[1].proxy.fills.running(d) })
	var wg sync.WaitGroup
	joiners := make([]pull, 5)
	for i := range joiners {
		wg.Go(func() { joiners[i] = pullBlob(ctx, rs[1], d) })
	}
	// Every joiner reads along the running fill before the origin lets
	// the blob finish.
	waitUntil(t, 10*time.Second, func() bool {
		f := rs[1].proxy.peerFill("hub", d)
		if f == nil {
			return false
		}
		defer f.release()
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.followers >= len(joiners)
	})
	close(gate)
	wg.Wait()
	all := append(joiners, <-first, <-leader)
	for i, p := range all {
		if err := p.check(d); err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
	}
	if n := o.count(http.MethodGet, blobPath(d)); n != 1 {
		t.Errorf("%d upstream GETs, want 1", n)
	}
	release()
	if n := slow.opens(); n != 1 {
		t.Errorf("the follower's store was opened %d times for the blob; want once, by the request that started the fill", n)
	}
}

// slowStore is a blob store whose first Stat of blob d answers only once
// hold is closed (or its context ends), as an object store under load may
// keep a request waiting; it counts the Opens of d.
type slowStore struct {
	*storage.Blobs
	d      digest.Digest
	hold   chan struct{}
	mu     sync.Mutex
	opened int
	stats  int
}

func (s *slowStore) opens() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.opened
}

func (s *slowStore) Open(ctx context.Context, d digest.Digest) (io.ReadSeekCloser, int64, error) {
	if d == s.d {
		s.mu.Lock()
		s.opened++
		s.mu.Unlock()
	}
	return s.Blobs.Open(ctx, d)
}

func (s *slowStore) Stat(ctx context.Context, d digest.Digest) (int64, error) {
	if d == s.d {
		s.mu.Lock()
		s.stats++
		first := s.stats == 1
		s.mu.Unlock()
		if first {
			select {
			case <-s.hold:
			case <-ctx.Done():
			}
		}
	}
	return s.Blobs.Stat(ctx, d)
}
