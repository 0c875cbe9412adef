package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
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

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/integration/upstreamtest"
	"github.com/airlock-registry/airlock/internal/freeport"
)

// TestServeTLSBothWays runs the gateway with an HTTPS registry listener and
// an HTTPS upstream trusted through caFile, and pulls a manifest.
func TestServeTLSBothWays(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()

	// The upstream: a real registry behind a TLS test server.
	up := httptest.NewTLSServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer up.Close()
	img, _ := random.Image(1024, 1)
	ref, _ := name.ParseReference(strings.TrimPrefix(up.URL, "https://") + "/library/app:1")
	if err := remote.Write(ref, img, remote.WithTransport(up.Client().Transport), remote.WithContext(t.Context())); err != nil {
		t.Fatal(err)
	}
	raw, _ := img.RawManifest()
	caFile := filepath.Join(dir, "upstream-ca.pem")
	writePEM(t, caFile, "CERTIFICATE", up.Certificate().Raw)

	// airlock's own certificate: reuse the test server's key pair.
	cert := up.TLS.Certificates[0]
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	writePEM(t, certFile, "CERTIFICATE", cert.Certificate[0])
	key, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, keyFile, "PRIVATE KEY", key)

	regAddr, adminAddr := freeAddr(t), freeAddr(t)
	cfg, err := config.Parse("tls.yaml", []byte(`
listen: "`+regAddr+`"
tls: {certFile: "`+certFile+`", keyFile: "`+keyFile+`"}
admin: {listen: "`+adminAddr+`"}
storage: {path: "`+filepath.Join(dir, "data")+`"}
shutdown: {drainTimeout: 5s}
upstreams:
  - {name: hub, url: "`+up.URL+`", caFile: "`+caFile+`", default: true}
`))
	if err != nil {
		t.Fatal(err)
	}
	g, err := newGateway(t.Context(), cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- g.run(ctx, "") }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()

	pool := x509.NewCertPool()
	pool.AddCert(up.Certificate())
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "example.com"}}}
	url := "https://" + regAddr + "/v2/library/app/manifests/1"
	var resp *http.Response
	for deadline := time.Now().Add(10 * time.Second); ; {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
		req.Header.Set("Accept", "application/vnd.docker.distribution.manifest.v2+json")
		if resp, err = client.Do(req); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("GET over TLS: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(body) != string(raw) {
		t.Fatalf("manifest over TLS from a caFile-trusted upstream: %d %s", resp.StatusCode, body)
	}
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// freeAddr picks a free loopback port that no other pick in this test
// process has returned (see package freeport).
func freeAddr(t *testing.T) string {
	t.Helper()
	addr, err := freeport.Addr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// TestReloadNamesKeysThatNeedARestart reloads a file that changes keys the
// running gateway can apply and keys it cannot: the first are applied and
// listed, each of the second gets a warning naming its key path.
func TestReloadNamesKeysThatNeedARestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "airlock.yaml")
	doc := func(listen, level, format, maxManifest, repos string) []byte {
		return []byte(`
listen: "` + listen + `"
admin: {listen: "127.0.0.1:0"}
storage: {path: "` + filepath.Join(dir, "data") + `"}
log: {level: ` + level + `, format: ` + format + `}
cache: {maxManifestBytes: ` + maxManifest + `}
shutdown: {drainTimeout: 5s}
upstreams:
  - {name: hub, url: "https://hub.example", default: true, repositories: [` + repos + `]}
`)
	}
	if err := os.WriteFile(path, doc("127.0.0.1:0", "info", "json", "4194304", "library/*"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	level := new(slog.LevelVar)
	g, err := newGateway(t.Context(), cfg, newLogger(config.FormatJSON, level, &logs))
	if err != nil {
		t.Fatal(err)
	}
	defer g.meta.Close()
	g.logLevel = level

	if err := os.WriteFile(path, doc("127.0.0.1:1", "debug", "text", "1048576", "library/*, team/*"), 0o600); err != nil {
		t.Fatal(err)
	}
	g.reload(path)
	var warned []string
	var reloaded map[string]any
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		switch {
		case rec["level"] == "WARN" && strings.Contains(rec["msg"].(string), "restart"):
			warned = append(warned, rec["key"].(string))
		case rec["msg"] == "configuration reloaded":
			reloaded = rec
		}
	}
	slices.Sort(warned)
	if want := []string{"cache.maxManifestBytes", "listen", "log.format"}; !slices.Equal(warned, want) {
		t.Errorf("restart warnings for %q, want %q; log:\n%s", warned, want, logs.String())
	}
	if reloaded == nil {
		t.Fatalf("no \"configuration reloaded\" line; log:\n%s", logs.String())
	}
	if got := fmt.Sprint(reloaded["applied"]); got != "[log.level upstreams[0].repositories]" {
		t.Errorf("applied = %s, want [log.level upstreams[0].repositories]", got)
	}
	if got := fmt.Sprint(reloaded["needsRestart"]); got != "[listen cache.maxManifestBytes log.format]" {
		t.Errorf("needsRestart = %s", got)
	}
	if level.Level() != slog.LevelDebug {
		t.Errorf("log level after reload = %v, want DEBUG", level.Level())
	}

	// Undoing the restart-only changes stops the warnings: they are
	// measured against what runs, not against the previous file.
	if err := os.WriteFile(path, doc("127.0.0.1:0", "debug", "json", "4194304", "library/*, team/*"), 0o600); err != nil {
		t.Fatal(err)
	}
	logs.Reset()
	g.reload(path)
	if strings.Contains(logs.String(), "restart") || !strings.Contains(logs.String(), `"needsRestart":null`) {
		t.Errorf("after undoing the changes:\n%s", logs.String())
	}
}

// TestReloadRefusesMissingCredentials: a credentials file that is not
// there is a configuration error on reload, not a denial at pull time.
func TestReloadRefusesMissingCredentials(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "airlock.yaml")
	user, pass := filepath.Join(dir, "user"), filepath.Join(dir, "pass")
	for _, f := range []string{user, pass} {
		if err := os.WriteFile(f, []byte("x\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	body := `
listen: "127.0.0.1:0"
admin: {listen: "127.0.0.1:0"}
storage: {path: "` + filepath.Join(dir, "data") + `"}
upstreams:
  - {name: hub, url: "https://hub.example", auth: {usernameFile: "` + user + `", passwordFile: "` + pass + `"}}
`
	g, logs := gatewayFromFile(t, path, []byte(body))
	if err := os.Remove(pass); err != nil {
		t.Fatal(err)
	}
	g.reload(path)
	out := logs.String()
	if !strings.Contains(out, "configuration reload refused") || !strings.Contains(out, "upstreams[0].auth.passwordFile: "+pass+" does not exist") ||
		strings.Contains(out, "configuration reloaded") {
		t.Errorf("reload with a missing credentials file logged:\n%s", out)
	}
}

// syncBuffer is a bytes.Buffer safe for the logger and the test at once.
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

func (b *syncBuffer) Reset() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.Reset()
}

// TestStartupLineAndBuildInfo checks what an operator sees first: the
// start-up line names the build, the config file, the listeners and the
// upstreams, and /metrics carries airlock_build_info.
func TestStartupLineAndBuildInfo(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "airlock.yaml")
	regAddr, adminAddr := freeAddr(t), freeAddr(t)
	if err := os.WriteFile(path, []byte(`
listen: "`+regAddr+`"
admin: {listen: "`+adminAddr+`"}
storage: {path: "`+filepath.Join(dir, "data")+`"}
shutdown: {drainTimeout: 5s}
upstreams:
  - {name: hub, url: "https://registry-1.docker.io", default: true}
  - {name: vendor, url: "https://registry.vendor.example:8443"}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	logs := runGateway(t, path)
	var line map[string]any
	for deadline := time.Now().Add(10 * time.Second); line == nil; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no start-up line; log:\n%s", logs.String())
		}
		for _, l := range strings.Split(logs.String(), "\n") {
			var rec map[string]any
			if json.Unmarshal([]byte(l), &rec) == nil && rec["msg"] == "airlock serving" {
				line = rec
			}
		}
	}
	info := readBuildInfo()
	for key, want := range map[string]string{
		"version": info.Version, "commit": info.CommitLabel(), "config": path,
		"registry": regAddr, "admin": adminAddr,
		"upstreams": "[map[host:registry-1.docker.io name:hub] map[host:registry.vendor.example:8443 name:vendor]]",
	} {
		if got := fmt.Sprint(line[key]); got != want {
			t.Errorf("start-up line %s = %s, want %s", key, got, want)
		}
	}

	resp, err := http.Get("http://" + adminAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	want := fmt.Sprintf(`airlock_build_info{commit=%q,goversion=%q,version=%q} 1`, info.CommitLabel(), info.GoVersion, info.Version)
	if !strings.Contains(string(body), want) {
		t.Errorf("/metrics lacks %s", want)
	}
}

// TestHeaderBytesBounded sends a request whose headers are over the bound
// to each listener: it is refused with 431 before any handler runs, and a
// request of ordinary size still works.
func TestHeaderBytesBounded(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "airlock.yaml")
	regAddr, adminAddr := freeAddr(t), freeAddr(t)
	if err := os.WriteFile(path, []byte(`
listen: "`+regAddr+`"
admin: {listen: "`+adminAddr+`"}
storage: {path: "`+filepath.Join(dir, "data")+`"}
shutdown: {drainTimeout: 5s}
upstreams: [{name: hub, url: "https://hub.example", default: true}]
`), 0o600); err != nil {
		t.Fatal(err)
	}
	runGateway(t, path)
	get := func(url, accept string) int {
		t.Helper()
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
		req.Header.Set("Accept", accept)
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			resp, err := http.DefaultClient.Do(req)
			if err == nil {
				resp.Body.Close()
				return resp.StatusCode
			}
			if time.Now().After(deadline) {
				t.Fatalf("GET %s: %v", url, err)
			}
		}
	}
	// 100 KiB: over the bound with the slack net/http allows, far under
	// the 1 MiB default.
	huge := strings.Repeat("application/vnd.oci.image.manifest.v1+json, ", 100<<10/44)
	for _, base := range []string{"http://" + regAddr, "http://" + adminAddr} {
		if code := get(base+"/healthz", huge); code != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("%s with a 100 KiB header: %d, want 431", base, code)
		}
		if code := get(base+"/healthz", strings.Repeat("a", 16<<10)); code != http.StatusOK {
			t.Errorf("%s with a 16 KiB header: %d, want 200", base, code)
		}
	}
}

// runGateway starts the gateway of the file at path until the test ends
// and returns its log.
func runGateway(t *testing.T, path string) *syncBuffer {
	t.Helper()
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
	return logs
}

// TestReloadRedecidesUnderPins: SIGHUP reads the pin files again, even
// with the configuration unchanged, and decides the images they cover
// again; a pin file that does not parse refuses the reload and the running
// policies stay.
func TestReloadRedecidesUnderPins(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	img := up.PushImage(t, "vendor/app", "1", 256, 1)
	dir := t.TempDir()
	pins := filepath.Join(dir, "pins.txt")
	if err := os.WriteFile(pins, []byte("# nothing pinned yet\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "airlock.yaml")
	body := `
listen: "127.0.0.1:0"
admin: {listen: "127.0.0.1:0"}
storage: {path: "` + filepath.Join(dir, "data") + `"}
upstreams:
  - {name: hcl, url: "` + up.URL + `"}
policies:
  - {name: hcl-pinned, match: ["hcl/*"], pins: "` + pins + `"}
`
	g, logs := gatewayFromFile(t, path, []byte(body))
	srv := httptest.NewServer(g.registryHandler())
	defer srv.Close()
	pull := func() int { t.Helper(); return pullStatus(t, srv, "/v2/hcl/vendor/app/manifests/1") }
	if got := pull(); got != http.StatusForbidden {
		t.Fatalf("unpinned pull = %d, want 403", got)
	}
	if err := os.WriteFile(pins, []byte("hcl/vendor/app:1 "+img.Digest.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	g.reload(path)
	if got := pull(); got != http.StatusOK {
		t.Fatalf("pull after pinning and SIGHUP = %d, want 200; log:\n%s", got, logs.String())
	}
	if !strings.Contains(logs.String(), `"msg":"images changed state under the reloaded policies","images":1`) {
		t.Errorf("no line about the re-decided image:\n%s", logs.String())
	}
	if err := os.WriteFile(pins, []byte("sha256:nonsense\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	logs.Reset()
	g.reload(path)
	if !strings.Contains(logs.String(), "configuration reload refused") || !strings.Contains(logs.String(), "pins.txt:1") {
		t.Errorf("a broken pin file was not refused:\n%s", logs.String())
	}
	if got := pull(); got != http.StatusOK {
		t.Errorf("pull after a refused reload = %d, want 200 (the running policies stay)", got)
	}
}

// gatewayFromFile writes body to path and builds the gateway serve would
// from it, logging to the returned buffer; the metadata store is closed
// when the test ends.
func gatewayFromFile(t *testing.T, path string, body []byte) (*gateway, *syncBuffer) {
	t.Helper()
	if err := os.WriteFile(path, body, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	g, err := newGateway(t.Context(), cfg, newLogger(config.FormatJSON, slog.LevelInfo, logs))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.closeStores() })
	return g, logs
}

// pullStatus GETs a registry path from srv and returns the status.
func pullStatus(t *testing.T, srv *httptest.Server, path string) int {
	t.Helper()
	resp, err := http.Get(srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
