package scanner

import (
	"archive/zip"
	"bytes"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/airlock-registry/airlock/scanner/scannertest"
)

// jarOf is a jar that names itself in its manifest only: with its API
// lookup on, claircore's Java scanner would ask Maven Central about it.
func jarOf(t *testing.T, title, version string) string {
	t.Helper()
	var buf bytes.Buffer
	z := zip.NewWriter(&buf)
	w, err := z.Create("META-INF/MANIFEST.MF")
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("Manifest-Version: 1.0\r\nImplementation-Title: " + title + "\r\nImplementation-Version: " + version + "\r\nImplementation-Vendor-Id: org.example\r\n\r\n"))
	w, _ = z.Create("org/example/Text.class")
	w.Write([]byte{0xca, 0xfe, 0xba, 0xbe, 0, 0, 0, 52})
	if err := z.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

// TestIndexingStaysOffline indexes an image whose layers would send
// claircore's indexers to the network (a jar Maven could name, a Red Hat
// image needing Red Hat's mapping files) with every host but loopback
// refused: no request is attempted, through Options.Client, the indexer's
// own client or the default transport (checked in TestMain).
func TestIndexingStaysOffline(t *testing.T) {
	t.Parallel()
	e := open(t, "", nil)
	e.importData(t, debianData)
	e.run(t)
	debian := scannertest.Layer(t, scannertest.Gzip, scannertest.DebianFiles(vulnerableSSL...))
	java := scannertest.Layer(t, scannertest.Gzip, map[string]string{
		"opt/app/lib/commons-text-1.9.jar": jarOf(t, "commons-text", "1.9"),
	})
	rhel := scannertest.Layer(t, scannertest.Zstd, map[string]string{
		"etc/redhat-release": "Red Hat Enterprise Linux release 9.3 (Plow)\n",
		"root/buildinfo/Dockerfile-ubi9-9.3-1361": `FROM sha256:0
LABEL "com.redhat.component"="ubi9-container" "name"="ubi9" "version"="9.3" "release"="1361" "architecture"="x86_64"
`,
		"root/buildinfo/content_manifests/ubi9-container-9.3-1361.json": `{"metadata":{"icm_version":1,"icm_spec":"https://raw.githubusercontent.com/containerbuildsystem/atomic-reactor/master/atomic_reactor/schemas/content_manifest.json","image_layer_index":1},"content_sets":["rhel-9-for-x86_64-baseos-rpms","rhel-9-for-x86_64-appstream-rpms"],"image_contents":[]}`,
	})
	d := e.content.addImage(t, debian, java, rhel)
	e.enqueue(t, d)
	sc := e.results.wait(t, d, time.Minute, isDone)
	if len(sc.Findings) != 1 {
		t.Errorf("findings %+v", sc.Findings)
	}
	sbom, err := e.s.SBOM(t.Context(), d, FormatCycloneDX)
	if err != nil {
		t.Fatal(err)
	}
	// The jar was indexed (from its manifest), without asking anyone.
	if !bytes.Contains(sbom, []byte("commons-text")) {
		t.Errorf("the jar was not indexed:\n%s", sbom)
	}
	if n := e.guard.refused.Load(); n != 0 {
		t.Errorf("%d non-loopback dials through Options.Client: %v", n, e.guard.hosts())
	}
	if n := testutil.ToFloat64(e.s.metrics.refused); n != 0 {
		t.Errorf("the indexer attempted %v requests", n)
	}
	if n := defaultDials.refused.Load(); n != 0 {
		t.Errorf("%d dials through http.DefaultTransport: %v", n, defaultDials.hosts())
	}
}

// TestIndexerClientRefuses checks the indexer's client: a request is
// refused with a message that says why, counted and logged.
func TestIndexerClientRefuses(t *testing.T) {
	m := newMetrics()
	logs := &syncBuffer{}
	c := refusingClient(m, slogTo(logs))
	_, err := c.Get("https://search.maven.org/solrsearch/select?q=1")
	if err == nil || !strings.Contains(err.Error(), "airlock's indexer makes no network requests") {
		t.Errorf("error %v", err)
	}
	if n := testutil.ToFloat64(m.refused); n != 1 {
		t.Errorf("refused = %v", n)
	}
	if !strings.Contains(logs.String(), "search.maven.org") {
		t.Errorf("log %q does not name the host", logs)
	}
	var _ http.RoundTripper = refusingTransport{}
}
