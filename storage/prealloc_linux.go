package storage

import (
	"errors"
	"os"
	"syscall"
)

// fallocKeepSize is FALLOC_FL_KEEP_SIZE: allocate blocks past the end of
// the file without moving the end. Mode 0 would extend the file with
// zeros, which readers of a growing spool would take for content and a
// commit would publish unless it truncated first.
const fallocKeepSize = 0x1

// preallocate allocates blocks for the first n bytes of f. A filesystem
// that cannot (EOPNOTSUPP) is not an error: the reservation is an early
// warning, not a guarantee the rest of the store relies on.
func preallocate(f *os.File, n int64) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) {
		for {
			ferr = syscall.Fallocate(int(fd), fallocKeepSize, 0, n)
			if ferr != syscall.EINTR {
				return
			}
		}
	}); err != nil {
		return err
	}
	if errors.Is(ferr, syscall.EOPNOTSUPP) || errors.Is(ferr, syscall.ENOSYS) {
		return nil
	}
	if ferr != nil {
		return os.NewSyscallError("fallocate", ferr)
	}
	return nil
}
