package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// TestRedirectToAdminRefused: an upstream on loopback may redirect to
// loopback, but a redirect to airlock's own admin listener is refused before
// anything is asked of it, as serve wires its listen addresses into every
// upstream.
func TestRedirectToAdminRefused(t *testing.T) {
	t.Parallel()
	t.Run("as started", func(t *testing.T) { t.Parallel(); testRedirectToAdminRefused(t, false) })
	// A reload that changes admin.listen does not move the listener (that
	// needs a restart), so the listener that runs stays the one protected.
	t.Run("after a reload moving admin.listen", func(t *testing.T) { t.Parallel(); testRedirectToAdminRefused(t, true) })
}

func testRedirectToAdminRefused(t *testing.T, reload bool) {
	dir := t.TempDir()
	regAddr, adminAddr := freeAddr(t), freeAddr(t)
	inner := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:") {
			http.Redirect(w, r, "http://"+adminAddr+"/metrics", http.StatusTemporaryRedirect)
			return
		}
		inner.ServeHTTP(w, r)
	}))
	defer up.Close()
	img, _ := random.Image(1024, 1)
	ref, _ := name.ParseReference(strings.TrimPrefix(up.URL, "http://")+"/library/app:1", name.Insecure)
	if err := remote.Write(ref, img, remote.WithContext(t.Context())); err != nil {
		t.Fatal(err)
	}
	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()

	doc := func(admin string) []byte {
		return []byte(`
listen: "` + regAddr + `"
admin: {listen: "` + admin + `"}
storage: {path: "` + filepath.Join(dir, "data") + `"}
shutdown: {drainTimeout: 5s}
upstreams:
  - {name: hub, url: "` + up.URL + `", default: true, retry: {maxAttempts: 1}}
`)
	}
	path := filepath.Join(dir, "airlock.yaml")
	if err := os.WriteFile(path, doc(adminAddr), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	var logMu sync.Mutex
	g, err := newGateway(t.Context(), cfg, slog.New(slog.NewJSONHandler(writerFunc(func(p []byte) (int, error) {
		logMu.Lock()
		defer logMu.Unlock()
		return logs.Write(p)
	}), nil)))
	if err != nil {
		t.Fatal(err)
	}
	if reload {
		if err := os.WriteFile(path, doc(freeAddr(t)), 0o600); err != nil {
			t.Fatal(err)
		}
		g.reload(path)
	}
	ctx, stop := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- g.run(ctx, path) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()

	url := "http://" + regAddr + "/v2/library/app/blobs/" + ld.String()
	var resp *http.Response
	for deadline := time.Now().Add(10 * time.Second); ; {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
		if resp, err = http.DefaultClient.Do(req); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Errors []struct{ Code, Message string } `json:"errors"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&body)
	if resp.StatusCode != http.StatusServiceUnavailable || len(body.Errors) != 1 || body.Errors[0].Code != "UNAVAILABLE" {
		t.Fatalf("blob redirected to the admin listener: %d %+v, want 503 UNAVAILABLE", resp.StatusCode, body)
	}
	if strings.Contains(body.Errors[0].Message, adminAddr) {
		t.Errorf("client message %q names the admin listener", body.Errors[0].Message)
	}
	logMu.Lock()
	defer logMu.Unlock()
	if !strings.Contains(logs.String(), "airlock's own listener") {
		t.Errorf("log does not say the redirect led to airlock's own listener:\n%s", logs.String())
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
