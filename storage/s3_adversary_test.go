package storage

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/internal/s3test"
)

// commitBytes writes content through a spool of b and commits it,
// returning the error instead of failing the test, for goroutines.
func commitBytes(ctx context.Context, b *Blobs, content []byte) (digest.Digest, error) {
	d := digest.FromBytes(content)
	s, err := b.NewSpool(d)
	if err != nil {
		return d, err
	}
	defer b.Discard(s)
	if _, err := s.Write(content); err != nil {
		return d, err
	}
	if err := s.Verify(); err != nil {
		return d, err
	}
	return d, b.Commit(ctx, d, s)
}

// TestS3AdversaryNoPartialBlobVisible: while one replica commits a large
// blob, another that asks for it again and again sees either nothing or
// the whole blob, never part of it: the upload goes to a temporary object
// and only a move publishes it.
func TestS3AdversaryNoPartialBlobVisible(t *testing.T) {
	t.Parallel()
	params := s3test.Params(t)
	writer := s3Blobs(t, params)
	reader := s3Blobs(t, params)
	content := make([]byte, 12<<20) // over the driver's 10 MB chunk: a multipart upload
	rand.Read(content)
	d := digest.FromBytes(content)
	ctx := t.Context()
	var misses atomic.Int32
	errs := make(chan error, 1)
	var wg sync.WaitGroup
	// The reader asks until it has the blob, which it must once the commit
	// returned; every answer before is a miss or the whole blob.
	wg.Go(func() {
		for ctx.Err() == nil {
			rc, size, err := reader.Open(ctx, d)
			if errors.Is(err, ErrNotFound) {
				misses.Add(1)
				continue
			}
			if err != nil {
				errs <- fmt.Errorf("Open during the commit: %v", err)
				return
			}
			got, err := io.ReadAll(rc)
			rc.Close()
			if err != nil || size != int64(len(content)) || !bytes.Equal(got, content) {
				errs <- fmt.Errorf("a reader saw %d bytes of %d (size %d, %v) during the commit", len(got), len(content), size, err)
			}
			return
		}
	})
	if _, err := commitBytes(ctx, writer, content); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	if misses.Load() == 0 {
		t.Log("the reader never looked before the commit ended; the test proved little this run")
	}
}

// TestS3AdversaryLocalCacheBoundUnderConcurrentCommits: many commits at
// once, of blobs that together are several times the local cache's
// bound, leave the cache within it, with every copy whole and named by its
// digest, and the index the same as the directory (a restart finds what
// the running process counted).
func TestS3AdversaryLocalCacheBoundUnderConcurrentCommits(t *testing.T) {
	t.Parallel()
	params := s3test.Params(t)
	dir := t.TempDir()
	const bound = 300_000
	b := s3Blobs(t, params, WithLocalCache(dir, bound))
	ctx := t.Context()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	blobs := make([][]byte, 40)
	for i := range blobs {
		blobs[i] = make([]byte, 20_000+i*1_000)
		rand.Read(blobs[i])
	}
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < len(blobs); i += 8 {
				// Each blob twice: two fills of one digest commit twice.
				for range 2 {
					if _, err := commitBytes(ctx, b, blobs[i]); err != nil {
						errs <- err
						return
					}
				}
				if rc, _, err := b.Open(ctx, digest.FromBytes(blobs[(i+3)%len(blobs)])); err == nil {
					rc.Close()
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var onDisk int64
	files := map[digest.Digest]bool{}
	for _, e := range entries {
		d, ok := cacheName(e.Name())
		if !ok {
			t.Errorf("the cache directory holds %s, which is no copy", e.Name())
			continue
		}
		got, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if digest.FromBytes(got) != d {
			t.Errorf("copy %s holds other bytes", e.Name())
		}
		onDisk += int64(len(got))
		files[d] = true
	}
	if onDisk > bound {
		t.Errorf("the cache holds %d bytes on disk, over its bound of %d", onDisk, bound)
	}
	b.cache.mu.Lock()
	total, indexed := b.cache.total, len(b.cache.index)
	for d := range b.cache.index {
		if !files[d] {
			t.Errorf("the index holds %s, which has no file", d)
		}
	}
	b.cache.mu.Unlock()
	if total != onDisk || indexed != len(files) {
		t.Errorf("the index counts %d copies of %d bytes, the directory holds %d of %d", indexed, total, len(files), onDisk)
	}
	// Every blob is still in the bucket, copy or not.
	for _, content := range blobs {
		rc, _, err := b.Open(ctx, digest.FromBytes(content))
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(rc)
		rc.Close()
		if !bytes.Equal(got, content) {
			t.Fatalf("read %d bytes that are not the blob", len(got))
		}
	}
}

// TestS3AdversaryLocalCopyAfterAnotherReplicaDeletes: a replica's local
// copy outlives the eviction of its blob by another replica. It still
// serves the right bytes (a digest names one content) and the replica's
// own Delete then finds the bucket's object gone and removes the copy.
// Whether a repository may read the blob is decided by the metadata's
// links before the store is asked, so the copy lets no one read what they
// could not read from the bucket.
func TestS3AdversaryLocalCopyAfterAnotherReplicaDeletes(t *testing.T) {
	t.Parallel()
	params := s3test.Params(t)
	dir := t.TempDir()
	a := s3Blobs(t, params, WithLocalCache(dir, 1<<20))
	other := s3Blobs(t, params)
	content, d := randomBlob(t, 50_000)
	ctx := t.Context()
	a.Discard(put(t, a, content, d))
	if err := other.Delete(ctx, d); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Stat(ctx, d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Stat on the evicting replica = %v; want ErrNotFound", err)
	}
	rc, size, err := a.Open(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if size != int64(len(content)) || !bytes.Equal(got, content) {
		t.Fatalf("the local copy served %d bytes that are not the blob", len(got))
	}
	if err := a.Delete(ctx, d); err != nil && !errors.Is(err, ErrNotFound) {
		t.Fatalf("Delete of a blob another replica evicted = %v; want nil or ErrNotFound", err)
	}
	if _, err := a.Stat(ctx, d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Stat after Delete = %v; want ErrNotFound", err)
	}
	if _, err := os.Stat(a.cache.path(d)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the copy is still on disk: %v", err)
	}
}
