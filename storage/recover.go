package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
)

// Recover removes what interrupted downloads left behind: every spool file
// in the spool directory that no live Spool of this store owns, and, for
// remote drivers, temporary uploads older than an hour (younger ones may
// belong to another instance sharing the bucket). It returns how many it
// removed. Blobs need no recovery: a final path only ever receives a whole,
// verified blob.
//
// Call it at start-up, before serving.
func (b *Blobs) Recover(ctx context.Context) (int, error) {
	n, err := b.recoverSpools()
	if err != nil {
		return n, err
	}
	if b.localRoot != "" {
		m, err := b.recoverProbes()
		return n + m, err
	}
	m, err := b.recoverUploads(ctx)
	return n + m, err
}

func (b *Blobs) recoverSpools() (int, error) {
	entries, err := os.ReadDir(b.spoolDir)
	if err != nil {
		return 0, fmt.Errorf("recovering spools: %w", err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	var errs []error
	for _, e := range entries {
		p := filepath.Join(b.spoolDir, e.Name())
		if !e.Type().IsRegular() || !strings.HasSuffix(e.Name(), spoolSuffix) {
			continue
		}
		if _, live := b.spools[p]; live {
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("removing leftover spool: %w", err))
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

// probeGrace is how old a probe file in the blob root must be before
// Recover takes it for a crash's leftover: replicas sharing the root
// (cluster.sharedFilesystem) probe it as they start, and one starting at
// the same moment must not lose its probe to another's Recover.
const probeGrace = time.Minute

// recoverProbes removes start-up probe files a crash left in the blob root.
func (b *Blobs) recoverProbes() (int, error) {
	matches, err := filepath.Glob(filepath.Join(b.localRoot, "_probe-*"+spoolSuffix))
	if err != nil {
		return 0, err
	}
	cutoff := time.Now().Add(-probeGrace)
	n := 0
	for _, p := range matches {
		if fi, err := os.Stat(p); err != nil || fi.ModTime().After(cutoff) {
			continue // gone, or perhaps another replica's probe in progress
		}
		if os.Remove(p) == nil {
			n++
		}
	}
	return n, nil
}

func (b *Blobs) recoverUploads(ctx context.Context) (int, error) {
	names, err := b.driver.List(ctx, uploadsDir)
	var pnf storagedriver.PathNotFoundError
	if errors.As(err, &pnf) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("recovering uploads in the %s driver: %w", b.driver.Name(), err)
	}
	cutoff := time.Now().Add(-b.uploadGrace)
	n := 0
	var errs []error
	for _, p := range names {
		fi, err := b.driver.Stat(ctx, p)
		if err != nil {
			continue // gone meanwhile: a peer finished it
		}
		if fi.ModTime().After(cutoff) {
			continue
		}
		if err := b.driver.Delete(ctx, p); err != nil && !errors.As(err, &pnf) {
			errs = append(errs, fmt.Errorf("removing abandoned upload %s: %w", p, err))
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}
