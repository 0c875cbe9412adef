package storage

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"syscall"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/verify"
)

// Commit makes the fully written spool s the blob d.
//
// It re-checks the spool's bytes against d (they were hashed as they were
// written, so this costs nothing extra) and fails with an error wrapping
// verify.ErrDigestMismatch if they differ; a failed commit leaves the spool
// to Discard. If d already exists the spool is dropped and Commit succeeds.
// On the local path the spool file is renamed into place and both the file
// and its directories are synced; for remote drivers the bytes go to a
// temporary object that is committed and then moved into place.
//
// A commit that fails leaves no blob at d's path, or a whole one: the
// rename is the only step that publishes, and everything before it can
// fail without a trace outside the spool directory. A full volume fails
// with an error wrapping ErrNoSpace.
//
// The spool's handle stays open for readers; release it with Close or
// Discard. Commit must be called by the goroutine that wrote the spool.
func (b *Blobs) Commit(ctx context.Context, d digest.Digest, s *Spool) error {
	if s.digest != d {
		return fmt.Errorf("commit of blob %s given the spool for %s", d, s.digest)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("commit of blob %s: %w", d, err)
	}
	if got := s.sum(); got != d {
		return fmt.Errorf("commit of blob %s: spool holds %s over %d bytes: %w", d, got, s.Size(), verify.ErrDigestMismatch)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.committed {
		return nil
	}
	if s.closed || s.removed {
		return fmt.Errorf("commit of blob %s: spool %s was already discarded or closed", d, s.path)
	}
	var err error
	if b.localRoot != "" {
		err = b.commitLocal(d, s)
	} else {
		err = b.commitRemote(ctx, d, s)
	}
	if err != nil {
		return noSpace(err)
	}
	s.committed = true
	s.forget()
	b.forgetLook(d)
	return nil
}

func (b *Blobs) commitLocal(d digest.Digest, s *Spool) error {
	// Room reserved beyond what arrived (the declared size was too large)
	// would stay allocated to the blob, unseen by Walk: give it back.
	if s.reserved.Load() > s.Size() {
		if err := s.f.Truncate(s.Size()); err != nil {
			return fmt.Errorf("commit of blob %s: releasing reserved room: %w", d, err)
		}
	}
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("commit of blob %s: syncing spool %s: %w", d, s.path, err)
	}
	final := b.localPath(d)
	if _, err := os.Stat(final); err == nil {
		return b.dropCommittedSpool(d, s)
	}
	dir := filepath.Dir(final)
	top := firstExisting(dir)
	// A concurrent commit of the same digest may rename over this one or be
	// renamed over; either way the file at final is whole and identical.
	// Delete removes a blob's directory after the blob, so a rename can
	// find the directory it just created gone; creating it once more is
	// enough, as Delete removes it only when it is empty.
	var err error
	for range 2 {
		if err = os.MkdirAll(dir, 0o750); err != nil {
			return fmt.Errorf("commit of blob %s: %w", d, err)
		}
		if err = os.Rename(s.path, final); !errors.Is(err, os.ErrNotExist) {
			break
		}
	}
	if err != nil {
		// Leave no empty directory behind for a blob that is not there;
		// this fails harmlessly if a concurrent commit of d filled it.
		_ = os.Remove(dir)
		return fmt.Errorf("commit of blob %s: moving spool into place: %w", d, err)
	}
	s.removed = true
	// The rename is durable only once the directory holding the new entry is
	// synced, and so on up through every directory MkdirAll just created.
	for p := dir; ; p = filepath.Dir(p) {
		// A directory gone already means a Delete (eviction) removed the
		// blob just published, and its directory with it; that removal is
		// the entry left to make durable, and it is Delete's.
		if err := syncDir(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("commit of blob %s: %w", d, err)
		}
		if p == top || p == filepath.Dir(p) {
			break
		}
	}
	return nil
}

// dropCommittedSpool removes a spool whose blob already exists. Open
// handles keep reading the unlinked file.
func (b *Blobs) dropCommittedSpool(d digest.Digest, s *Spool) error {
	if err := os.Remove(s.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("commit of blob %s (already stored): removing spool: %w", d, err)
	}
	s.removed = true
	return nil
}

func (b *Blobs) commitRemote(ctx context.Context, d digest.Digest, s *Spool) error {
	final := blobPath(d)
	// An object of another size at the path is not the blob (an earlier
	// fault left it): the upload replaces it.
	if fi, err := b.driver.Stat(ctx, final); err == nil && fi.Size() == s.Size() {
		return b.keepCommittedSpool(d, s)
	}
	tmp, err := uploadPath(d)
	if err != nil {
		return err
	}
	if err := b.upload(ctx, tmp, s); err != nil {
		b.driver.Delete(context.WithoutCancel(ctx), tmp)
		return fmt.Errorf("commit of blob %s: uploading to the %s driver: %w", d, b.driver.Name(), err)
	}
	// The upload is checked before it is published: the move is the only
	// step that may put bytes at a final path, and they must be whole.
	if fi, err := b.driver.Stat(ctx, tmp); err != nil || fi.Size() != s.Size() {
		b.driver.Delete(context.WithoutCancel(ctx), tmp)
		if err != nil {
			return fmt.Errorf("commit of blob %s: checking the upload: %w", d, err)
		}
		return fmt.Errorf("commit of blob %s: the %s driver stored %d bytes of %d", d, b.driver.Name(), fi.Size(), s.Size())
	}
	if err := b.driver.Move(ctx, tmp, final); err != nil {
		b.driver.Delete(context.WithoutCancel(ctx), tmp)
		// A concurrent commit may have won the race; its content is ours.
		if _, serr := b.driver.Stat(ctx, final); serr != nil {
			return fmt.Errorf("commit of blob %s: moving into place in the %s driver: %w", d, b.driver.Name(), err)
		}
	}
	fi, err := b.driver.Stat(ctx, final)
	if err != nil {
		return fmt.Errorf("commit of blob %s: checking the stored blob: %w", d, err)
	}
	if fi.Size() != s.Size() {
		// The digest fixes the size: whatever is there is not the blob
		// (a concurrent writer's fault), and must not be served.
		b.driver.Delete(context.WithoutCancel(ctx), final)
		return fmt.Errorf("commit of blob %s: the %s driver holds %d bytes of %d at its path; removed", d, b.driver.Name(), fi.Size(), s.Size())
	}
	return b.keepCommittedSpool(d, s)
}

// keepCommittedSpool makes a spool whose blob is now in the remote store
// the local copy, when there is a local cache, and removes it otherwise.
func (b *Blobs) keepCommittedSpool(d digest.Digest, s *Spool) error {
	if b.cache != nil && b.cache.adopt(s) {
		s.removed = true
		return nil
	}
	return b.dropCommittedSpool(d, s)
}

func (b *Blobs) upload(ctx context.Context, tmp string, s *Spool) error {
	w, err := b.driver.Writer(ctx, tmp, false)
	if err != nil {
		return err
	}
	src := &ctxReader{ctx: ctx, r: io.NewSectionReader(s.f, 0, s.Size())}
	if _, err := io.Copy(w, src); err != nil {
		w.Cancel(context.WithoutCancel(ctx))
		w.Close()
		return err
	}
	if err := w.Commit(ctx); err != nil {
		w.Close()
		return err
	}
	return w.Close()
}

// uploadPath names a temporary object for a remote commit of d. The random
// part keeps concurrent commits, from this process or a peer sharing the
// bucket, from writing the same object.
func uploadPath(d digest.Digest) (string, error) {
	var r [8]byte
	if _, err := rand.Read(r[:]); err != nil {
		return "", fmt.Errorf("commit of blob %s: naming upload: %w", d, err)
	}
	return path.Join(uploadsDir, string(d.Algorithm())+"-"+d.Encoded()+"-"+hex.EncodeToString(r[:])), nil
}

// ctxReader stops a long copy when its context ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// firstExisting returns the nearest ancestor of dir (or dir itself) that
// exists now, i.e. the highest directory whose entries MkdirAll may change.
func firstExisting(dir string) string {
	for p := dir; ; p = filepath.Dir(p) {
		if _, err := os.Stat(p); err == nil || p == filepath.Dir(p) {
			return p
		}
	}
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("syncing directory: %w", err)
	}
	defer f.Close()
	// Some filesystems cannot sync a directory and say so with EINVAL;
	// there is nothing more to do on those.
	if err := f.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
		return fmt.Errorf("syncing directory %s: %w", dir, err)
	}
	return nil
}
