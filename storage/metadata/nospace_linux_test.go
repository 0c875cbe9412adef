package metadata

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/storage"
)

// smallVolume mounts a tmpfs of size bytes on a new directory (see the
// storage package's test of the same name).
func smallVolume(t *testing.T, size int64) string {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, fmt.Sprintf("size=%d,mode=0700", size)); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("mounting a tmpfs to test a full volume: %v (CI must run these tests as root)", err)
		}
		t.Skipf("cannot mount a tmpfs to test a full volume (needs root): %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	return dir
}

// TestOpenOnAFullVolume: the index must open on a volume that is full,
// whatever filled it (spools a crash left, the index itself), because
// airlock opens it before it removes leftover spools and before eviction
// can make room: an index that cannot open keeps airlock from starting,
// and so from ever freeing the volume. Writes then fail with
// storage.ErrNoSpace, and the index still reads.
func TestOpenOnAFullVolume(t *testing.T) {
	t.Parallel()
	vol := smallVolume(t, 512<<10)
	path := filepath.Join(vol, "metadata.db")
	db, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	// Fill the index until the volume refuses it more room.
	body := make([]byte, 16<<10)
	var last digest.Digest
	for i := 0; ; i++ {
		body[0], body[1] = byte(i), byte(i>>8)
		d := digest.FromBytes(body)
		err := db.PutManifest(t.Context(), "hub/library/app", ManifestRecord{Digest: d, MediaType: "application/vnd.oci.image.manifest.v1+json", Body: body}, Link{})
		if err != nil {
			if !errors.Is(err, storage.ErrNoSpace) {
				t.Fatalf("writing a full index: %v; want an error wrapping storage.ErrNoSpace", err)
			}
			break
		}
		last = d
		if i > 1000 {
			t.Fatal("the volume never filled up")
		}
	}
	if err := db.Close(); err != nil && !errors.Is(err, storage.ErrNoSpace) {
		t.Fatal(err)
	}
	// Whatever room is left goes to a leftover file.
	f, err := os.Create(filepath.Join(vol, "leftover.spool"))
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := f.Write(make([]byte, 4096)); err != nil {
			break
		}
	}
	f.Close()

	db, err = Open(path)
	if err != nil {
		t.Fatalf("opening the index on a full volume: %v", err)
	}
	defer db.Close()
	if _, err := db.Manifest(t.Context(), last); err != nil {
		t.Fatalf("reading the index opened on a full volume: %v", err)
	}
}
