package storage

import (
	"context"
	"errors"
	"fmt"
	"net"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/opencontainers/go-digest"
)

// ErrUnavailable means a remote object store could not answer: it is
// unreachable, refused airlock's credentials, lacks its bucket, or failed.
// Unlike ErrNotFound it says nothing about whether the blob exists, so a
// caller must not take it as a miss and fetch the blob again (every replica
// would then pull from the upstream what the store holds); it answers 503
// and lets the client retry.
var ErrUnavailable = errors.New("the object store is unavailable")

// storeError is a remote driver's failure, marked as ErrUnavailable. Its
// message tells an unreachable store (nothing answered: check the endpoint
// and the network) from one that answered with an error (check the bucket
// and the credentials).
type storeError struct {
	driver      string
	unreachable bool
	err         error
}

func (e *storeError) Error() string {
	if e.unreachable {
		return fmt.Sprintf("the %s object store is unreachable: %v", e.driver, e.err)
	}
	return fmt.Sprintf("the %s object store failed: %v", e.driver, e.err)
}

func (e *storeError) Unwrap() error        { return e.err }
func (e *storeError) Is(target error) bool { return target == ErrUnavailable }

// remoteErr classifies what a remote driver returned for blob d: nothing,
// ErrNotFound, the caller's own cancellation, or ErrUnavailable.
func (b *Blobs) remoteErr(ctx context.Context, d digest.Digest, err error) error {
	var pnf storagedriver.PathNotFoundError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &pnf):
		return fmt.Errorf("blob %s: %w", d, ErrNotFound)
	case ctx.Err() != nil:
		// The client went away or the deadline passed: the store may be
		// fine, and the caller's own error is the one to report.
		return fmt.Errorf("blob %s: %w: %w", d, ctx.Err(), err)
	}
	return fmt.Errorf("blob %s: %w", d, &storeError{driver: b.driver.Name(), unreachable: unreachable(err), err: err})
}

// unreachable reports whether err, or any error inside it, is a network
// error: a refused or reset connection, a timeout, a name that does not
// resolve. Drivers hide their causes where errors.As cannot look
// (storagedriver.Error's Detail, the AWS SDK's OrigErr), so those are
// followed too.
func unreachable(err error) bool {
	for seen := 0; err != nil && seen < 32; seen++ {
		if _, ok := err.(net.Error); ok {
			return true
		}
		switch e := err.(type) {
		case storagedriver.Error:
			err = e.Detail
		case interface{ OrigErr() error }:
			err = e.OrigErr()
		case interface{ Unwrap() []error }:
			for _, inner := range e.Unwrap() {
				if unreachable(inner) {
					return true
				}
			}
			return false
		default:
			err = errors.Unwrap(err)
		}
	}
	return false
}
