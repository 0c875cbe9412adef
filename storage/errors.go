package storage

import (
	"errors"
	"syscall"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
)

// ErrNotFound means the store holds no such blob (or, in storage/metadata, no
// such record). It is the signal to fetch from an upstream or, offline, to
// answer "unknown".
var ErrNotFound = errors.New("not found")

// ErrNoSpace means the volume holding the spool or the blobs is full, or
// its quota is spent: a spool could not be created, reserved or written, or
// a blob could not be committed. Nothing partial is visible when it is
// returned, so a caller may still hand the download to its client without
// caching it. The underlying error (ENOSPC or EDQUOT) stays in the chain.
var ErrNoSpace = errors.New("no space left on the cache volume")

// noSpaceError marks a full-disk error as ErrNoSpace without changing its
// message, which already says what failed. cause is the OS error when err
// hides it from errors.Is.
type noSpaceError struct{ err, cause error }

func (e *noSpaceError) Error() string { return e.err.Error() }
func (e *noSpaceError) Unwrap() []error {
	if e.cause == nil {
		return []error{e.err}
	}
	return []error{e.err, e.cause}
}
func (e *noSpaceError) Is(target error) bool { return target == ErrNoSpace }

// MarkNoSpace returns err marked as ErrNoSpace when it reports a full disk
// or a spent quota (ENOSPC, EDQUOT), and err unchanged otherwise. Stores
// that share the cache volume (the metadata index) use it so that their
// callers can tell a full volume from a fault with one errors.Is.
func MarkNoSpace(err error) error { return noSpace(err) }

// noSpace marks err as ErrNoSpace when it reports a full disk or quota and
// returns it unchanged otherwise.
func noSpace(err error) error {
	if err == nil || errors.Is(err, ErrNoSpace) {
		return err
	}
	if full(err) {
		return &noSpaceError{err: err}
	}
	// Drivers wrap what the OS said in a storagedriver.Error that errors.Is
	// cannot see through.
	if de, ok := errors.AsType[storagedriver.Error](err); ok && full(de.Detail) {
		return &noSpaceError{err: err, cause: de.Detail}
	}
	return err
}

func full(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}
