package scanner

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/compression"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/quay/claircore"
	"github.com/quay/claircore/libvuln/driver"
	"github.com/quay/claircore/libvuln/jsonblob"
	cctypes "github.com/quay/claircore/toolkit/types"
	"go.uber.org/goleak"

	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/internal/pgtest"
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
		if err := goleak.Find(
			// claircore's locker wakes its pinger every 5s; the goroutine
			// ends at its next tick after Close.
			goleak.IgnoreAnyFunction("github.com/quay/claircore/pkg/ctxlock/v2.(*Locker).ping"),
		); err != nil {
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
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	img = mutate.MediaType(img, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	raw, err := img.RawManifest()
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

// tarOf builds a layer's tar from files (path → content), with the parent
// directories.
func tarOf(t testing.TB, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	dirs := map[string]bool{}
	mtime := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, n := range names {
		var parents []string
		for d := path.Dir(n); d != "." && d != "/"; d = path.Dir(d) {
			parents = append([]string{d}, parents...)
		}
		for _, d := range parents {
			if dirs[d] {
				continue
			}
			dirs[d] = true
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755, ModTime: mtime}); err != nil {
				t.Fatal(err)
			}
		}
		body := files[n]
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: n, Mode: 0o644, Size: int64(len(body)), ModTime: mtime}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// layerOf makes a layer of files, compressed as asked: gzip, zstd or none.
func layerOf(t testing.TB, comp string, files map[string]string) v1.Layer {
	t.Helper()
	raw := tarOf(t, files)
	opener := func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(raw)), nil }
	var l v1.Layer
	var err error
	switch comp {
	case "gzip":
		l, err = tarball.LayerFromOpener(opener, tarball.WithMediaType(types.OCILayer))
	case "zstd":
		l, err = tarball.LayerFromOpener(opener, tarball.WithCompression(compression.ZStd), tarball.WithMediaType(types.OCILayerZStd))
	case "none":
		l = static.NewLayer(raw, types.OCIUncompressedLayer)
	default:
		t.Fatalf("unknown compression %q", comp)
	}
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// deb is an installed Debian package.
type deb struct{ name, version, source string }

const debianOSRelease = `PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
`

// debianFiles is a Debian 12 root with pkgs installed: os-release, the
// dpkg status database and each package's file list.
func debianFiles(pkgs ...deb) map[string]string {
	var status strings.Builder
	files := map[string]string{"etc/os-release": debianOSRelease}
	for _, p := range pkgs {
		fmt.Fprintf(&status, "Package: %s\nStatus: install ok installed\nPriority: optional\nSection: libs\nInstalled-Size: 100\nMaintainer: Debian <debian@example.org>\nArchitecture: amd64\n", p.name)
		if p.source != "" {
			fmt.Fprintf(&status, "Source: %s\n", p.source)
		}
		fmt.Fprintf(&status, "Version: %s\nDescription: the %s package\n\n", p.version, p.name)
		files["var/lib/dpkg/info/"+p.name+".list"] = "/.\n/usr\n/usr/lib/" + p.name + "\n"
		files["usr/lib/"+p.name] = p.name + "\n"
	}
	files["var/lib/dpkg/status"] = status.String()
	return files
}

// apk is an installed Alpine package.
type apk struct{ name, version, origin string }

func alpineFiles(pkgs ...apk) map[string]string {
	var db strings.Builder
	for _, p := range pkgs {
		fmt.Fprintf(&db, "C:Q1abcdefghijklmnopqrstuvwxyz0123=\nP:%s\nV:%s\nA:x86_64\nS:100\nI:200\nT:the %s package\nU:https://example.org\nL:MIT\no:%s\nm:Alpine <alpine@example.org>\nt:1700000000\n\n", p.name, p.version, p.name, p.origin)
	}
	return map[string]string{
		"etc/os-release": `NAME="Alpine Linux"
ID=alpine
VERSION_ID=3.18.4
PRETTY_NAME="Alpine Linux v3.18"
HOME_URL="https://alpinelinux.org/"
`,
		"etc/alpine-release":   "3.18.4\n",
		"lib/apk/db/installed": db.String(),
	}
}

// Distributions as claircore's updaters name them.
var (
	bookworm = &claircore.Distribution{
		Name: "Debian GNU/Linux", DID: "debian", VersionID: "12", Version: "12 (bookworm)",
		VersionCodeName: "bookworm", PrettyName: "Debian GNU/Linux 12 (bookworm)",
	}
	alpine318 = &claircore.Distribution{
		Name: "Alpine Linux", DID: "alpine", VersionID: "3.18", PrettyName: "Alpine Linux v3.18",
	}
)

// debVuln is a Debian security tracker record as the debian updater
// makes it.
func debVuln(id, srcPkg, fixed, urgency string, sev claircore.Severity) *claircore.Vulnerability {
	return &claircore.Vulnerability{
		Updater:            "debian/updater",
		Name:               id,
		Description:        id + " in " + srcPkg,
		Links:              "https://security-tracker.debian.org/tracker/" + id,
		Severity:           urgency,
		NormalizedSeverity: sev,
		Dist:               bookworm,
		FixedInVersion:     fixed,
		Package:            &claircore.Package{Name: srcPkg, Kind: cctypes.SourcePackage},
	}
}

// update is one updater's data in an export.
type update struct {
	updater     string
	fingerprint string
	vulns       []*claircore.Vulnerability
}

// exportOf writes an updater export (the JSON Lines `clairctl
// export-updaters` writes) with claircore's own encoder.
func exportOf(t testing.TB, updates ...update) []byte {
	t.Helper()
	st, err := jsonblob.New()
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range updates {
		if _, err := st.UpdateVulnerabilities(context.Background(), u.updater, driver.Fingerprint(u.fingerprint), u.vulns); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	if err := st.Store(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
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
func (e *env) importData(t testing.TB, updates ...update) ImportResult {
	t.Helper()
	res, err := Import(t.Context(), config.Scanner{Database: e.dsn, WorkDir: t.TempDir()}, bytes.NewReader(exportOf(t, updates...)), nil)
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
