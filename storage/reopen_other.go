//go:build !linux

package storage

import (
	"errors"
	"os"
)

// reopen is Linux-only: elsewhere a renamed or removed spool cannot be
// opened again, and its readers use ReadAt.
func reopen(*os.File) (*os.File, error) {
	return nil, errors.New("reopening a spool needs Linux's /proc/self/fd")
}
