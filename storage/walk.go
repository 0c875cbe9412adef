package storage

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/verify"
)

// walkFunc is what [Blobs.Walk] calls once per committed blob.
type walkFunc func(d digest.Digest, size int64, modTime time.Time) error

// Walk calls fn for every committed blob in the store, in no particular
// order, with its size and the time it was committed. An error from fn
// stops the walk and Walk returns it unchanged. Anything under /blobs that is not at a valid blob path (stray
// files, directories, probe leftovers) is skipped, so fn only ever sees
// digests that Open and Delete accept. Blobs committed or deleted while the
// walk runs may or may not be seen. An empty store is walked without error.
func (b *Blobs) Walk(ctx context.Context, fn func(d digest.Digest, size int64, modTime time.Time) error) error {
	if b.localRoot != "" {
		return b.walkLocal(ctx, fn)
	}
	return b.walkRemote(ctx, fn)
}

// walkLocal reads the directory tree itself: one lstat per entry instead of
// the driver's List-then-Stat, which matters for a store of a million
// blobs measured every few minutes.
func (b *Blobs) walkLocal(ctx context.Context, fn walkFunc) error {
	root := filepath.Join(b.localRoot, "blobs")
	err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // removed while walking, or no blob yet at all
			}
			return fmt.Errorf("walking blobs: %w", err)
		}
		if e.IsDir() {
			return ctx.Err()
		}
		if !e.Type().IsRegular() {
			return nil
		}
		rel, err := filepath.Rel(b.localRoot, p)
		if err != nil {
			return nil
		}
		d, ok := parseBlobPath("/" + filepath.ToSlash(rel))
		if !ok {
			return nil
		}
		fi, err := e.Info()
		if err != nil {
			return nil // evicted or replaced since the directory was read
		}
		return fn(d, fi.Size(), fi.ModTime())
	})
	return err
}

func (b *Blobs) walkRemote(ctx context.Context, fn walkFunc) error {
	// Errors from fn are carried out of the driver's walk in stopped, so
	// that Walk returns them unchanged whatever the driver does with them.
	var stopped error
	err := b.driver.Walk(ctx, "/blobs", func(fi storagedriver.FileInfo) error {
		if err := ctx.Err(); err != nil {
			stopped = err
			return err
		}
		if fi.IsDir() {
			return nil
		}
		d, ok := parseBlobPath(fi.Path())
		if !ok {
			return nil
		}
		if err := fn(d, fi.Size(), fi.ModTime()); err != nil {
			stopped = err
			return err
		}
		return nil
	})
	if stopped != nil {
		return stopped
	}
	var pnf storagedriver.PathNotFoundError
	if errors.As(err, &pnf) {
		return nil // nothing committed yet
	}
	if err != nil && ctx.Err() != nil {
		// The driver reports the cancellation in its own words (the S3
		// driver's RequestCanceled), hiding the caller's error.
		return fmt.Errorf("walking blobs in the %s driver: %w: %w", b.driver.Name(), ctx.Err(), err)
	}
	if err != nil {
		return fmt.Errorf("walking blobs in the %s driver: %w", b.driver.Name(), &storeError{driver: b.driver.Name(), unreachable: unreachable(err), err: err})
	}
	return nil
}

// parseBlobPath is the inverse of blobPath: it returns the digest stored at
// p, or false if p is not exactly where blobPath would put a valid digest.
func parseBlobPath(p string) (digest.Digest, bool) {
	parts := strings.Split(p, "/")
	// "", "blobs", algorithm, first two hex, hex, "data"
	if len(parts) != 6 || parts[0] != "" || parts[1] != "blobs" || parts[5] != "data" {
		return "", false
	}
	alg, prefix, hex := parts[2], parts[3], parts[4]
	if len(hex) < 2 || hex[:2] != prefix {
		return "", false
	}
	d := digest.NewDigestFromEncoded(digest.Algorithm(alg), hex)
	if verify.Check(d) != nil || blobPath(d) != p {
		return "", false
	}
	return d, true
}

// Delete removes blob d, or returns an error wrapping ErrNotFound if the
// store does not hold it.
//
// Readers that already opened d are not disturbed on the local fast path:
// an unlinked file stays readable through open handles until they close.
// Remote readers open the object lazily, so one that has not read yet
// fails and its client retries, which fetches d again. Deleting is meant
// for eviction; d is simply fetched again on its next pull.
func (b *Blobs) Delete(ctx context.Context, d digest.Digest) error {
	if err := verify.Check(d); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("deleting blob %s: %w", d, err)
	}
	if b.localRoot != "" {
		return b.deleteLocal(d)
	}
	// Opens begun after the delete must not take the answer of a look
	// begun before it: they would serve a blob that is gone.
	defer b.forgetLook(d)
	if err := b.driver.Delete(ctx, blobPath(d)); err != nil {
		return notFound(d, err)
	}
	return nil
}

func (b *Blobs) deleteLocal(d digest.Digest) error {
	p := b.localPath(d)
	if err := os.Remove(p); err != nil {
		return notFound(d, err)
	}
	// Remove the digest's own directory too, or a cache that turns over
	// keeps one empty directory per blob it ever held. It fails harmlessly
	// if a concurrent commit of d has put a file back in it; commitLocal
	// retries its rename if this removal wins the race instead.
	_ = os.Remove(filepath.Dir(p))
	return nil
}
