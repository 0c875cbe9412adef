package cluster

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/airlock-registry/airlock/internal/pgtest"
)

func TestMain(m *testing.M) {
	code := pgtest.Main(m)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutines left behind:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func newPool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(t.Context(), pgtest.DSN(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// replica is one Cluster with its metrics.
type replica struct {
	*Cluster
	reg *prometheus.Registry
}

func open(t *testing.T, pool *pgxpool.Pool, advertise string, ttl time.Duration) replica {
	t.Helper()
	reg := prometheus.NewRegistry()
	c, err := Open(t.Context(), Options{Pool: pool, Advertise: advertise, LeaseTTL: ttl, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("closing cluster: %v", err)
		}
	})
	return replica{c, reg}
}

// die stops a replica's heartbeats without giving up its leases, as a
// kill -9 would.
func (r replica) die() {
	r.cancel()
	r.wg.Wait()
}

func TestOpenSharesOneSecret(t *testing.T) {
	t.Parallel()
	pool := newPool(t)
	a := open(t, pool, "http://10.0.0.1:5002", 0)
	b := open(t, pool, "http://10.0.0.2:5002/", 0)
	if a.secret == "" || a.secret != b.secret {
		t.Fatalf("secrets %q and %q: replicas of one database must share one", a.secret, b.secret)
	}
	if a.owner == b.owner {
		t.Fatal("two processes got the same owner name")
	}
	if b.Advertise() != "http://10.0.0.2:5002" {
		t.Fatalf("Advertise() = %q, want the trailing slash trimmed", b.Advertise())
	}
}

func TestOpenRefuses(t *testing.T) {
	t.Parallel()
	pool := newPool(t)
	tests := []struct {
		name string
		o    Options
		want string
	}{
		{"no pool", Options{Advertise: "http://a:1"}, "a PostgreSQL pool is required"},
		{"no advertise", Options{Pool: pool}, "must be this replica's peer listener"},
		{"no scheme", Options{Pool: pool, Advertise: "10.0.0.1:5002"}, "must be this replica's peer listener"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Open(t.Context(), tc.o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Open: %v, want an error saying %q", err, tc.want)
			}
		})
	}
	// A database migrated by a newer airlock is refused.
	if _, err := pool.Exec(t.Context(), `CREATE TABLE airlock_cluster_migrations (version integer PRIMARY KEY, name text NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now()); INSERT INTO airlock_cluster_migrations VALUES (999, '0999_future.sql')`); err != nil {
		t.Fatal(err)
	}
	_, err := Open(t.Context(), Options{Pool: pool, Advertise: "http://a:1"})
	if err == nil || !strings.Contains(err.Error(), "newer than this airlock knows") {
		t.Fatalf("Open on a newer schema: %v", err)
	}
}

func TestClaimFill(t *testing.T) {
	t.Parallel()
	pool := newPool(t)
	ttl := 600 * time.Millisecond
	a := open(t, pool, "http://a:1", ttl)
	b := open(t, pool, "http://b:1", ttl)
	d := digest.FromString("layer")
	ctx := t.Context()

	releaseA, recheck, peer, err := a.ClaimFill(ctx, "hub", d, "")
	if err != nil || releaseA == nil || peer != "" || recheck {
		t.Fatalf("first claim: release %v, recheck %v, peer %q, %v; want the lease, nothing to recheck", releaseA != nil, recheck, peer, err)
	}
	// A second local fill shares the lease; another upstream's is apart.
	releaseA2, _, _, err := a.ClaimFill(ctx, "hub", d, "")
	if err != nil || releaseA2 == nil {
		t.Fatalf("second local claim: %v", err)
	}
	if r, _, _, err := b.ClaimFill(ctx, "vendor", d, ""); err != nil || r == nil {
		t.Fatalf("claim for another upstream: %v", err)
	} else {
		r()
	}
	if r, _, peer, err := b.ClaimFill(ctx, "hub", d, ""); err != nil || r != nil || peer != "http://a:1" {
		t.Fatalf("claim of a held lease: release %v, peer %q, %v; want peer http://a:1", r != nil, peer, err)
	}
	// The heartbeat keeps the lease past its TTL.
	time.Sleep(2 * ttl)
	if _, _, peer, _ := b.ClaimFill(ctx, "hub", d, ""); peer != "http://a:1" {
		t.Fatalf("after two TTLs with heartbeats the holder is %q, want http://a:1", peer)
	}
	releaseA()
	if _, _, peer, _ := b.ClaimFill(ctx, "hub", d, ""); peer != "http://a:1" {
		t.Fatalf("the lease went with one of two local fills still running (holder %q)", peer)
	}
	releaseA2()
	releaseA2() // a second call is harmless
	// The lease given up, the next claim takes it and is told to look in
	// the store first: the fill that ended may have stored the blob.
	releaseB, recheck, peer, err := b.ClaimFill(ctx, "hub", d, "")
	if err != nil || releaseB == nil || !recheck {
		t.Fatalf("claim after release: recheck %v, peer %q, %v; want the lease and a recheck", recheck, peer, err)
	}
	releaseB()
	if got := testutil.ToFloat64(a.metrics.led); got != 1 {
		t.Fatalf("fills led by a = %v, want 1 (a shared lease counts once)", got)
	}
}

// TestClaimFillAfterDeath: a holder that stops renewing loses the lease
// after its TTL; a claim that names it as the peer whose stream broke
// waits for exactly that, and a claim naming a live holder gets it back
// once it renewed.
func TestClaimFillAfterDeath(t *testing.T) {
	t.Parallel()
	pool := newPool(t)
	ttl := 900 * time.Millisecond
	a := open(t, pool, "http://a:1", ttl)
	b := open(t, pool, "http://b:1", ttl)
	c := open(t, pool, "http://c:1", ttl)
	d := digest.FromString("layer")
	ctx := t.Context()
	release, _, _, err := a.ClaimFill(ctx, "hub", d, "")
	if err != nil || release == nil {
		t.Fatalf("claim: %v", err)
	}
	defer release()

	// A holder that does not renew within suspectWait TTLs makes the claim
	// fail (errSuspectHolds), so getting the peer back is the proof it was
	// confirmed by its renewals; how long that took depends on the load.
	if r, _, peer, err := b.ClaimFill(ctx, "hub", d, "http://a:1"); err != nil || r != nil || peer != "http://a:1" {
		t.Fatalf("suspecting a live holder: release %v, peer %q, %v; want it back", r != nil, peer, err)
	}

	a.die()
	start := time.Now()
	rb, recheck, peer, err := b.ClaimFill(ctx, "hub", d, "http://a:1")
	if err != nil || rb == nil || !recheck {
		t.Fatalf("suspecting a dead holder: peer %q, %v; want the lease", peer, err)
	}
	defer rb()
	if took := time.Since(start); took > 2*ttl {
		t.Fatalf("taking over from a dead holder took %v, more than two TTLs", took)
	}
	// A third replica whose stream from the dead one broke follows the
	// new holder at once.
	if _, _, peer, err := c.ClaimFill(ctx, "hub", d, "http://a:1"); err != nil || peer != "http://b:1" {
		t.Fatalf("third replica: peer %q, %v; want http://b:1", peer, err)
	}
}

func TestLeaseLoss(t *testing.T) {
	t.Parallel()
	pool := newPool(t)
	ttl := 300 * time.Millisecond
	a := open(t, pool, "http://a:1", ttl)
	d := digest.FromString("layer")
	release, _, _, err := a.ClaimFill(t.Context(), "hub", d, "")
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	// Another replica took the row (as after a lapse).
	if _, err := pool.Exec(t.Context(), "UPDATE airlock_cluster_fills SET owner = 'other', advertise = 'http://o:1'"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * ttl)
	for testutil.ToFloat64(a.metrics.losses.WithLabelValues("fill")) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the heartbeat did not notice the lease was taken")
		}
		time.Sleep(ttl / 10)
	}
	release()
	var owner string
	if err := pool.QueryRow(t.Context(), "SELECT owner FROM airlock_cluster_fills").Scan(&owner); err != nil || owner != "other" {
		t.Fatalf("after release the row is %q (%v): releasing a lost lease must not delete the new holder's", owner, err)
	}
}

// source is a FillSource over a fixed blob, or none.
type source struct {
	blob    []byte
	repo    string
	failAt  int // break the stream after this many bytes; 0: never
	started atomic.Int32
}

func (s *source) StreamFill(ctx context.Context, upstream string, d digest.Digest, off int64,
	start func(size int64, repository string) io.Writer) (bool, error) {
	if s.blob == nil || upstream != "hub" || d != digest.FromBytes(s.blob) {
		return false, nil
	}
	s.started.Add(1)
	w := start(int64(len(s.blob)), s.repo)
	end := len(s.blob)
	if s.failAt > 0 {
		end = s.failAt
	}
	if _, err := w.Write(s.blob[off:end]); err != nil {
		return true, err
	}
	w.(http.Flusher).Flush()
	if end < len(s.blob) {
		return true, fmt.Errorf("broken at %d", end)
	}
	return true, nil
}

func TestPeerListener(t *testing.T) {
	t.Parallel()
	pool := newPool(t)
	blob := []byte(strings.Repeat("airlock", 1000))
	d := digest.FromBytes(blob)
	src := &source{blob: blob, repo: "hub/library/app"}
	srv := httptest.NewServer(nil)
	t.Cleanup(srv.Close)
	leader := open(t, pool, srv.URL, time.Second)
	srv.Config.Handler = leader.Handler(src)
	follower := open(t, pool, "http://f:1", time.Second)

	get := func(path, auth string) (*http.Response, string) {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, srv.URL+path, nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	fills := "/v1/fills/hub/" + d.String() + "?offset=0"
	tests := []struct {
		name, path, auth string
		status           int
		want             string
	}{
		{"no secret", fills, "", 401, "presenting the cluster secret"},
		{"wrong secret", fills, "Bearer " + strings.Repeat("0", 64), 401, "presenting the cluster secret"},
		{"secret as Basic", fills, "Basic " + leader.secret, 401, "presenting the cluster secret"},
		{"other paths too", "/v2/", "", 401, "presenting the cluster secret"},
		{"unknown blob", "/v1/fills/hub/" + digest.FromString("x").String() + "?offset=0", "Bearer " + leader.secret, 404, "no fill of blob"},
		{"bad digest", "/v1/fills/hub/sha256:zz?offset=0", "Bearer " + leader.secret, 400, "malformed digest"},
		{"bad offset", "/v1/fills/hub/" + d.String() + "?offset=-1", "Bearer " + leader.secret, 400, "offset must be"},
		{"served", "/v1/fills/hub/" + d.String() + "?offset=7", "Bearer " + leader.secret, 200, string(blob[7:])},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := get(tc.path, tc.auth)
			if resp.StatusCode != tc.status || !strings.Contains(body, tc.want) {
				t.Fatalf("GET %s: %d %.80q, want %d with %.80q", tc.path, resp.StatusCode, body, tc.status, tc.want)
			}
		})
	}
	if n := src.started.Load(); n != 1 {
		t.Fatalf("the source streamed %d times; only the authorised, well-formed request may reach it", n)
	}

	// The follower's side: headers parsed, bytes from the offset.
	body, size, repo, err := follower.OpenPeerFill(t.Context(), srv.URL, "hub", d, 100)
	if err != nil || body == nil {
		t.Fatalf("OpenPeerFill: %v", err)
	}
	got, err := io.ReadAll(body)
	body.Close()
	if err != nil || string(got) != string(blob[100:]) || size != int64(len(blob)) || repo != "hub/library/app" {
		t.Fatalf("OpenPeerFill read %d bytes (%v), size %d, repo %q", len(got), err, size, repo)
	}
	// Neither fill nor blob: nil body, no error, no fallback.
	body, _, _, err = follower.OpenPeerFill(t.Context(), srv.URL, "hub", digest.FromString("x"), 0)
	if body != nil || err != nil {
		t.Fatalf("OpenPeerFill of an unknown blob: body %v, %v; want neither", body != nil, err)
	}
	// A broken stream is an error to the reader.
	src.failAt = 500
	body, _, _, err = follower.OpenPeerFill(t.Context(), srv.URL, "hub", d, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, err = io.ReadAll(body)
	body.Close()
	if err == nil || len(got) != 500 {
		t.Fatalf("a broken peer stream read %d bytes with %v; want 500 and an error", len(got), err)
	}
	if n := testutil.ToFloat64(follower.metrics.fallbacks); n != 0 {
		t.Fatalf("fallbacks = %v, want 0", n)
	}
}

func TestOpenPeerFillUnreachable(t *testing.T) {
	t.Parallel()
	pool := newPool(t)
	// Port 1 (tcpmux) is privileged and never bound here: connections are
	// refused. A port taken and given back could go to another test.
	const dead = "http://127.0.0.1:1"
	wrongSecret := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "who are you", http.StatusUnauthorized)
	}))
	t.Cleanup(wrongSecret.Close)
	f := open(t, pool, "http://f:1", time.Second)
	for i, peer := range []string{dead, wrongSecret.URL} {
		start := time.Now()
		body, _, _, err := f.OpenPeerFill(t.Context(), peer, "hub", digest.FromString("x"), 0)
		if body != nil || err == nil {
			t.Fatalf("peer %s: body %v, %v; want an error", peer, body != nil, err)
		}
		if took := time.Since(start); took > 2*DefaultConnectTimeout {
			t.Fatalf("peer %s took %v to give up", peer, took)
		}
		if n := testutil.ToFloat64(f.metrics.fallbacks); n != float64(i+1) {
			t.Fatalf("fallbacks = %v, want %d", n, i+1)
		}
	}
}

// TestPeerStreamCut: a peer that stops sending and stops renewing (its
// machine froze, the network dropped it) never closes the connection; the
// reader's stream is cut once the lease lapsed. A peer that keeps its
// lease but sends nothing for three lease lifetimes is cut too: its
// connection may be lost in a partition.
func TestPeerStreamCut(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		die    bool
		want   string
		within time.Duration
	}{
		{"lease lapses", true, "stopped renewing", 4},
		{"stalls with a live lease", false, "sent nothing for too long", 5},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			pool := newPool(t)
			ttl := 600 * time.Millisecond
			hang := make(chan struct{})
			srv := httptest.NewServer(nil)
			t.Cleanup(srv.Close)
			t.Cleanup(func() { close(hang) })
			leader := open(t, pool, srv.URL, ttl)
			srv.Config.Handler = leader.Handler(hangingSource{hang})
			follower := open(t, pool, "http://f:1", ttl)
			d := digest.FromString("layer")
			release, _, _, err := leader.ClaimFill(t.Context(), "hub", d, "")
			if err != nil {
				t.Fatal(err)
			}
			defer release()
			body, _, _, err := follower.OpenPeerFill(t.Context(), srv.URL, "hub", d, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer body.Close()
			if tc.die {
				leader.die()
			}
			start := time.Now()
			_, err = io.ReadAll(body)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("reading a silent peer: %v, want the stream cut because %q", err, tc.want)
			}
			if took := time.Since(start); took > tc.within*ttl {
				t.Fatalf("the silent peer's stream was cut after %v", took)
			}
		})
	}
}

type hangingSource struct{ hang chan struct{} }

func (h hangingSource) StreamFill(ctx context.Context, upstream string, d digest.Digest, off int64,
	start func(size int64, repository string) io.Writer) (bool, error) {
	w := start(1000, "hub/x")
	_, _ = w.Write([]byte("a"))
	w.(http.Flusher).Flush()
	select {
	case <-h.hang:
	case <-ctx.Done():
	}
	return true, ctx.Err()
}

func TestSingleton(t *testing.T) {
	t.Parallel()
	pool := newPool(t)
	ttl := 450 * time.Millisecond
	var running, most, runs atomic.Int32
	work := func(ctx context.Context) {
		n := running.Add(1)
		runs.Add(1)
		for {
			m := most.Load()
			if n <= m || most.CompareAndSwap(m, n) {
				break
			}
		}
		<-ctx.Done()
		running.Add(-1)
	}
	ctxs := make([]context.CancelFunc, 3)
	owners := make([]string, 3)
	var wg sync.WaitGroup
	for i := range ctxs {
		r := open(t, pool, fmt.Sprintf("http://r%d:1", i), ttl)
		ctx, cancel := context.WithCancel(t.Context())
		ctxs[i], owners[i] = cancel, r.owner
		wg.Go(func() { r.Singleton(ctx, "evict", work) })
	}
	waitFor(t, 2*ttl, func() bool { return running.Load() == 1 })
	// Whichever replica runs it stops; another takes over within a TTL.
	var holder string
	if err := pool.QueryRow(t.Context(), "SELECT owner FROM airlock_cluster_singletons WHERE name = 'evict'").Scan(&holder); err != nil {
		t.Fatal(err)
	}
	for i, owner := range owners {
		if strings.HasPrefix(holder, owner+"/") {
			ctxs[i]()
		}
	}
	waitFor(t, 3*ttl, func() bool { return runs.Load() >= 2 && running.Load() == 1 })
	for _, cancel := range ctxs {
		cancel()
	}
	wg.Wait()
	if m := most.Load(); m != 1 {
		t.Fatalf("the singleton ran on %d replicas at once", m)
	}
	if running.Load() != 0 {
		t.Fatal("a singleton still runs after its context ended")
	}
}

// TestSingletonLost: when another replica holds the row (the lease lapsed
// and was taken), run's context ends.
func TestSingletonLost(t *testing.T) {
	t.Parallel()
	pool := newPool(t)
	ttl := 300 * time.Millisecond
	r := open(t, pool, "http://r:1", ttl)
	ended := make(chan struct{})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	started := make(chan struct{})
	var once sync.Once
	go r.Singleton(ctx, "evict", func(ctx context.Context) {
		once.Do(func() { close(started) })
		<-ctx.Done()
		select {
		case <-ended:
		default:
			close(ended)
		}
	})
	<-started
	if _, err := pool.Exec(t.Context(), "UPDATE airlock_cluster_singletons SET owner = 'other', expires = now() + interval '1 hour'"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ended:
	case <-time.After(2 * ttl):
		t.Fatal("run kept going after its lease was taken")
	}
	if got := testutil.ToFloat64(r.metrics.losses.WithLabelValues("singleton")); got != 1 {
		t.Fatalf("singleton lease losses = %v, want 1", got)
	}
	cancel()
}

func waitFor(t *testing.T, within time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestClaimFillLocalChurn: local fills of one blob claiming and releasing
// its lease at random never leave one of them holding a release while the
// row is gone: a release deleting the row and a claim taking it meet in
// order.
func TestClaimFillLocalChurn(t *testing.T) {
	t.Parallel()
	pool := newPool(t)
	a := open(t, pool, "http://a:1", time.Second)
	d := digest.FromString("layer")
	var wg sync.WaitGroup
	var bad atomic.Int32
	for range 6 {
		wg.Go(func() {
			for range 30 {
				release, _, peer, err := a.ClaimFill(t.Context(), "hub", d, "")
				if err != nil || release == nil {
					t.Errorf("claim: peer %q, %v", peer, err)
					return
				}
				var owner string
				var live bool
				if err := pool.QueryRow(t.Context(), "SELECT owner, expires > now() FROM airlock_cluster_fills WHERE digest = $1",
					d.String()).Scan(&owner, &live); err != nil || owner != a.owner || !live {
					bad.Add(1)
				}
				release()
			}
		})
	}
	wg.Wait()
	if n := bad.Load(); n != 0 {
		t.Fatalf("%d times a local fill held the lease while the row was not this replica's live lease", n)
	}
}
