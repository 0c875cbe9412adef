package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/factory"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/s3-aws"
	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/internal/s3test"
)

// The tests in this file run Blobs over distribution's s3-aws driver
// against a real S3 server (versitygw, internal/s3test) on loopback.

func TestMain(m *testing.M) {
	// Every table test of the store runs on S3 too.
	stores = append(stores, store{name: "s3 driver on versitygw", open: func(t testing.TB) *Blobs {
		return s3Blobs(t, s3test.Params(t), WithRedirects(false))
	}})
	os.Exit(s3test.Main(m))
}

// s3Driver builds the s3-aws driver as airlock's storage.driver: s3 does.
func s3Driver(t testing.TB, params map[string]any) storagedriver.StorageDriver {
	t.Helper()
	d, err := factory.Create(t.Context(), "s3", params)
	if err != nil {
		t.Fatalf("creating the s3 driver: %v", err)
	}
	return d
}

// s3Blobs is one replica's store over the bucket params name, with a spool
// directory of its own.
func s3Blobs(t testing.TB, params map[string]any, opts ...Option) *Blobs {
	t.Helper()
	b, err := NewBlobs(s3Driver(t, params), "", t.TempDir(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// with returns params with extra driver parameters added.
func with(params map[string]any, extra map[string]any) map[string]any {
	p := maps.Clone(params)
	maps.Copy(p, extra)
	return p
}

func walked(t *testing.T, b *Blobs) map[digest.Digest]int64 {
	t.Helper()
	seen := map[digest.Digest]int64{}
	if err := b.Walk(t.Context(), func(d digest.Digest, size int64, _ time.Time) error {
		seen[d] = size
		return nil
	}); err != nil {
		t.Fatalf("Walk: %v", err)
	}
	return seen
}

// listed is every object in the bucket under dir, by driver path.
func listed(t *testing.T, drv storagedriver.StorageDriver, dir string) []string {
	t.Helper()
	var paths []string
	err := drv.Walk(t.Context(), dir, func(fi storagedriver.FileInfo) error {
		if !fi.IsDir() {
			paths = append(paths, fi.Path())
		}
		return nil
	})
	if err != nil && !errors.As(err, new(storagedriver.PathNotFoundError)) {
		t.Fatalf("listing %s: %v", dir, err)
	}
	return paths
}

// TestS3CommitStatOpenDeleteWalk is a blob's life in a bucket: absent,
// committed, read whole and by ranges, listed, deleted.
func TestS3CommitStatOpenDeleteWalk(t *testing.T) {
	t.Parallel()
	params := s3test.Params(t)
	b := s3Blobs(t, params)
	ctx := t.Context()
	content, d := randomBlob(t, 300_000)

	if _, err := b.Stat(ctx, d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Stat before commit = %v, want ErrNotFound", err)
	}
	if _, _, err := b.Open(ctx, d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Open before commit = %v, want ErrNotFound", err)
	}
	if err := b.Delete(ctx, d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Delete before commit = %v, want ErrNotFound", err)
	}
	s := put(t, b, content, d)
	b.Discard(s)

	if size, err := b.Stat(ctx, d); err != nil || size != int64(len(content)) {
		t.Fatalf("Stat = %d, %v; want %d", size, err, len(content))
	}
	rc, size, err := b.Open(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if size != int64(len(content)) {
		t.Fatalf("Open gave size %d, want %d", size, len(content))
	}
	// Reads at offsets in any order, as seeks between Range requests make
	// them: each reopens the object at the new offset.
	for _, c := range []struct{ off, n int64 }{
		{0, 10}, {250_000, 50_000}, {5, 1}, {299_999, 1}, {100_000, 100_000}, {0, 300_000},
	} {
		if _, err := rc.Seek(c.off, io.SeekStart); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, c.n)
		if _, err := io.ReadFull(rc, got); err != nil || !bytes.Equal(got, content[c.off:c.off+c.n]) {
			t.Fatalf("%d bytes at offset %d: %v, or not the committed bytes", c.n, c.off, err)
		}
	}
	if _, err := rc.Seek(-3, io.SeekEnd); err != nil {
		t.Fatal(err)
	}
	if tail, err := io.ReadAll(rc); err != nil || !bytes.Equal(tail, content[len(content)-3:]) {
		t.Fatalf("the last 3 bytes read as %x (%v)", tail, err)
	}

	// The same through net/http, as serveCachedBlob serves a hit.
	for _, c := range []struct{ rng, want string }{
		{"bytes=1000-1999", string(content[1000:2000])},
		{"bytes=-10", string(content[len(content)-10:])},
		{"bytes=0-0,5-5", ""}, // multipart: checked by status only
	} {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.Header.Set("Range", c.rng)
		w := httptest.NewRecorder()
		if _, err := rc.Seek(0, io.SeekStart); err != nil {
			t.Fatal(err)
		}
		http.ServeContent(w, r, "", time.Time{}, rc)
		if w.Code != http.StatusPartialContent {
			t.Fatalf("Range %s: status %d, want 206", c.rng, w.Code)
		}
		if c.want != "" && w.Body.String() != c.want {
			t.Fatalf("Range %s: %d bytes, not the blob's", c.rng, w.Body.Len())
		}
	}

	other, od := randomBlob(t, 1000)
	b.Discard(put(t, b, other, od))
	if got := walked(t, b); len(got) != 2 || got[d] != int64(len(content)) || got[od] != 1000 {
		t.Fatalf("Walk saw %v, want both blobs with their sizes", got)
	}
	// A reader opened before an eviction, by this replica or another,
	// reads nothing after it: the blob is gone, not the store.
	evicted, _, err := b.Open(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	defer evicted.Close()
	if err := b.Delete(ctx, d); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Stat(ctx, d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Stat after Delete = %v, want ErrNotFound", err)
	}
	if _, err := evicted.Read(make([]byte, 10)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a read after Delete of a blob opened before = %v, want ErrNotFound", err)
	}
	if got := walked(t, b); len(got) != 1 || got[od] != 1000 {
		t.Fatalf("Walk after Delete saw %v, want only the other blob", got)
	}
	if left := listed(t, s3Driver(t, params), uploadsDir); len(left) != 0 {
		t.Errorf("temporary uploads left in the bucket: %v", left)
	}
}

// TestS3Redirect: with redirects on, a hit's URL is presigned for the
// bucket's endpoint and fetches the blob without credentials; with them
// off there is none, and airlock serves the bytes itself.
func TestS3Redirect(t *testing.T) {
	t.Parallel()
	params := s3test.Params(t)
	content, d := randomBlob(t, 50_000)
	b0 := s3Blobs(t, params)
	b0.Discard(put(t, b0, content, d))
	for _, c := range []struct {
		name string
		on   bool
	}{{"off", false}, {"on", true}} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			b := s3Blobs(t, params, WithRedirects(c.on))
			for _, method := range []string{http.MethodGet, http.MethodHead} {
				u, err := b.RedirectURL(httptest.NewRequest(method, "/", nil), d)
				if err != nil {
					t.Fatalf("%s: RedirectURL: %v", method, err)
				}
				if !c.on {
					if u != "" {
						t.Fatalf("%s: RedirectURL = %q with redirects off", method, u)
					}
					continue
				}
				pu, err := url.Parse(u)
				if err != nil || pu.Host != strings.TrimPrefix(params["regionendpoint"].(string), "http://") ||
					pu.Query().Get("X-Amz-Signature") == "" {
					t.Fatalf("%s: RedirectURL = %q, want a presigned URL on %s", method, u, params["regionendpoint"])
				}
				req, _ := http.NewRequestWithContext(t.Context(), method, u, nil)
				resp, err := (&http.Client{}).Do(req)
				if err != nil {
					t.Fatalf("%s of the presigned URL: %v", method, err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("%s of the presigned URL: %s: %s", method, resp.Status, body)
				}
				if method == http.MethodGet && !bytes.Equal(body, content) {
					t.Fatalf("the presigned URL served %d bytes, not the blob", len(body))
				}
				if method == http.MethodHead && resp.ContentLength != int64(len(content)) {
					t.Fatalf("HEAD of the presigned URL says %d bytes, want %d", resp.ContentLength, len(content))
				}
			}
		})
	}
}

// TestS3LargeBlob commits a blob of several multipart parts (the driver's
// smallest chunk, 5 MiB) and publishes it with a multipart copy, then
// reads it back whole and across a part boundary.
func TestS3LargeBlob(t *testing.T) {
	t.Parallel()
	const mib = 1 << 20
	params := with(s3test.Params(t), map[string]any{
		"chunksize":                  5 * mib,
		"multipartcopychunksize":     5 * mib,
		"multipartcopythresholdsize": 5 * mib,
	})
	b := s3Blobs(t, params)
	content, d := randomBlob(t, 12*mib+123)
	b.Discard(put(t, b, content, d))

	rc, size, err := b.Open(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if size != int64(len(content)) {
		t.Fatalf("size %d, want %d", size, len(content))
	}
	if got, err := io.ReadAll(rc); err != nil || digest.FromBytes(got) != d {
		t.Fatalf("read back %d bytes (%v), not the blob", len(got), err)
	}
	off := int64(5*mib - 100)
	if _, err := rc.Seek(off, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 200)
	if _, err := io.ReadFull(rc, got); err != nil || !bytes.Equal(got, content[off:off+200]) {
		t.Fatalf("200 bytes across the first part boundary: %v, or wrong bytes", err)
	}
	if left := listed(t, s3Driver(t, params), uploadsDir); len(left) != 0 {
		t.Errorf("temporary uploads left in the bucket: %v", left)
	}
}

// TestS3ReplicasCommitSameDigest: replicas sharing a bucket, each with its
// own spool directory, commit the same digest at the same moment. The
// bucket ends with one object at the blob's path, holding the right bytes,
// and no temporary upload.
func TestS3ReplicasCommitSameDigest(t *testing.T) {
	t.Parallel()
	const mib = 1 << 20
	params := with(s3test.Params(t), map[string]any{"chunksize": 5 * mib})
	replicas := []*Blobs{s3Blobs(t, params), s3Blobs(t, params), s3Blobs(t, params)}
	for _, size := range []int{100_000, 6 * mib} {
		content, d := randomBlob(t, size)
		spools := make([]*Spool, len(replicas))
		for i, b := range replicas {
			s, err := b.NewSpool(d)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Discard(s)
			if _, err := s.Write(content); err != nil {
				t.Fatal(err)
			}
			spools[i] = s
		}
		start := make(chan struct{})
		errs := make([]error, len(replicas))
		var wg sync.WaitGroup
		for i, b := range replicas {
			wg.Go(func() {
				<-start
				errs[i] = b.Commit(t.Context(), d, spools[i])
			})
		}
		close(start)
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("%d bytes: replica %d's commit: %v", size, i, err)
			}
		}
		drv := s3Driver(t, params)
		if objs := listed(t, drv, blobPath(d)[:strings.LastIndex(blobPath(d), "/")]); len(objs) != 1 || objs[0] != blobPath(d) {
			t.Fatalf("%d bytes: the blob's directory holds %v, want only %s", size, objs, blobPath(d))
		}
		for i, b := range replicas {
			rc, _, err := b.Open(t.Context(), d)
			if err != nil {
				t.Fatalf("replica %d: %v", i, err)
			}
			got, err := io.ReadAll(rc)
			rc.Close()
			if err != nil || !bytes.Equal(got, content) {
				t.Fatalf("%d bytes: replica %d reads %d bytes (%v), not the blob", size, i, len(got), err)
			}
		}
		if left := listed(t, drv, uploadsDir); len(left) != 0 {
			t.Errorf("%d bytes: temporary uploads left: %v", size, left)
		}
	}
}

// stoppingDriver stops the S3 server from inside a commit, at a chosen
// step of the upload, as a crash or a partition would.
type stoppingDriver struct {
	storagedriver.StorageDriver
	after int64  // stop once the upload has been handed this many bytes
	at    string // "write", "commit" or "move"
	stop  func()
	once  sync.Once
}

func (s *stoppingDriver) Writer(ctx context.Context, path string, append bool) (storagedriver.FileWriter, error) {
	w, err := s.StorageDriver.Writer(ctx, path, append)
	if err != nil {
		return nil, err
	}
	return &stoppingWriter{FileWriter: w, d: s}, nil
}

type stoppingWriter struct {
	storagedriver.FileWriter
	d *stoppingDriver
	n int64
}

func (w *stoppingWriter) Write(p []byte) (int, error) {
	n, err := w.FileWriter.Write(p)
	w.n += int64(n)
	if w.d.at == "write" && w.n >= w.d.after {
		w.d.once.Do(w.d.stop)
	}
	return n, err
}

func (s *stoppingDriver) Move(ctx context.Context, from, to string) error {
	if s.at == "move" {
		s.once.Do(s.stop)
	}
	return s.StorageDriver.Move(ctx, from, to)
}

func (w *stoppingWriter) Commit(ctx context.Context) error {
	if w.d.at == "commit" {
		w.d.once.Do(w.d.stop)
	}
	return w.FileWriter.Commit(ctx)
}

// TestS3CommitInterrupted stops the S3 server in the middle of a commit.
// The commit fails; once the server is back nothing is visible at the
// blob's path, committing the same spool again succeeds, and Recover
// removes what the failed commit left in the uploads directory.
func TestS3CommitInterrupted(t *testing.T) {
	t.Parallel()
	const mib = 1 << 20
	for _, c := range []struct {
		name  string
		at    string
		after int64
	}{
		{"after the first part", "write", 6 * mib},
		{"before completing the upload", "commit", 0},
		{"before moving the upload into place", "move", 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			srv := s3test.Start(t)
			params := with(srv.Params(t), map[string]any{"chunksize": 5 * mib})
			drv := &stoppingDriver{StorageDriver: s3Driver(t, params), at: c.at, after: c.after,
				stop: func() { srv.Stop(t) }}
			b, err := NewBlobs(drv, "", t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			content, d := randomBlob(t, 12*mib)
			s, err := b.NewSpool(d)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Discard(s)
			if _, err := s.Write(content); err != nil {
				t.Fatal(err)
			}
			err = b.Commit(t.Context(), d, s)
			if err == nil {
				t.Fatal("a commit succeeded with the S3 server stopped during its upload")
			}
			if !strings.Contains(err.Error(), "connection refused") {
				t.Errorf("the commit failed with %v; want the refused connection named", err)
			}
			srv.Restart(t)
			if _, err := b.Stat(t.Context(), d); !errors.Is(err, ErrNotFound) {
				t.Fatalf("after the failed commit, Stat = %v; want ErrNotFound", err)
			}
			if objs := listed(t, drv, "/blobs"); len(objs) != 0 {
				t.Fatalf("after the failed commit the bucket holds %v under /blobs", objs)
			}
			if err := b.Commit(t.Context(), d, s); err != nil {
				t.Fatalf("retrying the commit after a restart: %v", err)
			}
			rc, _, err := b.Open(t.Context(), d)
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			if got, err := io.ReadAll(rc); err != nil || digest.FromBytes(got) != d {
				t.Fatalf("the retried commit reads back %d bytes (%v), not the blob", len(got), err)
			}
			// What the failed commit could not clean up with the server
			// down is an abandoned upload, which Recover removes.
			b.uploadGrace = 0
			if _, err := b.Recover(t.Context()); err != nil {
				t.Fatal(err)
			}
			if left := listed(t, drv, uploadsDir); len(left) != 0 {
				t.Errorf("uploads left after Recover: %v", left)
			}
		})
	}
}

// TestS3Down: with the S3 server stopped, Stat, Open, a read of a blob
// opened before, Probe and Delete fail with ErrUnavailable and a message saying
// the store is unreachable, never ErrNotFound, which would send every
// request to the upstream for a blob the store holds. Once it is back, the
// blob is served again.
func TestS3Down(t *testing.T) {
	t.Parallel()
	srv := s3test.Start(t)
	b := s3Blobs(t, srv.Params(t))
	content, d := randomBlob(t, 10_000)
	b.Discard(put(t, b, content, d))
	before, _, err := b.Open(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()

	srv.Stop(t)
	check := func(what string, err error) {
		t.Helper()
		switch {
		case err == nil:
			t.Errorf("%s succeeded with the S3 server down", what)
		case errors.Is(err, ErrNotFound):
			t.Errorf("%s with the S3 server down = %v; a store that is down is not a miss", what, err)
		case !errors.Is(err, ErrUnavailable):
			t.Errorf("%s with the S3 server down = %v; want ErrUnavailable", what, err)
		case !strings.Contains(err.Error(), "s3aws object store is unreachable") ||
			!strings.Contains(err.Error(), srv.Addr()):
			t.Errorf("%s with the S3 server down = %q; want it to say the object store at %s is unreachable",
				what, err, srv.Addr())
		}
	}
	_, err = b.Stat(t.Context(), d)
	check("Stat", err)
	_, _, err = b.Open(t.Context(), d)
	check("Open", err)
	_, err = before.Read(make([]byte, 10))
	check("a read of a blob opened before", err)
	check("Probe", b.Probe(t.Context()))
	check("Delete", b.Delete(t.Context(), d))

	srv.Restart(t)
	if err := b.Probe(t.Context()); err != nil {
		t.Fatalf("Probe after a restart: %v", err)
	}
	rc, _, err := b.Open(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if got, err := io.ReadAll(rc); err != nil || !bytes.Equal(got, content) {
		t.Fatalf("after a restart read %d bytes (%v), not the blob", len(got), err)
	}
}

// TestS3MissingBucket: a bucket that does not exist is a store that cannot
// answer, not an empty one. Probe names the missing bucket; Stat does not
// report a miss.
func TestS3MissingBucket(t *testing.T) {
	t.Parallel()
	b := s3Blobs(t, with(s3test.Params(t), map[string]any{"bucket": "no-such-bucket"}))
	err := b.Probe(t.Context())
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "NoSuchBucket") ||
		strings.Contains(err.Error(), "unreachable") {
		t.Fatalf("Probe of a missing bucket = %v; want ErrUnavailable naming NoSuchBucket", err)
	}
	_, d := randomBlob(t, 10)
	if _, err := b.Stat(t.Context(), d); errors.Is(err, ErrNotFound) || !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Stat in a missing bucket = %v; want ErrUnavailable, not ErrNotFound", err)
	}
}

// TestS3LocalCache: with a local cache, the blobs a replica commits are
// served from local files, also while the object store is down; blobs
// other replicas committed come from the object store. The cache keeps to
// its bound, least recently used first, forgets what Delete removes, and
// is found again by the next store on the same directory.
func TestS3LocalCache(t *testing.T) {
	t.Parallel()
	srv := s3test.Start(t)
	params := srv.Params(t)
	cacheDir := t.TempDir()
	b := s3Blobs(t, params, WithLocalCache(cacheDir, 250_000))
	other := s3Blobs(t, params)
	ctx := t.Context()
	blobA, a := randomBlob(t, 100_000)
	blobB, bb := randomBlob(t, 100_000)
	blobC, c := randomBlob(t, 100_000)
	blobD, d := randomBlob(t, 100_000)
	huge, h := randomBlob(t, 300_000)

	// read opens d and checks its bytes, and whether they came from a
	// local file.
	read := func(b *Blobs, d digest.Digest, want []byte, local bool) {
		t.Helper()
		rc, size, err := b.Open(ctx, d)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		defer rc.Close()
		if _, isFile := rc.(*os.File); isFile != local {
			t.Errorf("Open returned %T; local copy expected: %v", rc, local)
		}
		if got, err := io.ReadAll(rc); err != nil || size != int64(len(want)) || !bytes.Equal(got, want) {
			t.Fatalf("read %d bytes of %d (%v); not the blob", len(got), size, err)
		}
	}
	b.Discard(put(t, b, blobA, a))
	other.Discard(put(t, other, blobC, c))
	b.Discard(put(t, b, huge, h))
	read(b, a, blobA, true)
	read(b, c, blobC, false)
	read(b, h, huge, false) // over the bound: not kept
	if u, err := b.RedirectURL(httptest.NewRequest(http.MethodGet, "/", nil), a); u != "" || err != nil {
		t.Errorf("RedirectURL of a blob with a local copy = %q, %v; want none", u, err)
	}
	if u, _ := b.RedirectURL(httptest.NewRequest(http.MethodGet, "/", nil), c); u == "" {
		t.Error("no RedirectURL for a blob without a local copy")
	}

	srv.Stop(t)
	read(b, a, blobA, true)
	if size, err := b.Stat(ctx, a); err != nil || size != int64(len(blobA)) {
		t.Errorf("Stat of a local copy with the object store down = %d, %v", size, err)
	}
	if _, _, err := b.Open(ctx, c); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Open of a blob without a local copy, the object store down = %v; want ErrUnavailable", err)
	}
	srv.Restart(t)

	b.Discard(put(t, b, blobB, bb))
	read(b, a, blobA, true) // a is now used more recently than bb
	b.Discard(put(t, b, blobD, d))
	read(b, a, blobA, true)
	read(b, d, blobD, true)
	read(b, bb, blobB, false) // evicted from the cache, still in the bucket
	if _, err := os.Stat(filepath.Join(cacheDir, "sha256-"+bb.Encoded())); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the evicted copy's file is still there: %v", err)
	}

	if err := b.Delete(ctx, a); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Stat(ctx, a); !errors.Is(err, ErrNotFound) {
		t.Errorf("Stat after Delete = %v; want ErrNotFound", err)
	}
	if _, err := os.Stat(filepath.Join(cacheDir, "sha256-"+a.Encoded())); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the deleted blob's copy is still there: %v", err)
	}

	again := s3Blobs(t, params, WithLocalCache(cacheDir, 250_000))
	read(again, d, blobD, true)
	if files, _ := os.ReadDir(cacheDir); len(files) != 1 {
		t.Errorf("the cache directory holds %d files, want the one copy", len(files))
	}
}

// TestS3WalkPages: Walk sees every blob of a bucket that lists in more than
// one page (the driver asks for 1000 keys at a time), and nothing that is
// not at a blob's path.
func TestS3WalkPages(t *testing.T) {
	t.Parallel()
	params := s3test.Params(t)
	drv := s3Driver(t, params)
	b := s3Blobs(t, params)
	const n = 1010
	want := make(map[digest.Digest]int64, n)
	contents := make(chan []byte)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for content := range contents {
				if err := drv.PutContent(t.Context(), blobPath(digest.FromBytes(content)), content); err != nil {
					t.Error(err)
				}
			}
		})
	}
	for i := range n {
		content := fmt.Appendf(nil, "blob %d", i)
		want[digest.FromBytes(content)] = int64(len(content))
		contents <- content
	}
	close(contents)
	wg.Wait()
	// Strays a walk must skip: a file beside a blob, a bad digest.
	for _, p := range []string{"/blobs/sha256/stray", "/blobs/sha256/ab/abc/data"} {
		if err := drv.PutContent(t.Context(), p, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	got := walked(t, b)
	if len(got) != n {
		t.Fatalf("Walk saw %d blobs, want %d", len(got), n)
	}
	for d, size := range want {
		if got[d] != size {
			t.Fatalf("Walk gave blob %s size %d, want %d", d, got[d], size)
		}
	}
}

// TestS3RecoverUploads: Recover removes temporary uploads older than the
// grace period, which a replica that died mid-commit left, and keeps young
// ones, which may be a live peer's.
func TestS3RecoverUploads(t *testing.T) {
	t.Parallel()
	params := s3test.Params(t)
	drv := s3Driver(t, params)
	b := s3Blobs(t, params)
	if err := drv.PutContent(t.Context(), uploadsDir+"/abandoned", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if n, err := b.Recover(t.Context()); err != nil || n != 0 {
		t.Fatalf("Recover within the grace period removed %d (%v); want none", n, err)
	}
	b.uploadGrace = 0
	if n, err := b.Recover(t.Context()); err != nil || n != 1 {
		t.Fatalf("Recover removed %d (%v); want the abandoned upload", n, err)
	}
	if left := listed(t, drv, uploadsDir); len(left) != 0 {
		t.Errorf("uploads left after Recover: %v", left)
	}
}

// TestS3ProbeSilentEndpoint: an endpoint that accepts connections and
// never answers fails the probe once its deadline passes, as unreachable.
func TestS3ProbeSilentEndpoint(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	held := make(chan net.Conn, 16)
	defer func() {
		l.Close()
		for {
			select {
			case c := <-held:
				c.Close()
			default:
				return
			}
		}
	}()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			select {
			case held <- c: // kept open, unanswered, until the test ends
			default:
				c.Close()
			}
		}
	}()
	b := s3Blobs(t, with(s3test.Params(t), map[string]any{"regionendpoint": "http://" + l.Addr().String()}))
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	err = b.Probe(ctx)
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "object store is unreachable") {
		t.Fatalf("Probe of a silent endpoint = %v; want it unreachable", err)
	}
}
