package storage

import (
	"context"
	"errors"
	"strings"
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
