package storage

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/opencontainers/go-digest"
)

// shortWriter is a driver whose uploads lose their last byte yet commit
// without error: the fault Commit's size check is there for.
type shortWriter struct{ storagedriver.StorageDriver }

func (s shortWriter) Writer(ctx context.Context, path string, append bool) (storagedriver.FileWriter, error) {
	w, err := s.StorageDriver.Writer(ctx, path, append)
	return &dropLast{FileWriter: w}, err
}

type dropLast struct {
	storagedriver.FileWriter
	held bool
}

func (d *dropLast) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if _, err := d.FileWriter.Write(p[:len(p)-1]); err != nil {
		return 0, err
	}
	return len(p), nil
}

// TestRemoteCommitLeavesNoShortBlob: a remote upload the driver stored
// short fails the commit and leaves nothing at the blob's path, so the
// store never serves it.
func TestRemoteCommitLeavesNoShortBlob(t *testing.T) {
	t.Parallel()
	b, err := NewBlobs(shortWriter{inmemory.New()}, "", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	content := []byte("a blob the driver stores one byte short")
	d := digest.FromBytes(content)
	s, err := b.NewSpool(d)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Discard(s)
	if _, err := s.Write(content); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(t.Context(), d, s); err == nil {
		t.Fatal("a commit the driver stored short succeeded")
	}
	if size, err := b.Stat(t.Context(), d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after a failed commit the store holds %d bytes at the blob's path (%v)", size, err)
	}
	var seen []digest.Digest
	b.Walk(t.Context(), func(d digest.Digest, _ int64, _ time.Time) error { seen = append(seen, d); return nil })
	if len(seen) != 0 {
		t.Fatalf("Walk reports %v after a failed commit", seen)
	}
}

// TestRemoteCommitReplacesAShortObject: an object of the wrong size
// already at a blob's path is not taken for the blob; the commit replaces
// it.
func TestRemoteCommitReplacesAShortObject(t *testing.T) {
	t.Parallel()
	drv := inmemory.New()
	b, err := NewBlobs(drv, "", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	content := []byte("a blob an earlier fault stored short")
	d := digest.FromBytes(content)
	if err := drv.PutContent(t.Context(), blobPath(d), content[:5]); err != nil {
		t.Fatal(err)
	}
	s, err := b.NewSpool(d)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Discard(s)
	if _, err := s.Write(content); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(t.Context(), d, s); err != nil {
		t.Fatal(err)
	}
	if got, err := drv.GetContent(t.Context(), blobPath(d)); err != nil || string(got) != string(content) {
		t.Fatalf("after the commit the blob's path holds %q (%v)", got, err)
	}
}

// refusingStat answers every Stat with a refusal, as S3 does for a missing
// object when the credentials may not list the bucket.
type refusingStat struct{ storagedriver.StorageDriver }

func (refusingStat) Stat(context.Context, string) (storagedriver.FileInfo, error) {
	return nil, errors.New("s3aws: Forbidden: 403")
}

// TestProbeNeedsMissesToReadAsMisses: a store that takes writes but cannot
// tell a missing object from a refusal would turn every cold pull into a
// 503; the start-up probe refuses it and names the likely cause.
func TestProbeNeedsMissesToReadAsMisses(t *testing.T) {
	t.Parallel()
	b, err := NewBlobs(refusingStat{inmemory.New()}, "", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	err = b.Probe(t.Context())
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "listing the bucket") {
		t.Fatalf("Probe = %v, want ErrUnavailable naming the listing permission", err)
	}
	if err := func() error { b2, _ := NewBlobs(inmemory.New(), "", t.TempDir()); return b2.Probe(t.Context()) }(); err != nil {
		t.Fatalf("Probe of a working store = %v", err)
	}
}

// countingStat counts the Stats of path and holds each until release is
// closed.
type countingStat struct {
	storagedriver.StorageDriver
	path    string
	calls   atomic.Int32
	release chan struct{}
}

func (c *countingStat) Stat(ctx context.Context, path string) (storagedriver.FileInfo, error) {
	if path == c.path {
		c.calls.Add(1)
		<-c.release
	}
	return c.StorageDriver.Stat(ctx, path)
}

// TestOpensShareOneLook: a burst of Opens of one blob asks the object
// store once; an Open whose client left returns at once while the others
// still get the answer; an Open after the look ended asks again and sees
// a commit made since; Stat (a fill's look) is never shared.
func TestOpensShareOneLook(t *testing.T) {
	t.Parallel()
	content := []byte("a layer everyone pulls at once")
	d := digest.FromBytes(content)
	drv := &countingStat{StorageDriver: inmemory.New(), path: blobPath(d), release: make(chan struct{})}
	b, err := NewBlobs(drv, "", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	const clients = 20
	errs := make(chan error, clients)
	for range clients {
		go func() {
			_, _, err := b.Open(ctx, d)
			errs <- err
		}()
	}
	gone, cancel := context.WithCancel(ctx)
	left := make(chan error, 1)
	go func() {
		_, _, err := b.Open(gone, d)
		left <- err
	}()
	waitCalls := func(want int32) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for drv.calls.Load() < want && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		if got := drv.calls.Load(); got != want {
			t.Fatalf("%d Stats of the blob reached the driver; want %d", got, want)
		}
	}
	waitCalls(1)
	time.Sleep(20 * time.Millisecond) // every Open is waiting by now, or joins later: either way one look
	cancel()
	if err := <-left; !errors.Is(err, context.Canceled) {
		t.Fatalf("an Open whose context ended while the look ran: %v; want context.Canceled", err)
	}
	close(drv.release)
	for range clients {
		if err := <-errs; !errors.Is(err, ErrNotFound) {
			t.Fatalf("Open of a missing blob: %v; want ErrNotFound", err)
		}
	}
	if got := drv.calls.Load(); got != 1 {
		t.Fatalf("%d Stats of the blob reached the driver for %d Opens; want 1", got, clients+1)
	}
	if _, err := commitBytes(ctx, b, content); err != nil {
		t.Fatal(err)
	}
	r, size, err := b.Open(ctx, d)
	if err != nil || size != int64(len(content)) {
		t.Fatalf("Open after the commit: %d bytes, %v", size, err)
	}
	r.Close()
	// Stats are each their own request.
	before := drv.calls.Load()
	for range 3 {
		if _, err := b.Stat(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	if got := drv.calls.Load() - before; got != 3 {
		t.Fatalf("3 Stats made %d requests; want 3", got)
	}
}

// staleStat answers the first Stat of path as the driver saw it then, but
// only once release is closed: a look in flight across a commit.
type staleStat struct {
	storagedriver.StorageDriver
	path    string
	first   atomic.Bool
	release chan struct{}
	calls   atomic.Int32
}

func (s *staleStat) Stat(ctx context.Context, path string) (storagedriver.FileInfo, error) {
	fi, err := s.StorageDriver.Stat(ctx, path)
	if path == s.path {
		s.calls.Add(1)
		if s.first.CompareAndSwap(false, true) {
			<-s.release
		}
	}
	return fi, err
}

// TestOpenAfterCommitSeesIt: an Open that begins after a commit returned
// finds the blob, even while a look begun before the commit, which
// missed it, has not answered yet. A scan reopens a blob right after its
// fill committed it and gives up on a miss.
func TestOpenAfterCommitSeesIt(t *testing.T) {
	t.Parallel()
	content := []byte("a layer committed while a look was out")
	d := digest.FromBytes(content)
	drv := &staleStat{StorageDriver: inmemory.New(), path: blobPath(d), release: make(chan struct{})}
	b, err := NewBlobs(drv, "", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	early := make(chan error, 1)
	go func() {
		_, _, err := b.Open(ctx, d)
		early <- err
	}()
	for drv.calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	if _, err := commitBytes(ctx, b, content); err != nil {
		t.Fatal(err)
	}
	late := make(chan error, 1)
	go func() {
		r, _, err := b.Open(ctx, d)
		if err == nil {
			r.Close()
		}
		late <- err
	}()
	select {
	case err := <-late:
		if err != nil {
			t.Fatalf("Open after the commit: %v; want the blob", err)
		}
	case <-time.After(200 * time.Millisecond):
		close(drv.release)
		t.Fatalf("Open after the commit waited for a look begun before it (it answers %v)", <-late)
	}
	close(drv.release)
	if err := <-early; !errors.Is(err, ErrNotFound) {
		t.Fatalf("the Open begun before the commit: %v; want ErrNotFound, as its look saw", err)
	}
}

// hungStat never answers a Stat: it returns when the caller gives up.
type hungStat struct{ storagedriver.StorageDriver }

func (hungStat) Stat(ctx context.Context, path string) (storagedriver.FileInfo, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

// TestHungLookIsTheStores: a shared look that the object store never
// answers ends at its own time limit, which no client set: its Opens
// fail as the store being unavailable, not as their own deadline.
func TestHungLookIsTheStores(t *testing.T) {
	t.Parallel()
	b, err := NewBlobs(hungStat{inmemory.New()}, "", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b.lookTimeout = 50 * time.Millisecond
	_, _, err = b.Open(t.Context(), digest.FromString("a layer"))
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Open while the store hangs: %v; want ErrUnavailable", err)
	}
}

// TestOpenAfterDeleteMissesIt: an Open that begins after a delete
// returned misses the blob, even while a look begun before the delete,
// which found it, has not answered yet; a pull then fetches the blob
// again instead of serving a reader of nothing.
func TestOpenAfterDeleteMissesIt(t *testing.T) {
	t.Parallel()
	content := []byte("a layer evicted while a look was out")
	d := digest.FromBytes(content)
	drv := &staleStat{StorageDriver: inmemory.New(), path: blobPath(d), release: make(chan struct{})}
	drv.first.Store(true) // the commit's own looks pass
	b, err := NewBlobs(drv, "", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if _, err := commitBytes(ctx, b, content); err != nil {
		t.Fatal(err)
	}
	drv.first.Store(false)
	calls := drv.calls.Load()
	early := make(chan error, 1)
	go func() {
		r, _, err := b.Open(ctx, d)
		if err == nil {
			r.Close()
		}
		early <- err
	}()
	for drv.calls.Load() == calls {
		time.Sleep(time.Millisecond)
	}
	if err := b.Delete(ctx, d); err != nil {
		t.Fatal(err)
	}
	late := make(chan error, 1)
	go func() {
		r, _, err := b.Open(ctx, d)
		if err == nil {
			r.Close()
		}
		late <- err
	}()
	select {
	case err := <-late:
		if !errors.Is(err, ErrNotFound) {
			t.Fatalf("Open after the delete: %v; want ErrNotFound", err)
		}
	case <-time.After(200 * time.Millisecond):
		close(drv.release)
		t.Fatalf("Open after the delete waited for a look begun before it (it answers %v)", <-late)
	}
	close(drv.release)
	if err := <-early; err != nil {
		t.Fatalf("the Open begun before the delete: %v; want the blob, as its look saw", err)
	}
}
