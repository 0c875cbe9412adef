package scanner

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/internal/netfault"
	"github.com/airlock-registry/airlock/internal/pgtest"
	"github.com/airlock-registry/airlock/scanner/scannertest"
	"github.com/airlock-registry/airlock/storage/metadata"
)

var vulnerableSSL = []scannertest.Deb{{Name: "libssl3", Version: "3.0.11-1~deb12u2", Source: "openssl"}, {Name: "bash", Version: "5.2.15-2+b2"}}

func states(scans []metadata.Scan) string {
	var s []string
	for _, sc := range scans {
		s = append(s, sc.State)
	}
	return strings.Join(s, " ")
}

func TestEnqueueOncePerDigest(t *testing.T) {
	t.Parallel()
	e := open(t, "", nil)
	e.importData(t, debianData)
	d := e.content.addImage(t, scannertest.Layer(t, scannertest.Gzip, scannertest.DebianFiles(vulnerableSSL...)))

	first := e.enqueue(t, d)
	again, err := e.s.Enqueue(t.Context(), Job{Repository: "quay/other/repo", Digest: d})
	if err != nil {
		t.Fatal(err)
	}
	if first.State != metadata.ScanQueued || again.State != metadata.ScanQueued || !again.Queued.Equal(first.Queued) {
		t.Errorf("second Enqueue = %+v, want the first's queued scan %+v", again, first)
	}
	e.run(t)
	done := e.results.wait(t, d, time.Minute, isDone)
	reused, err := e.s.Enqueue(t.Context(), Job{Repository: "quay/third/repo", Digest: d})
	if err != nil {
		t.Fatal(err)
	}
	if reused.State != metadata.ScanDone || len(reused.Findings) != 1 || reused.Findings[0].ID != "CVE-2024-5535" || reused.Data != done.Data {
		t.Errorf("Enqueue of a scanned digest = %+v, want its done scan", reused)
	}
	if got := states(e.results.of(d)); got != "queued scanning done" {
		t.Errorf("reported %q, want one queued, one scanning, one done", got)
	}
	if m, _ := e.content.reads(d); m != 1 {
		t.Errorf("manifest read %d times, want 1", m)
	}
	if _, err := e.s.Status(t.Context(), digest.FromString("never queued")); !errors.Is(err, ErrNotScanned) {
		t.Errorf("Status of an unknown digest: %v, want ErrNotScanned", err)
	}
	for _, bad := range []Job{{Repository: "r", Digest: "sha256:short"}, {Digest: d}} {
		if _, err := e.s.Enqueue(t.Context(), bad); err == nil {
			t.Errorf("Enqueue(%+v) accepted", bad)
		}
	}
}

func TestSharedLayerIndexedOnce(t *testing.T) {
	t.Parallel()
	e := open(t, "", nil)
	e.importData(t, debianData)
	e.run(t)
	base := scannertest.Layer(t, scannertest.Gzip, scannertest.DebianFiles(vulnerableSSL...))
	app1 := scannertest.Layer(t, scannertest.Gzip, map[string]string{"app/one": "1"})
	app2 := scannertest.Layer(t, scannertest.Zstd, map[string]string{"app/two": "2"})
	d1 := e.content.addImage(t, base, app1)
	d2 := e.content.addImage(t, base, app2)
	e.enqueue(t, d1)
	s1 := e.results.wait(t, d1, time.Minute, isDone)
	e.enqueue(t, d2)
	s2 := e.results.wait(t, d2, time.Minute, isDone)

	bd, _ := base.Digest()
	if _, n := e.content.reads(digest.Digest(bd.String())); n != 1 {
		t.Errorf("the shared layer was read %d times, want 1", n)
	}
	if n := testutil.ToFloat64(e.s.metrics.layers); n != 3 {
		t.Errorf("layers_indexed_total = %v, want 3 (the base once, each app layer once)", n)
	}
	for _, sc := range []metadata.Scan{s1, s2} {
		if len(sc.Findings) != 1 || sc.Findings[0].Layer != digest.Digest(bd.String()) || sc.Layers != 2 {
			t.Errorf("scan %+v: want the openssl finding, introduced by the base layer, of 2 layers", sc)
		}
	}
}

func TestNonImageManifests(t *testing.T) {
	t.Parallel()
	e := open(t, "", nil)
	e.run(t)
	layer := `{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:` + strings.Repeat("a", 64) + `","size":1}`
	tests := []struct {
		name, mt, raw, note string
	}{
		{"index", "application/vnd.oci.image.index.v1+json",
			`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`,
			"an image index"},
		{"docker list sniffed", "",
			`{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[]}`,
			"an image index"},
		{"helm chart", "application/vnd.oci.image.manifest.v1+json",
			`{"schemaVersion":2,"config":{"mediaType":"application/vnd.cncf.helm.config.v1+json","digest":"sha256:` + strings.Repeat("b", 64) + `","size":2},"layers":[{"mediaType":"application/vnd.cncf.helm.chart.content.v1.tar+gzip","digest":"sha256:` + strings.Repeat("c", 64) + `","size":3}]}`,
			"not a container image (application/vnd.cncf.helm.config.v1+json)"},
		{"artifact type", "application/vnd.oci.image.manifest.v1+json",
			`{"schemaVersion":2,"artifactType":"application/vnd.example.sbom","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"` + emptyConfig.String() + `","size":2},"layers":[` + layer + `]}`,
			"not a container image (application/vnd.example.sbom)"},
		{"no layers", "application/vnd.oci.image.manifest.v1+json",
			`{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:` + strings.Repeat("b", 64) + `","size":2},"layers":[]}`,
			"no filesystem layers"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := e.content.putManifest([]byte(tt.raw), tt.mt)
			e.enqueue(t, d)
			sc := e.results.wait(t, d, time.Minute, isDone)
			if !strings.Contains(sc.Note, tt.note) || len(sc.Findings) != 0 || sc.Packages != 0 {
				t.Errorf("scan %+v: want done, no findings, a note saying %q", sc, tt.note)
			}
		})
	}
}

func TestRetriesThenFails(t *testing.T) {
	t.Parallel()
	content := newContent()
	content.blobHook = func(context.Context, digest.Digest) error {
		return errors.New("upstream answered 503 for the blob")
	}
	e := open(t, "", content, func(o *Options) { o.Config.Attempts = 3 })
	d := content.addImage(t, scannertest.Layer(t, scannertest.Gzip, scannertest.DebianFiles(vulnerableSSL...)))
	e.enqueue(t, d)
	e.run(t)
	sc := e.results.wait(t, d, time.Minute, func(s metadata.Scan) bool { return s.State == metadata.ScanFailed })
	if sc.Attempts != 3 || !strings.Contains(sc.Error, "upstream answered 503 for the blob") {
		t.Errorf("failed scan %+v: want 3 attempts and the blob's error", sc)
	}
	want := "queued scanning queued scanning queued scanning failed"
	if got := states(e.results.of(d)); got != want {
		t.Errorf("reported %q, want %q", got, want)
	}
	st, err := e.s.Status(t.Context(), d)
	if err != nil || st.State != metadata.ScanFailed || st.Attempts != 3 {
		t.Errorf("Status = %+v, %v", st, err)
	}
	if n := testutil.ToFloat64(e.s.metrics.scans.WithLabelValues("retried")); n != 2 {
		t.Errorf("retried = %v, want 2", n)
	}

	// An admin's rescan starts over, and this time the blob reads.
	content.mu.Lock()
	content.blobHook = nil
	content.mu.Unlock()
	if err := e.s.Rescan(t.Context(), Job{Repository: "dockerhub/library/test", Digest: d}); err != nil {
		t.Fatal(err)
	}
	done := e.results.wait(t, d, time.Minute, isDone)
	if done.Attempts != 1 || done.Error != "" {
		t.Errorf("rescanned %+v: want attempt 1, no error", done)
	}
}

func TestRescanIndexesAgain(t *testing.T) {
	t.Parallel()
	e := open(t, "", nil)
	e.importData(t, debianData)
	e.run(t)
	layer := scannertest.Layer(t, scannertest.Gzip, scannertest.DebianFiles(vulnerableSSL...))
	d := e.content.addImage(t, layer)
	e.enqueue(t, d)
	first := e.results.wait(t, d, time.Minute, isDone)
	if err := e.s.Rescan(t.Context(), Job{Repository: "dockerhub/library/test", Digest: d}); err != nil {
		t.Fatal(err)
	}
	e.results.wait(t, d, time.Minute, func(s metadata.Scan) bool { return isDone(s) && s.Finished.After(first.Finished) })
	// Enqueue and Rescan report "queued" once committed, and a running
	// worker may claim the job and report "scanning" first.
	if got := states(e.results.of(d)); got != "queued scanning done queued scanning done" &&
		got != "queued scanning done scanning queued done" && got != "scanning queued done queued scanning done" &&
		got != "scanning queued done scanning queued done" {
		t.Errorf("reported %q", got)
	}
	if m, _ := e.content.reads(d); m != 2 {
		t.Errorf("manifest read %d times, want 2", m)
	}
}

// TestTwoScannersShareTheQueue runs two scanners, as two replicas would,
// on one database: each digest is scanned once.
func TestTwoScannersShareTheQueue(t *testing.T) {
	t.Parallel()
	content := newContent()
	dsn := pgtest.DSN(t)
	a := open(t, dsn, content)
	b := open(t, dsn, content)
	a.importData(t, debianData)
	var ds []digest.Digest
	for i := range 8 {
		files := scannertest.DebianFiles(vulnerableSSL...)
		files["etc/hostname"] = fmt.Sprintf("image-%d\n", i)
		ds = append(ds, content.addImage(t, scannertest.Layer(t, scannertest.Gzip, files)))
	}
	// Both replicas see every pull.
	for _, d := range ds {
		a.enqueue(t, d)
		b.enqueue(t, d)
	}
	a.run(t)
	b.run(t)
	byA, byB := 0, 0
	for _, d := range ds {
		deadline := time.Now().Add(time.Minute)
		for {
			sa, sb := a.results.of(d), b.results.of(d)
			if len(sa) > 0 && isDone(sa[len(sa)-1]) || len(sb) > 0 && isDone(sb[len(sb)-1]) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s not scanned: %q / %q", d, states(sa), states(sb))
			}
			time.Sleep(20 * time.Millisecond)
		}
		sa, sb := states(a.results.of(d)), states(b.results.of(d))
		scans := strings.Count(sa, "scanning") + strings.Count(sb, "scanning")
		if scans != 1 {
			t.Errorf("%s scanned %d times (%q / %q)", d, scans, sa, sb)
		}
		if strings.Contains(sa, "scanning") {
			byA++
		} else {
			byB++
		}
		if m, _ := content.reads(d); m != 1 {
			t.Errorf("%s: manifest read %d times", d, m)
		}
	}
	t.Logf("scanned by a: %d, by b: %d", byA, byB)
}

// TestCrashedWorkersJobTakenAfterLease leaves a job as a crashed process
// would (scanning, its lease running out) and expects a scanner to take
// it once the lease is over, and not before.
func TestCrashedWorkersJobTakenAfterLease(t *testing.T) {
	t.Parallel()
	e := open(t, "", nil)
	e.importData(t, debianData)
	d := e.content.addImage(t, scannertest.Layer(t, scannertest.Gzip, scannertest.DebianFiles(vulnerableSSL...)))
	_, err := e.s.pool.Exec(t.Context(), `
		INSERT INTO airlock_scan_jobs (digest, repository, state, attempts, queued_at, started_at, lease_owner, lease_until)
		VALUES ($1, 'dockerhub/library/test', 'scanning', 1, now(), now(), 'crashed-host/1/x', clock_timestamp() + interval '1 second')`,
		d.String())
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	e.run(t)
	sc := e.results.wait(t, d, time.Minute, isDone)
	if waited := time.Since(t0); waited < 700*time.Millisecond {
		t.Errorf("taken after %v, before the lease ended", waited)
	}
	if sc.Attempts != 2 || len(sc.Findings) != 1 {
		t.Errorf("scan %+v: want attempt 2 with the finding", sc)
	}
	if !strings.Contains(e.logs.String(), "taking over a scan whose worker stopped renewing its lease") {
		t.Errorf("no log of the takeover:\n%s", e.logs)
	}
}

// TestStoppedWorkerGivesJobBack stops a scanner in the middle of a scan
// (its blob read hangs): another takes the job at once.
func TestStoppedWorkerGivesJobBack(t *testing.T) {
	t.Parallel()
	content := newContent()
	dsn := pgtest.DSN(t)
	d := content.addImage(t, scannertest.Layer(t, scannertest.Gzip, scannertest.DebianFiles(vulnerableSSL...)))
	inBlob := make(chan struct{})
	var once sync.Once
	content.blobHook = func(ctx context.Context, _ digest.Digest) error {
		once.Do(func() { close(inBlob) })
		<-ctx.Done() // hangs until the scanner stops
		return ctx.Err()
	}
	a := open(t, dsn, content)
	a.importData(t, debianData)
	a.enqueue(t, d)
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- a.s.Run(ctx) }()
	<-inBlob
	cancel()
	if err := <-ran; err != nil {
		t.Fatal(err)
	}
	st, err := a.s.Status(t.Context(), d)
	if err != nil || st.State != metadata.ScanQueued || st.Attempts != 0 {
		t.Fatalf("after the stop: %+v, %v; want queued, the interrupted attempt not counted", st, err)
	}

	content.mu.Lock()
	content.blobHook = nil
	content.mu.Unlock()
	b := open(t, dsn, content)
	b.run(t)
	sc := b.results.wait(t, d, time.Minute, isDone)
	if sc.Attempts != 1 || len(sc.Findings) != 1 {
		t.Errorf("scan %+v", sc)
	}
}

// TestDatabaseDown cuts the scanner off its database: calls fail quickly
// with ErrUnavailable, and work resumes when it is back.
func TestDatabaseDown(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DSN(t)
	target := dbAddr(t, dsn)
	px := netfault.New(t, target)
	proxied := strings.Replace(dsn, target, px.Addr(), 1)
	e := open(t, proxied, nil)
	e.importData(t, debianData)
	e.run(t)

	px.Cut()
	d := e.content.addImage(t, scannertest.Layer(t, scannertest.Gzip, scannertest.DebianFiles(vulnerableSSL...)))
	for _, call := range []struct {
		name string
		f    func() error
	}{
		{"Enqueue", func() error { _, err := e.s.Enqueue(t.Context(), Job{Repository: "r/x", Digest: d}); return err }},
		{"Status", func() error { _, err := e.s.Status(t.Context(), d); return err }},
		{"Ready", func() error { return e.s.Ready(t.Context()) }},
	} {
		t0 := time.Now()
		err := call.f()
		if took := time.Since(t0); took > 6*time.Second {
			t.Errorf("%s took %v with the database down", call.name, took)
		}
		if !errors.Is(err, ErrUnavailable) {
			t.Errorf("%s: %v, want ErrUnavailable", call.name, err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(e.logs.String(), "cannot claim scan jobs") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(e.logs.String(), "new images stay unscanned until the database is back") {
		t.Errorf("no clear log of the outage:\n%s", e.logs)
	}

	px.Mend()
	var err error
	for time.Now().Before(deadline.Add(20 * time.Second)) {
		_, err = e.s.Enqueue(t.Context(), Job{Repository: "r/x", Digest: d})
		if err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("Enqueue after the database came back: %v", err)
	}
	done := e.results.wait(t, d, time.Minute, isDone)
	if len(done.Findings) != 1 {
		t.Errorf("scan after the outage: %+v", done)
	}
	if e.s.Ready(t.Context()) != nil {
		t.Error("not ready after the database came back")
	}
}

func TestOpenErrors(t *testing.T) {
	t.Parallel()
	content := newContent()
	closed := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		return addr
	}()
	tests := []struct {
		name   string
		cfg    config.Scanner
		want   string
		unavai bool
	}{
		{"no database", config.Scanner{}, "no database: set scanner.database", false},
		{"both", config.Scanner{Database: "postgres://x", DatabaseFile: "/x"}, "set database or databaseFile, not both", false},
		{"missing file", config.Scanner{DatabaseFile: "/nonexistent/dsn"}, "reading databaseFile", false},
		{"bad dsn", config.Scanner{Database: "postgres://u:secret@[::1"}, "does not parse", false},
		{"unreachable", config.Scanner{Database: "postgres://postgres@" + closed + "/x?sslmode=disable&connect_timeout=2"}, "connecting to the database", true},
		{"unknown set", config.Scanner{Database: pgtest.DSN(t), Updaters: config.Updaters{Sets: []string{"debain"}}}, `unknown updater set "debain"`, false},
		{"missing rhel mapping", config.Scanner{Database: pgtest.DSN(t), RHEL: config.RHELMapping{Repo2CPE: "/nonexistent.json"}}, "scanner.rhel.repo2cpe", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.WorkDir = t.TempDir()
			t0 := time.Now()
			s, err := Open(t.Context(), Options{Config: tt.cfg, Content: content})
			if err == nil {
				s.Close(t.Context())
				t.Fatal("Open succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q, want it to say %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("error %q shows the password", err)
			}
			if errors.Is(err, ErrUnavailable) != tt.unavai {
				t.Errorf("errors.Is(%v, ErrUnavailable) = %v", err, !tt.unavai)
			}
			if took := time.Since(t0); took > 10*time.Second {
				t.Errorf("took %v", took)
			}
		})
	}
}

// TestRescanWhileScanning supersedes a running scan: its worker finds its
// lease gone at the next heartbeat, drops what it was doing, and the
// rescan's scan is the one recorded.
func TestRescanWhileScanning(t *testing.T) {
	t.Parallel()
	content := newContent()
	e := open(t, "", content)
	e.importData(t, debianData)
	e.s.tune.heartbeat = 50 * time.Millisecond
	d := content.addImage(t, scannertest.Layer(t, scannertest.Gzip, scannertest.DebianFiles(vulnerableSSL...)))
	inBlob := make(chan struct{})
	var once sync.Once
	content.blobHook = func(ctx context.Context, _ digest.Digest) error {
		first := false
		once.Do(func() { first = true; close(inBlob) })
		if first {
			<-ctx.Done() // the superseded scan hangs until cancelled
			return context.Cause(ctx)
		}
		return nil
	}
	e.enqueue(t, d)
	e.run(t)
	<-inBlob
	if err := e.s.Rescan(t.Context(), Job{Repository: "dockerhub/library/test", Digest: d}); err != nil {
		t.Fatal(err)
	}
	sc := e.results.wait(t, d, time.Minute, isDone)
	if sc.Attempts != 1 || len(sc.Findings) != 1 {
		t.Errorf("scan %+v", sc)
	}
	// The rescan reports "queued" once committed; the worker that claims
	// it may report "scanning" first. Their times order them.
	reports := e.results.of(d)
	if got := states(reports); got != "queued scanning queued scanning done" && got != "queued scanning scanning queued done" {
		t.Errorf("reported %q", got)
	} else {
		var requeued, restarted time.Time
		for i, r := range reports {
			switch {
			case i >= 2 && r.State == metadata.ScanQueued:
				requeued = r.Queued
			case i >= 2 && r.State == metadata.ScanRunning:
				restarted = r.Started
			}
		}
		if restarted.Before(requeued) {
			t.Errorf("the second scan is dated %s, before its rescan was queued (%s)", restarted, requeued)
		}
	}
	if !strings.Contains(e.logs.String(), "the job was taken from this worker") {
		t.Errorf("no log of the superseded scan:\n%s", e.logs)
	}
}

func TestReopenOnOneRegistry(t *testing.T) {
	t.Parallel()
	e := open(t, "", nil)
	reg := e.reg
	e.s.metrics.scans.WithLabelValues("done").Add(3)
	again := open(t, e.dsn, nil, func(o *Options) { o.Registerer = reg })
	if n := testutil.ToFloat64(again.s.metrics.scans.WithLabelValues("done")); n != 3 {
		t.Errorf("the second scanner counts on its own collector: %v", n)
	}
}

func TestScanTimeout(t *testing.T) {
	t.Parallel()
	content := newContent()
	content.blobHook = func(ctx context.Context, _ digest.Digest) error {
		<-ctx.Done() // an upstream that never answers
		return ctx.Err()
	}
	e := open(t, "", content, func(o *Options) {
		o.Config.Timeout = config.Duration(300 * time.Millisecond)
		o.Config.Attempts = 1
	})
	d := content.addImage(t, scannertest.Layer(t, scannertest.Gzip, scannertest.DebianFiles(vulnerableSSL...)))
	e.enqueue(t, d)
	e.run(t)
	sc := e.results.wait(t, d, time.Minute, func(s metadata.Scan) bool { return s.State == metadata.ScanFailed })
	if !strings.Contains(sc.Error, "the scan took longer than scanner.timeout (300ms)") {
		t.Errorf("error %q", sc.Error)
	}
	if took := sc.Finished.Sub(sc.Started); took > 10*time.Second {
		t.Errorf("the scan ran %v", took)
	}
}
