package storage

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	"github.com/opencontainers/go-digest"
)

// smallVolume mounts a tmpfs of size bytes holding at most inodes files and
// directories (0: the kernel's default) on a new directory, for the test.
//
// A full volume is tested for real rather than through a fake writer: the
// errors worth handling (ENOSPC from create, write, fallocate, mkdir and
// rename, each at its own moment) are what the kernel decides, and a fake
// would only repeat our assumptions. Mounting needs CAP_SYS_ADMIN, so the
// tests are skipped where it is missing, except under CI (CI set), where
// they must run and a failed mount fails them.
func smallVolume(t *testing.T, size int64, inodes int) string {
	t.Helper()
	dir := t.TempDir()
	opts := fmt.Sprintf("size=%d,mode=0700", size)
	if inodes > 0 {
		opts += fmt.Sprintf(",nr_inodes=%d", inodes)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, opts); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("mounting a %d-byte tmpfs to test a full volume: %v (CI must run these tests as root)", size, err)
		}
		t.Skipf("cannot mount a tmpfs to test a full volume (needs root): %v", err)
	}
	// Lazy, so a file a failing test left open cannot keep it mounted.
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	return dir
}

// fillInodes creates empty files in dir until the volume has no inode left
// and returns a function that removes them again.
func fillInodes(t *testing.T, dir string) (free func()) {
	t.Helper()
	var made []string
	for i := 0; ; i++ {
		p := filepath.Join(dir, fmt.Sprintf("filler-%d", i))
		f, err := os.Create(p)
		if errors.Is(err, syscall.ENOSPC) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		made = append(made, p)
		if i > 10_000 {
			t.Fatal("the volume does not run out of inodes")
		}
	}
	return func() {
		for _, p := range made {
			os.Remove(p)
		}
	}
}

// requireNoSpace fails unless err says the volume is full in both ways a
// caller may ask: ErrNoSpace and the errno itself.
func requireNoSpace(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, ErrNoSpace) || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("%s on a full volume = %v; want an error wrapping ErrNoSpace and ENOSPC", what, err)
	}
}

// requireNothingStored fails if d, or anything at all, is visible as a blob.
func requireNothingStored(t *testing.T, b *Blobs, d digest.Digest) {
	t.Helper()
	if _, err := b.Stat(t.Context(), d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Stat(%s) after a failure = %v; want ErrNotFound", d, err)
	}
	if err := b.Walk(t.Context(), func(d digest.Digest, _ int64, _ time.Time) error {
		return fmt.Errorf("Walk found %s after a failure", d)
	}); err != nil {
		t.Fatal(err)
	}
}

// TestNoSpace fills a real volume at each step of a download and checks
// that the error says so (ErrNoSpace) and that nothing partial is visible.
// A full volume must cost caching, never correctness.
func TestNoSpace(t *testing.T) {
	t.Parallel()
	const volume = 1 << 20

	t.Run("write", func(t *testing.T) {
		t.Parallel()
		b, err := NewFilesystem(smallVolume(t, volume, 0))
		if err != nil {
			t.Fatal(err)
		}
		content, d := randomBlob(t, 2*volume)
		s, err := b.NewSpool(d)
		if err != nil {
			t.Fatal(err)
		}
		_, err = s.Write(content)
		requireNoSpace(t, "Write", err)
		if err := b.Discard(s); err != nil {
			t.Fatal(err)
		}
		requireNothingStored(t, b, d)
		if files := spoolFiles(t, b); len(files) != 0 {
			t.Fatalf("spool files left after Discard: %v", files)
		}
		// The room the spool took is free again.
		small, sd := randomBlob(t, volume/4)
		b.Discard(put(t, b, small, sd))
	})

	t.Run("append", func(t *testing.T) {
		t.Parallel()
		b, err := NewFilesystem(smallVolume(t, volume, 0))
		if err != nil {
			t.Fatal(err)
		}
		content, d := randomBlob(t, 2*volume)
		s, err := b.NewSpool(d)
		if err != nil {
			t.Fatal(err)
		}
		_, err = s.Append(bytes.NewReader(content), nil)
		requireNoSpace(t, "Append", err)
		if err := b.Discard(s); err != nil {
			t.Fatal(err)
		}
		requireNothingStored(t, b, d)
	})

	t.Run("reserve", func(t *testing.T) {
		t.Parallel()
		b, err := NewFilesystem(smallVolume(t, volume, 0))
		if err != nil {
			t.Fatal(err)
		}
		content, d := randomBlob(t, 100<<10)
		s, err := b.NewSpool(d)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Discard(s)
		requireNoSpace(t, "Reserve of twice the volume", s.Reserve(2*volume))
		if s.Size() != 0 || b.SpoolBytes() != 0 {
			t.Fatalf("a failed Reserve counts: Size %d, SpoolBytes %d", s.Size(), b.SpoolBytes())
		}
		if err := s.Reserve(volume / 2); err != nil {
			t.Fatalf("Reserve of half the volume: %v", err)
		}
		if got := b.SpoolBytes(); got != volume/2 {
			t.Errorf("SpoolBytes after Reserve = %d, want %d", got, volume/2)
		}
		// The reserved room is taken: another download cannot have it.
		other, od := randomBlob(t, volume*3/4)
		os2, err := b.NewSpool(od)
		if err != nil {
			t.Fatal(err)
		}
		_, err = os2.Write(other)
		requireNoSpace(t, "Write into reserved room", err)
		b.Discard(os2)

		// The reservation is not content: the spool and the blob hold
		// exactly what was written.
		if _, err := s.Write(content); err != nil {
			t.Fatal(err)
		}
		if fi, err := os.Stat(s.Path()); err != nil || fi.Size() != int64(len(content)) {
			t.Fatalf("spool file after Reserve and Write: %v, %v; want %d bytes", fi, err, len(content))
		}
		if err := b.Commit(t.Context(), d, s); err != nil {
			t.Fatal(err)
		}
		rc, size, err := b.Open(t.Context(), d)
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		got, _ := io.ReadAll(rc)
		if size != int64(len(content)) || !bytes.Equal(got, content) {
			t.Fatalf("blob after a reserved download: %d bytes, want %d", size, len(content))
		}
		if n := b.SpoolBytes(); n != 0 {
			t.Errorf("SpoolBytes after Commit = %d, want 0", n)
		}
		// Reserved room the blob did not use is free again: a download
		// needing most of the volume fits.
		os3, err := b.NewSpool(od)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Discard(os3)
		if _, err := os3.Write(other); err != nil {
			t.Fatalf("Write after a commit that used less than its reservation: %v", err)
		}
	})

	t.Run("create", func(t *testing.T) {
		t.Parallel()
		vol := smallVolume(t, volume, 16)
		b, err := NewFilesystem(vol)
		if err != nil {
			t.Fatal(err)
		}
		defer fillInodes(t, vol)()
		_, d := randomBlob(t, 10)
		_, err = b.NewSpool(d)
		requireNoSpace(t, "NewSpool", err)
		if files := spoolFiles(t, b); len(files) != 0 {
			t.Fatalf("spool files after a failed NewSpool: %v", files)
		}
	})

	for _, local := range []bool{true, false} {
		t.Run(fmt.Sprintf("commit local=%v", local), func(t *testing.T) {
			t.Parallel()
			vol := smallVolume(t, volume, 16)
			var b *Blobs
			var err error
			if local {
				b, err = NewFilesystem(vol)
			} else {
				drv := filesystem.New(filesystem.DriverParameters{RootDirectory: filepath.Join(vol, "root"), MaxThreads: 10})
				b, err = NewBlobs(drv, "", filepath.Join(vol, "spool"))
			}
			if err != nil {
				t.Fatal(err)
			}
			content, d := randomBlob(t, 1000)
			s, err := b.NewSpool(d)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Discard(s)
			if _, err := s.Write(content); err != nil {
				t.Fatal(err)
			}
			// Publishing needs directories for the digest: no inode left.
			free := fillInodes(t, vol)
			requireNoSpace(t, "Commit", b.Commit(t.Context(), d, s))
			free()
			requireNothingStored(t, b, d)
			if b.SpoolBytes() != int64(len(content)) {
				t.Errorf("SpoolBytes after a failed Commit = %d, want %d", b.SpoolBytes(), len(content))
			}
			// The spool is intact: once there is room, the same commit
			// succeeds.
			if err := b.Commit(t.Context(), d, s); err != nil {
				t.Fatalf("Commit once there is room again: %v", err)
			}
			if size, err := b.Stat(t.Context(), d); err != nil || size != int64(len(content)) {
				t.Fatalf("Stat after the retried Commit = %d, %v", size, err)
			}
		})
	}
}

// TestStartOnFullVolume proves a store whose volume a crash left full of
// spools still opens, so that Recover can remove them; refusing to start
// would leave the volume full for ever.
func TestStartOnFullVolume(t *testing.T) {
	t.Parallel()
	vol := smallVolume(t, 1<<20, 16)
	b, err := NewFilesystem(vol)
	if err != nil {
		t.Fatal(err)
	}
	// A crash leaves as many spools as the volume holds.
	for {
		_, d := randomBlob(t, 10)
		s, err := b.NewSpool(d)
		if errors.Is(err, ErrNoSpace) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		s.f.Close()
	}

	after, err := NewFilesystem(vol)
	if err != nil {
		t.Fatalf("NewFilesystem on a volume full of leftover spools: %v", err)
	}
	if n, err := after.Recover(t.Context()); err != nil || n == 0 {
		t.Fatalf("Recover = %d, %v; want the leftover spools removed", n, err)
	}
	content, d := randomBlob(t, 1000)
	after.Discard(put(t, after, content, d))
}

// TestDiscardFreesRoomReadersHold: a discarded spool gives its room back
// at once, its reservation included, even while readers hold handles of
// their own on it (OpenReader). Those handles are a follower's, and a
// follower whose client stopped reading keeps one open for as long as the
// client likes: the unlinked file it pins would fill the volume unseen by
// SpoolBytes and by eviction. Its readers find the spool ended instead.
func TestDiscardFreesRoomReadersHold(t *testing.T) {
	t.Parallel()
	const volume = 4 << 20
	b, err := NewFilesystem(smallVolume(t, volume, 0))
	if err != nil {
		t.Fatal(err)
	}
	content, d := randomBlob(t, 3<<20)
	s, err := b.NewSpool(d)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Reserve(int64(len(content))); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write(content[:1<<20]); err != nil {
		t.Fatal(err)
	}
	r, err := s.OpenReader()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	head := make([]byte, 1000)
	if _, err := io.ReadFull(r, head); err != nil || !bytes.Equal(head, content[:1000]) {
		t.Fatalf("reader before Discard: %v", err)
	}
	if err := b.Discard(s); err != nil {
		t.Fatal(err)
	}
	if n := b.SpoolBytes(); n != 0 {
		t.Fatalf("SpoolBytes after Discard = %d, want 0", n)
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(r.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks != 0 || st.Size != 0 {
		t.Fatalf("a reader's handle pins %d blocks (%d bytes) of the discarded spool", st.Blocks, st.Size)
	}
	if rest, err := io.ReadAll(r); err != nil || len(rest) != 0 {
		t.Fatalf("reader after Discard: %d more bytes, %v; want the spool ended", len(rest), err)
	}
	// The next download of that size finds its room.
	s2, err := b.NewSpool(d)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Discard(s2)
	if err := s2.Reserve(int64(len(content))); err != nil {
		t.Fatalf("reserving after the last spool of the size was discarded: %v", err)
	}
}
