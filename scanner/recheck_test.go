package scanner

import (
	"bytes"
	"compress/gzip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/quay/claircore"

	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/scanner/scannertest"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// TestImportRechecks scans an image before any data is known, then
// imports data that finds a vulnerability, then data that withdraws it:
// each import re-checks the image (no layer read again) and reports a new
// result with new Data.
func TestImportRechecks(t *testing.T) {
	t.Parallel()
	e := open(t, "", nil)
	e.run(t)
	layer := scannertest.Layer(t, scannertest.Gzip, scannertest.DebianFiles(vulnerableSSL...))
	d := e.content.addImage(t, layer)
	other := e.content.addImage(t, scannertest.Layer(t, scannertest.Gzip, scannertest.DebianFiles(scannertest.Deb{Name: "bash", Version: "5.2.15-2+b2"})))
	e.enqueue(t, d)
	e.enqueue(t, other)
	first := e.results.wait(t, d, time.Minute, isDone)
	e.results.wait(t, other, time.Minute, isDone)
	if len(first.Findings) != 0 || first.Data != "" {
		t.Fatalf("scan without data: %+v", first)
	}

	// New data: the openssl vulnerability appears.
	res := e.importData(t, debianData)
	if !slices.Equal(res.Updaters, []string{"debian/updater"}) || res.Added != 3 || res.Removed != 0 || res.Affected != 2 {
		t.Errorf("first import: %+v; want debian/updater, 3 added, both scans affected (no earlier data to diff)", res)
	}
	found := e.results.wait(t, d, time.Minute, func(s metadata.Scan) bool { return isDone(s) && s.Data != "" })
	if len(found.Findings) != 1 || found.Findings[0].ID != "CVE-2024-5535" {
		t.Errorf("after the import: %+v, want the openssl finding", found)
	}
	if !found.Finished.Equal(first.Finished) || found.Layers != 1 || found.Size != first.Size {
		t.Errorf("a re-check keeps the scan's timing and content: %+v vs %+v", found, first)
	}

	// Newer data: the vulnerability is withdrawn (diffed against the
	// previous update: only the image holding openssl is affected).
	withdrawn := scannertest.Update{Updater: scannertest.DebianUpdater, Fingerprint: "v2", Vulns: []*claircore.Vulnerability{
		scannertest.DebianVuln("CVE-2023-4039", "gcc-12", "", "low", claircore.Medium),
	}}
	res = e.importData(t, withdrawn)
	if res.Added != 0 || res.Removed != 2 || res.Affected != 1 {
		t.Errorf("second import: %+v; want 2 removed, 1 image affected", res)
	}
	cleared := e.results.wait(t, d, time.Minute, func(s metadata.Scan) bool {
		return isDone(s) && s.Data != "" && s.Data != found.Data
	})
	if len(cleared.Findings) != 0 {
		t.Errorf("after the withdrawal: %+v, want no findings", cleared)
	}
	// Re-checks indexed nothing again.
	ld, _ := layer.Digest()
	if _, n := e.content.reads(digestOf(ld.String())); n != 1 {
		t.Errorf("the layer was read %d times, want 1", n)
	}
	// The re-check counts itself after reporting its last result.
	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(e.s.metrics.rechecks) < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := testutil.ToFloat64(e.s.metrics.rechecks); got != 2 {
		t.Errorf("rechecks_total = %v, want 2", got)
	}
	// The unaffected image was re-checked on the first import only.
	var rechecks int
	for _, s := range e.results.of(other) {
		if isDone(s) && s.Data != "" {
			rechecks++
		}
	}
	if rechecks != 1 {
		t.Errorf("the image without openssl was re-checked %d times, want 1", rechecks)
	}

	// The same file again changes nothing.
	res = e.importData(t, withdrawn)
	if len(res.Updaters) != 0 || res.Affected != 0 {
		t.Errorf("importing one file twice: %+v, want no change", res)
	}
}

func TestImportCompressed(t *testing.T) {
	t.Parallel()
	e := open(t, "", nil)
	raw := scannertest.Export(t, debianData)
	var gz, zs bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(raw)
	zw.Close()
	enc, _ := zstd.NewWriter(&zs)
	enc.Write(raw)
	enc.Close()
	for i, body := range [][]byte{gz.Bytes(), zs.Bytes()} {
		res, err := Import(t.Context(), config.Scanner{Database: e.dsn}, bytes.NewReader(body), nil)
		if err != nil {
			t.Fatalf("import %d: %v", i, err)
		}
		if i == 0 && (len(res.Updaters) != 1 || res.Added != 3) {
			t.Errorf("gzip import: %+v", res)
		}
		if i == 1 && len(res.Updaters) != 0 {
			t.Errorf("the zstd copy of the same data changed %v", res.Updaters)
		}
	}
}

func TestImportMalformed(t *testing.T) {
	t.Parallel()
	e := open(t, "", nil)
	good := string(scannertest.Export(t, debianData))
	lines := strings.SplitAfter(strings.TrimSpace(good), "\n")
	other := strings.TrimSpace(string(scannertest.Export(t, scannertest.Update{Updater: scannertest.AlpineUpdater, Fingerprint: "a",
		Vulns: []*claircore.Vulnerability{{Updater: scannertest.AlpineUpdater, Name: "CVE-1", Package: &claircore.Package{Name: "x"}, Dist: scannertest.Alpine318}}})))
	tests := []struct {
		name, body, want string
	}{
		{"empty", "", "holds no updates"},
		{"not json", lines[0] + "this is not json\n", "line 2: not an updater export record"},
		{"no updater", `{"Ref":"6c6b3e1a-0b8e-4c39-9a4f-4e1f0e3b2c11","Kind":"vulnerability","Vuln":{}}` + "\n", "line 1: no Updater"},
		{"unknown kind", strings.Replace(lines[0], `"Kind":"vulnerability"`, `"Kind":"vulns"`, 1), `line 1: unknown Kind "vulns"`},
		{"bad vulnerability", strings.Replace(lines[0], `"Vuln":{`, `"Vuln":{"normalized_severity":"Dreadful",`, 1), "line 1: vulnerability"},
		{"reordered", lines[0] + other + "\n" + lines[1], "line 3: update"},
		{"clair config yaml", "indexer:\n  connstring: x\n", "line 1: not an updater export record"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Import(t.Context(), config.Scanner{Database: e.dsn}, strings.NewReader(tt.body), nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want it to say %q", err, tt.want)
			}
		})
	}
	// Nothing was loaded by the failed imports.
	var n int
	if err := e.s.pool.QueryRow(t.Context(), `SELECT count(*) FROM update_operation`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("%d update operations after failed imports, want 0", n)
	}
	if _, err := Import(t.Context(), config.Scanner{}, strings.NewReader(good), nil); err == nil || !strings.Contains(err.Error(), "no database") {
		t.Errorf("import without a database: %v", err)
	}
}
