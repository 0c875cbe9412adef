package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/gate"
	"github.com/airlock-registry/airlock/integration/upstreamtest"
	"github.com/airlock-registry/airlock/internal/pgtest"
	"github.com/airlock-registry/airlock/internal/s3test"
	"github.com/airlock-registry/airlock/proxy"
	"github.com/airlock-registry/airlock/storage/metadata"
)

func TestSpoolDir(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		cluster config.Cluster
		want    string
	}{
		{"alone", config.Cluster{}, "/data/spool"},
		{"cluster on a bucket", config.Cluster{Listen: ":5002", Advertise: "http://10.0.0.12:5002"}, "/data/spool"},
		{"shared filesystem", config.Cluster{Listen: ":5102", Advertise: "http://127.0.0.1:5102", SharedFilesystem: true}, "/data/spool/127.0.0.1_5102"},
		{"shared filesystem, IPv6 and a name", config.Cluster{Listen: ":5102", Advertise: "https://[fd00::7]:5102/", SharedFilesystem: true}, "/data/spool/_fd00__7__5102"},
	} {
		cfg := &config.Config{Storage: config.Storage{Path: "/data"}, Cluster: tc.cluster}
		if got := spoolDir(cfg); got != filepath.FromSlash(tc.want) {
			t.Errorf("%s: spoolDir = %s, want %s", tc.name, got, tc.want)
		}
	}
}

// noContent is a gate's content that holds nothing: these tests look at
// decisions only.
type noContent struct{}

func (noContent) Withdraw(context.Context, string, digest.Digest, func(digest.Digest) bool) error {
	return nil
}
func (noContent) Remove(context.Context, string, digest.Digest) error { return nil }

// TestFollower gives gate B the notices a PostgreSQL store would send for
// gate A's changes, on one bbolt store: each kind reaches B's memory.
func TestFollower(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	db, err := metadata.Open(filepath.Join(t.TempDir(), "metadata.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	a, err := gate.New(ctx, gate.Options{Store: db, Content: noContent{}})
	if err != nil {
		t.Fatal(err)
	}
	// Two images pulled through A, approved on sight (no policy), before
	// B starts: B loads them servable.
	const repo = "hub/library/app"
	const mt = "application/vnd.oci.image.manifest.v1+json"
	var ds []digest.Digest
	for _, body := range []string{`{"schemaVersion":2,"layers":[]}`, `{"schemaVersion":2,"layers":[],"annotations":{"n":"2"}}`} {
		d := digest.FromString(body)
		dec, err := a.Admit(ctx, proxy.Subject{Upstream: "hub", Repository: "library/app", Digest: d, MediaType: mt, Body: []byte(body)})
		if err != nil || !dec.Allow {
			t.Fatalf("pull through A: %+v, %v", dec, err)
		}
		ds = append(ds, d)
	}
	a.Sync()
	d1, d2 := ds[0], ds[1]
	b, err := gate.New(ctx, gate.Options{Store: db, Content: noContent{}})
	if err != nil {
		t.Fatal(err)
	}
	servable := func(d digest.Digest) bool { return b.Servable("hub", "library/app", d) }
	if !servable(d1) || !servable(d2) {
		t.Fatal("B did not load the images A approved")
	}
	var logs syncBuffer
	f := newFollower(slog.New(slog.NewJSONHandler(&logs, nil)))
	var forgotten sync.Map
	f.forget = func(name string) { forgotten.Store(name, true) }
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { f.run(runCtx, b); close(done) }()
	defer func() { stop(); <-done }()

	eventually := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); !ok(); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 5s; log:\n%s", what, logs.String())
			}
		}
	}

	// One image: its notice.
	if _, err := a.Block(ctx, repo, d1, "admin:ann", "incident 1"); err != nil {
		t.Fatal(err)
	}
	f.note("tag", repo+":latest") // content: the store's cache follows it, not the gate
	time.Sleep(50 * time.Millisecond)
	if !servable(d1) {
		t.Fatal("B changed without a notice naming the image")
	}
	f.note("image", repo+"@"+d1.String())
	eventually("a block announced", func() bool { return !servable(d1) })

	// A lost notice: "reset" reads everything.
	if _, err := a.Block(ctx, repo, d2, "admin:ann", "incident 2"); err != nil {
		t.Fatal(err)
	}
	f.note("reset", "")
	eventually("a block behind a reset", func() bool { return !servable(d2) })

	// An unblock behind another reset.
	if _, err := a.Unblock(ctx, repo, d1, "admin:ann", "resolved"); err != nil {
		t.Fatal(err)
	}
	f.note("reset", "")
	eventually("an unblock behind a reset", func() bool { return servable(d1) })

	// An upstream that now names another registry: the proxy forgets it.
	f.note("upstream", "hub")
	eventually("an upstream's new identity", func() bool { _, ok := forgotten.Load("hub"); return ok })

	// A notice that names no image is logged and skipped.
	f.note("image", "not-an-image")
	eventually("a malformed notice", func() bool {
		return strings.Contains(logs.String(), `"msg":"ignoring an image change notice that names no image","key":"not-an-image"`)
	})
}

// TestClusterKeysNeedARestart: a reload logs metadata and cluster keys as
// needing a restart rather than applying them under a running store.
func TestClusterKeysNeedARestart(t *testing.T) {
	t.Parallel()
	for _, key := range []string{"metadata", "metadata.driver", "metadata.dsn", "metadata.dsnFile", "metadata.staleness",
		"cluster", "cluster.listen", "cluster.advertise", "cluster.sharedFilesystem", "storage.disableRedirects"} {
		if reloadable(key) {
			t.Errorf("%s is applied by a reload; it is read at start only", key)
		}
	}
}

// TestFollowerBounded: notices pile up while the gate reads; past
// maxPending images they become one reading of everything, and kinds the
// gate has no use for are not kept.
func TestFollowerBounded(t *testing.T) {
	t.Parallel()
	f := newFollower(slog.New(slog.DiscardHandler))
	for i := range maxPending {
		f.note("image", fmt.Sprintf("hub/app@%s", digest.FromString(fmt.Sprint(i))))
	}
	f.note("tag", "hub/app:latest")
	f.note("mlink", "hub/app@sha256:x")
	if len(f.pending) != maxPending || f.reset {
		t.Fatalf("after %d notices: %d pending, reset %v", maxPending, len(f.pending), f.reset)
	}
	f.note("image", "hub/app@"+digest.FromString("one more").String())
	if len(f.pending) != 0 || !f.reset {
		t.Errorf("past the bound: %d pending, reset %v; want none pending and one reset", len(f.pending), f.reset)
	}
	f.note("image", "hub/app@"+digest.FromString("after").String())
	f.note("upstream", "hub")
	if len(f.pending) != 0 || !f.reset || !f.upstreams["hub"] {
		t.Errorf("after the reset: %d pending, reset %v, upstreams %v", len(f.pending), f.reset, f.upstreams)
	}
	if len(f.wake) != 1 {
		t.Error("no wake-up pending for run")
	}
}

// replicaConfig is one replica of a cluster on one machine: PostgreSQL
// metadata and the filesystem driver on a directory both replicas share.
func replicaConfig(t *testing.T, dir, shared, dsn, upstream string) string {
	t.Helper()
	peer := freeAddr(t)
	body := fmt.Sprintf(`listen: "127.0.0.1:0"
admin: {listen: "127.0.0.1:0"}
storage: {path: %q}
metadata: {driver: postgres, dsn: %q, staleness: 5s}
cluster: {listen: %q, advertise: "http://%s", sharedFilesystem: true}
shutdown: {drainTimeout: 5s}
upstreams:
  - {name: hub, url: %q, default: true}
`, shared, dsn, peer, peer, upstream)
	path := filepath.Join(dir, "airlock.yaml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestReplicasFollowEachOther runs two replicas in this process on one
// PostgreSQL database and one shared directory: a block made through one
// applies on the other within a second, each spools apart, and neither
// creates a bbolt file.
func TestReplicasFollowEachOther(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	img := up.PushImage(t, "library/app", "1", 256, 1)
	dsn := pgtest.DSN(t)
	shared := t.TempDir()
	type replica struct {
		g    *gateway
		logs *syncBuffer
		srv  *httptest.Server
	}
	var rs []replica
	for range 2 {
		path := replicaConfig(t, t.TempDir(), shared, dsn, up.URL)
		cfg, err := loadConfig(path)
		if err != nil {
			t.Fatal(err)
		}
		logs := &syncBuffer{}
		g, err := newGateway(t.Context(), cfg, newLogger(config.FormatJSON, slog.LevelInfo, logs))
		if err != nil {
			t.Fatal(err)
		}
		ctx, stop := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- g.run(ctx, path) }()
		t.Cleanup(func() {
			stop()
			if err := <-done; err != nil {
				t.Errorf("run: %v", err)
			}
		})
		srv := httptest.NewServer(g.registryHandler())
		t.Cleanup(srv.Close)
		rs = append(rs, replica{g, logs, srv})
	}
	manifest := "/v2/hub/library/app/manifests/" + img.Digest.String()
	for i, r := range rs {
		if got := pullStatus(t, r.srv, manifest); got != http.StatusOK {
			t.Fatalf("replica %d: pull = %d, want 200; log:\n%s", i, got, r.logs.String())
		}
	}

	d := digest.Digest(img.Digest.String())
	if _, err := rs[0].g.gate.Block(t.Context(), "hub/library/app", d, "admin:ann", "incident 9"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for pullStatus(t, rs[1].srv, manifest) != http.StatusForbidden {
		if time.Since(start) > time.Second {
			t.Fatalf("replica 1 still serves an image blocked through replica 0 after %s; log:\n%s", time.Since(start), rs[1].logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := rs[0].g.gate.Unblock(t.Context(), "hub/library/app", d, "admin:ann", "resolved"); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	for pullStatus(t, rs[1].srv, manifest) != http.StatusOK {
		if time.Since(start) > time.Second {
			t.Fatalf("replica 1 still refuses an image unblocked through replica 0 after %s", time.Since(start))
		}
		time.Sleep(10 * time.Millisecond)
	}

	if _, err := os.Stat(filepath.Join(shared, "metadata.db")); !os.IsNotExist(err) {
		t.Errorf("a bbolt file was created with PostgreSQL metadata: %v", err)
	}
	spools, err := os.ReadDir(filepath.Join(shared, "spool"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range spools {
		names = append(names, e.Name())
	}
	if len(names) != 2 || !slices.ContainsFunc(names, func(n string) bool { return strings.HasPrefix(n, "127.0.0.1_") }) {
		t.Errorf("spool directories %v, want one per replica named by its peer address", names)
	}
	// One evictor between them: the first to ask holds the lease.
	start = time.Now()
	for rs[0].g.evicting.Load() == rs[1].g.evicting.Load() {
		if time.Since(start) > 10*time.Second {
			t.Fatalf("evicting: replica 0 %v, replica 1 %v; want exactly one", rs[0].g.evicting.Load(), rs[1].g.evicting.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	line := startupLine(t, rs[0].logs)
	if line["metadata"] != "postgres" || !strings.HasPrefix(fmt.Sprint(line["cluster"]), "advertise http://127.0.0.1:") {
		t.Errorf("start-up line: metadata %v, cluster %v", line["metadata"], line["cluster"])
	}
}

func startupLine(t *testing.T, logs *syncBuffer) map[string]any {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		for _, l := range strings.Split(logs.String(), "\n") {
			var rec map[string]any
			if json.Unmarshal([]byte(l), &rec) == nil && rec["msg"] == "airlock serving" {
				return rec
			}
		}
	}
	t.Fatalf("no start-up line; log:\n%s", logs.String())
	return nil
}

// TestServeWithoutPostgreSQL: a replica whose database cannot be reached
// does not start, and says where to look; it creates no bbolt file in its
// place.
func TestServeWithoutPostgreSQL(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "airlock.yaml")
	body := fmt.Sprintf(`listen: "127.0.0.1:0"
admin: {listen: "127.0.0.1:0"}
storage: {path: %q}
metadata: {driver: postgres, dsn: "postgres://airlock@127.0.0.1:1/airlock?connect_timeout=2"}
upstreams: [{name: hub, url: "https://registry-1.docker.io"}]
`, dir)
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	_, err = newGateway(t.Context(), cfg, slog.New(slog.DiscardHandler))
	if err == nil || !strings.HasPrefix(err.Error(), "metadata.driver postgres: ") ||
		!strings.Contains(err.Error(), "(check metadata.dsn or metadata.dsnFile, and that PostgreSQL is up)") {
		t.Fatalf("newGateway: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "metadata.db")); !os.IsNotExist(err) {
		t.Errorf("metadata.db: %v, want none", err)
	}
}

// TestServeLocalCopiesOutliveTheObjectStore: with storage.localCacheSize
// a layer this replica stored in the bucket is also kept on its own disk,
// and served from there (no redirect, with storage.disableRedirects) when
// the object store is down, without fetching it again upstream.
func TestServeLocalCopiesOutliveTheObjectStore(t *testing.T) {
	t.Parallel()
	srv := s3test.Start(t)
	params := srv.Params(t)
	up := upstreamtest.New(t, upstreamtest.Options{})
	img := up.PushImage(t, "vendor/app", "1", 64<<10, 1)
	layer := img.Layers[0]
	want := up.Blob(t, layer)

	regAddr := freeAddr(t)
	dir := t.TempDir()
	var p strings.Builder
	for _, k := range []string{"bucket", "region", "regionendpoint", "forcepathstyle", "accesskey", "secretkey"} {
		fmt.Fprintf(&p, "%s: %q, ", k, fmt.Sprint(params[k]))
	}
	path := filepath.Join(dir, "airlock.yaml")
	doc := fmt.Sprintf(`listen: %q
admin: {listen: %q}
storage:
  path: %q
  driver: s3
  parameters: {%s}
  disableRedirects: true
  localCacheSize: 1GiB
shutdown: {drainTimeout: 5s}
upstreams:
  - {name: hub, url: %q, default: true}
`, regAddr, freeAddr(t), filepath.Join(dir, "data"), strings.TrimSuffix(p.String(), ", "), up.URL)
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	serveProcess(t, path, regAddr)

	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	get := func(url string) (int, []byte) {
		t.Helper()
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
		req.Header.Set("Accept", "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json")
		resp, err := noFollow.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, body
	}
	base := "http://" + regAddr + "/v2/vendor/app"
	if code, body := get(base + "/manifests/1"); code != http.StatusOK {
		t.Fatalf("manifest: %d: %s", code, body)
	}
	if code, body := get(base + "/blobs/" + layer.String()); code != http.StatusOK || !bytes.Equal(body, want) {
		t.Fatalf("cold blob: %d, %d bytes", code, len(body))
	}
	key := "blobs/sha256/" + layer.Hex[:2] + "/" + layer.Hex + "/data"
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, err := srv.Object(t, params["bucket"].(string), key); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the layer never reached the bucket")
		}
	}
	if code, body := get(base + "/blobs/" + layer.String()); code != http.StatusOK || !bytes.Equal(body, want) {
		t.Fatalf("warm blob with redirects off: %d, %d bytes; want 200 and the layer", code, len(body))
	}
	// The copy is the spool, kept once the object is in place: a moment
	// after the bucket shows it.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		entries, err := os.ReadDir(filepath.Join(dir, "data", "cache"))
		if err == nil && len(entries) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no local copy under storage.path/cache: %v, %v", entries, err)
		}
	}

	srv.Stop(t)
	if code, body := get(base + "/blobs/" + layer.String()); code != http.StatusOK || !bytes.Equal(body, want) {
		t.Fatalf("warm blob with the object store down: %d: %.200s; want the local copy", code, body)
	}
	if n := up.Count(upstreamtest.RegistryListener, http.MethodGet, "/blobs/"+layer.String()); n != 1 {
		t.Errorf("the upstream served the layer %d times; want once", n)
	}
}

// TestSecondAirlockOnOneSpoolRefused starts a second airlock on the spool
// directory of a running one, with PostgreSQL metadata (no bbolt file lock
// to stop it): it refuses to start, saying why, and removes none of the
// first one's downloads in progress. Once the first has stopped, it starts.
func TestSecondAirlockOnOneSpoolRefused(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	dsn := pgtest.DSN(t)
	for _, tc := range []struct {
		name string
		// config returns the configuration of an airlock on storage path
		// dir, the same for both airlocks.
		config func(dir string) string
	}{
		{"one node on PostgreSQL", func(dir string) string {
			return fmt.Sprintf("listen: \"127.0.0.1:0\"\nadmin: {listen: \"127.0.0.1:0\"}\nstorage: {path: %q}\n"+
				"metadata: {driver: postgres, dsn: %q}\nupstreams:\n  - {name: hub, url: %q, default: true}\n", dir, dsn, up.URL)
		}},
		{"replicas on a shared filesystem with one advertise address", func(dir string) string {
			peer := freeAddr(t)
			return fmt.Sprintf("listen: \"127.0.0.1:0\"\nadmin: {listen: \"127.0.0.1:0\"}\nstorage: {path: %q}\n"+
				"metadata: {driver: postgres, dsn: %q}\ncluster: {listen: %q, advertise: \"http://%s\", sharedFilesystem: true}\n"+
				"upstreams:\n  - {name: hub, url: %q, default: true}\n", dir, dsn, peer, peer, up.URL)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(t.TempDir(), "airlock.yaml")
			if err := os.WriteFile(path, []byte(tc.config(dir)), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg, err := loadConfig(path)
			if err != nil {
				t.Fatal(err)
			}
			start := func() (*gateway, error) {
				return newGateway(t.Context(), cfg, newLogger(config.FormatJSON, slog.LevelInfo, &syncBuffer{}))
			}
			first, err := start()
			if err != nil {
				t.Fatal(err)
			}
			live := filepath.Join(spoolDir(cfg), "download-in-progress.spool")
			if err := os.WriteFile(live, []byte("partial"), 0o600); err != nil {
				t.Fatal(err)
			}
			second, err := start()
			if err == nil {
				second.closeStores()
				t.Fatal("a second airlock started on the spool directory of a running one")
			}
			for _, want := range []string{"another airlock is using the spool directory", "storage.path", "process " + fmt.Sprint(os.Getpid())} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
			if _, err := os.Stat(live); err != nil {
				t.Errorf("the refused airlock touched the running one's download in progress: %v", err)
			}
			if err := first.closeStores(); err != nil {
				t.Fatal(err)
			}
			third, err := start()
			if err != nil {
				t.Fatalf("starting once the first has stopped: %v", err)
			}
			third.closeStores()
		})
	}
}
