package proxy

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/airlock-registry/airlock/proxy/upstream"
	"github.com/airlock-registry/airlock/storage"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// TestUpstreamErrorsAreClientSafe: an upstream failure reaches the client
// as a short OCI error naming the upstream; the credentials file's path,
// the upstream's address and dial errors stay in the log.
func TestUpstreamErrorsAreClientSafe(t *testing.T) {
	t.Parallel()
	// An address nothing listens on: port 1 (tcpmux) is privileged and
	// never bound here. A port taken and given back is handed to the next
	// listener, such as the servers below.
	const deadAddr = "127.0.0.1:1"

	const secretPath = "/run/secrets/vendor/password"
	basic := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("WWW-Authenticate", `Basic realm="vendor"`)
		w.WriteHeader(http.StatusUnauthorized)
	}))
	t.Cleanup(basic.Close)
	failing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, `{"errors":[{"code":"UNKNOWN","message":"database at 10.9.8.7:5432 is down"}]}`, http.StatusInternalServerError)
	}))
	t.Cleanup(failing.Close)

	tests := []struct {
		name       string
		url        string
		creds      func(context.Context) (string, string, error)
		wantStatus int
		wantMsg    string
		logHas     string   // the detail the operator keeps
		leaks      []string // what the client body must not contain
	}{
		{name: "unreachable", url: "http://" + deadAddr, wantStatus: http.StatusServiceUnavailable,
			wantMsg: "upstream vendor is unavailable", logHas: "dial tcp", leaks: []string{deadAddr, "dial tcp", "connection refused"}},
		{name: "credentials file missing", url: basic.URL,
			creds: func(context.Context) (string, string, error) {
				return "", "", errors.New("open " + secretPath + ": no such file or directory")
			},
			wantStatus: http.StatusBadGateway, wantMsg: "airlock could not authenticate to upstream vendor",
			logHas: secretPath, leaks: []string{secretPath, strings.TrimPrefix(basic.URL, "http://"), "check the credentials"}},
		{name: "upstream failing", url: failing.URL, wantStatus: http.StatusServiceUnavailable,
			wantMsg: "upstream vendor is unavailable", logHas: "HTTP 500", leaks: []string{"10.9.8.7", strings.TrimPrefix(failing.URL, "http://")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			reg, err := upstream.New(upstream.Options{Name: "vendor", URL: tt.url, Credentials: tt.creds, MaxAttempts: 1, HeaderTimeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			var logs bytes.Buffer
			srv := errorProxy(t, reg, &logs)
			resp, err := http.Get(srv.URL + "/v2/vendor/app/manifests/v1")
			if err != nil {
				t.Fatal(err)
			}
			var body bytes.Buffer
			_, _ = body.ReadFrom(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.wantStatus {
				t.Errorf("status %d, want %d; body %s", resp.StatusCode, tt.wantStatus, body.String())
			}
			if !strings.Contains(body.String(), tt.wantMsg) {
				t.Errorf("body %s does not say %q", body.String(), tt.wantMsg)
			}
			for _, leak := range tt.leaks {
				if strings.Contains(body.String(), leak) {
					t.Errorf("body %s reveals %q", body.String(), leak)
				}
			}
			if !strings.Contains(logs.String(), tt.logHas) {
				t.Errorf("log lost the detail %q:\n%s", tt.logHas, logs.String())
			}
		})
	}
}

// errorProxy serves a proxy whose only upstream, "vendor", is reg.
func errorProxy(t *testing.T, reg *upstream.Registry, logs *bytes.Buffer) *httptest.Server {
	t.Helper()
	blobs, err := storage.NewFilesystem(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	meta, err := metadata.Open(t.TempDir() + "/metadata.db")
	if err != nil {
		t.Fatal(err)
	}
	rt, err := NewRouter([]Upstream{{Name: "vendor", Hosts: []string{"vendor.example"}}})
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(Options{Router: rt, Registries: map[string]Registry{"vendor": reg}, DefaultTagTTL: time.Minute,
		Blobs: blobs, Meta: meta, Logger: slog.New(slog.NewJSONHandler(lockedWriter{new(sync.Mutex), logs}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(p)
	t.Cleanup(func() {
		srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = p.Close(ctx)
		meta.Close()
	})
	return srv
}
