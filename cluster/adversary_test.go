package cluster

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/airlock-registry/airlock/internal/pgtest"
)

// TestAdversaryRestartedReplicaTakesOverItsPredecessorsLease: a replica
// killed mid-fill and restarted at the same address (a StatefulSet's pod)
// finds its predecessor's lease row live for up to a TTL. It must not take
// the row for a peer's and read the blob from itself: its own listener
// would wait on the very fill that asks, until the lease lapsed.
func TestAdversaryRestartedReplicaTakesOverItsPredecessorsLease(t *testing.T) {
	t.Parallel()
	pool := newPool(t)
	ttl := 10 * time.Second // long: the takeover must not wait for expiry
	d := digest.FromString("layer")
	before, err := Open(t.Context(), Options{Pool: pool, Advertise: "http://r0:5002", LeaseTTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	release, _, _, err := before.ClaimFill(t.Context(), "hub", d, "")
	if err != nil || release == nil {
		t.Fatalf("first claim: %v", err)
	}
	(replica{Cluster: before}).die() // kill -9: the row stays live for a TTL

	after := open(t, pool, "http://r0:5002", ttl)
	other := open(t, pool, "http://r1:5002", ttl)
	start := time.Now()
	rel, recheck, peer, err := after.ClaimFill(t.Context(), "hub", d, "")
	if err != nil {
		t.Fatal(err)
	}
	if rel == nil {
		t.Fatalf("the restarted replica was sent to peer %q, its own address, for a fill its predecessor held", peer)
	}
	defer rel()
	if !recheck {
		t.Fatal("a takeover of a row must ask for a look in the store: the predecessor may have committed")
	}
	if time.Since(start) > ttl/2 {
		t.Fatalf("the takeover waited %s", time.Since(start))
	}
	// Other replicas now follow the restarted one, whose heartbeat holds it.
	if r, _, peer, err := other.ClaimFill(t.Context(), "hub", d, ""); err != nil || r != nil || peer != "http://r0:5002" {
		t.Fatalf("another replica's claim: release %v, peer %q, %v; want peer http://r0:5002", r != nil, peer, err)
	}
}

// syncBuffer is a log sink safe for the cluster's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestAdversaryHostileAnswersAtAPeerAddress: whatever answers at a peer's
// address (a misconfigured advertise pointing at a debugging proxy, a
// load balancer's error page) may echo the request's headers. The answer's
// text goes into the fallback's error and the log; the cluster secret
// must not. A redirect is not followed: the secret would go to wherever
// it points. Megabytes of headers are refused, not read.
func TestAdversaryHostileAnswersAtAPeerAddress(t *testing.T) {
	t.Parallel()
	pool := newPool(t)
	var redirected atomic.Int32
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		redirected.Add(1)
	}))
	t.Cleanup(target.Close)
	tests := []struct {
		name    string
		handler http.HandlerFunc
		want    string
	}{
		{"echoes the headers", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusBadGateway)
			_, _ = io.WriteString(w, "upstream said no; request headers: Authorization="+r.Header.Get("Authorization"))
		}, "answered HTTP 502"},
		{"echoes the headers in a long page", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusForbidden)
			// The secret straddles the 512 bytes the error keeps.
			_, _ = io.WriteString(w, strings.Repeat(".", 480)+r.Header.Get("Authorization"))
		}, "answered HTTP 403"},
		{"sends megabytes of headers", func(w http.ResponseWriter, r *http.Request) {
			for i := range 64 {
				w.Header().Set(fmt.Sprintf("X-Pad-%d", i), strings.Repeat("p", 16<<10))
			}
			w.Header().Set(HeaderBlobSize, "10")
		}, "exceeded"},
		{"redirects", func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, target.URL+"/steal", http.StatusTemporaryRedirect)
		}, "answered HTTP 307"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			logs := &syncBuffer{}
			c, err := Open(t.Context(), Options{Pool: pool, Advertise: "http://f:1", LeaseTTL: time.Second,
				Logger: slog.New(slog.NewTextHandler(logs, nil))})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			peer := httptest.NewServer(tc.handler)
			t.Cleanup(peer.Close)
			body, _, _, err := c.OpenPeerFill(t.Context(), peer.URL, "hub", digest.FromString("x"), 0)
			if body != nil || err == nil {
				t.Fatal("a peer that answered no blob was read")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not say %q", err, tc.want)
			}
			for what, text := range map[string]string{"error": err.Error(), "log": logs.String()} {
				for i := 0; i+16 <= len(c.secret); i++ {
					if strings.Contains(text, c.secret[i:i+16]) {
						t.Fatalf("the %s holds part of the cluster secret: %s", what, text)
					}
				}
			}
		})
	}
	if n := redirected.Load(); n != 0 {
		t.Fatalf("a peer's redirect was followed %d times, with the secret", n)
	}
}

// TestAdversaryPeerListenerInputs: requests a peer, or someone who learnt
// the secret, might send: offsets that are no byte offset or lie past the
// end, names that try to climb out of the path. None reaches a blob it
// does not name, and none breaks the listener.
func TestAdversaryPeerListenerInputs(t *testing.T) {
	t.Parallel()
	pool := newPool(t)
	blob := []byte(strings.Repeat("airlock", 100))
	d := digest.FromBytes(blob)
	src := &source{blob: blob, repo: "hub/library/app"}
	srv := httptest.NewServer(nil)
	t.Cleanup(srv.Close)
	leader := open(t, pool, srv.URL, time.Second)
	srv.Config.Handler = leader.Handler(src)
	fill := "/v1/fills/hub/" + d.String()
	tests := []struct {
		name, path string
		status     int
		want       string
	}{
		{"no offset", fill, 400, "offset must be"},
		{"offset in hex", fill + "?offset=0x10", 400, "offset must be"},
		{"offset past int64", fill + "?offset=99999999999999999999", 400, "offset must be"},
		{"negative zero", fill + "?offset=-0", 200, string(blob)},
		{"upstream climbing out", "/v1/fills/..%2F..%2Fhub/" + d.String() + "?offset=0", 404, "no fill of blob"},
		{"digest climbing out", "/v1/fills/hub/sha256:..%2F..%2Fetc%2Fpasswd?offset=0", 400, "malformed digest"},
		{"another algorithm's digest", "/v1/fills/hub/md5:d41d8cd98f00b204e9800998ecf8427e?offset=0", 400, "malformed digest"},
		{"POST", fill + "?offset=0", 405, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			method := http.MethodGet
			if tc.name == "POST" {
				method = http.MethodPost
			}
			req, _ := http.NewRequestWithContext(t.Context(), method, srv.URL+tc.path, nil)
			req.Header.Set("Authorization", "Bearer "+leader.secret)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status || !strings.Contains(string(b), tc.want) {
				t.Fatalf("%s %s: %d %.100q, want %d with %q", method, tc.path, resp.StatusCode, b, tc.status, tc.want)
			}
		})
	}
}

// TestAdversarySuspectHoldsAFarLease: a peer whose stream broke while it
// holds a lease that expires far ahead and is never renewed (a replica
// configured with a much longer TTL, a row written by hand) must not hold
// the reader up until that expiry: after two of the reader's own TTLs it
// is told to fetch the blob itself.
func TestAdversarySuspectHoldsAFarLease(t *testing.T) {
	t.Parallel()
	pool := newPool(t)
	ttl := 300 * time.Millisecond
	r := open(t, pool, "http://r:1", ttl)
	d := digest.FromString("layer")
	if _, err := pool.Exec(t.Context(), `INSERT INTO airlock_cluster_fills (upstream, digest, owner, advertise, expires)
		VALUES ('hub', $1, 'elsewhere', 'http://x:1', now() + interval '1 hour')`, d.String()); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	rel, _, peer, err := r.ClaimFill(t.Context(), "hub", d, "http://x:1")
	took := time.Since(start)
	if rel != nil || peer != "" || err == nil || !strings.Contains(err.Error(), "without renewing it") {
		t.Fatalf("claim suspecting a far lease: release %v, peer %q, %v; want an error saying it is not renewed", rel != nil, peer, err)
	}
	if took < suspectWait*ttl || took > suspectWait*ttl+time.Second {
		t.Fatalf("gave up after %s, want about %s", took, suspectWait*ttl)
	}
	if n := testutil.ToFloat64(r.metrics.fallbacks); n != 1 {
		t.Fatalf("fallbacks = %v, want 1", n)
	}
	// Without a suspect the holder is followed as before.
	if _, _, peer, err := r.ClaimFill(t.Context(), "hub", d, ""); err != nil || peer != "http://x:1" {
		t.Fatalf("claim without a suspect: peer %q, %v", peer, err)
	}
}

// slowAnswers delays the answers to statements on the singletons' table,
// once set: the database ran the statement (and stamped its now()) at
// once, the answer comes late.
type slowAnswers struct{ delay atomic.Int64 }

func (s *slowAnswers) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	if strings.Contains(data.SQL, "airlock_cluster_singletons") {
		return context.WithValue(ctx, s, true)
	}
	return ctx
}

func (s *slowAnswers) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryEndData) {
	if ctx.Value(s) != nil && data.Err == nil {
		time.Sleep(time.Duration(s.delay.Load()))
	}
}

// TestAdversarySingletonSlowRenewalThenOutage: a renewal whose answer came
// late, followed by a database out of reach. The lease expires a TTL after
// the database ran the renewal, not after its answer arrived: run must be
// told to stop a third of a TTL before that expiry, as Singleton promises,
// or another replica's run may start while this one still works.
func TestAdversarySingletonSlowRenewalThenOutage(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DSN(t)
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	slow := &slowAnswers{}
	cfg.ConnConfig.Tracer = slow
	pool, err := pgxpool.NewWithConfig(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	admin := newPoolDSN(t, dsn)
	ttl := 900 * time.Millisecond
	r := open(t, pool, "http://r:1", ttl)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	started, stopped := make(chan struct{}), make(chan time.Time, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Singleton(ctx, "evict", func(ctx context.Context) {
			close(started)
			<-ctx.Done()
			stopped <- time.Now()
			<-ctx.Done()
		})
	}()
	<-started
	// The next renewals answer a quarter of a TTL late; then the table
	// goes away, so every later renewal fails.
	slow.delay.Store(int64(ttl / 4))
	var expires time.Time
	waitFor(t, 2*ttl, func() bool {
		var e time.Time
		if err := admin.QueryRow(t.Context(), "SELECT expires FROM airlock_cluster_singletons WHERE name = 'evict'").Scan(&e); err != nil {
			t.Fatal(err)
		}
		renewed := !expires.IsZero() && e.After(expires)
		expires = e
		return renewed
	})
	time.Sleep(ttl / 4) // the renewal's answer arrives
	if _, err := admin.Exec(t.Context(), "ALTER TABLE airlock_cluster_singletons RENAME TO airlock_cluster_singletons_away"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = admin.Exec(context.Background(), "ALTER TABLE airlock_cluster_singletons_away RENAME TO airlock_cluster_singletons")
	})
	var at time.Time
	select {
	case at = <-stopped:
	case <-time.After(3 * ttl):
		t.Fatal("run was never told to stop while the database was out of reach")
	}
	var ms float64
	if err := admin.QueryRow(t.Context(), "SELECT extract(epoch FROM expires - now()) * 1000 FROM airlock_cluster_singletons_away").Scan(&ms); err != nil {
		t.Fatal(err)
	}
	// The lease's time left when run was told, as the database counts.
	left := time.Duration(ms*float64(time.Millisecond)) + time.Since(at)
	if left < ttl/6 {
		t.Fatalf("run was told to stop %s before its lease expired; Singleton promises about a third of the TTL (%s)", left, ttl/3)
	}
	cancel()
	<-done
}

func newPoolDSN(t *testing.T, dsn string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// TestAdversaryLostLeaseIsNotShared: a replica whose lease lapsed and was
// taken by another while its own fill still runs (its heartbeat could not
// renew it in time) must not hand that lease to a local fill starting
// now, which would then fetch the blob a second time, nor give up the row
// the new holder owns when its own fill ends.
func TestAdversaryLostLeaseIsNotShared(t *testing.T) {
	t.Parallel()
	pool := newPool(t)
	ttl := 300 * time.Millisecond
	a := open(t, pool, "http://a:1", ttl)
	d := digest.FromString("layer")
	release, _, _, err := a.ClaimFill(t.Context(), "hub", d, "")
	if err != nil || release == nil {
		t.Fatalf("claim: %v", err)
	}
	// Another replica took the row after it lapsed.
	if _, err := pool.Exec(t.Context(), `UPDATE airlock_cluster_fills SET owner = 'b', advertise = 'http://b:1',
		expires = now() + interval '1 hour' WHERE digest = $1`, d.String()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*ttl, func() bool { return testutil.ToFloat64(a.metrics.losses.WithLabelValues("fill")) == 1 })
	r2, _, peer, err := a.ClaimFill(t.Context(), "hub", d, "")
	if err != nil {
		t.Fatal(err)
	}
	if r2 != nil {
		r2()
		t.Fatal("a local fill starting after the lease was lost was told it leads: the blob would be fetched twice")
	}
	if peer != "http://b:1" {
		t.Fatalf("a local fill after the loss follows %q, want the new holder http://b:1", peer)
	}
	release()
	var owner string
	var live bool
	if err := pool.QueryRow(t.Context(), "SELECT owner, expires > now() FROM airlock_cluster_fills WHERE digest = $1", d.String()).Scan(&owner, &live); err != nil {
		t.Fatal(err)
	}
	if owner != "b" || !live {
		t.Fatalf("after the first fill ended the row is %s's, live %v; the new holder's lease must stand", owner, live)
	}
}
