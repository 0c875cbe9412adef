//go:build !linux

package storage

import "os"

// preallocate does nothing where Linux's fallocate is not available; a full
// volume then shows up when the spool is written.
func preallocate(*os.File, int64) error { return nil }
