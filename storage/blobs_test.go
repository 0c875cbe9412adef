package storage

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/verify"
)

// store is one way of running Blobs: the local fast path, or the remote path
// over a driver whose files the test cannot see directly.
type store struct {
	name  string
	local bool
	open  func(t testing.TB) *Blobs
}

var stores = []store{
	{name: "filesystem fast path", local: true, open: func(t testing.TB) *Blobs {
		b, err := NewFilesystem(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return b
	}},
	{name: "inmemory driver", open: func(t testing.TB) *Blobs {
		b, err := NewBlobs(inmemory.New(), "", t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return b
	}},
	{name: "filesystem driver as remote", open: func(t testing.TB) *Blobs {
		drv := filesystem.New(filesystem.DriverParameters{RootDirectory: t.TempDir(), MaxThreads: 100})
		b, err := NewBlobs(drv, "", t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return b
	}},
}

func randomBlob(t testing.TB, n int) ([]byte, digest.Digest) {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	return b, digest.FromBytes(b)
}

// put writes content through a spool and commits it.
func put(t testing.TB, b *Blobs, content []byte, d digest.Digest) *Spool {
	t.Helper()
	s, err := b.NewSpool(d)
	if err != nil {
		t.Fatal(err)
	}
	for chunk := range slices.Chunk(content, 4096) {
		if _, err := s.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Verify(); err != nil {
		t.Fatalf("Verify of the right content: %v", err)
	}
	if err := b.Commit(t.Context(), d, s); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	return s
}

func spoolFiles(t *testing.T, b *Blobs) []string {
	t.Helper()
	entries, err := os.ReadDir(b.spoolDir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestCommitThenServe(t *testing.T) {
	t.Parallel()
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			b := st.open(t)
			content, d := randomBlob(t, 100_000)
			if _, err := b.Stat(t.Context(), d); !errors.Is(err, ErrNotFound) {
				t.Fatalf("Stat before commit = %v, want ErrNotFound", err)
			}
			if _, _, err := b.Open(t.Context(), d); !errors.Is(err, ErrNotFound) {
				t.Fatalf("Open before commit = %v, want ErrNotFound", err)
			}
			s := put(t, b, content, d)
			defer b.Discard(s)

			size, err := b.Stat(t.Context(), d)
			if err != nil || size != int64(len(content)) {
				t.Fatalf("Stat = %d, %v; want %d", size, err, len(content))
			}
			rc, size, err := b.Open(t.Context(), d)
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			if _, isFile := rc.(*os.File); isFile != st.local {
				t.Errorf("Open returned %T; *os.File expected exactly on the local fast path", rc)
			}
			got, err := io.ReadAll(rc)
			if err != nil || !bytes.Equal(got, content) || size != int64(len(content)) {
				t.Fatalf("read back %d bytes (size %d), err %v; want the %d committed bytes", len(got), size, err, len(content))
			}
			// Seek back and read a range, as a Range request does.
			if _, err := rc.Seek(5000, io.SeekStart); err != nil {
				t.Fatal(err)
			}
			part := make([]byte, 100)
			if _, err := io.ReadFull(rc, part); err != nil || !bytes.Equal(part, content[5000:5100]) {
				t.Fatalf("range after seek: %v", err)
			}
			if files := spoolFiles(t, b); len(files) != 0 {
				t.Errorf("spool files left after commit: %v", files)
			}
			if u, err := b.RedirectURL(httptest.NewRequest(http.MethodGet, "/", nil), d); u != "" || err != nil {
				t.Errorf("RedirectURL = %q, %v; these drivers offer no redirects", u, err)
			}
		})
	}
}

func TestServeContentRange(t *testing.T) {
	t.Parallel()
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			b := st.open(t)
			content, d := randomBlob(t, 50_000)
			b.Discard(put(t, b, content, d))

			rc, _, err := b.Open(t.Context(), d)
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			req := httptest.NewRequest(http.MethodGet, "/v2/x/blobs/"+d.String(), nil)
			req.Header.Set("Range", "bytes=1000-1999")
			rec := httptest.NewRecorder()
			http.ServeContent(rec, req, "", zeroTime, rc)
			if rec.Code != http.StatusPartialContent {
				t.Fatalf("status %d, want 206", rec.Code)
			}
			if !bytes.Equal(rec.Body.Bytes(), content[1000:2000]) {
				t.Fatalf("range body differs (%d bytes)", rec.Body.Len())
			}
		})
	}
}

func TestCommitRejectsWrongContent(t *testing.T) {
	t.Parallel()
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			b := st.open(t)
			content, d := randomBlob(t, 10_000)
			s, err := b.NewSpool(d)
			if err != nil {
				t.Fatal(err)
			}
			content[42] ^= 1
			s.Write(content)
			if err := s.Verify(); !errors.Is(err, verify.ErrDigestMismatch) {
				t.Fatalf("Verify of altered content = %v, want ErrDigestMismatch", err)
			}
			if err := b.Commit(t.Context(), d, s); !errors.Is(err, verify.ErrDigestMismatch) {
				t.Fatalf("Commit of altered content = %v, want ErrDigestMismatch", err)
			}
			if _, err := b.Stat(t.Context(), d); !errors.Is(err, ErrNotFound) {
				t.Fatalf("Stat after refused commit = %v, want ErrNotFound", err)
			}
			if err := b.Discard(s); err != nil {
				t.Fatal(err)
			}
			if files := spoolFiles(t, b); len(files) != 0 {
				t.Errorf("spool files left after Discard: %v", files)
			}
		})
	}
}

func TestCommitExistingDigest(t *testing.T) {
	t.Parallel()
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			b := st.open(t)
			content, d := randomBlob(t, 1000)
			b.Discard(put(t, b, content, d))
			s := put(t, b, content, d) // commits again: must succeed
			if _, err := os.Stat(s.Path()); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("second spool still at %s after committing an existing blob", s.Path())
			}
			// Discard after Commit must not remove the blob.
			if err := b.Discard(s); err != nil {
				t.Fatal(err)
			}
			if _, err := b.Stat(t.Context(), d); err != nil {
				t.Fatalf("blob gone after discarding a committed spool: %v", err)
			}
		})
	}
}

// TestSpoolReadableAfterCommit covers the followers of a download: they read
// the spool while it grows and must keep reading after the commit.
func TestSpoolReadableAfterCommit(t *testing.T) {
	t.Parallel()
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			b := st.open(t)
			content, d := randomBlob(t, 64<<10)
			s, err := b.NewSpool(d)
			if err != nil {
				t.Fatal(err)
			}
			half := len(content) / 2
			s.Write(content[:half])
			if s.Size() != int64(half) {
				t.Fatalf("Size = %d, want %d", s.Size(), half)
			}
			early, err := os.Open(s.Path())
			if err != nil {
				t.Fatal(err)
			}
			defer early.Close()
			s.Write(content[half:])
			if err := b.Commit(t.Context(), d, s); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(content))
			if _, err := s.ReadAt(got, 0); err != nil || !bytes.Equal(got, content) {
				t.Fatalf("Spool.ReadAt after commit: %v", err)
			}
			if _, err := early.ReadAt(got, 0); err != nil || !bytes.Equal(got, content) {
				t.Fatalf("handle opened before commit: %v", err)
			}
			if _, err := s.Write([]byte("x")); err == nil {
				t.Error("Write after Commit succeeded")
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatalf("second Close: %v", err)
			}
		})
	}
}

// TestSpoolConcurrentReadWrite runs a writer against readers that chase
// Size with ReadAt; -race checks the synchronisation and the readers check
// that every byte below Size is already there.
func TestSpoolConcurrentReadWrite(t *testing.T) {
	t.Parallel()
	b := stores[0].open(t)
	content, d := randomBlob(t, 1<<20)
	s, err := b.NewSpool(d)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Discard(s)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() {
			var off int64
			buf := make([]byte, 8192)
			for off < int64(len(content)) {
				avail := s.Size()
				if avail == off {
					runtime.Gosched()
					continue
				}
				n, err := s.ReadAt(buf[:min(int64(len(buf)), avail-off)], off)
				if err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(buf[:n], content[off:off+int64(n)]) {
					errs <- fmt.Errorf("bytes at %d differ", off)
					return
				}
				off += int64(n)
			}
		})
	}
	for chunk := range slices.Chunk(content, 3000) {
		s.Write(chunk)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if err := b.Commit(t.Context(), d, s); err != nil {
		t.Fatal(err)
	}
}

func TestConcurrentCommitSameDigest(t *testing.T) {
	t.Parallel()
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			b := st.open(t)
			content, d := randomBlob(t, 200_000)
			var wg sync.WaitGroup
			errs := make(chan error, 8)
			for range 8 {
				wg.Go(func() {
					s, err := b.NewSpool(d)
					if err != nil {
						errs <- err
						return
					}
					defer b.Discard(s)
					s.Write(content)
					if err := b.Commit(t.Context(), d, s); err != nil {
						errs <- err
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Errorf("concurrent Commit: %v", err)
			}
			rc, _, err := b.Open(t.Context(), d)
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			if got, _ := io.ReadAll(rc); !bytes.Equal(got, content) {
				t.Fatal("stored blob differs after concurrent commits")
			}
			if files := spoolFiles(t, b); len(files) != 0 {
				t.Errorf("spool files left: %v", files)
			}
		})
	}
}

func TestDigestValidation(t *testing.T) {
	t.Parallel()
	b := stores[0].open(t)
	for _, bad := range []digest.Digest{"sha256:../../../etc/passwd", "sha384:" + digest.Digest(strings.Repeat("0", 96)), ""} {
		if _, err := b.Stat(t.Context(), bad); err == nil || errors.Is(err, ErrNotFound) {
			t.Errorf("Stat(%q) = %v, want a validation error", bad, err)
		}
		if _, _, err := b.Open(t.Context(), bad); err == nil || errors.Is(err, ErrNotFound) {
			t.Errorf("Open(%q) = %v, want a validation error", bad, err)
		}
		if _, err := b.NewSpool(bad); err == nil {
			t.Errorf("NewSpool(%q) succeeded", bad)
		}
	}
	content, d := randomBlob(t, 10)
	s, _ := b.NewSpool(d)
	defer b.Discard(s)
	s.Write(content)
	if err := b.Commit(t.Context(), digest.FromString("other"), s); err == nil {
		t.Error("Commit under a different digest than the spool's succeeded")
	}
}

func TestNewBlobsChecksLocalRoot(t *testing.T) {
	t.Parallel()
	drv := filesystem.New(filesystem.DriverParameters{RootDirectory: t.TempDir(), MaxThreads: 100})
	other := t.TempDir()
	if _, err := NewBlobs(drv, other, filepath.Join(other, "spool")); err == nil {
		t.Fatal("NewBlobs accepted a local root that is not the driver's root")
	}
	if _, err := NewBlobs(drv, "", ""); err == nil {
		t.Fatal("NewBlobs accepted an empty spool directory")
	}
}

func BenchmarkOpenStatHit(b *testing.B) {
	for _, st := range stores {
		b.Run(st.name, func(b *testing.B) {
			blobs := st.open(b)
			content, d := randomBlob(b, 4096)
			blobs.Discard(put(b, blobs, content, d))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := blobs.Stat(b.Context(), d); err != nil {
					b.Fatal(err)
				}
				rc, _, err := blobs.Open(b.Context(), d)
				if err != nil {
					b.Fatal(err)
				}
				rc.Close()
			}
		})
	}
}

// TestSpoolBytes proves downloads in progress are counted by what they
// wrote or reserved, and stop counting once committed or discarded.
func TestSpoolBytes(t *testing.T) {
	t.Parallel()
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			b := st.open(t)
			content, d := randomBlob(t, 3000)
			kept, err := b.NewSpool(d)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Discard(kept)
			if _, err := kept.Write(content); err != nil {
				t.Fatal(err)
			}
			_, other := randomBlob(t, 10)
			dropped, err := b.NewSpool(other)
			if err != nil {
				t.Fatal(err)
			}
			if err := dropped.Reserve(5000); err != nil {
				t.Fatal(err)
			}
			// A reservation is room, not content.
			if fi, err := os.Stat(dropped.Path()); err != nil || fi.Size() != 0 {
				t.Fatalf("spool file after Reserve: %v, %v; want it empty", fi, err)
			}
			dropped.Write([]byte("partial"))
			if got := b.SpoolBytes(); got != 3000+5000 {
				t.Fatalf("SpoolBytes = %d, want %d (written plus reserved)", got, 3000+5000)
			}
			if err := b.Commit(t.Context(), d, kept); err != nil {
				t.Fatal(err)
			}
			if got := b.SpoolBytes(); got != 5000 {
				t.Fatalf("SpoolBytes after Commit = %d, want 5000", got)
			}
			if err := b.Discard(dropped); err != nil {
				t.Fatal(err)
			}
			if got := b.SpoolBytes(); got != 0 {
				t.Fatalf("SpoolBytes after Discard = %d, want 0", got)
			}
			if err := dropped.Reserve(1 << 20); err == nil {
				t.Error("Reserve on a discarded spool succeeded")
			}
		})
	}
}
