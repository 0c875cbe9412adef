package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/airlock-registry/airlock/config"
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

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
