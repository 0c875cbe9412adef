package storage

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// walkAll returns every blob Walk reports, failing on a digest seen twice.
func walkAll(t *testing.T, b *Blobs) map[digest.Digest]int64 {
	t.Helper()
	got := map[digest.Digest]int64{}
	err := b.Walk(t.Context(), func(d digest.Digest, size int64, modTime time.Time) error {
		if _, dup := got[d]; dup {
			t.Errorf("Walk reported %s twice", d)
		}
		if since := time.Since(modTime); since < -time.Minute || since > time.Hour {
			t.Errorf("Walk reported %s committed at %v, %v ago; want about now", d, modTime, since)
		}
		got[d] = size
		return nil
	})
	if err != nil {
		t.Fatalf("Walk: %v", err)
	}
	return got
}

func TestWalkAndDelete(t *testing.T) {
	t.Parallel()
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			b := st.open(t)
			if got := walkAll(t, b); len(got) != 0 {
				t.Fatalf("Walk of an empty store = %v", got)
			}
			want := map[digest.Digest]int64{}
			for _, n := range []int{1, 4096, 70_000} {
				content, d := randomBlob(t, n)
				b.Discard(put(t, b, content, d))
				want[d] = int64(n)
			}
			// Things under /blobs that are not blobs must never reach the
			// callback: a stray path handed to Delete could remove anything.
			valid := digest.FromString("valid digest, misplaced")
			hex := valid.Encoded()
			for _, p := range []string{
				"/blobs/sha256/zz/not-a-digest/data",
				"/blobs/sha256/" + hex[:2] + "/" + hex + "/notdata",
				"/blobs/sha256/00/" + hex + "/data", // wrong fan-out directory
				"/blobs/md5/" + hex[:2] + "/" + hex + "/data",
				"/blobs/sha256/" + hex[:2] + "/" + hex + "/data/extra",
				"/blobs/stray",
				"/_uploads/sha256-" + hex + "-0011223344556677",
			} {
				if err := b.driver.PutContent(ctx, p, []byte("x")); err != nil {
					t.Fatalf("writing stray %s: %v", p, err)
				}
			}
			got := walkAll(t, b)
			if len(got) != len(want) {
				t.Fatalf("Walk found %v, want %v", got, want)
			}
			for d, size := range want {
				if got[d] != size {
					t.Errorf("Walk: %s has size %d, want %d", d, got[d], size)
				}
			}

			var victim digest.Digest
			for d := range want {
				victim = d
				break
			}
			if err := b.Delete(ctx, victim); err != nil {
				t.Fatalf("Delete: %v", err)
			}
			if _, err := b.Stat(ctx, victim); !errors.Is(err, ErrNotFound) {
				t.Fatalf("Stat after Delete = %v, want ErrNotFound", err)
			}
			if err := b.Delete(ctx, victim); !errors.Is(err, ErrNotFound) {
				t.Fatalf("second Delete = %v, want ErrNotFound", err)
			}
			if _, ok := walkAll(t, b)[victim]; ok {
				t.Fatal("Walk still reports the deleted blob")
			}
			if err := b.Delete(ctx, "sha256:../../etc"); err == nil || errors.Is(err, ErrNotFound) {
				t.Fatalf("Delete of an invalid digest = %v, want a validation error", err)
			}

			// An evicted blob is fetched and committed again on its next pull.
			content, d := randomBlob(t, 10)
			b.Discard(put(t, b, content, d))
			if err := b.Delete(ctx, d); err != nil {
				t.Fatal(err)
			}
			b.Discard(put(t, b, content, d))
			if size, err := b.Stat(ctx, d); err != nil || size != 10 {
				t.Fatalf("Stat after commit, delete and commit again = %d, %v", size, err)
			}
		})
	}
}

func TestWalkStops(t *testing.T) {
	t.Parallel()
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			b := st.open(t)
			for range 3 {
				content, d := randomBlob(t, 100)
				b.Discard(put(t, b, content, d))
			}
			stop := errors.New("enough")
			calls := 0
			err := b.Walk(t.Context(), func(digest.Digest, int64, time.Time) error {
				calls++
				return stop
			})
			if err != stop || calls != 1 {
				t.Fatalf("Walk returned %v after %d calls; want the callback's own error after 1", err, calls)
			}

			ctx, cancel := context.WithCancel(t.Context())
			cancel()
			calls = 0
			err = b.Walk(ctx, func(digest.Digest, int64, time.Time) error { calls++; return nil })
			if !errors.Is(err, context.Canceled) || calls != 0 {
				t.Fatalf("Walk with a cancelled context = %v after %d calls; want context.Canceled before any", err, calls)
			}
		})
	}
}

// TestDeleteWhileReading proves eviction cannot cut off a client: on the
// local fast path a blob deleted mid-download is still read to the end
// through the handle Open returned, both directly and through ServeContent.
func TestDeleteWhileReading(t *testing.T) {
	t.Parallel()
	b, err := NewFilesystem(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	content, d := randomBlob(t, 1<<20)
	b.Discard(put(t, b, content, d))

	direct, _, err := b.Open(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	served, _, err := b.Open(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	defer served.Close()

	first := make([]byte, 1000)
	if _, err := io.ReadFull(direct, first); err != nil {
		t.Fatal(err)
	}
	if err := b.Delete(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(b.localPath(d)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("blob file still there after Delete: %v", err)
	}
	if _, err := os.Stat(filepath.Dir(b.localPath(d))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Delete left the blob's empty directory behind: %v", err)
	}

	rest, err := io.ReadAll(direct)
	if err != nil || !bytes.Equal(append(first, rest...), content) {
		t.Fatalf("read across Delete: %d+%d bytes, %v; want the whole blob", len(first), len(rest), err)
	}
	rec := httptest.NewRecorder()
	http.ServeContent(rec, httptest.NewRequest(http.MethodGet, "/", nil), "", zeroTime, served)
	if rec.Code != http.StatusOK || !bytes.Equal(rec.Body.Bytes(), content) {
		t.Fatalf("ServeContent after Delete: status %d, %d bytes; want 200 and the whole blob", rec.Code, rec.Body.Len())
	}
}

func TestParseBlobPath(t *testing.T) {
	t.Parallel()
	d := digest.FromString("x")
	d512 := digest.SHA512.FromString("x")
	tests := []struct {
		path string
		want digest.Digest
	}{
		{blobPath(d), d},
		{blobPath(d512), d512},
		{"/blobs/sha256/" + d.Encoded()[:2] + "/" + strings.ToUpper(d.Encoded()) + "/data", ""},
		{"blobs/sha256/" + d.Encoded()[:2] + "/" + d.Encoded() + "/data", ""},
		{"/blobs/sha256/" + d.Encoded()[:2] + "/" + d.Encoded()[:10] + "/data", ""},
		{"/blobs/sha256/a/a/data", ""},
		{"/blobs/sha256//data", ""},
		{"/blobs/data", ""},
		{"", ""},
	}
	for _, tt := range tests {
		got, ok := parseBlobPath(tt.path)
		if got != tt.want || ok != (tt.want != "") {
			t.Errorf("parseBlobPath(%q) = %q, %v; want %q", tt.path, got, ok, tt.want)
		}
	}
}

// TestCommitRacingDelete evicts a blob while it is being committed, as a
// sweep with no minimum age can. The commit has published the blob by the
// time the Delete finds it, so it must succeed even when the Delete then
// removes the directory the commit was about to sync; the blob is simply
// gone again. The race is timing: before the fix this failed within a few
// hundred rounds (a second or two), so the test runs for three seconds.
func TestCommitRacingDelete(t *testing.T) {
	t.Parallel()
	b, err := NewFilesystem(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	content, d := randomBlob(t, 1000)
	for end, i := time.Now().Add(3*time.Second), 0; time.Now().Before(end); i++ {
		s, err := b.NewSpool(d)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Write(content); err != nil {
			t.Fatal(err)
		}
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				select {
				case <-stop:
					return
				default:
					b.Delete(t.Context(), d)
				}
			}
		}()
		err = b.Commit(t.Context(), d, s)
		close(stop)
		<-done
		b.Discard(s)
		if err != nil {
			t.Fatalf("Commit racing a Delete (round %d): %v", i, err)
		}
	}
}
