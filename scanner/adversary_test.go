package scanner

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/scanner/scannertest"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// rawImage stores a manifest written by hand, as a hostile upstream would
// write it: mt is its media type, configMT its config's, and each layer
// gets the media type layerMTs gives it.
func (c *fakeContent) rawImage(t testing.TB, mt, configMT string, layerMTs []string, layers ...v1.Layer) digest.Digest {
	t.Helper()
	cfg := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`)
	cd := digest.FromBytes(cfg)
	c.mu.Lock()
	c.blobs[cd] = cfg
	c.mu.Unlock()
	type desc struct {
		MediaType string        `json:"mediaType"`
		Digest    digest.Digest `json:"digest"`
		Size      int64         `json:"size"`
	}
	m := struct {
		SchemaVersion int    `json:"schemaVersion"`
		MediaType     string `json:"mediaType,omitempty"`
		Config        desc   `json:"config"`
		Layers        []desc `json:"layers"`
	}{SchemaVersion: 2, MediaType: mt, Config: desc{configMT, cd, int64(len(cfg))}}
	for i, l := range layers {
		ld, _ := l.Digest()
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(rc)
		rc.Close()
		c.mu.Lock()
		c.blobs[digest.Digest(ld.String())] = b
		c.mu.Unlock()
		m.Layers = append(m.Layers, desc{layerMTs[i], digest.Digest(ld.String()), int64(len(b))})
	}
	raw, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return c.putManifest(raw, mt)
}

// TestManifestShapesDoNotSkipScanning: a hostile upstream shapes the
// manifest of a vulnerable image so that the scanner finds "nothing to
// scan" while a container runtime still unpacks and runs its layers.
// The scan must see the vulnerable package, or fail; never be done with
// no findings.
func TestManifestShapesDoNotSkipScanning(t *testing.T) {
	t.Parallel()
	e := open(t, "", nil)
	e.importData(t, debianData)
	e.run(t)
	vulnerable := scannertest.DebianFiles(scannertest.Deb{Name: "libssl3", Version: "3.0.11-1~deb12u2", Source: "openssl"})
	const (
		ociManifest  = "application/vnd.oci.image.manifest.v1+json"
		dockerV2     = "application/vnd.docker.distribution.manifest.v2+json"
		ociConfig    = "application/vnd.oci.image.config.v1+json"
		dockerConfig = "application/vnd.docker.container.image.v1+json"
	)
	base := scannertest.Layer(t, scannertest.Gzip, map[string]string{"README": "base"})
	tests := []struct {
		name, mt, configMT string
		layerMTs           []string
		comp               scannertest.Compression
	}{
		// One non-distributable layer made the scanner skip the whole
		// image; runtimes fetch such a layer from the registry like any.
		{"a non-distributable layer beside the vulnerable one", ociManifest, ociConfig,
			[]string{"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", "application/vnd.oci.image.layer.v1.tar+gzip"}, scannertest.Gzip},
		{"the vulnerable layer non-distributable", dockerV2, dockerConfig,
			[]string{"application/vnd.docker.image.rootfs.diff.tar.gzip", "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"}, scannertest.Gzip},
		// Docker's uncompressed layer type, which containerd and Docker
		// unpack (sniffing any compression).
		{"docker uncompressed layer type", dockerV2, dockerConfig,
			[]string{"application/vnd.docker.image.rootfs.diff.tar.gzip", "application/vnd.docker.image.rootfs.diff.tar"}, scannertest.Uncompressed},
		{"docker uncompressed layer type holding gzip", dockerV2, dockerConfig,
			[]string{"application/vnd.docker.image.rootfs.diff.tar.gzip", "application/vnd.docker.image.rootfs.diff.tar"}, scannertest.Gzip},
		// A config media type Docker accepts (old images used it) and
		// containerd does not look at.
		{"config typed application/octet-stream", dockerV2, "application/octet-stream",
			[]string{"application/vnd.docker.image.rootfs.diff.tar.gzip", "application/vnd.docker.image.rootfs.diff.tar.gzip"}, scannertest.Gzip},
		{"config type with a parameter", ociManifest, ociConfig + "; charset=utf-8",
			[]string{"application/vnd.oci.image.layer.v1.tar+gzip", "application/vnd.oci.image.layer.v1.tar+gzip"}, scannertest.Gzip},
		// A layer media type with a parameter, or in upper case.
		{"layer type with a parameter", ociManifest, ociConfig,
			[]string{"application/vnd.oci.image.layer.v1.tar+gzip", "application/vnd.oci.image.layer.v1.tar+gzip; x=1"}, scannertest.Gzip},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := e.content.rawImage(t, tt.mt, tt.configMT, tt.layerMTs, base, scannertest.Layer(t, tt.comp, vulnerable))
			e.enqueue(t, d)
			sc := e.results.wait(t, d, time.Minute, func(s metadata.Scan) bool {
				return s.State == metadata.ScanDone || s.State == metadata.ScanFailed
			})
			if sc.State == metadata.ScanFailed {
				return // refused, not waved through
			}
			if len(sc.Findings) == 0 || sc.Findings[0].ID != "CVE-2024-5535" {
				t.Fatalf("scan done with note %q and findings %+v: the vulnerable layer went unscanned", sc.Note, sc.Findings)
			}
		})
	}

	// A schema 1 manifest lists layers clients unpack: it is not done
	// with nothing found.
	t.Run("schema 1", func(t *testing.T) {
		l := scannertest.Layer(t, scannertest.Gzip, vulnerable)
		ld, _ := l.Digest()
		rc, _ := l.Compressed()
		b, _ := io.ReadAll(rc)
		rc.Close()
		e.content.mu.Lock()
		e.content.blobs[digest.Digest(ld.String())] = b
		e.content.mu.Unlock()
		raw := `{"schemaVersion":1,"name":"x","tag":"1","architecture":"amd64","fsLayers":[{"blobSum":"` + ld.String() + `"}],"history":[{"v1Compatibility":"{}"}]}`
		d := e.content.putManifest([]byte(raw), "application/vnd.docker.distribution.manifest.v1+prettyjws")
		e.enqueue(t, d)
		sc := e.results.wait(t, d, time.Minute, func(s metadata.Scan) bool {
			return s.State == metadata.ScanDone || s.State == metadata.ScanFailed
		})
		if sc.State != metadata.ScanFailed || !strings.Contains(sc.Error, "schema 1") {
			t.Fatalf("schema 1 image: scan %s, note %q, error %q; want failed, naming schema 1", sc.State, sc.Note, sc.Error)
		}
	})
}

// TestResultsReadableByOtherProcesses: OnResult fires only in the process
// that scanned. Another replica's gate, or this one after a restart
// between the record and the report, reads the records with Scans.
func TestResultsReadableByOtherProcesses(t *testing.T) {
	t.Parallel()
	a := open(t, "", nil)
	a.importData(t, debianData)
	a.run(t)
	d := a.content.addImage(t, scannertest.Layer(t, scannertest.Gzip, scannertest.DebianFiles(scannertest.Deb{Name: "libssl3", Version: "3.0.11-1~deb12u2", Source: "openssl"})))
	a.enqueue(t, d)
	want := a.results.wait(t, d, time.Minute, isDone)

	b := open(t, a.dsn, a.content)
	unknown := digest.FromString("never queued")
	got, err := b.s.Scans(t.Context(), []digest.Digest{d, unknown})
	if err != nil {
		t.Fatal(err)
	}
	sc, ok := got[d]
	if !ok || len(got) != 1 {
		t.Fatalf("Scans = %+v, want %s only", got, d)
	}
	if sc.State != metadata.ScanDone || !sc.Finished.Equal(want.Finished) || sc.Data != want.Data || !equalFindings(sc.Findings, want.Findings) {
		t.Fatalf("Scans gave %+v, want the reported %+v", sc, want)
	}
	if r := b.results.of(d); len(r) != 0 {
		t.Fatalf("the other process was reported %+v", r)
	}
}

// TestReportsNeverGoBackInTime: the gate drops a report older than the
// one it holds (reports race each other), so each report of one attempt
// must be at least as new as the one before, a retry's included.
func TestReportsNeverGoBackInTime(t *testing.T) {
	t.Parallel()
	content := newContent()
	content.blobHook = func(context.Context, digest.Digest) error {
		return errors.New("upstream answered 503 for the blob")
	}
	e := open(t, "", content, func(o *Options) { o.Config.Attempts = 2 })
	d := content.addImage(t, scannertest.Layer(t, scannertest.Gzip, scannertest.DebianFiles(scannertest.Deb{Name: "bash", Version: "5.2.15-2+b2"})))
	e.enqueue(t, d)
	e.run(t)
	e.results.wait(t, d, time.Minute, func(s metadata.Scan) bool { return s.State == metadata.ScanFailed })
	var last time.Time
	for _, s := range e.results.of(d) {
		at := s.Queued
		for _, t := range []time.Time{s.Started, s.Finished} {
			if t.After(at) {
				at = t
			}
		}
		if at.Before(last) {
			t.Fatalf("report %s at %s is older than the one before it (%s): %+v", s.State, at, last, e.results.of(d))
		}
		last = at
	}
}

// TestLayerBombRefused: a layer of a few kilobytes that gunzips to
// gigabytes of zeros must not fill the work directory (the volume the
// cache lives on, as a rule). Expansion is bounded.
func TestLayerBombRefused(t *testing.T) {
	t.Parallel()
	var bomb bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&bomb, gzip.BestCompression)
	zeros := make([]byte, 1<<20)
	for range 16 { // 16 MiB of zeros, in about 16 KiB
		zw.Write(zeros)
	}
	zw.Close()
	content := newContent()
	d := digest.FromBytes(bomb.Bytes())
	content.blobs[d] = bomb.Bytes()
	dir := t.TempDir()
	a, err := newArena(dir, content, newMetrics())
	if err != nil {
		t.Fatal(err)
	}
	a.expandFloor = 1 << 20 // the 1 GiB floor, scaled down with the bomb
	r := a.Realizer(t.Context()).(*realizer)
	f, err := r.fetch(t.Context(), "dockerhub/library/test", d)
	if err == nil {
		st, _ := f.Stat()
		f.Close()
		t.Fatalf("a %d-byte layer was expanded to %d bytes in the work directory", bomb.Len(), st.Size())
	}
	if !strings.Contains(err.Error(), "decompression bomb") {
		t.Fatalf("error %q does not say why the layer was refused", err)
	}
	var perm permanentError
	if !errors.As(err, &perm) {
		t.Fatalf("error %v is retried, but a bomb stays one", err)
	}

	// An ordinary layer expands as it should.
	l := scannertest.Layer(t, scannertest.Gzip, scannertest.DebianFiles(scannertest.Deb{Name: "bash", Version: "5.2.15-2+b2"}))
	ld, _ := l.Digest()
	rc, _ := l.Compressed()
	b, _ := io.ReadAll(rc)
	rc.Close()
	content.blobs[digest.Digest(ld.String())] = b
	r = a.Realizer(t.Context()).(*realizer)
	f, err = r.fetch(t.Context(), "dockerhub/library/test", digest.Digest(ld.String()))
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
}

// TestManyLayerBombRefused: the bound holds for a manifest as a whole. A
// thousand layers, each below the per-layer floor, would otherwise each
// expand to it: terabytes from a few megabytes.
func TestManyLayerBombRefused(t *testing.T) {
	t.Parallel()
	content := newContent()
	var ds []digest.Digest
	zeros := make([]byte, 512<<10)
	for i := range 8 {
		var b bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&b, gzip.BestCompression)
		zw.Write([]byte{byte(i)}) // distinct blobs
		zw.Write(zeros)
		zw.Close()
		d := digest.FromBytes(b.Bytes())
		content.blobs[d] = b.Bytes()
		ds = append(ds, d)
	}
	a, err := newArena(t.TempDir(), content, newMetrics())
	if err != nil {
		t.Fatal(err)
	}
	a.expandFloor = 1 << 20 // each layer is half of it; all eight, four times
	r := a.Realizer(t.Context()).(*realizer)
	defer r.Close()
	var last error
	for _, d := range ds {
		f, err := r.fetch(t.Context(), "dockerhub/library/test", d)
		if err != nil {
			last = err
			break
		}
		f.Close()
	}
	if last == nil || !strings.Contains(last.Error(), "decompression bomb") {
		t.Fatalf("eight layers expanding to %d bytes in all, from a few kilobytes: %v", 8*len(zeros), last)
	}
}
