package storage

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
)

// TestCrashMidDownload simulates a process killed while writing a spool: the
// spool file is left behind, never committed, never discarded. A store opened
// on the same directories must not show the blob, and Recover must remove
// the leftovers.
func TestCrashMidDownload(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	before, err := NewFilesystem(dir)
	if err != nil {
		t.Fatal(err)
	}
	content, d := randomBlob(t, 10_000)
	s, err := before.NewSpool(d)
	if err != nil {
		t.Fatal(err)
	}
	s.Write(content[:4000])
	s.f.Close() // the process dies: no Commit, no Discard

	// A stray file that is not a spool must survive recovery.
	keep := filepath.Join(dir, "spool", "operator-notes.txt")
	os.WriteFile(keep, []byte("x"), 0o600)

	after, err := NewFilesystem(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := after.Stat(t.Context(), d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("half-written blob visible after restart: Stat = %v", err)
	}
	n, err := after.Recover(t.Context())
	if err != nil || n != 1 {
		t.Fatalf("Recover = %d, %v; want 1 leftover spool removed", n, err)
	}
	if _, err := os.Stat(s.Path()); !errors.Is(err, os.ErrNotExist) {
		t.Error("leftover spool still on disk after Recover")
	}
	if _, err := os.Stat(keep); err != nil {
		t.Errorf("Recover removed a file that is not a spool: %v", err)
	}
	// The blob can still be fetched and committed afterwards.
	after.Discard(put(t, after, content, d))
	if n, err := after.Recover(t.Context()); err != nil || n != 0 {
		t.Fatalf("second Recover = %d, %v; want nothing to do", n, err)
	}
}

func TestRecoverKeepsLiveSpools(t *testing.T) {
	t.Parallel()
	b := stores[0].open(t)
	_, d := randomBlob(t, 10)
	s, err := b.NewSpool(d)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Discard(s)
	if n, err := b.Recover(t.Context()); err != nil || n != 0 {
		t.Fatalf("Recover = %d, %v; want the live spool kept", n, err)
	}
	if _, err := os.Stat(s.Path()); err != nil {
		t.Fatalf("live spool removed: %v", err)
	}
}

// TestRecoverRemoteUploads covers a crash between uploading a temporary
// object and moving it into place on a remote driver.
func TestRecoverRemoteUploads(t *testing.T) {
	t.Parallel()
	drv := inmemory.New()
	b, err := NewBlobs(drv, "", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	_, d := randomBlob(t, 10)
	tmp, err := uploadPath(d)
	if err != nil {
		t.Fatal(err)
	}
	if err := drv.PutContent(t.Context(), tmp, []byte("partial")); err != nil {
		t.Fatal(err)
	}
	if n, err := b.Recover(t.Context()); err != nil || n != 0 {
		t.Fatalf("Recover = %d, %v; a young upload may be a peer's and must stay", n, err)
	}
	b.uploadGrace = -time.Second
	if n, err := b.Recover(t.Context()); err != nil || n != 1 {
		t.Fatalf("Recover = %d, %v; want the abandoned upload removed", n, err)
	}
	if _, err := drv.Stat(t.Context(), tmp); err == nil {
		t.Fatal("abandoned upload still present")
	}
	if _, err := b.Stat(t.Context(), d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Stat = %v, want ErrNotFound", err)
	}
}

// TestRecoverKeepsFreshProbes: replicas sharing a blob root probe it as they
// start; Recover removes only probes old enough to be a crash's leftovers,
// not one another replica is making at the same moment.
func TestRecoverKeepsFreshProbes(t *testing.T) {
	t.Parallel()
	b, err := NewFilesystem(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	fresh := filepath.Join(b.localRoot, "_probe-fresh"+spoolSuffix)
	old := filepath.Join(b.localRoot, "_probe-old"+spoolSuffix)
	for _, p := range []string{fresh, old} {
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	past := time.Now().Add(-2 * probeGrace)
	if err := os.Chtimes(old, past, past); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Recover(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Errorf("a probe made just now was removed: %v", err)
	}
	if _, err := os.Stat(old); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a probe left %v ago is still there (%v)", 2*probeGrace, err)
	}
}
