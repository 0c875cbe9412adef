package storage

import (
	"context"
	"errors"
	"fmt"
	"io"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
)

// driverReader reads a remote blob and supports Seek by reopening the
// driver's reader at the new offset. Opening is lazy, because net/http's
// ServeContent seeks to the end and back to learn the size before reading
// anything; an eager reader would open the object three times per request.
type driverReader struct {
	ctx    context.Context
	driver storagedriver.StorageDriver
	path   string
	size   int64
	off    int64
	rc     io.ReadCloser
	closed bool
	// fail classifies an error from opening the object: the blob gone
	// since Open (evicted) is ErrNotFound, a store that stopped answering
	// ErrUnavailable.
	fail func(error) error
}

func (r *driverReader) Read(p []byte) (int, error) {
	if r.closed {
		return 0, errors.New("read from a closed blob reader")
	}
	if r.off >= r.size {
		return 0, io.EOF
	}
	if r.rc == nil {
		rc, err := r.driver.Reader(r.ctx, r.path, r.off)
		if err != nil {
			return 0, fmt.Errorf("reading at offset %d: %w", r.off, r.fail(err))
		}
		r.rc = rc
	}
	n, err := r.rc.Read(p)
	r.off += int64(n)
	return n, err
}

func (r *driverReader) Seek(offset int64, whence int) (int64, error) {
	var abs int64
	switch whence {
	case io.SeekStart:
		abs = offset
	case io.SeekCurrent:
		abs = r.off + offset
	case io.SeekEnd:
		abs = r.size + offset
	default:
		return r.off, fmt.Errorf("seek %s: invalid whence %d", r.path, whence)
	}
	if abs < 0 {
		return r.off, fmt.Errorf("seek %s: negative offset %d", r.path, abs)
	}
	if abs != r.off && r.rc != nil {
		r.rc.Close()
		r.rc = nil
	}
	r.off = abs
	return abs, nil
}

func (r *driverReader) Close() error {
	r.closed = true
	if r.rc == nil {
		return nil
	}
	err := r.rc.Close()
	r.rc = nil
	return err
}
