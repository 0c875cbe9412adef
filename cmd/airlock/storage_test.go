package main

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/config"
)

// TestSecondGatewayKeepsLiveSpools starts a second airlock on the data
// directory of a running one, as a mistaken second replica on a shared
// volume does. It must give up on the metadata lock before it touches the
// store: recovering first would delete the running airlock's downloads in
// progress as leftovers of a crash.
func TestSecondGatewayKeepsLiveSpools(t *testing.T) {
	t.Parallel()
	cfg, err := config.Parse("airlock.yaml", []byte(`
storage: {path: "`+filepath.Join(t.TempDir(), "data")+`"}
upstreams:
  - {name: hub, url: "http://127.0.0.1:1", default: true}
`))
	if err != nil {
		t.Fatal(err)
	}
	first, err := newGateway(t.Context(), cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer first.meta.Close()
	content := []byte("a layer on its way")
	s, err := first.blobs.NewSpool(digest.FromBytes(content))
	if err != nil {
		t.Fatal(err)
	}
	defer first.blobs.Discard(s)
	if _, err := s.Write(content); err != nil {
		t.Fatal(err)
	}

	second, err := newGateway(t.Context(), cfg, slog.New(slog.DiscardHandler))
	if err == nil {
		second.meta.Close()
		t.Fatal("a second airlock started on a data directory in use")
	}
	if !strings.Contains(err.Error(), "locked") {
		t.Errorf("second airlock failed with %v; want the metadata lock named", err)
	}
	if _, err := os.Stat(s.Path()); err != nil {
		t.Fatalf("the running airlock's download in progress is gone: %v", err)
	}
}
