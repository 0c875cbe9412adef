package scanner

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/internal/pgtest"
	"github.com/airlock-registry/airlock/scanner/scannertest"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// defaultDials counts requests through http.DefaultTransport, which the
// tests replace with one that refuses every host but loopback: code that
// bypasses Options.Client would show here.
var defaultDials = &dialGuard{}

func TestMain(m *testing.M) {
	http.DefaultTransport = defaultDials.transport()
	// claircore logs through the process-wide logger: keep its chatter
	// out of test output.
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	code := m.Run()
	if err := pgtest.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = 1
	}
	if n := defaultDials.refused.Load(); n != 0 {
		fmt.Fprintf(os.Stderr, "%d non-loopback dials through http.DefaultTransport: %v\n", n, defaultDials.hosts())
		code = 1
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutines leaked:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// dialGuard refuses and counts every dial to a host that is not
// loopback.
type dialGuard struct {
	refused atomic.Int64
	mu      sync.Mutex
	seen    []string
}

func (g *dialGuard) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	g.refused.Add(1)
	g.mu.Lock()
	g.seen = append(g.seen, addr)
	g.mu.Unlock()
	return nil, fmt.Errorf("test: refused a dial to %s: only loopback is allowed", addr)
}

func (g *dialGuard) hosts() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]string(nil), g.seen...)
}

func (g *dialGuard) transport() *http.Transport {
	return &http.Transport{DialContext: g.dial, Proxy: nil, ForceAttemptHTTP2: false}
}

func (g *dialGuard) client() *http.Client { return &http.Client{Transport: g.transport()} }

// fakeContent is the proxy's cache, in memory: manifests and blobs by
// digest (the repository is ignored), with reads counted.
type fakeContent struct {
	mu        sync.Mutex
	manifests map[digest.Digest]storedManifest
	blobs     map[digest.Digest][]byte
	manReads  map[digest.Digest]int
	blobReads map[digest.Digest]int
	// blobHook, when set, runs before a blob is returned; an error fails
	// the read.
	blobHook func(ctx context.Context, d digest.Digest) error
}

type storedManifest struct {
	raw []byte
	mt  string
}

func newContent() *fakeContent {
	return &fakeContent{
		manifests: map[digest.Digest]storedManifest{},
		blobs:     map[digest.Digest][]byte{},
		manReads:  map[digest.Digest]int{},
		blobReads: map[digest.Digest]int{},
	}
}

func (c *fakeContent) Manifest(ctx context.Context, repo string, d digest.Digest) ([]byte, string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.manReads[d]++
	m, ok := c.manifests[d]
	if !ok {
		return nil, "", fmt.Errorf("manifest %s@%s: not found", repo, d)
	}
	return m.raw, m.mt, nil
}

func (c *fakeContent) Blob(ctx context.Context, repo string, d digest.Digest) (io.ReadCloser, error) {
	c.mu.Lock()
	c.blobReads[d]++
	b, ok := c.blobs[d]
	hook := c.blobHook
	c.mu.Unlock()
	if hook != nil {
		if err := hook(ctx, d); err != nil {
			return nil, err
		}
	}
	if !ok {
		return nil, fmt.Errorf("blob %s@%s: not found", repo, d)
	}
	return io.NopCloser(bytes.NewReader(b)), nil
}

func (c *fakeContent) reads(d digest.Digest) (manifest, blob int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.manReads[d], c.blobReads[d]
}

// putManifest stores a raw manifest.
func (c *fakeContent) putManifest(raw []byte, mt string) digest.Digest {
	d := digest.FromBytes(raw)
	c.mu.Lock()
	c.manifests[d] = storedManifest{raw, mt}
	c.mu.Unlock()
	return d
}

// addImage stores an OCI image made of layers and returns its digest.
func (c *fakeContent) addImage(t testing.TB, layers ...v1.Layer) digest.Digest {
	t.Helper()
	raw, err := scannertest.Image(t, layers...).RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		ld, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		c.mu.Lock()
		c.blobs[digest.Digest(ld.String())] = b
		c.mu.Unlock()
	}
	return c.putManifest(raw, string(types.OCIManifestSchema1))
}

// syncBuffer is a log destination safe for concurrent writers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// results records what OnResult was told.
type results struct {
	mu   sync.Mutex
	all  map[digest.Digest][]metadata.Scan
	cond chan struct{} // closed and replaced on every result
}

func newResults() *results {
	return &results{all: map[digest.Digest][]metadata.Scan{}, cond: make(chan struct{})}
}

func (r *results) on(_ context.Context, d digest.Digest, s metadata.Scan) {
	r.mu.Lock()
	r.all[d] = append(r.all[d], s)
	close(r.cond)
	r.cond = make(chan struct{})
	r.mu.Unlock()
}

func (r *results) of(d digest.Digest) []metadata.Scan {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]metadata.Scan(nil), r.all[d]...)
}

// wait returns the first result of d (after skip earlier ones) that ok
// accepts, failing the test after timeout.
func (r *results) wait(t testing.TB, d digest.Digest, timeout time.Duration, ok func(metadata.Scan) bool) metadata.Scan {
	t.Helper()
	deadline := time.After(timeout)
	for {
		r.mu.Lock()
		for _, s := range r.all[d] {
			if ok(s) {
				r.mu.Unlock()
				return s
			}
		}
		c := r.cond
		r.mu.Unlock()
		select {
		case <-c:
		case <-deadline:
			t.Fatalf("no matching result for %s within %s; got %+v", d, timeout, r.of(d))
		}
	}
}

func isDone(s metadata.Scan) bool { return s.State == metadata.ScanDone }

// env is a scanner under test with its parts.
type env struct {
	s       *Scanner
	content *fakeContent
	results *results
	guard   *dialGuard
	reg     *prometheus.Registry
	logs    *syncBuffer
	dsn     string
}

type envOption func(*Options)

// open opens a scanner on dsn (a fresh database when empty) with fast
// queue timings, without running it.
func open(t testing.TB, dsn string, content *fakeContent, opts ...envOption) *env {
	t.Helper()
	if dsn == "" {
		dsn = pgtest.DSN(t)
	}
	if content == nil {
		content = newContent()
	}
	e := &env{content: content, results: newResults(), guard: &dialGuard{}, reg: prometheus.NewRegistry(), logs: &syncBuffer{}, dsn: dsn}
	o := Options{
		Config:     config.Scanner{Database: dsn, WorkDir: t.TempDir()},
		Content:    content,
		OnResult:   e.results.on,
		Client:     e.guard.client(),
		Logger:     slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Registerer: e.reg,
	}
	for _, f := range opts {
		f(&o)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := Open(ctx, o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	s.tune.poll = 100 * time.Millisecond
	s.tune.backoff = 100 * time.Millisecond
	s.tune.stats = 100 * time.Millisecond
	s.tune.dataPoll = time.Hour // tests re-check through notifications
	e.s = s
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := s.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
		if n := e.guard.refused.Load(); n != 0 {
			t.Errorf("%d non-loopback dials through Options.Client: %v", n, e.guard.hosts())
		}
		if n := testutil.ToFloat64(s.metrics.refused); n != 0 {
			t.Errorf("the indexer attempted %v network requests", n)
		}
	})
	return e
}

// run runs the scanner until the test ends.
func (e *env) run(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

// importData loads an export into the scanner's database.
func (e *env) importData(t testing.TB, updates ...scannertest.Update) ImportResult {
	t.Helper()
	res, err := Import(t.Context(), config.Scanner{Database: e.dsn, WorkDir: t.TempDir()}, bytes.NewReader(scannertest.Export(t, updates...)), nil)
	if err != nil {
		t.Fatalf("Import: %v", err)
	}
	return res
}

func (e *env) enqueue(t testing.TB, d digest.Digest) metadata.Scan {
	t.Helper()
	sc, err := e.s.Enqueue(t.Context(), Job{Repository: "dockerhub/library/test", Digest: d})
	if err != nil {
		t.Fatalf("Enqueue: %v", err)
	}
	return sc
}

var errBlocked = errors.New("test: blocked")

func digestOf(s string) digest.Digest { return digest.Digest(s) }

func equalFindings(a, b []metadata.Finding) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func slogTo(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
