// Package admintest runs a whole airlock in-process for tests of the admin
// API and CLI: an upstream registry (integration/upstreamtest) reached as
// "hcl" (under a digest-pin policy) and "hub" (under none), the proxy on a
// real bbolt store and blob store, the gate, and the admin API behind a
// token file. Pulls through Registry put images in the states the API
// shows; nothing is faked.
package admintest

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"

	"github.com/airlock-registry/airlock/admin"
	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/gate"
	"github.com/airlock-registry/airlock/integration/upstreamtest"
	"github.com/airlock-registry/airlock/policy"
	"github.com/airlock-registry/airlock/proxy"
	"github.com/airlock-registry/airlock/proxy/upstream"
	"github.com/airlock-registry/airlock/storage"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// Tokens the harness's admin.tokenFile holds.
const (
	// AliceToken is named: its actor is "admin:alice".
	AliceToken = "alice-0123456789abcdef"
	// UnnamedToken has no name: its actor is "admin:token-" and the first
	// 8 hex digits of its SHA-256.
	UnnamedToken = "unnamed-fedcba9876543210"
)

// Harness is one airlock with its admin API.
type Harness struct {
	Upstream *upstreamtest.Upstream
	Meta     *metadata.DB
	Gate     *gate.Gate
	Proxy    *proxy.Proxy
	// Registry serves the registry API (the pull port).
	Registry *httptest.Server
	// Admin serves the admin API.
	Admin *httptest.Server
	// TokenFile is the server's admin.tokenFile.
	TokenFile string
	// Clock is the time of the gate and the admin API.
	Clock *Clock
	// Throttle limits the admin API's wrong tokens; a console a test
	// builds on the harness shares it as serve's does.
	Throttle *admin.Throttle
	// Metrics holds the proxy's series (upstream round trips, cache
	// lookups), as serve registers them; they survive a Restart.
	Metrics *prometheus.Registry
	// Dir is the harness's temporary directory.
	Dir string

	t            testing.TB
	sboms        admin.SBOMs
	proxyMetrics *proxy.Metrics
	registry     swap
	admin        swap
	logs         LogBuffer
}

// LogBuffer collects log lines from the goroutines of a server under
// test.
type LogBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (b *LogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	return len(p), nil
}

// String returns what was written so far.
func (b *LogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}

// Logs returns what the admin API logged so far (slog text lines).
func (h *Harness) Logs() string { return h.logs.String() }

// Clock is a settable clock.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// content binds the gate to the proxy built after it.
type content struct{ p *proxy.Proxy }

func (c *content) Withdraw(ctx context.Context, repo string, d digest.Digest, servable func(digest.Digest) bool) error {
	return c.p.Withdraw(ctx, repo, d, servable)
}

func (c *content) Remove(ctx context.Context, repo string, d digest.Digest) error {
	return c.p.Remove(ctx, repo, d)
}

// New starts a harness whose "hcl-pinned" policy governs hcl/* with pins
// (the pin file's text).
func New(tb testing.TB, up *upstreamtest.Upstream, pins string) *Harness {
	tb.Helper()
	dir := tb.TempDir()
	h := &Harness{Upstream: up, Dir: dir, t: tb, TokenFile: filepath.Join(dir, "admin-tokens"),
		Clock: &Clock{now: time.Now().UTC().Truncate(time.Second)}, Metrics: prometheus.NewRegistry()}
	h.proxyMetrics = proxy.NewMetrics(h.Metrics)
	h.Throttle = admin.NewThrottle(h.Clock.Now, slog.New(slog.NewTextHandler(&h.logs, nil)))
	write(tb, h.TokenFile, "# admins\nalice:"+AliceToken+"\n"+UnnamedToken+"\n")
	write(tb, filepath.Join(dir, "pins.txt"), pins)
	h.start()
	h.Registry = httptest.NewServer(&h.registry)
	h.Admin = httptest.NewServer(&h.admin)
	tb.Cleanup(func() {
		h.Admin.Close()
		h.Registry.Close()
		h.stop()
	})
	return h
}

// swap is a handler that can be replaced while its server runs.
type swap struct{ h atomic.Pointer[http.Handler] }

func (s *swap) ServeHTTP(w http.ResponseWriter, r *http.Request) { (*s.h.Load()).ServeHTTP(w, r) }
func (s *swap) set(h http.Handler)                               { s.h.Store(&h) }

// start opens the store in Dir and builds the gate, the proxy and the
// admin API on it.
func (h *Harness) start() {
	tb := h.t
	set, err := policy.Compile([]config.Policy{{Name: "hcl-pinned", Match: []string{"hcl/*"}, Mode: config.ModeEnforce,
		Pins: filepath.Join(h.Dir, "pins.txt")}}, os.ReadFile, nil)
	if err != nil {
		tb.Fatal(err)
	}
	if h.Meta, err = metadata.Open(h.DBPath()); err != nil {
		tb.Fatal(err)
	}
	blobs, err := storage.NewFilesystem(filepath.Join(h.Dir, "blobs"))
	if err != nil {
		tb.Fatal(err)
	}
	regs := map[string]proxy.Registry{}
	for _, name := range []string{"hcl", "hub"} {
		r, err := upstream.New(upstream.Options{Name: name, URL: h.Upstream.URL, MaxAttempts: 1, IdleTimeout: 5 * time.Second,
			Observe: h.proxyMetrics.ObserveUpstream})
		if err != nil {
			tb.Fatal(err)
		}
		regs[name] = r
	}
	rt, err := proxy.NewRouter([]proxy.Upstream{{Name: "hcl"}, {Name: "hub", Default: true}})
	if err != nil {
		tb.Fatal(err)
	}
	c := &content{}
	h.Gate, err = gate.New(context.Background(), gate.Options{Store: h.Meta, Content: c, Policies: set,
		Now: h.Clock.Now, Registerer: prometheus.NewRegistry(), KnownRepository: rt.Known})
	if err != nil {
		tb.Fatal(err)
	}
	h.Proxy, err = proxy.New(proxy.Options{Router: rt, Registries: regs, DefaultTagTTL: time.Minute, Blobs: blobs,
		Meta: h.Meta, Gate: h.Gate, Metrics: h.proxyMetrics})
	if err != nil {
		tb.Fatal(err)
	}
	c.p = h.Proxy
	h.registry.set(h.Proxy)
	h.startAdmin()
}

// startAdmin builds the admin API on the running pieces.
func (h *Harness) startAdmin() {
	srv, err := admin.New(admin.Options{Store: h.Meta, Decider: h.Gate, Tags: h.Meta, Cache: h.Proxy, SBOMs: h.sboms,
		TokenFile: h.TokenFile, Now: h.Clock.Now, Throttle: h.Throttle, Logger: slog.New(slog.NewTextHandler(&h.logs, nil))})
	if err != nil {
		h.t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(admin.Prefix, srv)
	h.admin.set(mux)
}

// UseSBOMs gives the admin API an SBOM source (a harness starts without
// one, as an airlock with scanning off) from now on, across restarts.
func (h *Harness) UseSBOMs(s admin.SBOMs) {
	h.sboms = s
	h.startAdmin()
}

// stop drains the proxy's writes and closes the store.
func (h *Harness) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = h.Proxy.Close(ctx)
	h.Gate.Flush(ctx)
	_ = h.Meta.Close()
}

// DBPath is the bbolt file of the store.
func (h *Harness) DBPath() string { return filepath.Join(h.Dir, "metadata.db") }

// Restart closes the store, runs offline (if not nil) while it is closed,
// and opens everything again on the same addresses, as a restart of
// airlock would.
func (h *Harness) Restart(offline func(dbPath string)) {
	h.t.Helper()
	unavailable := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "restarting", http.StatusServiceUnavailable)
	})
	h.registry.set(unavailable)
	h.admin.set(unavailable)
	h.stop()
	if offline != nil {
		offline(h.DBPath())
	}
	h.start()
}

func write(tb testing.TB, path, body string) {
	tb.Helper()
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		tb.Fatal(err)
	}
}

// Pull GETs a manifest through the registry port, as a client's pull
// starts, and returns the status and body.
func (h *Harness) Pull(repo, ref string) (int, string) {
	h.t.Helper()
	req, err := http.NewRequest(http.MethodGet, h.Registry.URL+"/v2/"+repo+"/manifests/"+ref, nil)
	if err != nil {
		h.t.Fatal(err)
	}
	req.Header.Set("Accept", "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, "+
		"application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// MustPull pulls and fails the test unless the status is want.
func (h *Harness) MustPull(repo, ref string, want int) {
	h.t.Helper()
	if got, body := h.Pull(repo, ref); got != want {
		h.t.Fatalf("pull %s:%s = %d %.300s; want %d", repo, ref, got, body, want)
	}
}

// Audit returns the whole audit log from the store.
func (h *Harness) Audit() []metadata.AuditRecord {
	h.t.Helper()
	recs, err := h.Meta.Audit(context.Background(), 0, 1000)
	if err != nil {
		h.t.Fatal(err)
	}
	return recs
}

// EditAuditRecord rewrites the reason of audit record seq in the closed
// bbolt file at dbPath, as someone with the file and no key would: audit
// verify must notice. It knows the bbolt layout (bucket "audit", keys the
// big-endian seq), which is the point: it goes around the store.
func EditAuditRecord(tb testing.TB, dbPath string, seq uint64, reason string) {
	tb.Helper()
	db, err := bolt.Open(dbPath, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		tb.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("audit"))
		if b == nil {
			return fmt.Errorf("no audit bucket in %s", dbPath)
		}
		key := binary.BigEndian.AppendUint64(nil, seq)
		var rec map[string]any
		if err := json.Unmarshal(b.Get(key), &rec); err != nil {
			return fmt.Errorf("audit record %d: %w", seq, err)
		}
		rec["reason"] = reason
		val, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		return b.Put(key, val)
	})
	if err != nil {
		tb.Fatal(err)
	}
}
